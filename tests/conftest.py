"""Shared fixtures: a tiny model pair on disk, with text, built once per session."""

from pathlib import Path

import pytest

from fixtures import random_model, random_text, save_model


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pair")
    a = save_model(random_model("bert", "mlm", seed=0, layers=2, hidden=16, heads=4, ffn=32), root / "a")
    b = save_model(random_model("bert", "mlm", seed=1, layers=2, hidden=16, heads=4, ffn=32), root / "b")
    text = root / "text.txt"
    text.write_text(random_text(300))
    return {"a": a, "b": b, "text": text, "root": root}


@pytest.fixture(scope="session")
def text(tmp_path_factory) -> Path:
    """A text file of 300 random lines (the tiny models' vocabulary), for matching and evaluation."""
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(random_text(300))
    return path


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"

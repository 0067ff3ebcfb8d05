"""`Inputs`: the CLI, the app and the grid build the same value for the same choices, and the
command line the app shows parses back to it."""

from __future__ import annotations

import shlex

import pytest
from streamlit.testing.v1 import AppTest

from fixtures import random_model, save_model
from permerge_core import AlignSettings, Inputs, Pipeline, TaskSpec, grid
from permerge_core.cli import _data, build_parser, command_line, inputs_from_args
from permerge_core.inputs import cache_folder


def cli_inputs(*flags: str) -> Inputs:
    return inputs_from_args(build_parser().parse_args(["align", *flags]))


def app_inputs(**state) -> Inputs:
    """What the app's `inputs_for` builds from these sidebar values (in a running script)."""

    def script():
        import streamlit as st

        from permerge_app import ui

        ui.init_state()
        st.session_state["_inputs"] = ui.inputs_for(st.session_state["model_a"], st.session_state["model_b"])

    at = AppTest.from_function(script, default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at.session_state["_inputs"]


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clf")
    pair = [save_model(random_model("bert", "classification", seed=s, num_labels=2), root / f"c{s}") for s in (0, 1)]
    data = root / "task.tsv"
    data.write_text("sentence\tgold\n" + "".join(f"word {k}\t{k % 2}\n" for k in range(20)))
    return {"a": str(pair[0]), "b": str(pair[1]), "data": str(data)}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PERMERGE_CACHE", str(tmp_path / "cache"))


def test_the_cli_and_the_app_give_equal_inputs_for_the_same_choices(tiny_pair, classifiers, tmp_path):
    a, b, text = str(tiny_pair["a"]), str(tiny_pair["b"]), str(tiny_pair["text"])
    files = dict(match_source="path", match_path=text, eval_source="path", eval_path=text)
    # Text files and a tokenizer folder.
    assert app_inputs(model_a=a, model_b=b, tokenizer=a, **files) == cli_inputs(
        "--model-a", a, "--model-b", b, "--tokenizer", a, "--match-data", text, "--eval-data", text)
    # The bundled corpus: no data flags, no data paths.
    bundled = app_inputs(model_a=a, model_b=b)
    assert bundled == cli_inputs("--model-a", a, "--model-b", b) and bundled.match_data is bundled.eval_data is None
    assert bundled.cache_dir == str(tmp_path / "cache")  # PERMERGE_CACHE, as an absolute path, in both
    # Classifiers: a labelled evaluation file and its columns.
    labelled = app_inputs(model_a=classifiers["a"], model_b=classifiers["b"], task_source="path", task_eval_path=classifiers["data"],
                          text_column="sentence", label_column="gold")
    assert labelled == cli_inputs("--model-a", classifiers["a"], "--model-b", classifiers["b"], "--eval-data", classifiers["data"],
                                  "--text-column", "sentence", "--label-column", "gold")
    assert labelled.task == TaskSpec("sentence", "gold") and labelled.match_data is None
    # A choice that differs is told apart (the comparison can fail).
    assert app_inputs(model_a=a, model_b=b, **files) != cli_inputs("--model-a", a, "--model-b", b, "--match-data", text)


def test_a_grid_cell_has_the_inputs_align_has_for_its_pair(tiny_pair):
    a, b, text = str(tiny_pair["a"]), str(tiny_pair["b"]), str(tiny_pair["text"])
    flags = ["--match-data", text, "--eval-data", text, "--text-column", "body", "--cache-dir", "rel/cache"]
    args = build_parser().parse_args(["grid", "--models", a, b, "--out", "unused", *flags])
    spec = grid.GridSpec(models=list(args.models), variants=[(grid.DEFAULT_VARIANT, AlignSettings())], **_data(args))
    assert spec.pair_inputs(0, 1) == cli_inputs("--model-a", a, "--model-b", b, *flags)
    assert spec.pair_task(0, 1).inputs.cache_dir == cache_folder("rel/cache") != "rel/cache"  # absolute: a Ray worker reads it too


@pytest.mark.parametrize("inputs", [
    Inputs("/m/a b", "org/model"),
    Inputs("a", "b", tokenizer="/tok", match_data="/d/m.txt", eval_data="/d/e.tsv", task=TaskSpec("s1", "y", "s2", True), cache_dir=None),
    Inputs("a", "b", task=TaskSpec(label_column="score"), cache_dir="/elsewhere/cache"),
])
def test_the_command_line_parses_back_to_its_inputs(inputs):
    assert inputs_from_args(build_parser().parse_args(shlex.split(command_line(inputs, AlignSettings()))[3:])) == inputs


def test_views_cli_command_round_trips_through_the_cli_parser():
    s = AlignSettings(match_tokens=4096, ffn=False, attention="monotonic", residual="sep", absolute=True, lambdas=11, mask_seed=3)
    command = command_line(Inputs("/m/a b", "org/model", match_data="/d/m.txt"), s, save_merged="/o", merge_lambda=0.25)
    args = build_parser().parse_args(shlex.split(command)[3:])
    rebuilt = AlignSettings(match_tokens=args.match_tokens, eval_tokens=args.eval_tokens, batch_size=args.batch_size, ffn=args.ffn,
                            attention=args.attention, residual=args.residual, absolute=args.absolute, drop_special=args.drop_special,
                            lambdas=args.lambdas, mask_seed=args.mask_seed, device=args.device)
    assert rebuilt == s and args.model_a == "/m/a b" and args.merge_lambda == 0.25 and args.eval_data is None


def test_a_pipeline_from_inputs_reads_every_field(tiny_pair, tmp_path):
    text = str(tiny_pair["text"])
    inputs = Inputs(str(tiny_pair["a"]), str(tiny_pair["b"]), tokenizer=str(tiny_pair["a"]), match_data=text, eval_data=text, cache_dir=None)
    p = Pipeline.from_inputs(inputs)
    same = Pipeline(inputs.model_a, inputs.model_b, tokenizer=inputs.tokenizer, match_data=text, eval_data=text, cache_dir=None)
    assert (p.match_path, p.eval_path, p.cache.enabled) == (text, text, False)
    assert p.curve_fields(AlignSettings(), "permuted") == same.curve_fields(AlignSettings(), "permuted")
    cached = Pipeline.from_inputs(Inputs(inputs.model_a, inputs.model_b, match_data=text, eval_data=text, cache_dir=str(tmp_path / "c")))
    assert cached.cache.root == tmp_path / "c"

"""What leaves a pipeline as files: the merged model, its zip, the permutations, the report files.

The merged model θ(λ) = λ·A + (1−λ)·B′ is written as a Hugging Face folder with A's tokenizer
and a `permerge_merge.json` saying what it is. It is written into a staging folder beside the
target and renamed into place, so a failure (a full disk, an interrupted write) leaves the
target as it was and nothing half-written behind; a folder that already holds files is
replaced only when asked.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path


from . import repair as repair_mod
from .data import text_fingerprint
from .errors import SettingsError
from .matching import Matching
from .report import write_outputs


def save_merged(p, s, lam: float, out: str | Path, overwrite: bool = False, repair: bool = False) -> Path:
    """θ(lam) of pipeline `p` under settings `s`, REPAIR-corrected with `repair`, as a folder at `out`."""
    if not 0.0 <= lam <= 1.0:
        raise SettingsError(f"λ = {lam} is outside [0, 1].", "Choose λ between 0 (B′) and 1 (A).")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SettingsError(f"{out} exists and is a file.", "Choose a folder path for the merged model.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SettingsError(f"{out} is not empty; refusing to overwrite it.", "Choose an empty or new folder, or allow overwriting (--overwrite).")
    with p.lock:  # the working model is the pipeline's only one: no other stage may move it while it is written
        model = p.merged_model(s, lam, repair)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.save_pretrained(staging)
            p.a.tokenizer.save_pretrained(staging)
            (staging / "permerge_merge.json").write_text(json.dumps(merge_note(p, s, lam, repair), indent=1))
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out


def merge_note(p, s, lam: float, repair: bool) -> dict:
    """permerge_merge.json: λ, both models, the settings, and what the weights are."""
    about = {
        "lambda": lam, "model_a": p.a.describe(), "model_b": p.b.describe(), "settings": asdict(s),
        "note": "θ(λ) = λ·A + (1−λ)·B′, where B′ is B aligned to A by permutation.",
    }
    if repair:
        about["note"] += (" Its FFN units are REPAIR-corrected: each unit's mean and std on the matching text are "
                          "the λ-interpolation of A's and B′'s (docs/method.md §11).")
        about["repair"] = {"tokens": repair_mod.budget(s.match_tokens), "match_text": text_fingerprint(p.match_passages)}
    return about


def merged_zip(p, s, lam: float, repair: bool = False) -> bytes:
    """θ(lam) (REPAIR-corrected with `repair`) saved by `save_merged` into a temporary folder,
    returned as zip bytes (one top folder `permerge-merged-lambda-<lam>/`, loadable after
    unzipping)."""
    top = f"permerge-merged-lambda-{lam:g}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_merged(p, s, lam, Path(tmp) / "merged", repair=repair)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, f"{top}/{file.relative_to(folder)}")
    return buffer.getvalue()


def permutations_payload(matching: Matching) -> dict:
    """Every permutation and head assignment of a matching, as plain JSON-able lists
    (`perm[i] = j`: A's unit i ↔ B's unit j), the same fields as report.json's."""
    return {
        "format": "permerge-permutations/1",
        "convention": "perm[i] = j means A's unit i is matched with B's unit j; B' = B reindexed by perm",
        "settings": dict(matching.settings),
        **matching.as_lists(),
        "function_preserving": matching.function_preserving,
    }


def report_files(report: dict) -> dict[str, str]:
    """report.json and curve.csv exactly as `permerge_core align` writes them (via write_outputs)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(report, tmp)
        return {name: (Path(tmp) / name).read_text() for name in ("report.json", "curve.csv")}

"""Every bad input gets a clear answer; nothing unsafe runs; nothing on disk is corrupted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from permerge_core import AlignSettings, Pipeline
from permerge_core.checkpoints import load_checkpoint, validate_pair
from permerge_core.data import read_passages, tokenize
from permerge_core.errors import CheckpointError, DataError, IncompatiblePairError, SettingsError
from fixtures import make_tokenizer, random_model, save_model

ROOT = Path(__file__).resolve().parent.parent
SMALL = AlignSettings(match_tokens=1200, eval_tokens=1200, lambdas=3, batch_size=8)


# ---- checkpoints -------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")


def test_config_without_weights(tiny_pair, tmp_path):
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(tiny_pair["a"] / "config.json", folder)
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(folder)


def test_truncated_safetensors(tiny_pair, tmp_path):
    folder = tmp_path / "trunc"
    shutil.copytree(tiny_pair["a"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(folder)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/permerge-pwned",))


def test_pickle_with_arbitrary_objects_is_refused_not_executed(tiny_pair, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(tiny_pair["a"] / "config.json", folder)
    marker = Path("/tmp/permerge-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"bert.embeddings.word_embeddings.weight": _Exploit()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_plain_state_dict_bin_loads(tiny_pair, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    for f in tiny_pair["a"].iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, folder)
    model = load_checkpoint(tiny_pair["a"]).model
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert load_checkpoint(folder).num_layers == 2


def test_unsupported_architecture_lists_supported_families(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert "'llama'" in str(err.value) and all(f in str(err.value) for f in ("bert", "roberta", "gpt2", "GPT2LMHeadModel"))


def test_nan_weights_are_reported_before_any_statistic(tiny_pair, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan"
    shutil.copytree(tiny_pair["a"], folder)
    state = load_file(folder / "model.safetensors")
    state["bert.encoder.layer.1.output.dense.weight"][0, 0] = float("nan")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="layer.1.output.dense.weight holds 1 NaN"):
        load_checkpoint(folder)


def test_half_precision_weights_compute_in_float32(tmp_path):
    folder = save_model(random_model("bert", "mlm", seed=5), tmp_path / "fp16", dtype=torch.float16)
    ckpt = load_checkpoint(folder)
    assert ckpt.stored_dtype == "float16"
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())


def test_hub_id_offline_fails_without_touching_the_network(monkeypatch):
    """Offline, a hub id is refused at once: no lookup, no connection, so no timeout to wait
    for (how long that takes is the machine's business, not a test's)."""
    import socket

    attempts = []

    def refuse(what):
        def call(*args, **kwargs):
            attempts.append((what, args[:2]))
            raise OSError(f"test: no network ({what})")
        return call

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Cannot reach the Hugging Face hub"):
        load_checkpoint("google/multiberts-seed_0")
    assert attempts == []


# ---- pairs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,needle",
    [
        (dict(layers=3), "number of layers: A has 2, B has 3"),
        (dict(hidden=24, heads=4), "hidden size: A has 16, B has 24"),
        (dict(heads=2), "number of attention heads: A has 4, B has 2"),
        (dict(ffn=40), "FFN size: A has 32, B has 40"),
        (dict(vocab=120), "vocabulary size"),
    ],
)
def test_pair_mismatch_names_both_values(tiny_pair, tmp_path, shape, needle):
    base = dict(layers=2, hidden=16, heads=4, ffn=32)
    other = save_model(random_model("bert", "mlm", seed=9, **{**base, **shape}), tmp_path / "other")
    with pytest.raises(IncompatiblePairError, match=needle):
        validate_pair(load_checkpoint(tiny_pair["a"]), load_checkpoint(other))


def test_different_tokenizer_vocabularies(tiny_pair, tmp_path):
    other = tmp_path / "othertok"
    shutil.copytree(tiny_pair["b"], other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    words = vocab["model"]["vocab"]
    a_word = next(w for w in words if w == "king")
    words["kingdom"] = words.pop(a_word)
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(IncompatiblePairError, match="tokenizers differ"):
        validate_pair(load_checkpoint(tiny_pair["a"]), load_checkpoint(other))


def test_folder_without_tokenizer_is_named_with_the_fix(tiny_pair, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_pair["b"]) / name, bare / name)
    for a, b, which, other in ((tiny_pair["a"], bare, "B", tiny_pair["a"]), (bare, tiny_pair["b"], "A", tiny_pair["b"])):
        with pytest.raises(CheckpointError) as info:
            validate_pair(load_checkpoint(a), load_checkpoint(b))
        message = str(info.value)
        assert f"Model {which}'s folder {bare} has no tokenizer" in message, message
        assert f"--tokenizer {other}" in message and "tokenizer.json" in message
    # The fix the message gives works: the tokenizer folder given explicitly.
    validate_pair(load_checkpoint(tiny_pair["a"], tiny_pair["a"]), load_checkpoint(bare, tiny_pair["a"]))


@pytest.mark.parametrize("kind", ["mlm", "classification", "base"])
@pytest.mark.parametrize("config_names_it", [True, False])
def test_head_read_from_the_config_agrees_with_the_loaded_model(tmp_path, kind, config_names_it):
    from permerge_core.checkpoints import read_head

    folder = save_model(random_model("bert", kind, seed=0, layers=1, hidden=16, heads=4, ffn=32), tmp_path / kind)
    if not config_names_it:  # older checkpoints: the head is told by the tensor names
        config = json.loads((folder / "config.json").read_text())
        del config["architectures"]
        (folder / "config.json").write_text(json.dumps(config))
    assert read_head(folder) == load_checkpoint(folder).head
    assert read_head(folder).kind == kind


def test_head_of_an_aliased_architecture_is_read_from_the_config(tiny_pair, tmp_path):
    from permerge_core.checkpoints import read_head

    folder = tmp_path / "pretraining"
    shutil.copytree(tiny_pair["a"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForPreTraining"]  # how MultiBERTs ship: used as a masked LM
    (folder / "config.json").write_text(json.dumps(config))
    assert read_head(folder).kind == "mlm" and read_head(folder).model_class == "BertForMaskedLM"


def test_mlm_against_classifier_and_label_counts(tiny_pair, tmp_path):
    clf2 = save_model(random_model("bert", "classification", seed=3, num_labels=2), tmp_path / "clf2")
    clf3 = save_model(random_model("bert", "classification", seed=4, num_labels=3), tmp_path / "clf3")
    with pytest.raises(IncompatiblePairError, match="head: A has BertForMaskedLM, B has BertForSequenceClassification"):
        validate_pair(load_checkpoint(tiny_pair["a"]), load_checkpoint(clf2))
    with pytest.raises(IncompatiblePairError, match="number of labels: A has 2, B has 3"):
        validate_pair(load_checkpoint(clf2), load_checkpoint(clf3))


# ---- text --------------------------------------------------------------------------------
def test_text_problems_have_clear_messages(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_passages(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_passages(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    with pytest.raises(DataError, match="only blank lines"):
        read_passages(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_passages(tmp_path / "latin1.txt")


def test_long_lines_are_split_and_short_text_is_reported(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    long_line = " ".join(["king"] * 300)
    batches = tokenize(tok, [long_line], max_tokens=10_000, max_length=64)
    assert any("split" in n for n in batches.notes)
    assert all(ids.shape[1] <= 64 for ids in batches.input_ids)
    # 300 word tokens in 5 sequences of at most 62 + [CLS] + [SEP]: fewer than asked, and said so
    assert batches.num_tokens == 310 and any("has only 310" in n for n in batches.notes)
    exact = tokenize(tok, [long_line], max_tokens=100, max_length=64)
    assert exact.num_tokens == 100 and not any("has only" in n for n in exact.notes)


# ---- settings ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(lambdas=1), "cannot make a path"),
        (dict(match_tokens=0), "must be positive"),
        (dict(eval_tokens=-5), "must be positive"),
        (dict(attention="diagonal"), "Unknown attention mode"),
        (dict(residual="middle"), "Unknown residual mode"),
        (dict(device="tpu"), "Unknown device"),
    ],
)
def test_impossible_settings(change, needle):
    from dataclasses import replace

    with pytest.raises(SettingsError, match=needle):
        replace(SMALL, **change).validate()


# ---- cache -------------------------------------------------------------------------------
def _pipeline(pair, cache):
    return Pipeline(pair["a"], pair["b"], match_data=pair["text"], eval_data=pair["text"], cache_dir=cache)


def test_damaged_or_stale_cache_entries_are_recomputed(tiny_pair, tmp_path):
    cache = tmp_path / "cache"
    first = _pipeline(tiny_pair, cache)
    perms = first.matching(SMALL).permutations
    entries = sorted(cache.glob("*.safetensors"))
    assert len(entries) == 2  # statistics and matching
    for entry in entries:  # truncate both
        entry.write_bytes(entry.read_bytes()[:100])
    again = _pipeline(tiny_pair, cache)
    assert {k: list(v) for k, v in again.matching(SMALL).permutations.items()} == {k: list(v) for k, v in perms.items()}
    assert sum("ignored unusable cache entry" in e for e in again.cache.events) == 2
    assert not list(cache.glob("*.tmp"))
    # an entry whose stored fields do not match its key (older format, other inputs) is not trusted
    entry = sorted(cache.glob("stats-*.safetensors"))[0]
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(entry), framework="pt") as handle:
        meta = json.loads(handle.metadata()["permerge"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta["format"] = 1
    save_file(tensors, str(entry), metadata={"permerge": json.dumps(meta)})
    third = _pipeline(tiny_pair, cache)
    third.statistics(SMALL)
    assert any("ignored unusable cache entry" in e for e in third.cache.events)


def test_changed_checkpoint_is_not_served_from_cache(tiny_pair, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(tiny_pair["b"], b)
    pair = {**tiny_pair, "b": b}
    cache = tmp_path / "cache"
    loss_before = _pipeline(pair, cache).curve(SMALL, "vanilla")[0]["loss"]
    save_model(random_model("bert", "mlm", seed=77, layers=2, hidden=16, heads=4, ffn=32), b)  # overwrite B in place
    fresh = _pipeline(pair, cache)
    loss_after = fresh.curve(SMALL, "vanilla")[0]["loss"]
    assert loss_after != loss_before
    assert not any("reused" in e for e in fresh.cache.events)


def test_two_concurrent_computations_of_one_pair_agree(tiny_pair, tmp_path):
    cache = tmp_path / "cache"
    results, errors = [], []

    def work():
        try:
            results.append(_pipeline(tiny_pair, cache).run(SMALL))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0]["permutations"] == results[1]["permutations"]
    assert results[0]["curves"] == results[1]["curves"]
    reread = _pipeline(tiny_pair, cache).run(SMALL)
    assert reread["curves"] == results[0]["curves"]
    assert not list(cache.glob(".*tmp"))


# ---- export ------------------------------------------------------------------------------
def test_export_never_overwrites_a_non_empty_folder(tiny_pair, tmp_path):
    p = _pipeline(tiny_pair, None)
    target = tmp_path / "export"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(SettingsError, match="not empty"):
        p.save_merged(SMALL, 0.5, target)
    assert (target / "precious.txt").read_text() == "keep me"
    p.save_merged(SMALL, 0.5, target, overwrite=True)
    assert (target / "config.json").exists() and not (target / "precious.txt").exists()


def test_failed_export_leaves_nothing_behind(tiny_pair, tmp_path, monkeypatch):
    p = _pipeline(tiny_pair, None)
    target = tmp_path / "export"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(p.a.tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError):
        p.save_merged(SMALL, 0.5, target)
    assert not target.exists()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".export")]


# ---- determinism and interruption --------------------------------------------------------
def test_two_runs_are_identical(tiny_pair):
    r1 = _pipeline(tiny_pair, None).run(SMALL)
    r2 = _pipeline(tiny_pair, None).run(SMALL)
    assert r1["permutations"] == r2["permutations"]
    assert r1["curves"] == r2["curves"]


# The CLI (argv after -c), held inside the statistics from its first progress line there until a
# signal ends it: the kill then lands there whatever the machine's speed. On SIGTERM,
# faulthandler first writes every thread's stack to stderr, then the default action ends it.
HELD_IN_STATISTICS = r"""
import faulthandler, signal, sys, threading
faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)


class Held:
    def __init__(self, stream):
        self.stream, self.pending = stream, ""

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.startswith("[statistics]"):
                threading.Event().wait()
        return len(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


sys.stderr = Held(sys.stderr)
from permerge_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_during_statistics_then_rerun_gives_the_uninterrupted_result(tiny_pair, tmp_path):
    """SIGTERM a CLI run inside its statistics; nothing half-done may be left, and the rerun
    must complete and agree with a run that was never interrupted."""
    root = tmp_path
    a, b, text = tiny_pair["a"], tiny_pair["b"], tiny_pair["text"]
    args = ["align", "--model-a", a, "--model-b", b, "--match-data", text, "--eval-data", text, "--match-tokens", 2000,
            "--eval-tokens", 1000, "--batch-size", 4, "--lambdas", 3, "--cache-dir", root / "cache"]
    args = [str(x) for x in args]
    proc = subprocess.Popen([sys.executable, "-c", HELD_IN_STATISTICS, *args, "--out", str(root / "killed")],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(300, proc.kill)  # a hang fails the test instead of stalling the suite
    watchdog.start()
    try:
        before = []
        for line in proc.stderr:
            before.append(line)
            if line.startswith("[statistics]"):
                break
        assert before and before[-1].startswith("[statistics]"), f"the CLI ended before its statistics: {''.join(before)}"
        assert "100%" not in before[-1]  # held after the first of several batches
        proc.send_signal(signal.SIGTERM)
        after = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert "in collect_statistics" in after, after  # the stacks at the kill: it was inside the statistics
    assert not (root / "killed" / "report.json").exists()
    assert not list((root / "cache").glob("stats-*")) if (root / "cache").exists() else True
    rerun = subprocess.run([sys.executable, "-m", "permerge_core", *args, "--out", str(root / "rerun")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    r1 = json.loads((root / "rerun" / "report.json").read_text())
    settings = AlignSettings(match_tokens=2000, eval_tokens=1000, batch_size=4, lambdas=3)
    r2 = Pipeline(a, b, match_data=text, eval_data=text, cache_dir=None).run(settings)  # never interrupted
    assert r1["permutations"] == r2["permutations"] and r1["curves"] == json.loads(json.dumps(r2["curves"]))


def test_forgotten_statistics_are_computed_again_and_come_out_the_same(tiny_pair):
    p = _pipeline(tiny_pair, None)
    first = p.statistics(SMALL)
    assert p.statistics(SMALL) is first  # remembered
    p.forget_statistics()
    again = p.statistics(SMALL)
    assert again is not first and again.num_tokens == first.num_tokens
    for name, space in first.spaces.items():
        assert torch.equal(space.correlation(), again.spaces[name].correlation()), name

"""The data ablation (docs/method.md §10): how the text is cut into budgets and resamples, that
one pass's snapshots are the statistics of its prefixes, and the study end to end on a tiny
pair, cached."""

import json

import numpy as np
import pytest
import torch

import permerge_core.ablation as ablation
from permerge_core import AlignSettings, Pipeline
from permerge_core.ablation import ablation_csv, checked_budgets, doubling, plan_budgets, resample_streams, run_ablation, split_at, write_ablation
from permerge_core.errors import DataError, SettingsError
from permerge_core.statistics import collect_statistics

from fixtures import random_model
from test_invariants import _batches, head_for

WRAP = ([1], [2])  # [CLS] … [SEP]


def body(sequences) -> list[int]:
    """The text tokens of sequences, without their special tokens."""
    return [t for seq in sequences for t in seq[1:-1]]


def text(lengths, start=100) -> list[list[int]]:
    """Wrapped sequences whose text tokens are distinct numbers, in order."""
    out, n = [], start
    for length in lengths:
        out.append([1, *range(n, n + length), 2])
        n += length
    return out


def test_split_at_cuts_at_exact_token_counts_and_keeps_the_text_in_order():
    sequences = text([10, 3, 25, 7, 40])
    segments = split_at(sequences, [8, 22, 51], WRAP)
    assert [sum(map(len, seg)) for seg in segments[:3]] == [8, 14, 29]  # cumulative 8, 22, 51
    assert body([seq for seg in segments for seq in seg]) == body(sequences)  # nothing lost, nothing repeated
    assert all(seq[0] == 1 and seq[-1] == 2 and len(seq) > 2 for seg in segments for seq in seg)
    # A boundary 1 token into a sequence leaves no room for text: that segment closes short.
    assert split_at(text([10]), [1], WRAP) == [[], text([10])]


def test_resamples_are_disjoint_slices_where_the_text_is_long_enough():
    sequences = text([9] * 40)  # 440 tokens
    streams = resample_streams(sequences, 440, 3, 100, WRAP)
    # 100 tokens each, or up to the 2 special tokens fewer where the cut falls inside a wrap.
    assert all(98 <= sum(map(len, s)) <= 100 for s in streams)
    tokens = [set(body(s)) for s in streams]
    assert not (tokens[0] & tokens[1]) and not (tokens[1] & tokens[2]) and not (tokens[0] & tokens[2])
    # Too short for 3 × 200: the streams wrap around the end and overlap, and the plan says so.
    streams = resample_streams(sequences, 440, 3, 200, WRAP)
    assert set(body(streams[2])) & set(body(streams[0]))
    kept, notes = plan_budgets([50, 100, 200, 800], 3, 440)
    assert kept == [50, 100, 200]
    assert any("800" in n and "left out" in n for n in notes) and any("overlap" in n and "200" in n for n in notes)


def test_budget_checks_name_the_problem():
    assert doubling(1024, 65536) == [1024 * 2**k for k in range(7)]
    with pytest.raises(SettingsError):
        doubling(0, 10)
    with pytest.raises(SettingsError):
        checked_budgets([4], 3)
    with pytest.raises(DataError):
        plan_budgets([500], 3, 300)


def test_a_snapshot_is_the_statistics_of_its_prefix_and_leaves_the_pass_unchanged():
    a = random_model("bert", "mlm", seed=71, layers=1, hidden=8, heads=2, ffn=12)
    b = random_model("bert", "mlm", seed=72, layers=1, hidden=8, heads=2, ffn=12)
    fam, _ = head_for(a)
    batches = _batches(a.config.vocab_size, n=6)
    snaps = {}
    whole = collect_statistics(a, b, fam, a.config, batches, snapshot_after={1, 3}, on_snapshot=lambda k, s: snaps.__setitem__(k, s))
    plain = collect_statistics(a, b, fam, a.config, batches)
    for name, sp in plain.spaces.items():
        assert torch.equal(whole.spaces[name].correlation(), sp.correlation()), name
    for k, snap in snaps.items():
        prefix = type(batches)(batches.input_ids[: k + 1], batches.attention_mask[: k + 1], 0, 0)
        direct = collect_statistics(a, b, fam, a.config, prefix)
        assert snap.num_tokens == direct.num_tokens < plain.num_tokens
        for name, sp in direct.spaces.items():
            np.testing.assert_allclose(snap.spaces[name].correlation().numpy(), sp.correlation().numpy(), atol=1e-6, err_msg=name)


def test_the_ablation_agrees_with_itself_at_the_largest_budget_and_is_cached(tiny_pair, tmp_path, monkeypatch):
    p = Pipeline(tiny_pair["a"], tiny_pair["b"], match_data=tiny_pair["text"], eval_data=tiny_pair["text"], cache_dir=tmp_path / "cache")
    s = AlignSettings(eval_tokens=500, lambdas=3)
    result = run_ablation(p, s, budgets=[128, 256, 512], resamples=2)
    rows = result["rows"]
    assert [r["budget"] for r in rows] == [128, 256, 512] and all(r["disjoint"] for r in rows)
    assert all(r["budget"] - 2 <= r["tokens"] <= r["budget"] for r in rows)  # a cut inside [CLS]…[SEP] falls short
    last = rows[-1]
    assert set(last["agreement"]) == {"layer.0.ffn", "layer.0.attention", "layer.1.ffn", "layer.1.attention", "residual"}
    assert all(v == 1.0 for v in last["agreement"].values()) and last["agreement_by_kind"] == {"ffn": 1.0, "attention": 1.0, "residual": 1.0}
    assert last["head_agreement"] == {"layer.0": 1.0, "layer.1": 1.0} and last["head_agreement_mean"] == 1.0
    assert rows[0]["agreement_by_kind"]["ffn"] < 1.0  # 128 tokens do not pin 32 FFN units down
    for row in rows:
        assert len(row["barrier"]["values"]) == 2 and row["barrier"]["min"] <= row["barrier"]["mean"] <= row["barrier"]["max"]
        assert row["seconds"] > 0
    write_ablation(result, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "ablation.json").read_text()) == result
    csv = (tmp_path / "out" / "ablation.csv").read_text().splitlines()
    assert csv[0].startswith("budget,tokens,disjoint,barrier_mean") and [line.split(",")[0] for line in csv[1:]] == ["128", "256", "512"]
    assert csv[1:] == ablation_csv(result).splitlines()[1:]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached study must not recompute")

    monkeypatch.setattr(ablation, "collect_statistics", refuse)
    monkeypatch.setattr(Pipeline, "path", refuse)
    again = Pipeline(tiny_pair["a"], tiny_pair["b"], match_data=tiny_pair["text"], eval_data=tiny_pair["text"], cache_dir=tmp_path / "cache")
    assert run_ablation(again, s, budgets=[128, 256, 512], resamples=2) == result


def test_the_ablation_refuses_the_weights_matcher(tiny_pair, tmp_path):
    p = Pipeline(tiny_pair["a"], tiny_pair["b"], match_data=tiny_pair["text"], eval_data=tiny_pair["text"], cache_dir=None)
    with pytest.raises(SettingsError, match="weight matching reads no text"):
        run_ablation(p, AlignSettings(matcher="weights"), budgets=[128], resamples=1)


def test_the_ablation_reads_a_decoders_text_as_packed_blocks(tmp_path):
    """GPT-2 reads text packed into blocks, without special tokens: every budget is exact."""
    from fixtures import random_text, save_model

    pair = [save_model(random_model("gpt2", "causal-lm", seed=s, layers=2, hidden=16, heads=4, ffn=32), tmp_path / f"g{s}") for s in (0, 1)]
    text = tmp_path / "text.txt"
    text.write_text(random_text(200, seed=4))
    p = Pipeline(*pair, match_data=text, eval_data=text, cache_dir=None)
    result = run_ablation(p, AlignSettings(eval_tokens=400, lambdas=3, max_length=64), budgets=[100, 200, 400], resamples=2)
    assert [r["tokens"] for r in result["rows"]] == [100, 200, 400]
    assert result["rows"][-1]["agreement_by_kind"] == {"ffn": 1.0, "attention": 1.0, "residual": 1.0}
    assert result["rows"][-1]["head_agreement_mean"] == 1.0

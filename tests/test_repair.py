"""The optional REPAIR-style correction of the permuted path (repair.py), on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures import WORDS, random_model, save_model
from permerge_core import AlignSettings, Pipeline
from permerge_core import repair as repair_mod
from permerge_core.cli import build_parser, main
from permerge_core.data import text_fingerprint
from permerge_core.report import write_outputs

SHAPE = dict(layers=2, hidden=16, heads=4, ffn=32)
SETTINGS = AlignSettings(match_tokens=1500, eval_tokens=1000, lambdas=5, max_length=32, batch_size=8, repair=True)
# The FFN's first Linear in each family, named here rather than read from the family data,
# so that the test also checks which module the correction finds.
PRODUCER = {"bert": "encoder.layer.{i}.intermediate.dense", "gpt2": "h.{i}.mlp.c_fc"}


def text_of(words, seed: int) -> str:
    """random_text with only `words`: two such texts share no word."""
    import random

    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 30))) for _ in range(300)) + "\n"


@pytest.fixture(scope="module", params=["bert", "gpt2"])
def pipeline(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"repair-{family}")
    kind = "causal-lm" if family == "gpt2" else "mlm"
    a = save_model(random_model(family, kind, seed=0, **SHAPE), root / "a")
    b = save_model(random_model(family, kind, seed=1, **SHAPE), root / "b")
    match, evaluation = root / "match.txt", root / "eval.txt"
    # The matching and evaluation texts share no word, so the tokens a computation reads say which text it read.
    match.write_text(text_of(WORDS[: len(WORDS) // 2], seed=1))
    evaluation.write_text(text_of(WORDS[len(WORDS) // 2 :], seed=2))
    return Pipeline(a, b, match_data=match, eval_data=evaluation, cache_dir=root / "cache")


@torch.no_grad()
def measured(model, family: str, inputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, every FFN unit's pre-activation mean and std over the real tokens, float64,
    computed directly from all the rows (not by repair.py's running sums)."""
    base = model.base_model
    modules = dict(base.named_modules())
    layers = model.config.num_hidden_layers
    rows: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    keep = {}
    hooks = [modules[PRODUCER[family].format(i=i)].register_forward_hook(
        lambda m, args, out, i=i: rows[i].append(out.reshape(-1, out.shape[-1])[keep["rows"]].double())) for i in range(layers)]
    try:
        for batch in inputs:
            keep["rows"] = batch["attention_mask"].reshape(-1).bool()
            base(**batch)
    finally:
        for h in hooks:
            h.remove()
    return [(torch.cat(r).mean(0), torch.cat(r).std(0, unbiased=False)) for r in rows]


def family_of(p) -> str:
    return p.a.family.name


def test_every_corrected_unit_has_the_interpolated_mean_and_std_on_the_matching_text(pipeline):
    p, family = pipeline, family_of(pipeline)
    inputs = p.repair_inputs(SETTINGS)
    interpolator = p._interpolator_for(SETTINGS, "permuted")
    of_a = measured(p.a.model, family, inputs)
    of_b_prime = measured(interpolator.set(0.0), family, inputs)
    adjust = p.repairer(SETTINGS)
    for lam in (0.3, 0.5):
        model = interpolator.set(lam)
        before = measured(model, family, inputs)
        adjust(model, lam)
        after = measured(model, family, inputs)
        for layer, ((mean, std), (mean0, std0), (ma, sa), (mb, sb)) in enumerate(zip(after, before, of_a, of_b_prime)):
            mean_t, std_t = lam * ma + (1 - lam) * mb, lam * sa + (1 - lam) * sb
            assert (std_t > 1e-3).all()  # no dead unit in these models: every unit is rescaled
            assert torch.allclose(std, std_t, rtol=1e-4, atol=0), (family, lam, layer, float(((std - std_t) / std_t).abs().max()))
            assert ((mean - mean_t).abs() <= 1e-4 * std_t).all(), (family, lam, layer)
            # ... which θ(λ) itself was far from: the correction had something to do.
            assert float(((std0 - std_t) / std_t).abs().max()) > 1e-2


def test_at_lambda_0_and_1_the_correction_changes_nothing(pipeline):
    p = pipeline
    interpolator = p._interpolator_for(SETTINGS, "permuted")
    adjust = p.repairer(SETTINGS)
    for lam in (0.0, 1.0):
        exact = {n: t.detach().clone() for n, t in interpolator.set(lam).named_parameters()}  # bitwise B′, A
        model = interpolator.set(lam)
        adjust(model, lam)
        corrected = dict(model.named_parameters())
        for name, value in exact.items():
            assert torch.allclose(corrected[name], value, rtol=1e-5, atol=1e-6), (lam, name)
    report = p.run(SETTINGS)
    repaired, permuted = report["curves"][repair_mod.REPAIRED], report["curves"]["permuted"]
    assert repaired[-1][1] == pytest.approx(report["endpoint_loss"]["a"], abs=1e-5)  # θ(1) corrected is still A
    assert repaired[0][1] == pytest.approx(permuted[0][1], abs=1e-5)  # θ(0) corrected is still B′
    assert report["barrier"][repair_mod.REPAIRED] == pytest.approx(max(l for _, l in repaired) - 0.5 * (repaired[0][1] + repaired[-1][1]))
    assert any(abs(r[1] - q[1]) > 1e-4 for r, q in zip(repaired[1:-1], permuted[1:-1]))  # inside, it is another curve


def test_the_correction_reads_the_matching_text_never_the_evaluation_text(pipeline, monkeypatch):
    p = pipeline
    vocab = lambda lines: {t for ids in p.a.tokenizer(lines, add_special_tokens=False)["input_ids"] for t in ids}  # noqa: E731
    match_ids, eval_ids = vocab(p.match_passages), vocab(p.eval_passages)
    eval_only = eval_ids - match_ids
    assert eval_only  # the test can tell the texts apart
    seen: set[int] = set()
    original = repair_mod.ffn_moments

    def spy(model, family, inputs, layers, device="cpu"):
        for batch in inputs:
            seen.update(batch["input_ids"][batch["attention_mask"].bool()].tolist())
        return original(model, family, inputs, layers, device)

    monkeypatch.setattr(repair_mod, "ffn_moments", spy)
    s = AlignSettings(**{**SETTINGS.__dict__, "mask_seed": 7})  # a curve not computed by the other tests
    p.curve(s, repair_mod.REPAIRED)
    assert seen and not seen & eval_only
    assert seen <= match_ids | set(p.a.tokenizer.all_special_ids)
    # The cache key names the matching text and the correction's budget.
    key = p.curve_fields(s, repair_mod.REPAIRED)["repair"]
    assert key["match_text"] == text_fingerprint(p.match_passages) and key["tokens"] == repair_mod.budget(s.match_tokens) == 1500


def test_the_setting_is_off_by_default_and_the_default_report_has_no_repair(pipeline, tmp_path):
    assert AlignSettings().repair is False
    assert build_parser().parse_args(["align"]).repair is False and build_parser().parse_args(["align", "--repair"]).repair is True
    off = AlignSettings(**{**SETTINGS.__dict__, "repair": False})
    report = pipeline.run(off)
    assert repair_mod.REPAIRED not in report["curves"] and repair_mod.REPAIRED not in report["barrier"] and "repair" not in report
    assert f"{repair_mod.LABEL} path" not in pipeline.stage_status(off)
    write_outputs(report, tmp_path / "off")
    assert (tmp_path / "off" / "curve.csv").read_text().splitlines()[0] == "lambda,vanilla_loss,permuted_loss,vanilla_accuracy,permuted_accuracy"
    on = pipeline.run(SETTINGS)
    write_outputs(on, tmp_path / "on")
    rows = (tmp_path / "on" / "curve.csv").read_text().splitlines()
    assert rows[0].endswith(",permuted_repair_loss,permuted_repair_accuracy")
    assert float(rows[2].split(",")[5]) == pytest.approx(on["curves"][repair_mod.REPAIRED][1][1], abs=1e-6)
    assert json.loads((tmp_path / "on" / "report.json").read_text())["barrier"][repair_mod.REPAIRED] == on["barrier"][repair_mod.REPAIRED]


def test_a_merged_model_is_corrected_only_on_request(pipeline, tmp_path):
    from safetensors.torch import load_file

    p = pipeline
    plain = load_file(str(p.save_merged(SETTINGS, 0.5, tmp_path / "plain") / "model.safetensors"))  # repair setting on, export plain
    fixed = load_file(str(p.save_merged(SETTINGS, 0.5, tmp_path / "fixed", repair=True) / "model.safetensors"))
    producer = repair_mod.ffn_producer(p.a.family).module.split("{i}")[-1]  # ".intermediate.dense" / ".mlp.c_fc"
    changed = {k for k in plain if not torch.equal(plain[k], fixed[k])}
    assert changed and all(producer in k for k in changed)
    with torch.no_grad():
        exact = dict(p._interpolator_for(SETTINGS, "permuted").set(0.5).state_dict())
    assert all(torch.equal(plain[k], exact[k]) for k in plain)
    assert "repair" in json.loads((tmp_path / "fixed" / "permerge_merge.json").read_text())
    assert "repair" not in json.loads((tmp_path / "plain" / "permerge_merge.json").read_text())


def test_merge_repair_without_a_merged_model_is_refused(capsys):
    assert main(["align", "--merge-repair"]) == 2
    assert "--save-merged" in capsys.readouterr().err

"""The family declarations (permerge_core/families/): what each declares is what its models have."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fixtures import random_head_perm, random_ids, random_model
from permerge_core import training
from permerge_core.errors import SettingsError
from permerge_core.evaluation import _position_wise_tail, max_abs_logit_diff
from permerge_core.families import FAMILIES
from permerge_core.families.schema import (
    AFTER_ATTENTION, AFTER_FFN, BASE, CAUSAL_LM, EMBED, FINAL, LAYER_INPUT, MLM,
    Capture, Node, Part, ResidualLayout, Shape, Touch,
)
from permerge_core.matching import Matching
from permerge_core.permuting import inverse, permutation_plan, permute_state_dict, permuted_model, plan_for_matching, touched_units
from permerge_core.statistics import _held_per_token, captures, space_dims
from permerge_core.weight_matching import _block

HEADS = [(name, architecture) for name, family in FAMILIES.items() for architecture in family.heads]
SHAPE = dict(layers=2, hidden=16, heads=4, ffn=32)


def _model(name: str, architecture: str):
    head = FAMILIES[name].heads[architecture]
    model = random_model(name, head.kind, seed=3, **SHAPE)
    assert type(model).__name__ == head.model_class
    return FAMILIES[name].for_config(model.config), head, model


@pytest.mark.parametrize("name,architecture", HEADS)
def test_every_touch_resolves_to_a_tensor_with_its_space_on_the_axis(name, architecture):
    family, head, model = _model(name, architecture)
    state = model.state_dict()
    dims = space_dims(model.config, family)
    # The plan with each space's name in place of its permutation (every residual node its own).
    plan = permutation_plan(family, head, SHAPE["layers"], {space: space for space in dims}, lambda n: f"residual.{n}")
    reached = set()
    for touch, space in plan:
        if touch.name not in state:
            assert touch.optional or family.lacks_ok(touch.name), f"{architecture} has no tensor {touch.name}"
            continue
        length = state[touch.name].shape[touch.axis]
        units = length if touch.part is None else len(touch.part.indices(length))
        assert units == dims[space], f"{touch.name} axis {touch.axis}: {units} units, but {space} has {dims[space]}"
        reached.add(space)
    assert reached == set(dims)  # every space moves some tensor


def _planted(family, config, rng) -> Matching:
    """Random function-preserving permutations of every space: heads kept whole (their rotary
    features in place), one residual permutation."""
    shape = family.shape(config)
    perms = {"residual": rng.permutation(shape.hidden)}
    for i in range(shape.layers):
        perms[f"layer.{i}.ffn"] = rng.permutation(shape.ffn)
        perms[f"layer.{i}.attention"] = random_head_perm(shape.attention, shape.heads, rng, range(shape.rotary_dims))
    return Matching(perms, {}, {"ffn": True, "attention": "heads", "residual": "first", "absolute": False})


@pytest.mark.parametrize("name,architecture", HEADS)
def test_a_planted_shuffle_keeps_the_function_and_its_inverse_gives_back_every_weight(name, architecture):
    family, head, model = _model(name, architecture)
    layers = SHAPE["layers"]
    planted = _planted(family, model.config, np.random.default_rng(4))
    shuffled = permuted_model(model, family, head, layers, planted)
    ids, mask = random_ids(vocab=model.config.vocab_size)
    last = planted.residual_perm(family.residual_layout.count(layers) - 1)  # what a bare model's hidden states take
    assert max_abs_logit_diff(shuffled, model, ids, mask, hidden_perm=last if head.kind == BASE else None) < 1e-4
    state, moved = model.state_dict(), shuffled.state_dict()
    for touch, _ in plan_for_matching(family, head, layers, planted):
        if touch.name in state:
            assert not torch.equal(moved[touch.name], state[touch.name]), f"{touch.name} did not move"
    undo = {space: inverse(perm) for space, perm in planted.permutations.items()}
    back = permute_state_dict(moved, permutation_plan(family, head, layers, undo, lambda n: undo["residual"]))
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_the_default_layout_numbers_two_nodes_per_layer():
    layout = ResidualLayout()
    assert [layout.index(EMBED, None, 3), layout.index(FINAL, None, 3)] == [0, 6]
    for i in range(3):
        assert layout.index(LAYER_INPUT, i, 3) == 2 * i
        assert layout.index(AFTER_ATTENTION, i, 3) == 2 * i + 1
        assert layout.index(AFTER_FFN, i, 3) == 2 * i + 2
    assert layout.nodes(3)[3] == ("layer.1.attention_out", "after layer 1 attention")


def test_a_layout_with_one_node_per_layer():
    # A parallel-residual block (attention and FFN read the same input, both write one sum).
    layout = ResidualLayout(per_layer=(Node(AFTER_FFN, "layer.{i}.out", "after layer {i}"),))
    assert layout.count(4) == 5
    assert [layout.index(AFTER_FFN, i, 4) for i in range(4)] == [1, 2, 3, 4]
    assert [layout.index(LAYER_INPUT, i, 4) for i in range(4)] == [0, 1, 2, 3]
    assert layout.index(FINAL, None, 4) == 4
    assert [name for name, _ in layout.nodes(2)] == ["embeddings", "layer.0.out", "layer.1.out"]
    with pytest.raises(ValueError, match="unknown residual rule"):
        layout.index(AFTER_ATTENTION, 0, 4)  # this layout has no such node


def test_a_layout_with_three_nodes_per_layer_and_one_after_them():
    cross = "after_cross_attention"
    layout = ResidualLayout(
        per_layer=(
            Node(AFTER_ATTENTION, "layer.{i}.attention_out", "after layer {i} attention"),
            Node(cross, "layer.{i}.cross_out", "after layer {i} cross-attention"),
            Node(AFTER_FFN, "layer.{i}.ffn_out", "after layer {i} FFN"),
        ),
        after=(Node("final_norm", "final_norm", "after the final LayerNorm"),),
    )
    assert layout.count(2) == 8
    assert [layout.index(rule, 1, 2) for rule in (LAYER_INPUT, AFTER_ATTENTION, cross, AFTER_FFN)] == [3, 4, 5, 6]
    assert layout.index("final_norm", None, 2) == layout.index(FINAL, None, 2) == 7
    assert layout.nodes(2)[5] == ("layer.1.cross_out", "after layer 1 cross-attention")
    with pytest.raises(ValueError, match="give the layer"):
        layout.index(cross, None, 2)


def test_statistics_read_every_node_of_a_one_node_layout_once():
    family = replace(
        FAMILIES["gpt2"],
        residual_layout=ResidualLayout(per_layer=(Node(AFTER_FFN, "layer.{i}.out", "after layer {i}"),)),
    )
    family = replace(family, encoder=replace(family.encoder, capture_residual=(
        (EMBED, Capture("drop", "output")), (AFTER_FFN, Capture("h.{i}", "output")),
    )))
    residual = [(space, module) for space, module, _ in captures(family, 3) if space.startswith("residual.")]
    assert residual == [("residual.0", "drop"), ("residual.1", "h.0"), ("residual.2", "h.1"), ("residual.3", "h.2")]


def test_the_attention_space_is_heads_times_head_width_where_the_config_sets_it():
    config = SimpleNamespace(num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=24,
                             max_position_embeddings=64, head_dim=8)
    bert = FAMILIES["bert"]
    assert bert.shape(config).attention == 16  # BERT's keys name no head width: hidden // heads
    wide = replace(bert, config_keys=replace(bert.config_keys, head_dim="head_dim"))
    dims = space_dims(config, wide)
    assert wide.shape(config).attention == dims["layer.0.attention"] == dims["layer.1.attention"] == 32
    assert dims["residual.0"] == 16 and dims["layer.1.ffn"] == 24
    # A's activations held per token (4 bytes per unit) grow by the two attention spaces' extra 16 units.
    assert _held_per_token(config, wide) - _held_per_token(config, bert) == 4 * 2 * 16


def test_a_part_addresses_one_block_of_every_chunk():
    assert Part(1, 3).indices(6).tolist() == [2, 3]  # GPT-2's c_attn: q | k | v
    assert Part(1, 3, chunks=2).indices(12).tolist() == [2, 3, 8, 9]  # [q0|k0|v0|q1|k1|v1]: k of each head
    assert Part(2, 3, chunks=2).indices(12).tolist() == [4, 5, 10, 11]
    with pytest.raises(ValueError, match="equal blocks"):
        Part(0, 3, chunks=2).indices(10)


HEADS, HEAD_DIM, IN = 3, 2, 5  # a made-up fused attention: [q_h | k_h | v_h] for every head h, as GPT-NeoX lays it out


def _fuse_per_head(q, k, v):
    """Rows of q, k and v ([HEADS × HEAD_DIM, ...] each) interleaved head by head."""
    split = lambda t: t.reshape(HEADS, HEAD_DIM, *t.shape[1:])  # noqa: E731
    return torch.stack([split(q), split(k), split(v)], dim=1).reshape(3 * HEADS * HEAD_DIM, *q.shape[1:])


def test_permuting_a_per_head_interleaved_fused_tensor_equals_permuting_q_k_and_v():
    g = torch.Generator().manual_seed(0)
    width = HEADS * HEAD_DIM
    unfused = {f"{n}.{p}": torch.randn(width, *((IN,) if p == "weight" else ()), generator=g) for n in "qkv" for p in ("weight", "bias")}
    fused = {f"qkv.{p}": _fuse_per_head(*(unfused[f"{n}.{p}"] for n in "qkv")) for p in ("weight", "bias")}
    perm = np.random.default_rng(1).permutation(width)  # any permutation of the attention space
    interleaved = [(Touch(f"qkv.{p}", 0, part=Part(j, 3, chunks=HEADS)), perm) for j in range(3) for p in ("weight", "bias")]
    separate = [(Touch(name, 0), perm) for name in unfused]
    moved, expected = permute_state_dict(fused, interleaved), permute_state_dict(unfused, separate)
    for p in ("weight", "bias"):
        assert torch.equal(moved[f"qkv.{p}"], _fuse_per_head(*(expected[f"{n}.{p}"] for n in "qkv")))
        assert not torch.equal(moved[f"qkv.{p}"], fused[f"qkv.{p}"])
    # Read as contiguous thirds (GPT-2's layout), the same touches would mix heads' q, k and v.
    contiguous = [(Touch(f"qkv.{p}", 0, part=Part(j, 3)), perm) for j in range(3) for p in ("weight", "bias")]
    assert not torch.equal(permute_state_dict(fused, contiguous)["qkv.weight"], moved["qkv.weight"])
    # Weight matching compares the same rows: unit u of the part is row u of q (k, v).
    for j, n in enumerate("qkv"):
        touch = Touch("qkv.weight", 0, part=Part(j, 3, chunks=HEADS))
        assert torch.equal(touched_units(_block(fused["qkv.weight"], touch), touch), unfused[f"{n}.weight"])


def test_the_evaluation_takes_the_fast_path_its_family_declares(monkeypatch):
    model = random_model("bert", MLM, seed=1, layers=2, hidden=16, heads=4, ffn=32)
    last = model.bert.encoder.layer[1]
    tail = _position_wise_tail(model)
    assert tail.self_attention is last.attention.self and tail.attention_output is last.attention.output
    bert = FAMILIES["bert"]
    monkeypatch.setitem(FAMILIES, "bert", replace(bert, fast_path=replace(bert.fast_path, self_attention=None)))
    tail = _position_wise_tail(model)
    assert tail.self_attention is None and tail.output is last.output  # the tail alone
    monkeypatch.setitem(FAMILIES, "bert", replace(bert, fast_path=None))
    assert _position_wise_tail(model) is None
    assert FAMILIES["gpt2"].fast_path is None and _position_wise_tail(random_model("gpt2", CAUSAL_LM, seed=1)) is None


@pytest.mark.parametrize("name", [name for name, family in FAMILIES.items() if family.training is not None])
def test_train_builds_the_head_and_shape_the_family_declares(name):
    family = FAMILIES[name]
    cfg = training.TrainConfig(seed=0, out="", family=name, layers=2, hidden=24, heads=3, ffn=40, max_length=20, dropout=0.25)
    model = training.build_model(cfg, 50, 7)
    assert type(model).__name__ == family.heads[family.training.head].model_class
    assert family.shape(model.config) == Shape(2, 24, 3, 40, 20 + family.config_keys.position_offset, 24)
    assert family.usable_positions(model.config) == 20 and model.config.vocab_size == 50
    assert all(getattr(model.config, key) == 0.25 for key in family.training.dropout)
    assert all(getattr(model.config, key) == 7 for key in family.training.token_ids)
    assert Path(cfg.tokenizer) == training.ASSETS / family.training.tokenizer and (Path(cfg.tokenizer) / "tokenizer.json").exists()


def test_train_refuses_a_family_that_declares_no_training():
    assert FAMILIES["roberta"].training is None
    with pytest.raises(SettingsError, match="family"):
        training.TrainConfig(seed=0, out="", family="roberta")

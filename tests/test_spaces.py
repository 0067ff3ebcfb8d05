"""Spaces as values: one spelling of every name, and each declared symmetry checked on tiny
models. A move keeps B's function exactly when the space admits it, so the table in
`spaces.ADMITS` is tested, not assumed, and so is every mode's claim about the move it makes."""

from __future__ import annotations

import numpy as np
import pytest

from permerge_core import spaces as sp
from permerge_core.evaluation import max_abs_logit_diff
from permerge_core.matching import Matching, identity
from permerge_core.modes import ATTENTION, MATCHERS, RESIDUAL, Problem
from permerge_core.permuting import permuted_model
from permerge_core.settings import BY_NAME

from fixtures import random_ids, random_model, random_move, spaces_of
from test_invariants import LM, head_for


def test_every_name_is_spelt_and_parsed_in_one_place():
    for kind in sp.LAYER_KINDS:
        assert sp.parse(sp.name_of(kind, 7)) == sp.Name(kind, layer=7)
    assert sp.parse(sp.node(3)) == sp.Name(sp.RESIDUAL, node=3)
    assert sp.parse(sp.STREAM) == sp.Name(sp.RESIDUAL)
    assert (sp.ffn(2), sp.attention(0), sp.node(11)) == ("layer.2.ffn", "layer.0.attention", "residual.11")  # cache keys
    for bad in ("layer.x.ffn", "layer.1.mlp", "residual.", "residuals", "layer.1", ""):
        with pytest.raises(ValueError):
            sp.parse(bad)
    assert sp.depth_order(["residual.10", "layer.10.ffn", "residual.2", "layer.2.ffn"]) == \
        ["layer.2.ffn", "layer.10.ffn", "residual.2", "residual.10"]


def test_a_models_spaces_carry_their_widths_heads_and_symmetry():
    model = random_model("gpt2", "causal-lm", seed=1, layers=2, hidden=12, heads=3, ffn=20)
    spaces = spaces_of(model)
    assert list(spaces) == ["layer.0.ffn", "layer.0.attention", "layer.1.ffn", "layer.1.attention",
                            *(f"residual.{n}" for n in range(5))]
    attention = spaces["layer.1.attention"]
    assert (attention.width, attention.heads, attention.head_dim) == (12, 3, 4)
    assert spaces["layer.0.ffn"].width == 20 and spaces["residual.4"].width == 12
    assert attention.allows(sp.HEADS) and not attention.allows(sp.PERMUTATION)
    assert spaces["residual.0"].allows(sp.SHARED) and not spaces["residual.0"].allows(sp.PER_NODE)


def test_fits_tells_each_move_from_the_others():
    space = sp.Space(sp.ATTENTION, 6, layer=0, heads=3)
    assert sp.fits([2, 3, 0, 1, 4, 5], space, sp.HEADS) and not sp.fits([2, 3, 0, 1, 4, 5], space, sp.WITHIN_HEADS)
    assert sp.fits([1, 0, 2, 3, 5, 4], space, sp.WITHIN_HEADS)
    assert not sp.fits([1, 2, 0, 3, 4, 5], space, sp.HEADS)  # head 0 split across heads 0 and 1
    assert sp.fits([1, 2, 0, 3, 4, 5], space, sp.PERMUTATION) and not sp.fits([0, 0, 1, 2, 3, 4], space, sp.PERMUTATION)
    rotary = sp.Space(sp.ATTENTION, 6, layer=0, heads=3, fixed=(0,))
    grouped = sp.Space(sp.ATTENTION, 8, layer=0, heads=4, kv_groups=2)  # heads 0, 1 share a key/value head; 2, 3 another
    assert sp.fits([6, 7, 4, 5, 0, 1, 2, 3], grouped, sp.HEADS)  # the groups swapped, and heads inside the first
    assert not sp.fits([4, 5, 2, 3, 0, 1, 6, 7], grouped, sp.HEADS)  # head 1 ↔ head 2 crosses groups
    assert not sp.fits([1, 0, 2, 3, 4, 5, 6, 7], grouped, sp.HEADS)  # head 0 reordered, head 1 of its group not
    assert sp.fits([1, 0, 3, 2, 4, 5, 6, 7], grouped, sp.WITHIN_HEADS)
    assert sp.fits([2, 3, 0, 1, 4, 5], rotary, sp.HEADS) and not sp.fits([1, 0, 2, 3, 4, 5], rotary, sp.WITHIN_HEADS)


@pytest.mark.parametrize("mode", list(ATTENTION.values()), ids=list(ATTENTION))
def test_each_attention_mode_solves_to_the_move_it_declares(mode):
    """On a score whose best assignment crosses heads, head-aware modes still keep heads whole,
    monotonic keeps head j with head j, and ignore-heads (not function-preserving) crosses."""
    rng = np.random.default_rng(0)
    space = sp.Space(sp.ATTENTION, 12, layer=0, heads=3, admits=sp.ADMITS[sp.ATTENTION])
    best = rng.permutation(12)
    score = rng.random((12, 12)) * 0.1
    score[np.arange(12), best] = 1.0
    assert not sp.fits(best, space, sp.HEADS)
    found = mode.solve(Problem(space, lambda: score)).perm
    assert sp.fits(found, space, mode.move)
    assert mode.preserves_function == space.allows(mode.move)
    if mode.move == sp.PERMUTATION:
        np.testing.assert_array_equal(found, best)


def test_head_perm_keeps_fixed_positions_in_place_and_still_matches_heads_on_them():
    """Rotary-style fixed positions (0 and 1 of each head) never move, and a planted head
    shuffle is still found."""
    rng = np.random.default_rng(5)
    space = sp.Space(sp.ATTENTION, 16, layer=0, heads=4, fixed=(0, 1), admits=sp.ADMITS[sp.ATTENTION])
    planted = random_move(space, sp.HEADS, rng)
    planted = np.concatenate([h * 4 + np.r_[0, 1, 2 + rng.permutation(2)] for h in planted.reshape(4, 4)[:, 0] // 4])
    assert sp.fits(planted, space, sp.HEADS)
    score = rng.random((16, 16)) * 0.1
    score[np.arange(16), planted] = 1.0
    target = planted[0] // 4 * 4  # where A's head 0 goes
    score[0, target + 1] = score[1, target] = 5.0  # a tempting swap of its two fixed positions
    found = ATTENTION["heads"].solve(Problem(space, lambda: score)).perm
    assert sp.fits(found, space, sp.HEADS)
    np.testing.assert_array_equal(found, planted)


@pytest.mark.parametrize("mode", list(RESIDUAL.values()), ids=list(RESIDUAL))
def test_each_residual_mode_claims_what_its_move_implies(mode):
    space = sp.Space(sp.RESIDUAL, 6, admits=sp.ADMITS[sp.RESIDUAL])
    assert mode.preserves_function == space.allows(mode.move)
    assert (mode.score is not None) == (mode.move == sp.SHARED)  # a shared permutation is solved on a correlation


MOVES = [(sp.FFN, sp.PERMUTATION), (sp.ATTENTION, sp.HEADS), (sp.ATTENTION, sp.WITHIN_HEADS), (sp.ATTENTION, sp.PERMUTATION),
         (sp.RESIDUAL, sp.SHARED), (sp.RESIDUAL, sp.PER_NODE)]


@pytest.mark.parametrize("family", ["bert", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("kind,move", MOVES, ids=[f"{k}-{m}" for k, m in MOVES])
def test_a_move_keeps_the_function_exactly_when_the_space_admits_it(family, kind, move):
    """Only the spaces of `kind` move (the rest stay in place), so each rule is tested alone:
    an admitted move computes B's logits; a forbidden one (across heads, node by node) does not."""
    model = random_model(family, LM[family], seed=3, layers=2, hidden=16, heads=4, ffn=24)
    fam, head = head_for(model)
    spaces = spaces_of(model)
    rng = np.random.default_rng(4)
    perms = {name: identity(s.width) for name, s in spaces.items() if s.kind != sp.RESIDUAL}
    perms[sp.STREAM] = identity(model.config.hidden_size)
    for name, space in spaces.items():
        if space.kind == kind and space.kind != sp.RESIDUAL:
            perms[name] = random_move(space, move, rng)
    if kind == sp.RESIDUAL and move == sp.SHARED:
        perms[sp.STREAM] = random_move(sp.stream(spaces), move, rng)
    elif kind == sp.RESIDUAL:
        perms.update({name: random_move(s, move, rng) for name, s in spaces.items() if s.kind == sp.RESIDUAL})
    matching = Matching(perms, {}, {"ffn": True, "attention": "heads", "residual": "first", "absolute": False})
    b_prime = permuted_model(model, fam, head, 2, matching)
    ids, mask = random_ids(vocab=model.config.vocab_size)
    diff = max_abs_logit_diff(b_prime, model, ids, mask)
    admitted = next(s for s in spaces.values() if s.kind == kind).allows(move)
    assert (diff < 1e-4) if admitted else (diff > 1e-2), f"{kind} {move}: max |Δlogit| {diff:.2e}"


def test_every_mode_and_matcher_is_offered_by_the_settings_table():
    """A new registry entry reaches the CLI and the app's menus without other code."""
    assert BY_NAME["attention"].choices == tuple(ATTENTION)
    assert BY_NAME["residual"].choices == tuple(RESIDUAL)
    assert BY_NAME["matcher"].choices == tuple(MATCHERS)
    assert all(m.label == BY_NAME["matcher"].label_of(name) for name, m in MATCHERS.items())

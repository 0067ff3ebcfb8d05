"""How alike two matchings are: per space, per head assignment, per kind of space; and the
activation and weight matchers of one pair side by side (docs/method.md §9).

Every permutation is in the report's convention, `perm[i] = j`: A's unit i ↔ B's unit j (and a
head assignment `assignment[j] = k`: A's head j ↔ B's head k). Two matchings agree on A's unit
i when they pair it with the same unit of B, so agreement is the fraction of i with
p[i] = q[i]. Mixing conventions (comparing p with the inverse of q) would count something else
entirely; both matchers return the same convention, and the tests check it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import spaces as sp
from .evaluation import barrier

KINDS = (sp.FFN, sp.ATTENTION, sp.RESIDUAL)


def unit_agreement(p, q) -> float:
    """Fraction of A's units that `p` and `q` pair with the same unit of B."""
    p, q = np.asarray(p), np.asarray(q)
    if p.shape != q.shape:
        raise ValueError(f"permutations of different sizes ({p.size} and {q.size})")
    return float(np.mean(p == q)) if p.size else 1.0


def space_kind(space: str) -> str:
    """'ffn', 'attention' or 'residual' for a space name of a Matching."""
    return sp.parse(space).kind


def space_agreement(perms_a: dict, perms_b: dict) -> dict[str, float]:
    """Agreement of every space two permutation dicts (Matching.permutations) share."""
    return {space: unit_agreement(perms_a[space], perms_b[space]) for space in perms_a if space in perms_b}


def head_agreement(heads_a: dict, heads_b: dict) -> dict[int, float]:
    """Per layer, the fraction of A's heads two head assignments (layer → assignment array)
    send to the same B head; only layers both have."""
    return {layer: unit_agreement(heads_a[layer], heads_b[layer]) for layer in heads_a if layer in heads_b}


def by_kind(agreement: dict[str, float]) -> dict[str, float]:
    """The mean agreement over the spaces of each kind present."""
    out = {}
    for kind in KINDS:
        values = [v for space, v in agreement.items() if space_kind(space) == kind]
        if values:
            out[kind] = float(np.mean(values))
    return out


def assignments(matching) -> dict[int, np.ndarray]:
    """layer → head assignment of a Matching (layers it matched heads in)."""
    return {layer: np.asarray(h.assignment) for layer, h in matching.heads.items()}


def compare_matchers(pipeline, settings) -> dict:
    """The activation and the weight matching of `pipeline`'s pair under `settings`' merge
    modes: per-space agreement, head assignments side by side, and the barriers of vanilla
    averaging and of both permuted paths (the settings' evaluation data and λ grid)."""
    from .settings import ACTIVATIONS, WEIGHTS

    by_activations, by_weights = replace(settings, matcher=ACTIVATIONS), replace(settings, matcher=WEIGHTS)
    m_act, m_w = pipeline.matching(by_activations), pipeline.matching(by_weights)
    losses = lambda s, which: [p["loss"] for p in pipeline.curve(s, which)]  # noqa: E731
    agreement = space_agreement(m_act.permutations, m_w.permutations)
    heads_act, heads_w = assignments(m_act), assignments(m_w)
    heads_alike = head_agreement(heads_act, heads_w)
    return {
        "convention": "perm[i] = j: A's unit i <-> B's unit j; agreement = fraction of A's units both matchers pair with the same B unit",
        "agreement": agreement,
        "agreement_by_kind": by_kind(agreement),
        "head_assignment": {
            sp.layer_name(layer): {"activations": [int(x) for x in heads_act[layer]], "weights": [int(x) for x in heads_w[layer]],
                               "agreement": heads_alike[layer]}
            for layer in sorted(heads_alike)
        },
        "barrier": {
            "vanilla": barrier(losses(by_activations, "vanilla")),
            "activations": barrier(losses(by_activations, "permuted")),
            "weights": barrier(losses(by_weights, "permuted")),
        },
        "weights": {
            "matching": dict(m_w.info),
            "permutations": {k: [int(x) for x in v] for k, v in m_w.permutations.items()},
        },
    }

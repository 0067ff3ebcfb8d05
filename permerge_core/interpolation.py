"""θ(λ) = λ·θ_A + (1−λ)·θ_B′, written in place into one preallocated model.

No reloading, no copies per λ: each point costs one fused multiply-add per parameter,
next to nothing beside the forward pass that follows. The formula is exact at the ends
(1·a + 0·b = a, 0·a + 1·b = b), so λ=1 is bitwise A and λ=0 bitwise B′; nothing is scaled.

B′ is never held as a model of its own: given the permutation plan, each point gathers B's
tensors through the permutations straight into the working model (B′[..i..] = B[..perm[i]..]).
That is one model less in memory (438 MB for BERT-base) for a gather per point, which costs a
few percent of the forward pass that follows (docs/history.md).

The working model is a copy of A that holds, as a parameter of its own, every tensor that
either end holds as one (`working_model`): where one checkpoint ties its head to the word
embeddings and the other does not, θ(λ)'s head is λ·(A's head) + (1−λ)·(B′'s head), which is
not its embeddings, so it cannot be tied. An end that ties the two is read through its alias:
its head is its embedding table.
"""

from __future__ import annotations

import copy

import torch

from .parallel import map_chunks, worker_count
from .permuting import reindex, touches_by_tensor


class Interpolator:
    """Holds the endpoints' parameters and one working model that takes any θ(λ)."""

    def __init__(self, model_a: torch.nn.Module, model_b: torch.nn.Module, work: torch.nn.Module | None = None, plan=None):
        self.work = work if work is not None else working_model(model_a, model_b)
        self.work.eval()
        self._targets = dict(self.work.named_parameters())
        self.set_endpoints(model_a, model_b, plan)

    def set_endpoints(self, model_a: torch.nn.Module, model_b: torch.nn.Module, plan=None) -> None:
        """A and B; `plan` (permuting's [(Touch, perm)]) makes the far end B′ = P(B), else B.
        Each working parameter is read from the ends by name, through a tied alias where an end
        ties it; an end's own parameter that the working model lacks is refused."""
        tensors_a = model_a.state_dict(keep_vars=True)
        tensors_b = model_b.state_dict(keep_vars=True)
        own = {n for n, _ in model_a.named_parameters()} | {n for n, _ in model_b.named_parameters()}
        if not own <= self._targets.keys() or any(n not in tensors_a or n not in tensors_b for n in self._targets):
            raise ValueError("the endpoints do not have the working model's parameters")
        gathers = _gathers(model_b, plan) if plan is not None else {}
        pairs = [(self._targets[n], tensors_a[n].detach(), tensors_b[n].detach(), gathers.get(n, ())) for n in self._targets]
        self._device = str(pairs[0][0].device) if pairs else "cpu"
        self._groups = _balanced_groups(pairs, worker_count(self._device))
        self.lam: float | None = None

    def set(self, lam: float) -> torch.nn.Module:
        """Make the working model θ(lam) and return it.

        The parameters are split into groups of about equal size that are filled side by side,
        each on one intra-op thread (`parallel.map_chunks`), not op by op on an OpenMP team:
        after each parallel op, the team's idle thread spins for milliseconds, and in the app
        that spinning (and the team's waits for a thread the browser had preempted) took 6% of
        all CPU time during a new curve (perf). Per θ(λ), measured: default pair 10 to 11 ms
        (7 to 8 ms on the team), BERT-base 0.26 to 0.34 s (0.33 to 0.37 s on the team, 0.38 to
        0.48 s on one thread); bitwise the same parameters."""
        lam = float(lam)

        @torch.no_grad()  # (grad mode is per thread)
        def fill(group):
            for target, a, b, gather in group:
                if gather:
                    reindex(b, gather, out=target)
                    target.mul_(1.0 - lam)
                else:
                    torch.mul(b, 1.0 - lam, out=target)
                target.add_(a, alpha=lam)

        map_chunks(fill, self._groups, self._device)
        self.lam = lam
        return self.work

    def combine(self, weight_a: float, weight_far: float, weight_b: float) -> torch.nn.Module:
        """Make the working model weight_a·A + weight_far·B′ + weight_b·B (B as stored, not
        gathered) and return it: any point of the plane through A, B and B′ (plane.py).

        The far end is filled first and A added last, as in `set`, so (1−λ, λ, 0) gives the
        same θ(λ); a weight of exactly 0 adds nothing, so (0, 0, 1) is bitwise B."""
        weight_a, weight_far, weight_b = float(weight_a), float(weight_far), float(weight_b)

        @torch.no_grad()  # (grad mode is per thread)
        def fill(group):
            for target, a, b, gather in group:
                if gather:
                    reindex(b, gather, out=target)
                    target.mul_(weight_far)
                    if weight_b:
                        target.add_(b, alpha=weight_b)
                else:  # this tensor is the same in B and B′
                    torch.mul(b, weight_far + weight_b, out=target)
                target.add_(a, alpha=weight_a)

        map_chunks(fill, self._groups, self._device)
        self.lam = None
        return self.work


def _balanced_groups(pairs: list, count: int) -> list[list]:
    """`pairs` in at most `count` groups of about equal total size (largest first, each into
    the smallest group so far)."""
    groups: list[list] = [[] for _ in range(max(1, count))]
    sizes = [0] * len(groups)
    for pair in sorted(pairs, key=lambda p: -p[0].numel()):
        k = sizes.index(min(sizes))
        groups[k].append(pair)
        sizes[k] += pair[0].numel()
    return [g for g in groups if g]


def _gathers(model: torch.nn.Module, plan) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """Tensor name → [(axis, index)] from a permutation plan, for every name of `model`'s
    state dict whose parameter the plan moves.

    Tied aliases (decoder ↔ word embeddings) are one parameter, and B′ holds it once: where the
    plan permutes the two names differently (residual mode `sep`), the later name in state-dict
    order wins for both, exactly as when the permuted state dict is loaded
    (`permuting.permuted_model`).
    """
    params = {id(p) for p in model.parameters()}
    state = model.state_dict(keep_vars=True)
    touches = touches_by_tensor(state, plan)
    by_tensor: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for name, tensor in state.items():
        if name in touches:
            if id(tensor) not in params:
                raise ValueError(f"{name} is a buffer, not a parameter: it cannot be interpolated")
            by_tensor[id(tensor)] = touches[name]
    return {name: by_tensor[id(tensor)] for name, tensor in state.items() if id(tensor) in by_tensor}


def working_model(model_a: torch.nn.Module, model_b: torch.nn.Module) -> torch.nn.Module:
    """The model every θ(λ) is written into: a copy of A in which every tensor that either end
    holds as a parameter of its own is one too.

    A checkpoint that ties its head to the word embeddings (GPT-2's `lm_head`, BERT's decoder)
    holds one parameter under two names. When A ties and B does not, the copy gets a head of its
    own (A's embeddings, cloned) and a config that says it is untied, so that θ(λ) can hold
    λ·(A's head, which is A's embeddings) + (1−λ)·(B′'s head), and a merged export reloads as it
    was computed. Both ends tied, or A untied: the copy as it is (a tied B's head is then read
    through its alias, B's embeddings, by `Interpolator.set_endpoints`)."""
    work = copy.deepcopy(model_a)
    own_b = {name for name, _ in model_b.named_parameters()}
    own_work = {name for name, _ in work.named_parameters()}
    aliases = [name for name in work.state_dict(keep_vars=True) if name in own_b and name not in own_work]
    for name in aliases:
        module_name, _, attr = name.rpartition(".")
        module = work.get_submodule(module_name)
        setattr(module, attr, torch.nn.Parameter(getattr(module, attr).detach().clone()))
    if aliases:
        work.config.tie_word_embeddings = False
    return work


def lambda_grid(points: int) -> list[float]:
    """`points` evenly spaced λ in [0, 1], with exact 0.0 and 1.0 at the ends."""
    if points < 2:
        raise ValueError("a λ grid needs at least its two endpoints")
    return [k / (points - 1) for k in range(points)]

"""The whole analysis for one pair, stage by stage, reusing what has not changed.

Stages and what each depends on (and so what invalidates it):

    statistics  ← A, B, matching text, token budget, batch layout, special-token option
    matching    ← statistics + ffn/attention/residual modes + signed/absolute
                  (matcher `weights`: A, B + the modes only; no statistics, no text)
    B′          ← matching
    curves      ← B′ (vanilla: B) + evaluation text, token budget, mask seed, λ grid
    plane       ← A, B, B′ + evaluation text, token budget, mask seed, grid and margin
    spreads     ← the curves' inputs (activations along a path, not losses)
    REPAIR      ← the permuted curve's inputs + matching text, its own token budget
                  (the optional corrected curve, repair.py; only with `repair` on)

Each stage is memoised in memory and, where it is worth it, on disk (`memo.py` over
`cache.py`), so changing only the merge settings or the λ grid never recollects statistics.
The parts that are not stages live beside it: what a point is scored on (`objectives.py`), the
plane's loop (`plane.py`), the files a pipeline writes (`export.py`) and its inputs
(`inputs.py`).
"""

from __future__ import annotations

import time
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Callable


from . import cache as cache_mod
from . import codec
from . import export
from . import plane as plane_mod
from . import repair as repair_mod
from .activations import spread_ratios, unit_spreads
from .checkpoints import Checkpoint, bundled_seeds, load_checkpoint, validate_pair
from .data import length_limit, packed_blocks, read_passages, special_token_ids, text_fingerprint, tokenize
from .errors import PermergeError, SettingsError
from .evaluation import max_abs_logit_diff
from .inputs import Inputs
from .interpolation import Interpolator, lambda_grid
from .matching import Matching
from .modes import MATCHERS
from .memo import JSON, Memo, tensors
from .objectives import data_for, objective_for
from .permuting import plan_for_matching
from .statistics import Statistics, collect_statistics, space_dims
from .report import build_report
from .settings import AlignSettings, TaskSpec
from .tasks import FORMATS, input_texts, is_glue

__all__ = ["AlignSettings", "Inputs", "Pipeline", "TaskSpec", "default_pair"]

ProgressFn = Callable[[str, float, str], None]

MATCHING = tensors(codec.encode_matching, codec.decode_matching, "ignored a damaged cached matching; recomputing")


def _match_passages(path: str, task: TaskSpec | None) -> list[str]:
    """Matching text: plain lines, or the input texts of a labelled file (labels unused)."""
    if task is not None and (Path(path).suffix.lower() in FORMATS or is_glue(path)):
        return [t for t in input_texts(path, task.text_column, task.pair_column) if t.strip()]
    return read_passages(path)


def default_pair() -> tuple[str, str]:
    seeds = bundled_seeds()
    if len(seeds) < 2:
        raise PermergeError(
            "The bundled seed models are missing (assets/models).",
            "Train them with `python -m permerge_core train` (see assets/models/MODEL_CARD.md) or pass --model-a/--model-b.",
        )
    return str(seeds[0]), str(seeds[1])


class Pipeline:
    """One pair of checkpoints and two text sources; computes and caches every stage."""

    def __init__(
        self,
        model_a: str | Checkpoint,
        model_b: str | Checkpoint,
        tokenizer: str | None = None,
        match_data: str | None = None,
        eval_data: str | None = None,
        cache_dir: str | Path | None = "default",
        progress: ProgressFn | None = None,
        device: str = "cpu",
        task: "TaskSpec | None" = None,
    ):
        self.progress = progress or (lambda stage, fraction, message="": None)
        self.progress("load", 0.0, "loading model A")
        self.a = model_a if isinstance(model_a, Checkpoint) else load_checkpoint(model_a, tokenizer, device)
        self.progress("load", 0.5, "loading model B")
        self.b = model_b if isinstance(model_b, Checkpoint) else load_checkpoint(model_b, tokenizer, device)
        validate_pair(self.a, self.b)
        self.progress("load", 1.0, "models loaded")
        self.match_path, self.eval_path, task, self.notes = data_for(self.a, match_data, eval_data, task)
        self.objective = objective_for(self.a, self.eval_path, task)
        self.eval_passages = self.objective.passages
        self.match_passages = _match_passages(self.match_path, task)
        self.cache = cache_mod.DiskCache(cache_mod.default_cache_dir() if cache_dir == "default" else cache_dir)
        self.memo = Memo(self.cache)  # one computation at a time per pipeline (shared across app sessions)
        self._interpolator: Interpolator | None = None

    @classmethod
    def from_inputs(cls, inputs: Inputs, progress: ProgressFn | None = None) -> "Pipeline":
        """The pipeline of `inputs` (the CLI's, the app's and the grid's way to build one)."""
        return cls(**{f.name: getattr(inputs, f.name) for f in dataclass_fields(inputs)}, progress=progress)

    @property
    def lock(self):
        """Held by every stage: whoever drives the working model outside one (an export) holds it too."""
        return self.memo.lock

    # ---- identities ----------------------------------------------------------------------
    def _pair_fields(self) -> dict:
        return {"a": self.a.fingerprint, "b": self.b.fingerprint}

    def stats_fields(self, s: AlignSettings) -> dict:
        return {
            **self._pair_fields(),
            "match_text": text_fingerprint(self.match_passages),
            "match_tokens": s.match_tokens,
            "batch_size": s.batch_size,
            "max_length": s.max_length,
            "drop_special": s.drop_special,
            **self._length_field(s),
        }

    def matching_fields(self, s: AlignSettings) -> dict:
        """What a matching depends on. Weight matching reads no text, so no statistics fields.
        An activation matching (applied by `activations` and `both` alike) keeps the key it had
        before there was a choice of matcher, so earlier cache entries stay valid."""
        merge = s.merge_fields()
        if not MATCHERS[s.matcher].reads_text:
            return {**self._pair_fields(), **merge}
        merge.pop("matcher")
        return {**self.stats_fields(s), **merge}

    def curve_fields(self, s: AlignSettings, which: str) -> dict:
        """A curve depends on the evaluation data and λ grid, and a permuted one on B′ too; the
        REPAIR-corrected one also on the matching text it reads and its budget."""
        fields = {**self.eval_fields(s), "lambdas": s.lambdas, "which": which}
        if which in ("permuted", repair_mod.REPAIRED):
            fields.update(self.matching_fields(s))
        if which == repair_mod.REPAIRED:
            fields["repair"] = self.repair_fields(s)
        return fields

    def repair_fields(self, s: AlignSettings) -> dict:
        """What the REPAIR correction's statistics read: the matching text (never the
        evaluation text) up to the correction's own budget."""
        return {"match_text": text_fingerprint(self.match_passages), "tokens": repair_mod.budget(s.match_tokens),
                "max_length": s.max_length, **self._length_field(s), "version": repair_mod.VERSION}

    def eval_fields(self, s: AlignSettings) -> dict:
        fields = {
            **self._pair_fields(),
            "eval_text": text_fingerprint(self.eval_passages),
            "eval_tokens": s.eval_tokens,
            "max_length": s.max_length,
            "mask_seed": s.mask_seed,
            **self._length_field(s),
        }
        if self.packing_applies:
            fields["eval_packing"] = s.eval_packing
        return fields

    @property
    def packing_applies(self) -> bool:
        """Whether `eval_packing` shapes the evaluation: masked LMs only (classifiers are scored
        per example, decoders always read packed text)."""
        return self.objective.packing_applies

    def sequence_length(self, s: AlignSettings) -> int:
        """The longest sequence made from text: `max_length`, or, for families that read one
        passage or block per sequence, less where the models have fewer positions or A's
        tokenizer takes fewer tokens (full-length blocks would otherwise run past them).
        Decoders keep `max_length` and are refused with a fix if it is too long."""
        if self.a.family.packed_text:
            return s.max_length
        limits = [n for n in (self.a.family.usable_positions(self.a.config), length_limit(self.a.tokenizer)) if n]
        return min([s.max_length, *limits])

    def _length_field(self, s: AlignSettings) -> dict:
        """The cut length, in a stage's key only where it is not `max_length` itself (so that
        the keys of every other run stay as they were)."""
        length = self.sequence_length(s)
        return {"sequence_length": length} if length != s.max_length else {}

    # ---- stages --------------------------------------------------------------------------
    def statistics(self, s: AlignSettings, should_stop=None) -> Statistics:
        s.validate()

        def collect() -> Statistics:
            batches = self._token_batches(self.match_passages, s.match_tokens, s, "matching")
            self.a.model.to(s.device)
            self.b.model.to(s.device)
            stats = collect_statistics(
                self.a.model, self.b.model, self.a.family, self.a.config, batches,
                special_ids=special_token_ids(self.a.tokenizer), drop_special=s.drop_special,
                device=s.device, progress=self.progress, should_stop=should_stop,
            )
            stats.spaces = {k: v.to("cpu") for k, v in stats.spaces.items()}
            return stats

        return self.memo.get("stats", self.stats_fields(s), collect, self._statistics_store(),
                             loaded=lambda stats: self.progress("statistics", 1.0, f"cached ({stats.num_tokens:,} tokens)"))

    def _statistics_store(self):
        """How statistics are kept on disk; reading an entry checks it has every space of these models."""
        decode = lambda *entry: codec.decode_statistics(*entry, self.a.num_layers, space_dims(self.a.config, self.a.family))  # noqa: E731
        return tensors(codec.encode_statistics, decode, "ignored a cached statistics entry with missing parts; recomputing")

    def forget_statistics(self) -> None:
        """Drop the statistics held in memory (not the disk cache), so that the next
        `statistics` call computes or loads them again; the benchmark times repeated passes."""
        self.memo.forget("stats")

    def matching(self, s: AlignSettings) -> Matching:
        s.validate()

        def solve() -> Matching:
            matching = MATCHERS[s.matcher].match(self, s)
            self.progress("matching", 1.0, "done")
            return matching

        return self.memo.get("matching", self.matching_fields(s), solve, MATCHING,
                             loaded=lambda _: self.progress("matching", 1.0, "done"))

    def permutation_plan(self, s: AlignSettings) -> list:
        """Every (tensor, axis, permutation) that turns B into B′. B′ itself is never stored:
        the interpolator gathers B through the plan at each λ (one model less in memory)."""

        def plan() -> list:
            matching = self.matching(s)
            self.progress("permuting", 0.0, "planning the permutations of B")
            steps = plan_for_matching(self.b.family, self.b.head, self.b.num_layers, matching)
            self.progress("permuting", 1.0, "done")
            return steps

        return self.memo.get("plan", self.matching_fields(s), plan)

    def _interpolator_for(self, s: AlignSettings, which: str) -> Interpolator:
        """The one working model, with A and B (vanilla) or A and B′ (permuted) as its ends."""
        return self._interpolator_with(self.permutation_plan(s) if which == "permuted" else None, s)

    def _interpolator_with(self, plan, s: AlignSettings) -> Interpolator:
        """The working model with A and B gathered through `plan` (None: B as trained) as its ends."""
        if self._interpolator is None:
            self._interpolator = Interpolator(self.a.model, self.b.model, plan=plan)
        else:
            self._interpolator.set_endpoints(self.a.model, self.b.model, plan)
        self._interpolator.work.to(s.device)
        return self._interpolator

    def _token_batches(self, passages: list[str], budget: int, s: AlignSettings, what: str):
        """Token batches as the family reads text (one passage per sequence, or packed), checked
        against the models' position table."""
        if self.a.family.packed_text:
            batches = packed_blocks(self.a.tokenizer, passages, budget, s.max_length, s.batch_size)
        else:
            packing = s.eval_packing if what == "evaluation" and self.packing_applies else "lines"
            length = self.sequence_length(s)
            batches = tokenize(self.a.tokenizer, passages, budget, length, s.batch_size, packing=packing)
            if length < s.max_length:
                batches.notes.append(f"Sequences are cut at {length} tokens, the most these models take "
                                     f"(maximum length {s.max_length} was asked).")
        usable = self.a.family.usable_positions(self.a.config)
        longest = max(ids.shape[1] for ids in batches.input_ids)
        if usable is not None and longest > usable:
            raise SettingsError(
                f"The {what} text makes sequences of {longest} tokens, but the models have only {usable} positions.",
                f"Set the maximum length to {usable} or less.",
            )
        return batches

    def eval_set(self, s: AlignSettings):
        """The evaluation batches, as the objective makes them: for a language model (token
        batches, what the head is scored on, or None for a head without a loss); for a
        classifier its labelled batches."""
        return self.memo.get("eval", self.eval_fields(s), lambda: self.objective.batches(s, self._token_batches))

    def evaluate(self, model, s: AlignSettings) -> dict:
        """Loss and metrics of one model on the evaluation data (the objective's)."""
        return self.objective.evaluate(model, self.eval_set(s), s.device)

    def equivalence(self, s: AlignSettings) -> float:
        """max |logit(B′) − logit(B)| on the last (longest) evaluation batch."""

        def check() -> float:
            batches = self.objective.sequences(self.eval_set(s))
            b_prime = self._interpolator_for(s, "permuted").set(0.0)  # θ(0) is bitwise B′
            # (a bare model has no logits: its last hidden state is compared in A's order)
            last = self.matching(s).residual_perm(self.a.family.residual_layout.count(self.a.num_layers) - 1)
            return max_abs_logit_diff(b_prime, self.b.model, batches.input_ids[-1], batches.attention_mask[-1], s.device, hidden_perm=last)

        return self.memo.get("equiv", {**self.matching_fields(s), **self.eval_fields(s)}, check)

    def curve(self, s: AlignSettings, which: str, on_point: Callable[[dict], None] | None = None) -> list[dict]:
        """Loss and accuracy at every λ of the grid, for `vanilla` (A↔B), `permuted` (A↔B′) or
        `permuted_repair` (A↔B′, each θ(λ) REPAIR-corrected, repair.py)."""
        self.objective.require_loss()
        s.validate()
        if which not in ("vanilla", "permuted", repair_mod.REPAIRED):
            raise ValueError(which)
        fields = self.curve_fields(s, which)
        with self.lock:
            cached = self.memo.find("curve", fields, JSON)
            if cached is not None:
                for point in cached:
                    if on_point:
                        on_point(point)
                self.progress(f"loss path ({which})", 1.0, "cached")
                return cached
            if which == repair_mod.REPAIRED:
                points = self.path(s, self.permutation_plan(s), repair_mod.LABEL, on_point, adjust=self.repairer(s))
            else:
                points = self.path(s, self.permutation_plan(s) if which == "permuted" else None, which, on_point)
            return self.memo.put("curve", fields, points, JSON)

    def path(self, s: AlignSettings, plan, label: str, on_point: Callable[[dict], None] | None = None,
             adjust: Callable[[object, float], None] | None = None) -> list[dict]:
        """Loss and metrics at every λ of the grid between A and B gathered through `plan` (None:
        B as trained), not cached: `curve` caches the paths of the settings; the data ablation
        (`ablation.py`) walks one path per matching it studies. `adjust(model, λ)` changes each
        θ(λ) in place before it is evaluated (the REPAIR correction)."""
        self.objective.require_loss()
        with self.lock:
            interpolator = self._interpolator_with(plan, s)
            grid = lambda_grid(s.lambdas)
            points = []
            for k, lam in enumerate(grid):
                self.progress(f"loss path ({label})", k / len(grid), f"λ = {lam:.2f}")
                # θ(1) too is evaluated, not taken from L(A): "λ=1 is A" must be a check that can fail.
                model = interpolator.set(lam)
                if adjust is not None:
                    adjust(model, lam)
                    interpolator.lam = None  # the working model is no longer θ(λ) itself
                point = {"lambda": lam, **self.evaluate(model, s)}
                points.append(point)
                if on_point:
                    on_point(point)
            self.progress(f"loss path ({label})", 1.0, "done")
            return points

    def repair_inputs(self, s: AlignSettings) -> list[dict]:
        """The matching text's first `repair.budget(match_tokens)` tokens, as the family reads
        text, for the REPAIR correction's statistics."""

        def read() -> list[dict]:
            batches = self._token_batches(self.match_passages, repair_mod.budget(s.match_tokens), s, "matching")
            return [dict(input_ids=i, attention_mask=m) for i, m in batches]

        return self.memo.get("repair text", self.repair_fields(s), read)

    def repair_ends(self, s: AlignSettings) -> dict:
        """The endpoints' FFN pre-activation statistics on the correction's text: A's and B′'s."""

        def measure() -> dict:
            inputs, layers = self.repair_inputs(s), range(self.a.num_layers)
            self.progress("REPAIR", 0.0, "statistics of A and B′")
            self.a.model.to(s.device)
            b_prime = self._interpolator_for(s, "permuted").set(0.0)  # θ(0) is bitwise B′
            return {
                "a": repair_mod.ffn_moments(self.a.model, self.a.family, inputs, layers, s.device),
                "far": repair_mod.ffn_moments(b_prime, self.a.family, inputs, layers, s.device),
            }

        return self.memo.get("repair ends", {**self.matching_fields(s), "repair": self.repair_fields(s)}, measure)

    def repairer(self, s: AlignSettings) -> Callable[[object, float], None]:
        """adjust(model, λ) for `path`: the REPAIR correction of θ(λ) (repair.py)."""
        ends, inputs = self.repair_ends(s), self.repair_inputs(s)

        def adjust(model, lam: float) -> None:
            repair_mod.repair(model, self.a.family, self.a.num_layers, inputs, lam, ends, s.device)

        return adjust

    def merged_model(self, s: AlignSettings, lam: float, repair: bool = False):
        """The working model made θ(lam) between A and B′, REPAIR-corrected with `repair`. It
        stays so only until the next stage moves it: hold `lock` while it is used."""
        with self.lock:
            adjust = self.repairer(s) if repair else None
            model = self._interpolator_for(s, "permuted").set(lam)
            if adjust is not None:
                adjust(model, lam)
            return model

    def merged_loss(self, s: AlignSettings, lam: float, repair: bool = False) -> dict:
        """Loss and metrics of θ(lam) (A↔B′, REPAIR-corrected with `repair`) on the evaluation
        data: what an exported merged model scores, evaluated, not read off the curve."""
        self.objective.require_loss()
        fields = {**self.curve_fields(s, "permuted"), "lambda": float(lam), "repair": self.repair_fields(s) if repair else None}

        def evaluate() -> dict:
            with self.lock:
                return self.evaluate(self.merged_model(s, lam, repair), s)

        return self.memo.get("merged", fields, evaluate)

    def plane_basis(self, s: AlignSettings) -> plane_mod.Basis:
        """Where A, B and B′ sit relative to each other (PermergeError if they span no plane)."""

        def basis() -> plane_mod.Basis:
            b_prime = self._interpolator_for(s, "permuted").set(0.0)  # θ(0) is bitwise B′
            return plane_mod.basis(self.a.model, self.b.model, b_prime)

        return self.memo.get("basis", self.matching_fields(s), basis)

    def plane_evaluator(self, s: AlignSettings) -> Callable[[float, float, float], dict]:
        """evaluate(α, β, γ): loss and metrics of α·A + β·B′ + γ·B, a point of the plane. The
        working model is set up once here: hold `lock` while evaluating."""
        interpolator = self._interpolator_for(s, "permuted")
        return lambda *weights: self.evaluate(interpolator.combine(*weights), s)

    def plane(self, s: AlignSettings, grid: int = plane_mod.DEFAULT_GRID, margin: float = plane_mod.DEFAULT_MARGIN,
              on_point: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
              axes: tuple[list[float], list[float]] | None = None) -> dict:
        """The loss over a grid of the plane through A, B and B′ (plane.py), filled coarse to
        fine, plus the exact losses at the three models. `on_point` gets the plane so far after
        each point. When `should_stop()` turns true the plane so far is returned (complete:
        False); its points are kept in memory, so the next call goes on from there. `axes`
        replaces the grid's (x, y) values, which `grid` and `margin` give otherwise."""
        return plane_mod.compute_plane(self, s, grid, margin, on_point, should_stop, axes)

    def seconds_per_evaluation(self, s: AlignSettings) -> float:
        """How long one point takes with these settings: θ(½) of the vanilla path formed in the
        working model, then its loss, timed once (a permuted or plane point costs the same but
        for a few percent of gathering). Forming θ counts: it is part of every point."""

        def time_one() -> float:
            interpolator = self._interpolator_for(s, "vanilla")
            self.eval_set(s)  # tokenising is not part of a point
            started = time.perf_counter()
            self.evaluate(interpolator.set(0.5), s)
            return time.perf_counter() - started

        return self.memo.get("timing", {**self.eval_fields(s), "device": s.device}, time_one)

    def activation_spreads(self, s: AlignSettings, which: str, compute: bool = True) -> dict | None:
        """Each FFN intermediate's and residual node's unit spread along a path, relative to
        the interpolation of its endpoints' (activations.py), at every λ of the grid. With
        `compute` False: None unless it is already in memory or on disk."""
        if which not in ("vanilla", "permuted"):
            raise ValueError(which)
        s.validate()
        fields = {**self.curve_fields(s, which), "measure": "unit spread"}
        with self.lock:
            done = self.memo.find("spread", fields, JSON)
            if done is not None or not compute:
                return done
            inputs = self.objective.model_inputs(self.eval_set(s))
            interpolator = self._interpolator_for(s, which)
            grid = lambda_grid(s.lambdas)
            spreads = []
            for k, lam in enumerate(grid):
                self.progress(f"activations ({which})", k / len(grid), f"λ = {lam:.2f}")
                spreads.append(unit_spreads(interpolator.set(lam), self.a.family, self.a.num_layers, inputs, s.device))
            self.progress(f"activations ({which})", 1.0, "done")
            return self.memo.put("spread", fields, spread_ratios(spreads, grid), JSON)

    def loss_of_a(self, s: AlignSettings) -> dict:
        """L(A) from A's own model, never from the working model: the report's endpoint, an
        independent check on the curves' θ(1) points (bitwise A, so equal when all is well)."""
        return self.memo.get("loss_a", self.eval_fields(s), lambda: self.evaluate(self.a.model, s))

    # ---- status --------------------------------------------------------------------------
    def stage_status(self, s: AlignSettings) -> dict[str, str]:
        """Where each stage of `s` stands, without computing anything: 'computed' (in
        memory), 'cached' (on disk), 'stale' (computed here, but only for other settings) or
        'missing'. Uses the same keys as the stages themselves (`Memo.state`)."""
        path = lambda which: self.memo.state("curve", self.curve_fields(s, which), JSON, ("which", "lambdas"))  # noqa: E731
        status = {
            "statistics": self.memo.state("stats", self.stats_fields(s), self._statistics_store()),
            "matching": self.memo.state("matching", self.matching_fields(s), MATCHING),
            "vanilla path": path("vanilla"),
            "permuted path": path("permuted"),
        }
        if s.repair:
            status[f"{repair_mod.LABEL} path"] = path(repair_mod.REPAIRED)
        if not MATCHERS[s.matcher].reads_text:  # weight matching needs no statistics
            del status["statistics"]
        return status

    # ---- the whole run -------------------------------------------------------------------
    def run(self, s: AlignSettings, on_point: Callable[[str, dict], None] | None = None) -> dict:
        s.validate()
        self.objective.require_loss()
        stats = self.statistics(s) if MATCHERS[s.matcher].reads_text else None  # weight matching reads no text
        matching = self.matching(s)
        vanilla = self.curve(s, "vanilla", (lambda p: on_point("vanilla", p)) if on_point else None)
        permuted = self.curve(s, "permuted", (lambda p: on_point("permuted", p)) if on_point else None)
        repaired = None
        if s.repair:
            repaired = self.curve(s, repair_mod.REPAIRED, (lambda p: on_point(repair_mod.REPAIRED, p)) if on_point else None)
        report = build_report(self, s, stats, matching, vanilla, permuted, repaired)
        if MATCHERS[s.matcher].compares:
            from .comparison import compare_matchers

            report["comparison"] = compare_matchers(self, s)
        return report

    def save_merged(self, s: AlignSettings, lam: float, out: str | Path, overwrite: bool = False, repair: bool = False) -> Path:
        """Write θ(lam) (A↔B′) as a Hugging Face folder with A's tokenizer (export.py); with
        `repair`, θ(lam) REPAIR-corrected (asked for here, whatever the `repair` setting says:
        the setting adds a curve, it never changes what is exported)."""
        return export.save_merged(self, s, lam, out, overwrite, repair)

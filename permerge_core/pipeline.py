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

Each stage is memoised in memory and, where it is worth it, on disk (`cache.py`), so
changing only the merge settings or the λ grid never recollects statistics.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable


from . import cache as cache_mod
from . import codec
from . import plane as plane_mod
from . import repair as repair_mod
from .activations import spread_ratios, unit_spreads
from .checkpoints import BUNDLED_TASK, Checkpoint, bundled_seeds, is_bundled_classifier, load_checkpoint, validate_pair
from .data import (DEFAULT_EVAL_DATA, DEFAULT_MATCH_DATA, length_limit, packed_blocks, prediction_batches, read_passages, special_token_ids,
                   text_fingerprint, tokenize)
from .errors import PermergeError, SettingsError
from .evaluation import max_abs_logit_diff, mlm_loss
from .interpolation import Interpolator, lambda_grid
from .matching import Matching
from .modes import MATCHERS
from .permuting import plan_for_matching
from .statistics import Statistics, collect_statistics, space_dims
from .report import build_report
from .settings import AlignSettings, TaskSpec
from .tasks import FORMATS, encode, input_texts, is_glue, label_names, load_labelled, task_eval

__all__ = ["AlignSettings", "Pipeline", "TaskSpec", "default_pair"]

ProgressFn = Callable[[str, float, str], None]


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
        classifier = self.a.head.kind == "classification"
        if classifier and eval_data is None and is_bundled_classifier(self.a.path):
            # The bundled fine-tuned pair comes with its task: match on its training texts,
            # evaluate on its held-out split.
            match_data = match_data or str(BUNDLED_TASK / "train.tsv")
            eval_data = str(BUNDLED_TASK / "eval.tsv")
            task = task or TaskSpec()
        self.notes: list[str] = []
        if classifier and match_data is None and eval_data is not None:
            match_data = eval_data  # the task's input texts, as docs/method.md §8 asks
            self.notes.append("matching on the evaluation file's input texts (no separate matching file was given)")
        self.match_path = str(match_data or DEFAULT_MATCH_DATA)
        self.eval_path = str(eval_data or DEFAULT_EVAL_DATA)
        self.task = task if classifier else None
        if classifier:
            if task is None:
                raise SettingsError(
                    f"{self.a.architecture} checkpoints are evaluated on labelled data.",
                    "Give a labelled CSV/TSV/JSON Lines file for evaluation and name its text and label columns.",
                )
            if eval_data is None:
                raise SettingsError("Classifiers need labelled evaluation data; the bundled corpus has none.", "Give a labelled evaluation file.")
            self.labelled = load_labelled(eval_data, task.text_column, task.label_column, task.pair_column, label_names(self.a.config), task.regression or self.a.config.num_labels == 1)
            pairs = self.labelled.pairs or [""] * len(self.labelled.texts)
            # The labels are part of the evaluation data's identity (and so of cache keys).
            self.eval_passages = [f"{t}\t{p}\t{y}" for t, p, y in zip(self.labelled.texts, pairs, self.labelled.labels)]
        else:
            self.labelled = None
            self.eval_passages = read_passages(self.eval_path)
        self.match_passages = _match_passages(self.match_path, task)
        self.cache = cache_mod.DiskCache(cache_mod.default_cache_dir() if cache_dir == "default" else cache_dir)
        self._memo: dict = {}
        self._lock = threading.RLock()  # one computation at a time per pipeline (shared across app sessions)
        self._interpolator: Interpolator | None = None

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
        return self.labelled is None and not self.a.family.packed_text

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
        fields = self.stats_fields(s)
        memo_key = ("stats", json.dumps(fields, sort_keys=True))
        with self._lock:
            if memo_key in self._memo:
                return self._memo[memo_key]
            stats = self._load_stats(fields)
            if stats is None:
                batches = self._token_batches(self.match_passages, s.match_tokens, s, "matching")
                self.a.model.to(s.device)
                self.b.model.to(s.device)
                stats = collect_statistics(
                    self.a.model, self.b.model, self.a.family, self.a.config, batches,
                    special_ids=special_token_ids(self.a.tokenizer), drop_special=s.drop_special,
                    device=s.device, progress=self.progress, should_stop=should_stop,
                )
                stats.spaces = {k: v.to("cpu") for k, v in stats.spaces.items()}
                self._save_stats(fields, stats)
            else:
                self.progress("statistics", 1.0, f"cached ({stats.num_tokens:,} tokens)")
            self._memo[memo_key] = stats
            return stats

    def forget_statistics(self) -> None:
        """Drop the statistics held in memory (not the disk cache), so that the next
        `statistics` call computes or loads them again; the benchmark times repeated passes."""
        with self._lock:
            for key in [k for k in self._memo if k[0] == "stats"]:
                del self._memo[key]

    def _save_stats(self, fields: dict, stats: Statistics) -> None:
        self.cache.save_tensors("stats", fields, *codec.encode_statistics(stats))

    def _load_stats(self, fields: dict) -> Statistics | None:
        entry = self.cache.load_tensors("stats", fields)
        if entry is None:
            return None
        try:
            return codec.decode_statistics(*entry, self.a.num_layers, space_dims(self.a.config, self.a.family))
        except Exception:
            self.cache.events.append("ignored a cached statistics entry with missing parts; recomputing")
            return None

    def matching(self, s: AlignSettings) -> Matching:
        s.validate()
        fields = self.matching_fields(s)
        memo_key = ("matching", json.dumps(fields, sort_keys=True))
        with self._lock:
            if memo_key in self._memo:
                return self._memo[memo_key]
            matching = self._load_matching(fields, s)
            if matching is None:
                matching = MATCHERS[s.matcher].match(self, s)
                self._save_matching(fields, matching)
            self.progress("matching", 1.0, "done")
            self._memo[memo_key] = matching
            return matching

    def _save_matching(self, fields: dict, m: Matching) -> None:
        self.cache.save_tensors("matching", fields, *codec.encode_matching(m))

    def _load_matching(self, fields: dict, s: AlignSettings) -> Matching | None:
        entry = self.cache.load_tensors("matching", fields)
        if entry is None:
            return None
        try:
            return codec.decode_matching(*entry)
        except Exception:
            self.cache.events.append("ignored a damaged cached matching; recomputing")
            return None

    def permutation_plan(self, s: AlignSettings) -> list:
        """Every (tensor, axis, permutation) that turns B into B′. B′ itself is never stored:
        the interpolator gathers B through the plan at each λ (one model less in memory)."""
        memo_key = ("plan", json.dumps(self.matching_fields(s), sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                matching = self.matching(s)
                self.progress("permuting", 0.0, "planning the permutations of B")
                self._memo[memo_key] = plan_for_matching(self.b.family, self.b.head, self.b.num_layers, matching)
                self.progress("permuting", 1.0, "done")
            return self._memo[memo_key]

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
        """(token batches, what the head is scored on, or None for a head without a loss)."""
        memo_key = ("eval", json.dumps(self.eval_fields(s), sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                batches = self._token_batches(self.eval_passages, s.eval_tokens, s, "evaluation")
                prediction = self.a.head.prediction
                scored = None if prediction is None else prediction_batches(
                    prediction.targets, batches, self.a.tokenizer, self.a.config.vocab_size, seed=s.mask_seed)
                self._memo[memo_key] = (batches, scored)
            return self._memo[memo_key]

    def _require_mlm(self) -> None:
        if self.a.head.prediction is None and self.a.head.kind != "classification":
            raise SettingsError(
                f"Loss paths are computed for language-model heads and classifiers; these are {self.a.architecture}.",
                "Use language-model checkpoints (e.g. BertForMaskedLM, GPT2LMHeadModel) or sequence classifiers with labelled data.",
            )

    def equivalence(self, s: AlignSettings) -> float:
        """max |logit(B′) − logit(B)| on the last (longest) evaluation batch."""
        fields = {**self.matching_fields(s), **self.eval_fields(s)}
        memo_key = ("equiv", json.dumps(fields, sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                if self.labelled is not None:
                    batches = self.task_batches(s)
                else:
                    batches, _ = self.eval_set(s)
                b_prime = self._interpolator_for(s, "permuted").set(0.0)  # θ(0) is bitwise B′
                # (a bare model has no logits: its last hidden state is compared in A's order)
                last = self.matching(s).residual_perm(self.a.family.residual_layout.count(self.a.num_layers) - 1)
                self._memo[memo_key] = max_abs_logit_diff(b_prime, self.b.model, batches.input_ids[-1], batches.attention_mask[-1], s.device, hidden_perm=last)
            return self._memo[memo_key]

    def curve(self, s: AlignSettings, which: str, on_point: Callable[[dict], None] | None = None) -> list[dict]:
        """Loss and accuracy at every λ of the grid, for `vanilla` (A↔B), `permuted` (A↔B′) or
        `permuted_repair` (A↔B′, each θ(λ) REPAIR-corrected, repair.py)."""
        self._require_mlm()
        s.validate()
        if which not in ("vanilla", "permuted", repair_mod.REPAIRED):
            raise ValueError(which)
        fields = self.curve_fields(s, which)
        memo_key = ("curve", json.dumps(fields, sort_keys=True))
        with self._lock:
            cached = self._memo.get(memo_key) or self.cache.load_json("curve", fields)
            if cached is not None:
                self._memo[memo_key] = cached
                for point in cached:
                    if on_point:
                        on_point(point)
                self.progress(f"loss path ({which})", 1.0, "cached")
                return cached
            if which == repair_mod.REPAIRED:
                points = self.path(s, self.permutation_plan(s), repair_mod.LABEL, on_point, adjust=self.repairer(s))
            else:
                points = self.path(s, self.permutation_plan(s) if which == "permuted" else None, which, on_point)
            self._memo[memo_key] = points
            self.cache.save_json("curve", fields, points)
            return points

    def path(self, s: AlignSettings, plan, label: str, on_point: Callable[[dict], None] | None = None,
             adjust: Callable[[object, float], None] | None = None) -> list[dict]:
        """Loss and metrics at every λ of the grid between A and B gathered through `plan` (None:
        B as trained), not cached: `curve` caches the paths of the settings; the data ablation
        (`ablation.py`) walks one path per matching it studies. `adjust(model, λ)` changes each
        θ(λ) in place before it is evaluated (the REPAIR correction)."""
        self._require_mlm()
        with self._lock:
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
                point = {"lambda": lam, **self._evaluate(model, s)}
                points.append(point)
                if on_point:
                    on_point(point)
            self.progress(f"loss path ({label})", 1.0, "done")
            return points

    def repair_inputs(self, s: AlignSettings) -> list[dict]:
        """The matching text's first `repair.budget(match_tokens)` tokens, as the family reads
        text, for the REPAIR correction's statistics."""
        memo_key = ("repair text", json.dumps(self.repair_fields(s), sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                batches = self._token_batches(self.match_passages, repair_mod.budget(s.match_tokens), s, "matching")
                self._memo[memo_key] = [dict(input_ids=i, attention_mask=m) for i, m in batches]
            return self._memo[memo_key]

    def repair_ends(self, s: AlignSettings) -> dict:
        """The endpoints' FFN pre-activation statistics on the correction's text: A's and B′'s."""
        fields = {**self.matching_fields(s), "repair": self.repair_fields(s)}
        memo_key = ("repair ends", json.dumps(fields, sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                inputs, layers = self.repair_inputs(s), range(self.a.num_layers)
                self.progress("REPAIR", 0.0, "statistics of A and B′")
                self.a.model.to(s.device)
                b_prime = self._interpolator_for(s, "permuted").set(0.0)  # θ(0) is bitwise B′
                self._memo[memo_key] = {
                    "a": repair_mod.ffn_moments(self.a.model, self.a.family, inputs, layers, s.device),
                    "far": repair_mod.ffn_moments(b_prime, self.a.family, inputs, layers, s.device),
                }
            return self._memo[memo_key]

    def repairer(self, s: AlignSettings) -> Callable[[object, float], None]:
        """adjust(model, λ) for `path`: the REPAIR correction of θ(λ) (repair.py)."""
        ends, inputs = self.repair_ends(s), self.repair_inputs(s)

        def adjust(model, lam: float) -> None:
            repair_mod.repair(model, self.a.family, self.a.num_layers, inputs, lam, ends, s.device)

        return adjust

    def plane_basis(self, s: AlignSettings) -> plane_mod.Basis:
        """Where A, B and B′ sit relative to each other (PermergeError if they span no plane)."""
        memo_key = ("basis", json.dumps(self.matching_fields(s), sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                b_prime = self._interpolator_for(s, "permuted").set(0.0)  # θ(0) is bitwise B′
                self._memo[memo_key] = plane_mod.basis(self.a.model, self.b.model, b_prime)
            return self._memo[memo_key]

    def plane(self, s: AlignSettings, grid: int = plane_mod.DEFAULT_GRID, margin: float = plane_mod.DEFAULT_MARGIN,
              on_point: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
              axes: tuple[list[float], list[float]] | None = None) -> dict:
        """The loss over a grid of the plane through A, B and B′ (plane.py), filled coarse to
        fine, plus the exact losses at the three models. `on_point` gets the plane so far after
        each point. When `should_stop()` turns true the plane so far is returned (complete:
        False); its points are kept in memory, so the next call goes on from there. `axes`
        replaces the grid's (x, y) values, which `grid` and `margin` give otherwise."""
        self._require_mlm()
        s.validate()
        basis = self.plane_basis(s)
        xs, ys = axes if axes is not None else plane_mod.axes(basis, grid, margin)
        shape = {"x": list(xs), "y": list(ys)} if axes is not None else {"grid": grid, "margin": margin}
        fields = {**self.eval_fields(s), **self.matching_fields(s), "plane": shape}
        memo_key = ("plane", json.dumps(fields, sort_keys=True))
        with self._lock:
            done = self._memo.get(memo_key) or self.cache.load_json("plane", fields)
            if done is not None:
                self._memo[memo_key] = done
                self.progress("plane", 1.0, "cached")
                if on_point:
                    on_point(done)
                return done
            cells = self._memo.setdefault(("plane cells", memo_key[1]), {})  # what an interrupted run left
            points = self._memo.get(("plane points", memo_key[1]))
            interpolator = self._interpolator_for(s, "permuted")
            order = plane_mod.fill_order(len(xs), len(ys))
            for k, (i, j) in enumerate(order):
                if should_stop is not None and should_stop():
                    return plane_mod.assemble(xs, ys, cells, basis, points)
                if points is None:  # the three models first: a partial plane has its colour scale's reference
                    self.progress("plane", 0.0, "the three models")
                    at = plane_mod.point_coordinates(basis)
                    exact = {
                        "a": self.loss_of_a(s),  # A's own model
                        "b": self._evaluate(interpolator.combine(0.0, 0.0, 1.0), s),  # bitwise B
                        "b_prime": self._evaluate(interpolator.combine(0.0, 1.0, 0.0), s),  # bitwise B′
                    }
                    points = self._memo[("plane points", memo_key[1])] = {n: {"x": at[n][0], "y": at[n][1], **v} for n, v in exact.items()}
                if (i, j) in cells:
                    continue
                self.progress("plane", k / len(order), f"point {k + 1} of {len(order)}")
                cells[(i, j)] = self._evaluate(interpolator.combine(*plane_mod.coefficients(xs[i], ys[j], basis.x_b)), s)
                if on_point:
                    on_point(plane_mod.assemble(xs, ys, cells, basis, points))
            result = plane_mod.assemble(xs, ys, cells, basis, points)
            self._memo[memo_key] = result
            self._memo.pop(("plane cells", memo_key[1]), None)
            self._memo.pop(("plane points", memo_key[1]), None)
            self.cache.save_json("plane", fields, result)
            if on_point:
                on_point(result)
            return result

    def seconds_per_evaluation(self, s: AlignSettings) -> float:
        """How long one model's loss takes with these settings, timed once on θ(½) of the
        vanilla path (a permuted point costs the same but for a few percent of gathering)."""
        memo_key = ("timing", json.dumps({**self.eval_fields(s), "device": s.device}, sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                model = self._interpolator_for(s, "vanilla").set(0.5)
                if self.labelled is None:  # tokenising is not part of a point
                    self.eval_set(s)
                else:
                    self.task_batches(s)
                started = time.perf_counter()
                self._evaluate(model, s)
                self._memo[memo_key] = time.perf_counter() - started
            return self._memo[memo_key]

    def activation_spreads(self, s: AlignSettings, which: str, compute: bool = True) -> dict | None:
        """Each FFN intermediate's and residual node's unit spread along a path, relative to
        the interpolation of its endpoints' (activations.py), at every λ of the grid. With
        `compute` False: None unless it is already in memory or on disk."""
        if which not in ("vanilla", "permuted"):
            raise ValueError(which)
        s.validate()
        fields = {**self.curve_fields(s, which), "measure": "unit spread"}
        memo_key = ("spread", json.dumps(fields, sort_keys=True))
        with self._lock:
            done = self._memo.get(memo_key) or self.cache.load_json("spread", fields)
            if done is None and not compute:
                return None
            if done is None:
                if self.labelled is not None:
                    b = self.task_batches(s)
                    inputs = [dict(input_ids=i, attention_mask=m, token_type_ids=t) for i, m, t in zip(b.input_ids, b.attention_mask, b.token_type_ids)]
                else:
                    inputs = [dict(input_ids=i, attention_mask=m) for i, m in self.eval_set(s)[0]]
                interpolator = self._interpolator_for(s, which)
                grid = lambda_grid(s.lambdas)
                spreads = []
                for k, lam in enumerate(grid):
                    self.progress(f"activations ({which})", k / len(grid), f"λ = {lam:.2f}")
                    spreads.append(unit_spreads(interpolator.set(lam), self.a.family, self.a.num_layers, inputs, s.device))
                self.progress(f"activations ({which})", 1.0, "done")
                done = spread_ratios(spreads, grid)
                self.cache.save_json("spread", fields, done)
            self._memo[memo_key] = done
            return done

    def _evaluate(self, model, s: AlignSettings) -> dict:
        """Loss and metrics of one model on the evaluation data: masked-LM or task."""
        if self.labelled is not None:
            result = task_eval(model, self.task_batches(s), s.device)
            return {"loss": result.loss, **result.metrics}
        _, masked = self.eval_set(s)
        result = mlm_loss(model, self.a.head.mlm_module, masked, s.device)
        return {"loss": result.loss, "accuracy": result.accuracy}

    def task_batches(self, s: AlignSettings):
        memo_key = ("task", json.dumps(self.eval_fields(s), sort_keys=True))
        if memo_key not in self._memo:
            self._memo[memo_key] = encode(self.a.tokenizer, self.labelled, None, s.max_length, s.batch_size)
        return self._memo[memo_key]

    def loss_of_a(self, s: AlignSettings) -> dict:
        """L(A) from A's own model, never from the working model: the report's endpoint, an
        independent check on the curves' θ(1) points (bitwise A, so equal when all is well)."""
        memo_key = ("loss_a", json.dumps(self.eval_fields(s), sort_keys=True))
        with self._lock:
            if memo_key not in self._memo:
                self._memo[memo_key] = self._evaluate(self.a.model, s)
            return self._memo[memo_key]

    # ---- status --------------------------------------------------------------------------
    def stage_status(self, s: AlignSettings) -> dict[str, str]:
        """Where each stage of `s` stands, without computing anything: 'computed' (in
        memory), 'cached' (on disk), 'stale' (computed here, but only for other settings) or
        'missing'. Uses the same keys as the stages themselves."""
        with self._lock:
            memo_keys = list(self._memo)
        held = [(kind, json.loads(key)) for kind, key in memo_keys if isinstance(key, str) and key.startswith("{")]

        def state(kind: str, fields: dict, suffix: str, same: tuple = ()) -> str:
            if (kind, json.dumps(fields, sort_keys=True)) in memo_keys:
                return "computed"
            if self.cache.has(kind, fields, suffix):
                return "cached"
            if any(k == kind and all(f.get(x) == fields.get(x) for x in same) for k, f in held):
                return "stale"
            return "missing"

        status = {
            "statistics": state("stats", self.stats_fields(s), ".safetensors"),
            "matching": state("matching", self.matching_fields(s), ".safetensors"),
            "vanilla path": state("curve", self.curve_fields(s, "vanilla"), ".json", ("which", "lambdas")),
            "permuted path": state("curve", self.curve_fields(s, "permuted"), ".json", ("which", "lambdas")),
        }
        if s.repair:
            status[f"{repair_mod.LABEL} path"] = state("curve", self.curve_fields(s, repair_mod.REPAIRED), ".json", ("which", "lambdas"))
        if not MATCHERS[s.matcher].reads_text:  # weight matching needs no statistics
            del status["statistics"]
        return status

    # ---- the whole run -------------------------------------------------------------------
    def run(self, s: AlignSettings, on_point: Callable[[str, dict], None] | None = None) -> dict:
        s.validate()
        self._require_mlm()
        stats = self.statistics(s) if MATCHERS[s.matcher].reads_text else None  # weight matching reads no text
        matching = self.matching(s)
        vanilla = self.curve(s, "vanilla", (lambda p: on_point("vanilla", p)) if on_point else None)
        permuted = self.curve(s, "permuted", (lambda p: on_point("permuted", p)) if on_point else None)
        repaired = None
        if s.repair:
            repaired = self.curve(s, repair_mod.REPAIRED, (lambda p: on_point(repair_mod.REPAIRED, p)) if on_point else None)
        if self.labelled is not None:
            report = build_report(self, s, stats, matching, vanilla, permuted, self.task_batches(s), None, repaired)
        else:
            batches, masked = self.eval_set(s)
            report = build_report(self, s, stats, matching, vanilla, permuted, batches, masked, repaired)
        if MATCHERS[s.matcher].compares:
            from .comparison import compare_matchers

            report["comparison"] = compare_matchers(self, s)
        return report

    def save_merged(self, s: AlignSettings, lam: float, out: str | Path, overwrite: bool = False, repair: bool = False) -> Path:
        """Write θ(lam) (A↔B′) as a Hugging Face folder with A's tokenizer; with `repair`, θ(lam)
        REPAIR-corrected (asked for here, whatever the `repair` setting says: the setting adds a
        curve, it never changes what is exported)."""
        if not 0.0 <= lam <= 1.0:
            raise SettingsError(f"λ = {lam} is outside [0, 1].", "Choose λ between 0 (B′) and 1 (A).")
        out = Path(out).expanduser()
        if out.exists() and not out.is_dir():
            raise SettingsError(f"{out} exists and is a file.", "Choose a folder path for the merged model.")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise SettingsError(f"{out} is not empty; refusing to overwrite it.", "Choose an empty or new folder, or allow overwriting (--overwrite).")
        with self._lock:
            adjust = self.repairer(s) if repair else None
            model = self._interpolator_for(s, "permuted").set(lam)
            if adjust is not None:
                adjust(model, lam)
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            try:
                model.save_pretrained(staging)
                self.a.tokenizer.save_pretrained(staging)
                about = {
                    "lambda": lam, "model_a": self.a.describe(), "model_b": self.b.describe(), "settings": asdict(s),
                    "note": "θ(λ) = λ·A + (1−λ)·B′, where B′ is B aligned to A by permutation.",
                }
                if repair:
                    about["note"] += (" Its FFN units are REPAIR-corrected: each unit's mean and std on the matching text are "
                                      "the λ-interpolation of A's and B′'s (docs/method.md §11).")
                    about["repair"] = {"tokens": repair_mod.budget(s.match_tokens), "match_text": text_fingerprint(self.match_passages)}
                (staging / "permerge_merge.json").write_text(json.dumps(about, indent=1))
                if out.exists():
                    shutil.rmtree(out)
                staging.rename(out)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return out

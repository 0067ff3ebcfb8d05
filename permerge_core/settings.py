"""The settings of one analysis, declared once.

Every field of `AlignSettings` carries its app label, help text, bounds and choices (as
dataclass metadata), and `SETTINGS` lists them. The CLI's `align` flags (`cli.py`), the app's
sidebar (`permerge_app/ui.py`), its environment presets and the Export page's equivalent CLI
command (`cli.command_line`) are all generated from this table: adding a setting is one
field here (and its use in the pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import SettingsError
from .modes import ATTENTION, ATTENTION_MODES, MATCHERS, RESIDUAL, RESIDUAL_MODES, help_text, is_function_preserving

# data.PACKINGS, spelt out: importing data.py would load torch for every `--help`.
PACKINGS = ("blocks", "lines")

# The matchers' names (modes.MATCHERS holds what each does; docs/method.md §4 and §9).
ACTIVATIONS, WEIGHTS, BOTH = "activations", "weights", "both"

# Where a setting's control sits in the app's sidebar.
BUDGET = "budget"  # beside the data: token budgets
MERGE = "merge"  # "Merge settings"
ADVANCED = "advanced"  # the "Advanced" expander


def setting(default, label: str, help: str, *, group: str = ADVANCED, choices: tuple = (), labels: dict | None = None,
            minimum: int | None = None, maximum: int | None = None, step: int | None = None, widget: str = "",
            always_in_command: bool = False, noun: str = "", too_small: tuple[str, str] | None = None):
    """A settings field with what the CLI and the app need to show it.

    `widget` picks the app's control (default: number for ints, checkbox for bools, select for
    choices); `always_in_command` spells the value out in the equivalent CLI command even when
    it is the default (merge settings and the λ grid, which define a figure). `noun` names the
    setting in error messages; `too_small` is (problem, fix) for a value under `minimum`."""
    return field(default=default, metadata=dict(
        label=label, help=help, group=group, choices=choices, labels=labels or {}, minimum=minimum, maximum=maximum,
        step=step, widget=widget, always_in_command=always_in_command, noun=noun, too_small=too_small,
    ))


@dataclass(frozen=True)
class AlignSettings:
    """Every setting of one analysis. Frozen, so it can key caches."""

    match_tokens: int = setting(65536, "Matching tokens", "Tokens for the activation statistics.", group=BUDGET, minimum=1, step=4096)
    eval_tokens: int = setting(16384, "Eval tokens", "Tokens for the loss along λ (masked LMs; classifiers are evaluated on every labelled example).",
                               group=BUDGET, minimum=1, step=4096)
    batch_size: int = setting(32, "Batch size", "Passages per forward pass.", minimum=1)
    max_length: int = setting(128, "Maximum length", "Tokens per passage; longer passages are cut.", minimum=8)
    ffn: bool = setting(True, "Align FFN units", "Permute each layer's FFN units to match A's.", group=MERGE, widget="toggle", always_in_command=True)
    attention: str = setting("heads", "Attention", "How attention features are matched: " + help_text("attention") + ".", group=MERGE, noun="attention mode",
                             choices=ATTENTION_MODES, labels={m.name: m.label for m in ATTENTION.values()}, always_in_command=True)
    residual: str = setting("first", "Residual stream", "How the residual stream is matched: " + help_text("residual") + ".", group=MERGE, noun="residual mode",
                            choices=RESIDUAL_MODES, labels={m.name: m.label for m in RESIDUAL.values()}, always_in_command=True)
    matcher: str = setting("activations", "Matcher", "How B's units are matched to A's: " + "; ".join(f"{m.name}: {m.summary}" for m in MATCHERS.values()) + ".",
                           group=MERGE, choices=tuple(MATCHERS), labels={m.name: m.label for m in MATCHERS.values()}, always_in_command=True)
    absolute: bool = setting(False, "Correlation", "Match on |correlation| instead of the signed correlation.", group=MERGE,
                             widget="radio", labels={False: "signed", True: "|absolute|"}, always_in_command=True)
    drop_special: bool = setting(False, "Drop [CLS]/[SEP] from statistics", "Leave the special tokens out of the activation statistics.")
    lambdas: int = setting(21, "λ points", "Points on the path from B (λ=0) to A (λ=1); the paper uses 21.", group=MERGE,
                           minimum=2, maximum=41, widget="slider", always_in_command=True,
                           too_small=("{value} λ point(s) cannot make a path.", "Use at least 2 (the endpoints); 21 is the paper's grid."))
    eval_packing: str = setting("blocks", "Evaluation packing",
                                "How masked-LM evaluation text becomes sequences: blocks, the paper's protocol (transformers' run_mlm): "
                                "the text concatenated and cut into max-length blocks, each wrapped in the special tokens; "
                                "lines: each passage its own sequence. Classifiers are evaluated per example, decoders on packed text, either way.",
                                choices=PACKINGS, labels={"blocks": "blocks (the paper's)", "lines": "lines (one passage each)"})
    repair: bool = setting(False, "REPAIR correction (extra curve)",
                           "Also compute 'permuted + REPAIR': at each λ, rescale and shift every FFN unit of θ(λ) through the Linear "
                           "that produces it, so that its mean and std on the matching text are the λ-interpolation of A's and B′'s "
                           "(Jordan et al. 2022). Adds a curve and its barrier; off by default, and never applied to an exported "
                           "model unless asked for there.")
    mask_seed: int = setting(0, "Mask seed", "The masked-LM masks are drawn once from this seed.", minimum=0)
    device: str = setting("cpu", "Device", "Where the models run: cpu or cuda.", choices=("cpu", "cuda"))

    def validate(self) -> None:
        for spec in SETTINGS:
            spec.check(getattr(self, spec.name))
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SettingsError("CUDA was requested but no GPU is available here.", "Use device cpu.")

    @property
    def function_preserving(self) -> bool:
        return is_function_preserving(self.attention, self.residual)

    def merge_fields(self) -> dict:
        return {spec.name: getattr(self, spec.name) for spec in SETTINGS if spec.group == MERGE and spec.name != "lambdas"}


@dataclass(frozen=True)
class Spec:
    """One row of the settings table."""

    name: str
    type: type
    default: object
    label: str
    help: str
    group: str
    choices: tuple
    labels: dict
    minimum: int | None
    maximum: int | None
    step: int | None
    widget: str
    always_in_command: bool
    noun: str
    too_small: tuple[str, str] | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def available_choices(self) -> list:
        """The choices that work on this machine (cuda only with a GPU)."""
        if self.name != "device":
            return list(self.choices)
        import torch

        return [c for c in self.choices if c != "cuda" or torch.cuda.is_available()]

    def label_of(self, value) -> str:
        return self.labels.get(value, str(value))

    def check(self, value) -> None:
        """SettingsError naming the setting and the fix, for a value out of range."""
        noun = self.noun or self.name.replace("_", " ")
        if self.choices and value not in self.choices and not (self.name == "device" and str(value).startswith("cuda:")):
            raise SettingsError(f"Unknown {noun} {value!r}.", f"Use one of: {', '.join(map(str, self.choices))}.")
        if self.minimum is None or value >= self.minimum:
            return
        if self.too_small:
            raise SettingsError(self.too_small[0].format(value=value), self.too_small[1])
        if self.minimum == 1:
            raise SettingsError(f"{noun.capitalize()} must be positive, got {value}.", "Use a positive number.")
        raise SettingsError(f"{noun.capitalize()} must be at least {self.minimum}, got {value}.", f"Use {self.minimum} or more; the default is {self.default}.")


def _spec(f) -> Spec:
    kind = {"int": int, "bool": bool, "str": str, "float": float}[f.type] if isinstance(f.type, str) else f.type
    return Spec(name=f.name, type=kind, default=f.default, **f.metadata)


SETTINGS: tuple[Spec, ...] = tuple(_spec(f) for f in fields(AlignSettings))
BY_NAME = {spec.name: spec for spec in SETTINGS}


@dataclass(frozen=True)
class TaskSpec:
    """Which columns of a labelled file hold the text(s) and the label."""

    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    regression: bool = False

"""Shared Streamlit UI: session state, the sidebar, cached pipelines, progress, errors.

State. Every control lives in `st.session_state` under a fixed key (see `defaults()`), is
initialised once per browser session, and is rendered by `sidebar()` on every page, so the
choices survive page switches and each browser tab has its own. A page that wants to change a
sidebar value (e.g. Seeds opening a pair) puts it in `st.session_state["_pending"]` and
reruns; `init_state()` applies it before the widgets exist.

Caching. A `Pipeline` (two loaded models plus every computed stage) is shared by all sessions
through `st.cache_resource`, keyed by its `Inputs` (the model sources, the tokenizer, the data
files, the cache folder: `inputs_for`, built as the CLI builds them from its flags) *and the
current content signature of their files*; Pipeline is thread-safe. Its stages are memoised inside it and on disk, so a setting change recomputes
only the stages that depend on it.

Progress. The pipeline reports progress through one function that looks up a thread-local
callback; `progress()` installs a callback drawing one bar per stage for the current
session's script thread only, so two tabs computing at once each see their own bars.

Pages. Every page script starts with `ui.page_start()`, and `page_start`'s docstring says
why: a page opened directly (a URL, or AppTest) runs without the frame unless it asks for it.
The folder stays `pages/`, as the product design names it.

Settings. The merge and budget controls are generated from the settings table
(`permerge_core.settings.SETTINGS`) by `setting_control`; add a setting there, not here.

Errors. `PermergeError`s are shown as st.error with the problem and the fix; anything
else as a short message (the traceback goes to the server log, never to the page).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from permerge_app import views
from permerge_core import AlignSettings, Inputs, Pipeline, PermergeError, tasks
from permerge_core.checkpoints import (
    BUNDLED_DECODERS, BUNDLED_MODELS, BUNDLED_TASK, bundled_classifiers, bundled_decoders, bundled_seeds, find_checkpoints,
    is_bundled_classifier, load_checkpoint, read_head,
)
from permerge_core.errors import DataError
from permerge_core.families.schema import CLASSIFICATION
from permerge_core.inputs import cache_folder
from permerge_core.modes import non_preserving
from permerge_core.settings import ADVANCED, BUDGET, MERGE, SETTINGS, TaskSpec
from permerge_core.sources import pair_label, source_signature

log = logging.getLogger("permerge.app")
ROOT = Path(__file__).resolve().parent.parent

# Page files, relative to app.py (st.switch_page and AppTest.switch_page take these).
PAGES = {
    "models": "pages/1_models.py",
    "correlations": "pages/2_correlations.py",
    "heads": "pages/3_heads.py",
    "loss_path": "pages/4_loss_path.py",
    "landscape": "pages/8_landscape.py",
    "export": "pages/5_export.py",
    "seeds": "pages/6_seeds.py",
    "about": "pages/7_about.py",
    "stability": "pages/9_stability.py",
}

PAGE_META = [  # key, title, icon
    ("models", "Models", ":material/compare_arrows:"),
    ("correlations", "Correlations", ":material/grid_on:"),
    ("heads", "Heads", ":material/hub:"),
    ("loss_path", "Loss path", ":material/show_chart:"),
    ("landscape", "Landscape", ":material/landscape:"),
    ("export", "Export", ":material/download:"),
    ("seeds", "Seeds", ":material/apps:"),
    ("stability", "Stability", ":material/stacked_line_chart:"),
    ("about", "About the method", ":material/school:"),
]


def navigation_pages() -> list:
    """The st.Page list of the app; url paths equal the file names without their number."""
    return [st.Page(PAGES[key], title=title, icon=icon, url_path=key, default=(key == "models")) for key, title, icon in PAGE_META]


# Streamlit slides a progress bar to each new value over 0.5 s. A loss path moves its bar at
# every λ point (about every 0.5 s on the default pair), so the bar was always sliding and the
# browser drew frames all the time, on the cores computing the curve: 5.9 to 7.9 CPU-s of
# browser per settings change without this rule, 3.6 to 5.8 with it (docs/history.md).
STYLE = "<style>[data-testid='stProgressBarTrack'] div { transition: none; }</style>"


@contextmanager
def framed():
    """Mark that a page runs inside app.py's frame (sidebar, state, status)."""
    _local.framed = True
    try:
        yield
    finally:
        _local.framed = False


def run_app() -> None:
    """The frame around every page (app.py's body): config, state, navigation, sidebar, the
    page itself with its errors caught, and the status line."""
    st.set_page_config(page_title="permerge", page_icon="🔀", layout="wide")
    st.html(STYLE)  # style only: Streamlit puts it in the page's event container, taking no space
    init_state()
    page = st.navigation(navigation_pages())
    status = st.sidebar.container()  # filled after the page ran, so it shows what the page computed
    sidebar()
    try:
        with framed():
            page.run()
    except Halt:
        pass  # the page already said why it stopped
    except Exception as err:  # never a raw traceback in the page
        show_error(err)
    render_status(status)


def page_start() -> None:
    """First line of every page. Streamlit treats a folder named `pages/` next to the entry
    script as an old-style multipage app until some session calls st.navigation, so a fresh
    server opened directly at a page URL (and every AppTest run of a page) runs the page file
    alone, without the frame. Then run the frame here (it runs this page inside it, once)
    and stop the bare run. No rerun, so a button click that caused this run is not lost."""
    if not getattr(_local, "framed", False):
        run_app()
        st.stop()


DATA_LABELS = {"bundled": "bundled corpus", "upload": "upload", "path": "file path"}
TASK_LABELS = {"bundled": "bundled task", "upload": "upload", "path": "file paths"}
NO_COLUMN = "(none)"
LABELLED_TYPES = ["csv", "tsv", "jsonl", "json"]
UPLOADS = Path(tempfile.gettempdir()) / "permerge-uploads"


class Halt(Exception):
    """Stop the current page quietly: the reason has already been shown."""


# ---- state ---------------------------------------------------------------------------------

def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def defaults() -> dict:
    """Initial value of every control. Environment variables preset them (tests, demos):
    PERMERGE_MODEL_A/B, PERMERGE_MODELS_DIR, PERMERGE_TOKENIZER, PERMERGE_MATCH_DATA,
    PERMERGE_EVAL_DATA, and PERMERGE_<SETTING> for every whole-number setting of the table
    (PERMERGE_MATCH_TOKENS, PERMERGE_EVAL_TOKENS, PERMERGE_LAMBDAS, …)."""
    seeds = bundled_seeds()
    env = os.environ.get
    return {
        "models_dir": env("PERMERGE_MODELS_DIR", str(BUNDLED_MODELS)),
        "model_a": env("PERMERGE_MODEL_A") or (str(seeds[0]) if len(seeds) >= 2 else None),
        "model_b": env("PERMERGE_MODEL_B") or (str(seeds[1]) if len(seeds) >= 2 else None),
        "tokenizer": env("PERMERGE_TOKENIZER", ""),
        "match_source": "path" if env("PERMERGE_MATCH_DATA") else "bundled",
        "match_path": env("PERMERGE_MATCH_DATA", ""),
        "eval_source": "path" if env("PERMERGE_EVAL_DATA") else "bundled",
        "eval_path": env("PERMERGE_EVAL_DATA", ""),
        **{spec.name: _env_int(f"PERMERGE_{spec.name.upper()}", spec.default) if spec.type is int else spec.default for spec in SETTINGS},
        # classifiers: labelled data and its columns
        "task_source": "bundled",
        "task_eval_path": "",
        "task_match_path": "",
        "text_column": "text",
        "pair_column": NO_COLUMN,
        "label_column": "label",
    }


def init_state() -> None:
    """Fill missing keys with defaults, then apply changes a page asked for last run."""
    for key, value in defaults().items():
        st.session_state.setdefault(key, value)
    pending = st.session_state.pop("_pending", None)
    if pending:
        for key, value in pending.items():
            st.session_state[key] = value


def request(page: str | None = None, **values) -> None:
    """Change sidebar values (applied at the start of the next run) and optionally go to a page."""
    st.session_state["_pending"] = {**st.session_state.get("_pending", {}), **values}
    if page:
        st.switch_page(PAGES[page])
    st.rerun()


def _swap() -> None:
    ss = st.session_state
    ss["model_a"], ss["model_b"] = ss.get("model_b"), ss.get("model_a")


# ---- sidebar ---------------------------------------------------------------------------------

@st.cache_data(ttl=10, show_spinner=False)
def _found_checkpoints(folder: str) -> list[str]:
    return [str(p) for p in find_checkpoints(folder)] if folder else []


def models_folder_status(folder: str) -> str:
    """What the models folder field finds, with the fix where it finds nothing."""
    if not folder:
        return "No folder given: the menus list the bundled checkpoints."
    path = Path(folder).expanduser()
    if not path.exists():
        return f"{path} does not exist. Type the path of a folder that holds checkpoint folders (each with config.json and weights)."
    if not path.is_dir():
        return f"{path} is a file, not a folder. Give the folder that holds the checkpoint folders."
    found = len(_found_checkpoints(folder))
    if not found:
        return f"No checkpoint folder (config.json + weights) up to two levels below {path}."
    return f"{found} checkpoint(s) found there."


def model_label(source: str | None) -> str:
    """Short name of a checkpoint for menus: 'seed-0 (bundled)', 'b — /tmp/pair', or the hub id."""
    if not source:
        return "—"
    path = Path(source).expanduser()
    if path.parent.resolve() == BUNDLED_MODELS.resolve():
        return f"{path.name} (bundled)"
    if is_bundled_classifier(path):
        return f"{path.name} (bundled classifier)"
    if path.parent.resolve() == BUNDLED_DECODERS.resolve():
        return f"{path.name} (bundled decoder)"
    if path.is_dir():
        return f"{path.name} — {path.parent}"
    return source


def checkpoint_options() -> list[str]:
    """Bundled seeds, classifiers and decoders, checkpoints found under the models folder, and the current picks."""
    ss = st.session_state
    found = [str(p) for p in bundled_seeds() + bundled_classifiers() + bundled_decoders()] + _found_checkpoints(ss.get("models_dir") or "")
    for current in (ss.get("model_a"), ss.get("model_b")):
        if current:
            found.append(current)
    return list(dict.fromkeys(found))


def sidebar() -> None:
    """Every shared control; their values live in st.session_state under fixed keys."""
    ss = st.session_state
    sb = st.sidebar
    sb.header("Models")
    options = checkpoint_options()
    for key, label in (("model_a", "Model A"), ("model_b", "Model B")):
        sb.selectbox(
            label, options, key=key, accept_new_options=True, format_func=model_label,
            placeholder="pick, or type a folder path or hub id",
            help="A checkpoint folder (config.json + weights) or a Hugging Face hub id. Type to add one.",
        )
    sb.button("⇄ Swap A and B", on_click=_swap, width="stretch")
    with sb.expander("Checkpoint folders"):
        st.text_input("Models folder to list", key="models_dir", help="Checkpoint folders up to two levels below it appear in the model menus.")
        st.caption(models_folder_status(ss.get("models_dir") or ""))
        st.text_input("Tokenizer folder (optional)", key="tokenizer", help="Only if model A's folder has no tokenizer.")
    if len(bundled_seeds()) < 2:
        sb.caption("The bundled seed models are not in assets/models yet: pick two checkpoints above.")

    if head_kind(ss.get("model_a")) == CLASSIFICATION:
        labelled_data_controls(sb)
    else:
        text_data_controls(sb)
    for column, spec in zip(sb.columns(2), settings_in(BUDGET)):
        setting_control(column, spec)
    merge_controls(sb)


def text_data_controls(sb) -> None:
    ss = st.session_state
    sb.header("Data")
    for which, label in (("match", "Matching text"), ("eval", "Evaluation text")):
        sb.radio(label, list(DATA_LABELS), key=f"{which}_source", format_func=DATA_LABELS.get, horizontal=True)
        source = ss.get(f"{which}_source")
        if source == "upload":
            upload = sb.file_uploader(f"{label} file (UTF-8, one passage per line)", key=f"{which}_upload")
            if upload is not None:
                ss[f"{which}_upload_path"] = save_upload(upload.getvalue())
                sb.caption(f"{upload.name}: {upload.size:,} bytes")
            else:
                ss.pop(f"{which}_upload_path", None)
        elif source == "path":
            sb.text_input(f"{label} path", key=f"{which}_path", placeholder="/path/to/text.txt")


def labelled_data_controls(sb) -> None:
    """Classifiers: a labelled evaluation file (and optionally a matching file), and which
    columns hold the text, the second sentence and the label."""
    ss = st.session_state
    sb.header("Labelled data")
    sb.radio("Source", list(TASK_LABELS), key="task_source", format_func=TASK_LABELS.get, horizontal=True,
             help="The bundled task: which text a passage comes from (Bible or Shakespeare), see assets/tasks/README.md.")
    source = ss.get("task_source")
    if source == "upload":
        for which, label in (("eval", "Evaluation file"), ("match", "Matching file (optional)")):
            upload = sb.file_uploader(f"{label}: CSV, TSV or JSON Lines", type=LABELLED_TYPES, key=f"task_{which}_upload")
            if upload is not None:
                ss[f"task_{which}_upload_path"] = save_upload(upload.getvalue(), Path(upload.name).suffix.lower())
                sb.caption(f"{upload.name}: {upload.size:,} bytes")
            else:
                ss.pop(f"task_{which}_upload_path", None)
    elif source == "path":
        sb.text_input("Evaluation file path", key="task_eval_path", placeholder="/path/to/dev.tsv or glue:sst2",
                      help="A local CSV/TSV/JSON Lines file, or a GLUE task by name (glue:TASK[:SPLIT], needs the hub).")
        sb.text_input("Matching file path (optional)", key="task_match_path", placeholder="/path/to/train.tsv",
                      help="Its input texts feed the activation statistics; without one, the evaluation file's texts are used.")
    try:
        eval_path, _ = labelled_paths()
        columns, _ = labelled_preview(eval_path)
    except PermergeError as err:
        sb.caption(f"⚠ {err.problem}")
        return
    for key, guesses in (("text_column", ("text", "sentence", "sentence1", "question")), ("label_column", ("label", "labels", "score"))):
        if ss.get(key) not in columns:
            ss[key] = next((g for g in guesses if g in columns), columns[0])
    if ss.get("pair_column") not in [NO_COLUMN] + columns:
        ss["pair_column"] = next((g for g in ("sentence2", "question2") if g in columns), NO_COLUMN)
    c1, c2 = sb.columns(2)
    c1.selectbox("Text column", columns, key="text_column")
    c2.selectbox("Label column", columns, key="label_column")
    sb.selectbox("Second sentence column", [NO_COLUMN] + columns, key="pair_column", help="For sentence-pair tasks (MRPC, RTE, …).")


def merge_controls(sb) -> None:
    ss = st.session_state
    sb.header("Merge settings")
    for spec in settings_in(MERGE):
        setting_control(sb, spec)
    bad = non_preserving(ss.get("attention"), ss.get("residual"))
    if bad:
        sb.warning(f"{' and '.join(bad)}: not function-preserving. B′ is not the same function as B; the result is an ablation.", icon=":material/warning:")
    with sb.expander("Advanced"):
        for spec in settings_in(ADVANCED):
            setting_control(st, spec)


def settings_in(group: str) -> list:
    return [spec for spec in SETTINGS if spec.group == group]


def setting_control(where, spec) -> None:
    """The control of one row of the settings table, keyed by the setting's name."""
    common = dict(key=spec.name, help=spec.help)
    if spec.choices:
        where.selectbox(spec.label, spec.available_choices(), format_func=spec.label_of, **common)
    elif spec.widget == "toggle":
        where.toggle(spec.label, **common)
    elif spec.widget == "radio":
        where.radio(spec.label, [False, True], horizontal=True, format_func=spec.label_of, **common)
    elif spec.type is bool:
        where.checkbox(spec.label, **common)
    elif spec.widget == "slider":
        where.slider(spec.label, min_value=spec.minimum, max_value=spec.maximum, **common)
    else:
        where.number_input(spec.label, min_value=spec.minimum, step=spec.step or 1, **common)


def save_upload(data: bytes, suffix: str = ".txt") -> str:
    """Store an upload under a content-addressed temp path (the same file → the same path);
    the suffix tells the labelled-data reader the format."""
    UPLOADS.mkdir(parents=True, exist_ok=True)
    path = UPLOADS / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


# ---- settings and pipelines --------------------------------------------------------------------

def settings() -> AlignSettings:
    """The current AlignSettings from the sidebar (SettingsError if out of range)."""
    ss = st.session_state
    s = AlignSettings(**{spec.name: spec.type(ss[spec.name]) for spec in SETTINGS})
    s.validate()
    return s


def data_path(which: str) -> str | None:
    """The text file for 'match' or 'eval': None for the bundled corpus, else a path."""
    ss = st.session_state
    source = ss.get(f"{which}_source", "bundled")
    name = "matching" if which == "match" else "evaluation"
    if source == "upload":
        path = ss.get(f"{which}_upload_path")
        if not path:
            raise DataError(f"No {name} text file has been uploaded yet.", f"Upload a UTF-8 text file in the sidebar, or choose the bundled corpus for {name}.")
        return path
    if source == "path":
        path = (ss.get(f"{which}_path") or "").strip()
        if not path:
            raise DataError(f"No {name} text file path is given.", f"Type the path of a UTF-8 text file in the sidebar, or choose the bundled corpus for {name}.")
        return str(Path(path).expanduser())
    return None


def head_kind(source: str | None) -> str | None:
    """The head's kind (`families.schema`: MLM, CAUSAL_LM, CLASSIFICATION or BASE) for a checkpoint, None if it cannot be read.
    From its config.json: the pipeline loads the model once, and this never loads it a second time."""
    if not source:
        return None
    return _head_kind(source, source_signature(source))


@st.cache_data(max_entries=64, show_spinner=False)
def _head_kind(source: str, signature: str) -> str | None:
    try:
        return read_head(source).kind
    except PermergeError:
        return None


def labelled_paths() -> tuple[str, str | None]:
    """(evaluation file, matching file or None) of the labelled data controls."""
    ss = st.session_state
    source = ss.get("task_source", "bundled")
    if source == "bundled":
        return str(BUNDLED_TASK / "eval.tsv"), str(BUNDLED_TASK / "train.tsv")
    if source == "upload":
        path = ss.get("task_eval_upload_path")
        if not path:
            raise DataError("No labelled evaluation file has been uploaded yet.", "Upload a CSV, TSV or JSON Lines file in the sidebar, or choose the bundled task.")
        return path, ss.get("task_match_upload_path")
    path = (ss.get("task_eval_path") or "").strip()
    if not path:
        raise DataError("No labelled evaluation file path is given.", "Type the path of a CSV, TSV or JSON Lines file in the sidebar, or choose the bundled task.")
    match = (ss.get("task_match_path") or "").strip()
    return str(Path(path).expanduser()), (str(Path(match).expanduser()) if match else None)


def labelled_preview(path: str) -> tuple[list[str], list[dict]]:
    """Column names and the first rows of a labelled file (cached by content signature)."""
    return _labelled_preview(path, source_signature(path))


@st.cache_data(max_entries=16, show_spinner="Reading the labelled file…")
def _labelled_preview(path: str, signature: str) -> tuple[list[str], list[dict]]:
    return tasks.preview(path, rows=8)


def task_spec() -> TaskSpec:
    ss = st.session_state
    pair = ss.get("pair_column")
    return TaskSpec(text_column=ss.get("text_column") or "text", label_column=ss.get("label_column") or "label",
                    pair_column=None if pair in (None, "", NO_COLUMN) else pair)


def inputs_for(model_a: str, model_b: str) -> Inputs:
    """The pipeline inputs of a pair with the sidebar's tokenizer and data: equal to the CLI's
    (`cli.inputs_from_args`) for the same choices, as the command the Export page shows."""
    if head_kind(model_a) == CLASSIFICATION:
        eval_, match = labelled_paths()
        task = task_spec()
    else:
        match, eval_, task = data_path("match"), data_path("eval"), TaskSpec()
    return Inputs(model_a, model_b, tokenizer=st.session_state.get("tokenizer") or None, match_data=match, eval_data=eval_,
                  task=task, cache_dir=cache_folder())


def signatures(inputs: Inputs) -> tuple[str, ...]:
    """The content signatures of the inputs' files: part of every key of what they computed."""
    return tuple(source_signature(x) for x in (inputs.model_a, inputs.model_b, inputs.match_data, inputs.eval_data))


# The pipelines `_pipeline` built that its cache still holds, by the same arguments: lets a
# page ask what a pair has computed without loading its models (see `loaded_pipeline`).
_loaded: "weakref.WeakValueDictionary[tuple, Pipeline]" = weakref.WeakValueDictionary()


@st.cache_resource(max_entries=6, show_spinner="Loading both models…")
def _pipeline(inputs: Inputs, file_signatures: tuple[str, ...]):
    """A shared Pipeline, or the PermergeError that building it raised (also cached: the key
    holds the files' signatures, so fixing a file gives a new key and a new attempt)."""
    try:
        p = Pipeline.from_inputs(inputs, progress=_dispatch)
    except PermergeError as err:
        return err
    _loaded[(inputs, file_signatures)] = p
    return p


def _pipeline_args(model_a: str, model_b: str) -> tuple:
    """The arguments of `_pipeline` for a pair with the sidebar's tokenizer and data."""
    inputs = inputs_for(model_a, model_b)
    return inputs, signatures(inputs)


def loaded_pipeline(model_a: str, model_b: str) -> Pipeline | None:
    """The pair's shared pipeline if this server has it loaded already, else None (loading
    it would cost seconds per pair)."""
    try:
        return _loaded.get(_pipeline_args(model_a, model_b))
    except PermergeError:
        return None


def pipeline_for(model_a: str, model_b: str) -> Pipeline:
    """The shared pipeline for a pair with the sidebar's tokenizer and data (raises PermergeError)."""
    ss = st.session_state
    args = _pipeline_args(model_a, model_b)
    # No progress bars while loading: elements drawn inside a cached function would be replayed
    # by Streamlit on later cache hits, into containers that no longer exist (its spinner shows instead).
    previous, _local.callback = getattr(_local, "callback", None), None
    try:
        result = _pipeline(*args)
    finally:
        _local.callback = previous
    if isinstance(result, PermergeError):
        raise result
    if (model_a, model_b) == (ss.get("model_a"), ss.get("model_b")):
        ss["_current"] = (model_a, model_b, result)  # for the status line
    return result


def missing_models_message() -> None:
    seeds = bundled_seeds()
    st.info(
        "Choose model A and model B in the sidebar: a checkpoint folder (config.json + weights) or a hub id. "
        + ("The bundled seed models are not in `assets/models` yet (they are being trained); "
           "train them with `python -m permerge_core train`, see the README." if len(seeds) < 2 else ""),
        icon=":material/info:",
    )


def current() -> tuple[Pipeline, AlignSettings]:
    """The pipeline and settings of the sidebar, or Halt after showing why there are none."""
    ss = st.session_state
    if not ss.get("model_a") or not ss.get("model_b"):
        missing_models_message()
        raise Halt
    try:
        s = settings()
        p = pipeline_for(ss.model_a, ss.model_b)
    except PermergeError as err:
        show_error(err)
        raise Halt from None
    return p, s


# ---- progress --------------------------------------------------------------------------------------

_local = threading.local()


def _dispatch(stage: str, fraction: float, message: str = "") -> None:
    callback = getattr(_local, "callback", None)
    if callback is not None:
        callback(stage, fraction, message)


@contextmanager
def progress():
    """Show one progress bar per pipeline stage while the block runs; nothing if all is cached."""
    box = st.empty()
    bars: dict = {}
    holder: dict = {}

    def callback(stage: str, fraction: float, message: str = "") -> None:
        if stage not in bars:
            if fraction >= 1.0:  # cached or instant: nothing to watch
                return
            if "c" not in holder:
                holder["c"] = box.container()
            bars[stage] = holder["c"].progress(0.0, text=stage)
        bars[stage].progress(min(max(float(fraction), 0.0), 1.0), text=f"{stage}: {message}" if message else stage)

    previous = getattr(_local, "callback", None)
    _local.callback = callback
    try:
        yield callback
    finally:
        _local.callback = previous
        box.empty()


def statistics_and_matching(p: Pipeline, s: AlignSettings):
    with progress():
        return p.statistics(s), p.matching(s)


class LiveRedraw:
    """Call it with a figure-building function whenever data changes; it redraws at most every
    `every` seconds, and at once with `force` (the page forces a curve's first point, and
    draws the final chart itself), so cached curves arriving all at once cost one draw.

    Every draw costs the server ~60 ms of Python (the figure) and the browser a fresh Plotly
    plot, on the same cores as the evaluation: with a draw every 0.4 s, a 21-point curve took
    twice as long in the app as in the pipeline (benchmarks/app_interactive.py)."""

    def __init__(self, placeholder, every: float = 2.5):
        self.placeholder, self.every, self.last, self.count = placeholder, every, 0.0, 0

    def __call__(self, make_figure, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.count += 1
            self.placeholder.plotly_chart(make_figure(), key=f"live-{id(self)}-{self.count}")
            self.last = now


# ---- errors and status --------------------------------------------------------------------------------

def _md(text: str) -> str:
    """Escape what markdown would reinterpret in user-facing text (paths, $ signs)."""
    for ch in "\\`*_[]<>$#|~":
        text = text.replace(ch, "\\" + ch)
    return text


def show_error(err: BaseException) -> None:
    if isinstance(err, PermergeError):
        body = f"**{_md(err.problem)}**"
        if err.fix:
            body += f"\n\n**Fix:** {_md(err.fix)}"
        st.error(body, icon=":material/error:")
    else:
        log.exception("unexpected error in the app", exc_info=err)
        st.error(
            f"**Unexpected error** ({type(err).__name__}): {_md(str(err).splitlines()[0] if str(err) else 'no message')}\n\n"
            "This is a bug in permerge, not a problem with your input. The server log has the details; "
            "the Export page shows the CLI command that reproduces these settings.",
            icon=":material/warning:",
        )


def render_status(container) -> None:
    """One compact line: which pair, and per stage whether it is computed, cached or stale."""
    ss = st.session_state
    held = ss.get("_current")
    if not held or held[0] != ss.get("model_a") or held[1] != ss.get("model_b"):
        container.caption("Status: models not loaded yet.")
        return
    try:
        status = held[2].stage_status(settings())
    except PermergeError:
        container.caption("Status: settings out of range.")
        return
    container.caption(
        f"**Status** ({pair_label(held[0], held[1])}): {views.status_line(status)}",
        help="✓ computed in this server · ⛁ cached on disk (instant) · ↻ stale: computed only for other settings · ○ not computed yet",
    )
    if held[2].cache.warning:  # the disk cache turned itself off: say why, and how to fix it
        container.caption(f"⚠ {_md(held[2].cache.warning)}")


def describe(source: str, tokenizer: str = "") -> dict:
    """A checkpoint's description, loading it (cached by content signature)."""
    return _describe(source, source_signature(source), tokenizer)


@st.cache_data(max_entries=32, show_spinner="Reading the checkpoint…")
def _describe(source: str, signature: str, tokenizer: str) -> dict:
    return load_checkpoint(source, tokenizer or None).describe()


# ---- seeds ---------------------------------------------------------------------------------------------

@st.cache_resource
def seed_results() -> dict:
    """Barriers per (pair, data, settings), shared by all sessions: a pair is computed once."""
    return {}


def seed_key(model_a: str, model_b: str, s: AlignSettings) -> tuple:
    inputs = inputs_for(model_a, model_b)
    return inputs, signatures(inputs), repr(s)

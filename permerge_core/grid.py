"""Every pair of several checkpoints: `python -m permerge_core grid`, and the app's Seeds page.

A *cell* is one pair, A = models[i] and B = models[j] with i < j (B is aligned to A), under one
or more merge settings (*variants*). Each cell is one independent task: it loads its two
checkpoints itself (from a folder or a hub id), so nothing large passes through the driver, and
runs them through the same `Pipeline` as `align`. A cell's numbers are therefore align's numbers
for that pair and those settings, and its stages land in the same content-keyed disk cache. The
statistics and the vanilla path do not depend on the merge settings, so the variants of a cell
share them: each variant adds one matching and one permuted path.

Engines run the tasks: `LocalEngine` one after another in this process (no Ray needed; the app's
Seeds page uses it with its own shared pipelines), `RayEngine` as Ray tasks, on a local Ray or a
cluster. A failing pair becomes a cell with its message and the grid goes on. `run_grid` rewrites
`grid.json` after every finished cell, so a rerun after an interruption computes only the cells
that are missing (or failed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from .errors import PermergeError, SettingsError
from .modes import PAPER_TABLES, paper_table
from .inputs import Inputs
from .settings import BY_NAME, MERGE, SETTINGS, AlignSettings, TaskSpec
from .sources import short_names, source_signature

FORMAT = "permerge-grid/1"

# The paper's two tables as variant lists (docs/reproduce.md), from the one variant table.
PRESETS: dict[str, list[tuple[str, dict]]] = {table: paper_table(table) for table in PAPER_TABLES}
DEFAULT_VARIANT = "settings"  # the label of the one variant a grid without --variants computes


def parse_variants(items: list[str] | None, base: AlignSettings) -> list[tuple[str, AlignSettings]]:
    """Variants from `--variants` items: a preset name (`paper-attention`, `paper-residual`) or
    `LABEL:key=value,...` with merge settings (ffn, attention, residual, absolute) changed from
    `base`. No items: the one variant `base` itself."""
    if not items:
        return [(DEFAULT_VARIANT, base)]
    merge_names = [spec.name for spec in SETTINGS if spec.group == MERGE and spec.name != "lambdas"]
    out: list[tuple[str, AlignSettings]] = []
    for item in items:
        if item in PRESETS:
            out += [(label, replace(base, **changes)) for label, changes in PRESETS[item]]
            continue
        label, sep, body = item.partition(":")
        if not sep or not label.strip():
            raise SettingsError(
                f"Variant {item!r} is neither a preset nor LABEL:key=value,...",
                f"Use {' or '.join(PRESETS)}, or e.g. 'head-perm:attention=heads,residual=none'.",
            )
        changes = {}
        for pair in filter(None, (p.strip() for p in body.split(","))):
            key, eq, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in merge_names:
                raise SettingsError(
                    f"Variant {label!r}: {pair!r} is not a merge setting.",
                    f"Give key=value with a key among {', '.join(merge_names)} (the other settings are the grid's own flags).",
                )
            changes[key] = _setting_value(key, value.strip(), label)
        out.append((label.strip(), replace(base, **changes)))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise SettingsError(f"Variant labels repeat: {', '.join(labels)}.", "Give every variant its own label.")
    for _, s in out:
        s.validate()
    return out


def _setting_value(key: str, text: str, label: str):
    spec = BY_NAME[key]
    if spec.type is bool:
        if text.lower() in ("on", "true", "yes", "1"):
            return True
        if text.lower() in ("off", "false", "no", "0"):
            return False
        raise SettingsError(f"Variant {label!r}: {key}={text!r} is not on or off.", f"Write {key}=on or {key}=off.")
    return spec.type(text)


@dataclass(frozen=True)
class PairTask:
    """Everything one cell needs, small enough to ship to a Ray worker: sources, not models."""

    inputs: Inputs  # the pair (A = inputs.model_a, B = inputs.model_b) and its data
    variants: tuple[tuple[str, AlignSettings], ...]
    threads: int | None = None  # torch threads in a Ray worker (None: leave torch's choice)

    @property
    def a(self) -> str:
        return self.inputs.model_a

    @property
    def b(self) -> str:
        return self.inputs.model_b


def measure(pipeline, variants) -> tuple[dict[str, dict], list[tuple[dict, list]]]:
    """Every variant's numbers for one pipeline, as `align` reports them, and the loss paths
    with their cache keys (so that the driver can store them in its own cache too)."""
    results, curves = {}, []
    for label, s in variants:
        report = pipeline.run(s)
        results[label] = {
            "barrier": report["barrier"],
            "endpoint_loss": report["endpoint_loss"],
            "function_preserving": report["function_preserving"],
            "max_abs_logit_diff": report["max_abs_logit_diff"],
        }
        curves += [(pipeline.curve_fields(s, which), pipeline.curve(s, which)) for which in ("vanilla", "permuted")]
    return results, curves


def run_pair(task: PairTask, pipeline_for: Callable | None = None, progress=None) -> tuple[dict, list]:
    """One cell: (cell, curves). Any failure is caught into the cell's `error`."""
    started = time.time()
    cell: dict = {"a": task.a, "b": task.b}
    curves: list = []
    try:
        if task.threads:
            import torch

            torch.set_num_threads(task.threads)
        if pipeline_for is not None:
            pipeline = pipeline_for(task.a, task.b)
        else:
            from .pipeline import Pipeline

            pipeline = Pipeline.from_inputs(task.inputs, progress=progress)
        results, curves = measure(pipeline, task.variants)
        cell.update(results[task.variants[0][0]])
        if len(task.variants) > 1:
            cell["variants"] = results
        cell["fingerprints"] = {"a": pipeline.a.fingerprint, "b": pipeline.b.fingerprint}
    except PermergeError as err:
        cell["error"] = str(err)
    except Exception as err:  # a bug or a broken environment on one worker: the grid goes on
        cell["error"] = f"internal error: {type(err).__name__}: {err}"
    cell["seconds"] = round(time.time() - started, 2)
    cell["host"] = socket.gethostname()
    return cell, curves


class LocalEngine:
    """The tasks one after another in this process. `pipeline_for(a, b)`, if given, supplies
    the pipelines (the app passes its shared ones); otherwise each task builds its own."""

    name = "local"

    def __init__(self, pipeline_for: Callable | None = None, progress=None):
        self.pipeline_for, self.progress = pipeline_for, progress

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def workers(self) -> int:
        return 1

    def run(self, tasks: list[PairTask]) -> Iterator[tuple[int, dict, list]]:
        for k, task in enumerate(tasks):
            yield (k, *run_pair(task, self.pipeline_for, self.progress))


def _ray_pair(task: PairTask):
    return run_pair(task)


RAY_CHECK_SECONDS = 5.0  # how long the address check waits for a connection, and then for a reply
RAY_PORT, RAY_CLIENT_PORT = 6379, 10001  # `ray start --head`'s defaults: its GCS, and Ray Client (ray://)
# An HTTP/2 client's first bytes: the connection preface and an empty SETTINGS frame.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP2_SETTINGS = 0x04  # the frame type an HTTP/2 server opens every connection with


def check_ray_address(address: str | None) -> None:
    """Refuse, within seconds, a Ray address (`--ray-address`, else RAY_ADDRESS) where no Ray head
    node answers.

    Where nothing listens, or a server that is not Ray's (the dashboard's HTTP port 8265 is the
    likely mistake), `ray.init` retries for about a quarter of an hour (Ray 2.60: 20 tries of some
    40 s) before it gives up. A TCP connection shows that something listens; the head node's GCS
    speaks gRPC, and an HTTP/2 server opens every connection with a SETTINGS frame, so its first
    bytes tell it from other servers. With TLS (RAY_USE_TLS) only the connection is checked.
    `auto`, `local` and no address at all are left to Ray: they start or find a local Ray."""
    origin = "--ray-address"
    if address is None:
        address, origin = os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS"
    if not address or address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port or (RAY_CLIENT_PORT if scheme == "ray" else RAY_PORT)
    except ValueError:
        host = None
    if not host:
        raise SettingsError(f"{origin} {address} is not a Ray address.",
                            f"Give the head node's host:port, e.g. 10.0.0.1:{RAY_PORT} (or ray://10.0.0.1:{RAY_CLIENT_PORT} for Ray Client).")
    fix = (f"Start the cluster's head node there (`ray start --head --port={port}` on {host}), or correct {origin} to the "
           f"host:port that `ray start --head` printed (default port {RAY_PORT}), or leave it out to run a local Ray.")
    try:
        connection = socket.create_connection((host, port), timeout=RAY_CHECK_SECONDS)
    except OSError as err:
        raise PermergeError(f"Nothing answers at the Ray address {address} ({origin}): {err.strerror or err}.", fix) from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        reply = b""
        try:
            connection.sendall(HTTP2_HELLO)
            while len(reply) < 4 and (chunk := connection.recv(4 - len(reply))):
                reply += chunk
        except OSError:
            pass
    if len(reply) < 4 or reply[3] != HTTP2_SETTINGS:
        raise PermergeError(f"Something listens at the Ray address {address} ({origin}), but not a Ray head node: "
                            f"no gRPC reply within {RAY_CHECK_SECONDS:g} s.", fix)


class RayEngine:
    """Each task a Ray task: `ray.init()` starts a local Ray (or joins the cluster that
    `address`, or the RAY_ADDRESS of a `ray job submit`, names). A task asks for
    `cpus_per_task` CPUs (its torch threads) and, for `--device cuda`, `gpus_per_task` GPUs."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_task: int = 1, gpus_per_task: float = 0.0, **init_kwargs):
        self.address, self.cpus, self.gpus, self.init_kwargs = address, cpus_per_task, gpus_per_task, init_kwargs
        self.started = False

    def __enter__(self):
        try:
            import ray
        except ImportError:
            raise PermergeError("The Ray engine needs Ray, which is not installed here.",
                                "Install it with `pip install -r requirements-ray.txt`, or use --engine local.") from None
        self.ray = ray
        if not ray.is_initialized():
            check_ray_address(self.address)
            try:
                ray.init(address=self.address, **self.init_kwargs)
            except ConnectionError as err:
                raise PermergeError(f"Cannot reach the Ray cluster at {self.address}: {err}",
                                    "Check --ray-address (host:port of the head node, e.g. 10.0.0.1:6379) and that the cluster is up.") from None
            self.started = True
        self._check_fits()
        return self

    def _check_fits(self) -> None:
        """Refuse tasks that no node can run (Ray would wait for such a node forever)."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= self.cpus and r.get("GPU", 0) >= self.gpus for r in nodes):
            return
        if self.started:
            self.ray.shutdown()
            self.started = False
        gpus = max((r.get("GPU", 0) for r in nodes), default=0)
        if self.gpus > gpus:
            raise PermergeError(f"A pair asks for {self.gpus:g} GPU(s), and no node of this Ray cluster has {'any' if not gpus else 'that many'}.",
                                "Use --device cpu, lower --gpus-per-task, or join a cluster with GPU nodes (--ray-address).")
        most = max((r.get("CPU", 0) for r in nodes), default=0)
        raise PermergeError(f"A pair asks for {self.cpus} CPUs (--cpus-per-task), and no node of this Ray cluster has more than {most:g}.",
                            f"Use --cpus-per-task {max(int(most), 1)} or less.")

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        return False

    def workers(self) -> int:
        """How many tasks the cluster can run at once (CPUs, and GPUs where asked for)."""
        resources = self.ray.cluster_resources()
        count = int(resources.get("CPU", 1) // self.cpus)
        if self.gpus:
            count = min(count, int(resources.get("GPU", 0) // self.gpus))
        return max(count, 1)

    def run(self, tasks: list[PairTask]) -> Iterator[tuple[int, dict, list]]:
        remote = self.ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_ray_pair)
        pending = {remote.remote(replace(task, threads=self.cpus)): k for k, task in enumerate(tasks)}
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    k = pending.pop(ref)
                    try:
                        yield (k, *self.ray.get(ref))
                    except self.ray.exceptions.RayError as err:  # the worker died (memory, node lost)
                        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                        yield k, {"a": tasks[k].a, "b": tasks[k].b, "error": f"Ray task failed: {first}"}, []
        finally:
            for ref in pending:  # interrupted: stop what is still running
                self.ray.cancel(ref, force=True)


# ---- the grid ----------------------------------------------------------------------------------

@dataclass
class GridSpec:
    """A grid's inputs: what `grid.json` records, and what a rerun must match to reuse cells."""

    models: list[str]
    variants: list[tuple[str, AlignSettings]]
    tokenizer: str | None = None
    match_data: str | None = None
    eval_data: str | None = None
    task: TaskSpec | None = None
    cache_dir: str | None = None
    signatures: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.models) < 2:
            raise SettingsError("A grid needs at least two models.", "Give two or more folders or hub ids after --models.")
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            raise SettingsError(f"{', '.join(repeated)} is listed more than once.", "List every model once.")
        if not self.signatures:
            self.signatures = [source_signature(m) for m in self.models]

    def header(self) -> dict:
        """What a cell's numbers depend on besides its two models (cache keys aside)."""
        base = self.variants[0][1]
        skip = {*base.merge_fields(), "device"}  # (the device changes rounding, not results)
        return {
            "settings": {k: v for k, v in asdict(base).items() if k not in skip},
            "variants": {label: s.merge_fields() for label, s in self.variants},
            "data": {"tokenizer": self.tokenizer, "match": self.match_data, "eval": self.eval_data,
                     "task": asdict(self.task) if self.task else None},
        }

    def pairs(self) -> list[tuple[int, int]]:
        return pair_indices(len(self.models))

    def pair_inputs(self, i: int, j: int) -> Inputs:
        """Cell (i, j)'s inputs: A = models[i], B = models[j], the grid's data, loaded where its settings run."""
        return Inputs(self.models[i], self.models[j], tokenizer=self.tokenizer, match_data=self.match_data, eval_data=self.eval_data,
                      task=self.task, cache_dir=self.cache_dir, device=self.variants[0][1].device)

    def pair_task(self, i: int, j: int) -> PairTask:
        return PairTask(self.pair_inputs(i, j), tuple(self.variants))


def pair_indices(n: int) -> list[tuple[int, int]]:
    """Every unordered pair (i, j), i < j, in row order: the cells a seed matrix computes."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def previous_cells(spec: GridSpec, path: Path) -> dict[tuple[int, int], dict]:
    """The finished cells of an earlier run of the same grid in `path` (grid.json), by pair.
    A grid.json for other settings or data is refused rather than overwritten."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(old.get("format") if isinstance(old, dict) else None)
    except Exception:
        raise SettingsError(f"{path} exists but is not a permerge grid.", "Choose another --out folder, or remove the file.") from None
    mine = json.loads(json.dumps(spec.header()))
    if {k: old.get(k) for k in mine} != mine:
        differ = ", ".join(k for k in mine if old.get(k) != mine[k])
        raise SettingsError(f"{path} holds a grid with other {differ}.",
                            "Choose another --out folder for these settings, or remove the old grid.json to start afresh.")
    index = {(m, spec.signatures[k]): k for k, m in enumerate(spec.models)}
    cells = {}
    for cell in old.get("pairs", []):
        i, j = index.get((cell.get("a"), cell.get("signature_a"))), index.get((cell.get("b"), cell.get("signature_b")))
        if i is not None and j is not None and i < j and "error" not in cell:
            cells[(i, j)] = cell
    return cells


def run_grid(spec: GridSpec, engine, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Compute the grid's missing cells with `engine` (entered by the caller) and write
    `out`/grid.json, grid.csv, matrix.csv and table.csv after every cell. Returns grid.json's
    content."""
    from .cache import DiskCache

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SettingsError(f"--out {out} is a file.", "Give a folder for grid.json and the CSV files.")
    pairs = spec.pairs()
    cells = previous_cells(spec, out / "grid.json")
    todo = [ij for ij in pairs if ij not in cells]
    driver_cache = DiskCache(spec.cache_dir) if spec.cache_dir else None
    started = time.time()
    grid = {"format": FORMAT, "engine": engine.name, "workers": min(engine.workers(), max(len(todo), 1)),
            "device": spec.variants[0][1].device, "models": spec.models, **spec.header()}
    if cells:
        log(f"[grid] {len(cells)} of {len(pairs)} pairs already in {out / 'grid.json'}; computing the other {len(todo)}")
    write_outputs(finish(grid, spec, cells, pairs, 0, 0.0), out)
    computed = failed = 0
    for k, cell, curves in engine.run([spec.pair_task(*ij) for ij in todo]):
        i, j = todo[k]
        cell.update(signature_a=spec.signatures[i], signature_b=spec.signatures[j])
        cells[(i, j)] = cell
        computed += 1
        failed += "error" in cell
        if driver_cache is not None:  # a worker's own cache may be on another machine
            for fields, points in curves:
                if not driver_cache.has("curve", fields, ".json"):
                    driver_cache.save_json("curve", fields, points)
        elapsed = time.time() - started
        left = elapsed / computed * (len(todo) - computed)
        what = f"failed: {cell['error']}" if "error" in cell else (
            f"barrier vanilla {cell['barrier']['vanilla']:.4f}, permuted {cell['barrier']['permuted']:.4f}")
        log(f"[grid] {len(pairs) - len(todo) + computed} of {len(pairs)} pairs done; {_name(spec, i)} ↔ {_name(spec, j)} "
            f"{what} ({cell['seconds']:.1f} s); about {_duration(left)} left")
        write_outputs(finish(grid, spec, cells, pairs, computed, time.time() - started), out)
    return finish(grid, spec, cells, pairs, computed, time.time() - started)


def _name(spec: GridSpec, k: int) -> str:
    return short_names(spec.models)[k]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def finish(grid: dict, spec: GridSpec, cells: dict, pairs: list, computed: int, seconds: float) -> dict:
    """grid.json's content: the cells in pair order, and the per-variant table."""
    ordered = [cells[ij] for ij in pairs if ij in cells]
    return {**grid, "computed_this_run": computed, "seconds_this_run": round(seconds, 2),
            "pairs": ordered, "table": variant_table(ordered, [label for label, _ in spec.variants])}


def cell_barriers(cell: dict) -> dict:
    """A cell as the Seeds page keeps it: its (first variant's) vanilla and permuted barrier,
    or its error."""
    return {"error": cell["error"]} if "error" in cell else dict(cell["barrier"])


def variant_barriers(cell: dict) -> dict[str, dict]:
    """A cell's numbers per variant label (a one-variant grid keeps them at the cell's top)."""
    if "error" in cell:
        return {}
    return cell.get("variants") or {DEFAULT_VARIANT: {k: cell[k] for k in ("barrier", "endpoint_loss", "function_preserving")}}


def variant_table(cells: list[dict], labels: list[str]) -> list[dict]:
    """Per variant, over the pairs that finished: mean and sample standard deviation of the
    permuted and the vanilla barrier, the way the paper's tables report them."""
    rows = []
    for label in labels:
        found = [variant_barriers(c)[label] for c in cells if label in variant_barriers(c)]
        permuted = [r["barrier"]["permuted"] for r in found]
        vanilla = [r["barrier"]["vanilla"] for r in found]
        rows.append({
            "variant": label, "pairs": len(found),
            "permuted_mean": _mean(permuted), "permuted_std": _std(permuted),
            "vanilla_mean": _mean(vanilla), "vanilla_std": _std(vanilla),
            "function_preserving": all(r["function_preserving"] for r in found) if found else None,
        })
    return rows


def pair_spread(barriers: list[dict]) -> dict:
    """Over pairs ({"vanilla": …, "permuted": …} each): the mean and sample standard deviation
    of both barriers, as `variant_table` gives them, and the share of the mean vanilla barrier
    that alignment removes (1 − permuted mean / vanilla mean; None without a positive vanilla mean)."""
    vanilla = [b["vanilla"] for b in barriers if b.get("vanilla") is not None]
    permuted = [b["permuted"] for b in barriers if b.get("permuted") is not None]
    v, p = _mean(vanilla), _mean(permuted)
    return {"pairs": len(barriers), "vanilla_mean": v, "vanilla_std": _std(vanilla), "permuted_mean": p, "permuted_std": _std(permuted),
            "removed": 1 - p / v if v and p is not None and v > 0 else None}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _std(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def matrix(grid: dict, which: str, variant: str | None = None) -> list[list[float | None]]:
    """n×n barriers (`which`: vanilla or permuted) of one variant (default: the first): cell
    (i, j), i < j, is A = models[i], B = models[j]; 0 on the diagonal; None elsewhere."""
    models = grid["models"]
    variant = variant or grid["table"][0]["variant"]
    index = {m: k for k, m in enumerate(models)}
    results = {}
    for cell in grid["pairs"]:
        numbers = variant_barriers(cell).get(variant)
        if numbers:
            results[(index[cell["a"]], index[cell["b"]])] = numbers["barrier"]
    return seed_matrix(len(models), results, which)


def seed_matrix(n: int, results: dict[tuple[int, int], dict], which: str) -> list[list[float | None]]:
    """n×n barriers of `which` ('vanilla'|'permuted'); cell (i, j), i<j, is A=i, B=j; None elsewhere.

    Only the upper triangle is computed (B is aligned to A, so (j, i) is a different, if
    similar, number); the diagonal is 0 by definition (a model against itself).
    """
    out: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        out[i][i] = 0.0
    for (i, j), r in results.items():
        if r.get(which) is not None:
            out[i][j] = r[which]
    return out


def load_grid(text: str | bytes) -> dict:
    """A grid.json's content, checked enough to draw it (GridError-free: a SettingsError)."""
    try:
        grid = json.loads(text)
        assert grid.get("format") == FORMAT and isinstance(grid.get("pairs"), list) and grid.get("table")
        assert all(c["a"] in grid["models"] and c["b"] in grid["models"] for c in grid["pairs"])
    except Exception:
        raise SettingsError("This file is not a grid.json written by `python -m permerge_core grid`.",
                            "Load the grid.json from a grid's --out folder.") from None
    return grid


def write_outputs(grid: dict, out: Path) -> None:
    """grid.json; grid.csv (one row per pair and variant); matrix.csv (first variant: permuted
    barrier above the diagonal, row = A, column = B; vanilla below it, which is symmetric);
    table.csv (the per-variant table). Each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    w = csv.writer(rows, lineterminator="\n")
    w.writerow(["a", "b", "variant", "vanilla_barrier", "permuted_barrier", "loss_a", "loss_b", "loss_b_prime",
                "function_preserving", "seconds", "error"])
    for cell in grid["pairs"]:
        numbers = variant_barriers(cell)
        if not numbers:
            w.writerow([cell["a"], cell["b"], "", "", "", "", "", "", "", cell.get("seconds", ""), cell["error"]])
        for label, r in numbers.items():
            e = r["endpoint_loss"]
            w.writerow([cell["a"], cell["b"], label, _f(r["barrier"]["vanilla"]), _f(r["barrier"]["permuted"]),
                        _f(e["a"]), _f(e["b"]), _f(e["b_prime"]), r["function_preserving"], cell["seconds"], ""])
    names = grid["models"]
    upper, lower = matrix(grid, "permuted"), matrix(grid, "vanilla")
    square = io.StringIO()
    m = csv.writer(square, lineterminator="\n")
    m.writerow(["A \\ B"] + names)
    for i, name in enumerate(names):
        m.writerow([name] + [_f(upper[i][j]) if i <= j else _f(lower[j][i]) for j in range(len(names))])
    table = io.StringIO()
    t = csv.writer(table, lineterminator="\n")
    t.writerow(["variant", "pairs", "permuted_mean", "permuted_std", "vanilla_mean", "vanilla_std", "function_preserving"])
    for r in grid["table"]:
        t.writerow([r["variant"], r["pairs"], _f(r["permuted_mean"]), _f(r["permuted_std"]), _f(r["vanilla_mean"]),
                    _f(r["vanilla_std"]), r["function_preserving"]])
    for name, text in (("grid.json", json.dumps(grid, indent=1)), ("grid.csv", rows.getvalue()),
                       ("matrix.csv", square.getvalue()), ("table.csv", table.getvalue())):
        tmp = out / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def _f(x) -> str:
    return "" if x is None else f"{x:.6f}"


def table_text(grid: dict) -> str:
    """The per-variant table as the CLI prints it: barrier mean ± sd over the pairs."""
    pm = lambda m, s: "—" if m is None else (f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else ""))  # noqa: E731
    width = max(len(r["variant"]) for r in grid["table"])
    lines = [f"{'variant':{width}s}  pairs  permuted barrier   vanilla barrier"]
    for r in grid["table"]:
        lines.append(f"{r['variant']:{width}s}  {r['pairs']:5d}  {pm(r['permuted_mean'], r['permuted_std']):17s}  "
                     f"{pm(r['vanilla_mean'], r['vanilla_std'])}")
    return "\n".join(lines)


"""What a GPU renders per InfiniteTalk window: the GPU cost table a user keeps (gpu_costs.toml, or the file
INFINITETALK_GPU_COSTS names), and the seconds per window the catalog measured on the fleet, which win over it."""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.redact import redact_text

if TYPE_CHECKING:
    import pandas as pd

    from infinitetalk_pipeline.storage import OutputStore

GPU_COSTS_ENV = "INFINITETALK_GPU_COSTS"
DEFAULT_GPU_COSTS = Path(__file__).with_name("gpu_costs.toml")
WORKERS_LISTED = 8  # workers named in a measured figure's description
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENTRY_KEYS = frozenset({"seconds_per_window", "width", "height", "note"})


class EstimateError(PipelineError):
    """The GPU table, or the GPU class asked for, is unusable; the message says which and why."""


# -- the GPU table ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuCost:
    """One GPU class: seconds per InfiniteTalk window at `width` x `height`."""

    name: str
    seconds_per_window: float
    width: int
    height: int
    note: str = ""

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class GpuTable:
    source: str  # the file it was read from
    default: str
    entries: dict[str, GpuCost]

    def get(self, name: str | None = None) -> GpuCost:
        """The named class (the table's default when None); an unknown name is an EstimateError listing the known."""
        name = self.default if name is None else name
        if name not in self.entries:
            raise EstimateError(
                f"unknown GPU class {name!r}; known in {self.source}: {', '.join(sorted(self.entries))}"
            )
        return self.entries[name]


def gpu_table_path() -> Path:
    """The user's table (INFINITETALK_GPU_COSTS) when set, else the one shipped with the package."""
    return Path(os.environ.get(GPU_COSTS_ENV) or DEFAULT_GPU_COSTS).expanduser()


def load_gpu_table(path: Path | str | None = None) -> GpuTable:
    """Read and check a GPU table (format: gpu_costs.toml's comments). Errors name the file and the entry."""
    path = Path(path).expanduser() if path is not None else gpu_table_path()
    where = str(path)
    try:
        body = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EstimateError(f"GPU table {where}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EstimateError(f"GPU table {where}: not valid TOML: {exc}") from None
    if extra := sorted(set(body) - {"default", "gpu"}):
        raise EstimateError(f"GPU table {where}: unknown key(s) {', '.join(extra)} (expected default and [gpu.NAME])")
    gpus = body.get("gpu")
    if not isinstance(gpus, dict) or not gpus:
        raise EstimateError(f"GPU table {where}: no [gpu.NAME] entries")
    entries = {name: _entry(where, name, entry) for name, entry in gpus.items()}
    default = body.get("default")
    if not isinstance(default, str) or default not in entries:
        raise EstimateError(
            f"GPU table {where}: default must name one of its entries ({', '.join(sorted(entries))}), got {default!r}"
        )
    return GpuTable(where, default, entries)


def _entry(where: str, name: str, entry: Any) -> GpuCost:
    at = f"GPU table {where}: [gpu.{name}]"
    if not _NAME.match(name):
        raise EstimateError(f"{at}: a name takes letters, digits, '.', '_' and '-'")
    if not isinstance(entry, dict):
        raise EstimateError(f"{at}: expected a table of seconds_per_window, width, height")
    if extra := sorted(set(entry) - _ENTRY_KEYS):
        raise EstimateError(f"{at}: unknown key(s) {', '.join(extra)} (expected {', '.join(sorted(_ENTRY_KEYS))})")
    seconds = entry.get("seconds_per_window")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise EstimateError(f"{at}: seconds_per_window must be a positive number, got {seconds!r}")
    size = {key: entry.get(key) for key in ("width", "height")}
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise EstimateError(f"{at}: {key} must be a positive whole number of pixels, got {value!r}")
    note = entry.get("note", "")
    if not isinstance(note, str):
        raise EstimateError(f"{at}: note must be text, got {note!r}")
    return GpuCost(name, float(seconds), int(size["width"]), int(size["height"]), note)


# -- seconds per window: the table, or the catalog's measurements -------------------------------------------------


@dataclass(frozen=True)
class WorkerRate:
    """One worker's measured seconds per window, at the reference size."""

    worker: str
    seconds_per_window: float
    prompts: int
    windows: int


@dataclass(frozen=True)
class Rate:
    """Seconds per window at `width` x `height`, and where the figure comes from."""

    seconds_per_window: float
    width: int
    height: int
    source: str  # "table: rtx4090" or "measured: 12 renders on 3 workers"
    workers: tuple[WorkerRate, ...] = ()
    note: str = ""  # why the catalog was not used, when it could not be read

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @classmethod
    def of_table(cls, gpu: GpuCost, note: str = "") -> Rate:
        return cls(gpu.seconds_per_window, gpu.width, gpu.height, f"table: {gpu.name}", note=note)

    def gpu_seconds(self, windows: int, width: int, height: int) -> float:
        return windows * self.seconds_per_window * (width * height) / self.pixels

    def describe(self) -> str:
        figure = f"{self.seconds_per_window:.1f} s per 81-frame window at {self.width}x{self.height}"
        if self.workers:
            each = ", ".join(f"{w.worker} {w.seconds_per_window:.1f} s" for w in self.workers[:WORKERS_LISTED])
            more = f" and {len(self.workers) - WORKERS_LISTED} more" if len(self.workers) > WORKERS_LISTED else ""
            figure += f": the harmonic mean of the workers' {each}{more}"
        return f"{self.source} ({figure})" + (f"; {self.note}" if self.note else "")


def measured_rate(catalog: pd.DataFrame, reference: GpuCost) -> Rate | None:
    """The catalog's measured seconds per window at the reference size, or None when it holds no measurement.

    Only `infinitetalk` renders count (preview renders are not GPU figures), each prompt once: a segmented clip's
    segments one by one, each on its own worker, else the clip's own execution seconds and windows. A prompt's
    seconds per window are scaled to the reference pixel count as estimates scale them back. Each worker's figure is
    its seconds over its windows; the fleet's is the harmonic mean of the workers' figures, the GPU-seconds a window
    costs when every worker takes the next prompt as soon as it is free (a worker twice as fast takes twice as many).
    """
    import pandas as pd  # only with a catalog to read: the CLI starts without it

    columns = ["clip_id", "worker", "width", "height", "windows", "comfy_execution_seconds", "segments"]
    if catalog.empty or any(c not in catalog.columns for c in [*columns, "profile"]):
        return None
    rows = catalog.loc[catalog["profile"] == "infinitetalk", columns]
    pixels = rows["width"].astype("Float64") * rows["height"].astype("Float64")
    rows = rows.assign(scale=(reference.pixels / pixels).where(pixels > 0))
    segmented = rows["segments"].notna() & (rows["segments"] != "")
    # One row per prompt: (clip, worker, seconds at the reference size, windows). Whole clips in one go; segmented
    # clips (a minority: long speech) segment by segment.
    whole = rows.loc[~segmented]
    prompts = [
        pd.DataFrame(
            {
                "clip": whole["clip_id"],
                "worker": whole["worker"],
                "seconds": whole["comfy_execution_seconds"].astype("Float64") * whole["scale"],
                "windows": whole["windows"].astype("Float64"),
            }
        )
    ]
    split = [
        (clip, s.get("worker"), s.get("execution_seconds"), s.get("windows"), factor)
        for clip, text, factor in rows.loc[segmented, ["clip_id", "segments", "scale"]].itertuples(index=False)
        for s in _segments(text)
    ]
    if split:
        split = [(c, w, float(x) * f, float(n)) for c, w, x, n, f in split if _positive(x) and _positive(n)]
        prompts.append(pd.DataFrame(split, columns=["clip", "worker", "seconds", "windows"]))
    table = pd.concat(prompts, ignore_index=True)
    table = table.dropna(subset=["seconds", "windows"])
    table = table[(table["seconds"] > 0) & (table["windows"] > 0)]
    if table.empty:
        return None
    table["worker"] = table["worker"].where(table["worker"].map(lambda w: isinstance(w, str) and bool(w)), "unknown")
    sums = table.groupby("worker").agg(seconds=("seconds", "sum"), windows=("windows", "sum"), prompts=("clip", "size"))
    workers = tuple(
        WorkerRate(str(name), float(row["seconds"]) / float(row["windows"]), int(row["prompts"]), int(row["windows"]))
        for name, row in sums.sort_index().iterrows()
    )
    fleet = len(workers) / sum(1 / w.seconds_per_window for w in workers)
    renders = table["clip"].nunique()
    source = f"measured: {_count(renders, 'render')} on {_count(len(workers), 'worker')}"
    return Rate(fleet, reference.width, reference.height, source, workers)


def _segments(text: str) -> list[dict[str, Any]]:
    """A catalog row's segments (JSON text); [] when it cannot be read."""
    try:
        listed = json.loads(text)
    except ValueError:
        return []
    return [s for s in listed if isinstance(s, dict)] if isinstance(listed, list) else []


def rate_for(gpu: GpuCost, store: OutputStore | None = None) -> Rate:
    """The catalog's measured figure when `store` holds one, else the table's figure for `gpu`."""
    if store is None:
        return Rate.of_table(gpu)
    try:
        from infinitetalk_pipeline.catalog import read_catalog  # pandas and pyarrow: 1 s of start-up for the CLI

        catalog = read_catalog(store)
    except Exception as exc:  # a damaged catalog must not stop an estimate: the table stands in, and says why
        return Rate.of_table(gpu, note=f"the catalog could not be read ({redact_text(str(exc))})")
    return measured_rate(catalog, gpu) or Rate.of_table(gpu)


def _positive(value: Any) -> bool:
    """A positive finite number (numpy's included); None, NaN, pd.NA and text are not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"

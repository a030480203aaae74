"""What a manifest costs before it is launched: speech, frames, InfiniteTalk windows, segments and GPU-minutes.

Each clip is measured by `render.clip_timing`, the very function the `clip_timing` asset runs, so its frames,
windows and segments are the ones the render will have. Clips sharing their speech (same sources, same
`multi_audio_type` and `max_frame`) are measured once; speech on URLs and S3 is fetched by a thread pool, into the
fetcher's cache, where the render finds it again.

GPU time is windows x seconds per window, scaled by the clip's pixel count relative to the size that figure was
measured at (an assumption: see gpu_costs.toml). The seconds per window come from the video catalog when it holds
measured renders (ComfyUI's execution seconds / windows, per worker, `infinitetalk` profile only), else from the GPU
table (`gpu_costs.toml`, or the file INFINITETALK_GPU_COSTS names). Every figure says which.

A row that cannot be measured (an invalid manifest row, a missing file, unreadable audio) is listed with its clip,
field and reason and left out of the totals; it never stops the others.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.gpu_costs import EstimateError, GpuCost, GpuTable, Rate, load_gpu_table, rate_for
from infinitetalk_pipeline.manifest import read_manifest
from infinitetalk_pipeline.media.sources import MediaFetcher
from infinitetalk_pipeline.redact import redact_text
from infinitetalk_pipeline.registry import ClipSpec, anchor_local_paths
from infinitetalk_pipeline.render import clip_timing, round_size
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.spec import MEDIA_FIELDS
from infinitetalk_pipeline.storage import OutputStore
from infinitetalk_pipeline.timing import ClipTiming

SCALING = "GPU time scales with each clip's pixel count relative to {size} (an assumption)"
# Threads measuring at once when some speech is a URL or on S3: those are waited on. Local files are measured in the
# calling thread: reading, hashing and probing them is mostly Python under the GIL, where threads only contend
# (benchmarks/estimate.py on 2 cores: 2 threads took 6% longer and 40% more CPU than one).
REMOTE_THREADS = 16
TABLE_CLIPS = 50  # clips in the metadata's markdown table
_SPEECH_FIELDS = (*MEDIA_FIELDS["audio"].values(), *MEDIA_FIELDS["audio_2"].values())  # wav_path first
_speech_sources = operator.attrgetter(*_SPEECH_FIELDS)


# -- estimates ----------------------------------------------------------------------------------------------------


# Per-clip results are named tuples: of plain values only, so the garbage collector stops tracking them, and 100,000 of
# them do not make every later collection of a registration walk them again.
class ClipEstimate(NamedTuple):
    """One clip's figures: as `clip_timing` measures it, and its GPU time at the rate's seconds per window."""

    clip_id: str
    row_number: int
    speech_seconds: float
    frames: int
    windows: int
    segments: int
    width: int
    height: int
    gpu_minutes: float
    source: str


class Unmeasured(NamedTuple):
    """A row left out of the totals: its clip, the field at fault and why."""

    row_number: int | None
    clip_id: str | None
    field: str | None
    reason: str


@dataclass(frozen=True)
class Totals:
    clips: int
    speech_seconds: float
    frames: int
    windows: int
    segments: int
    gpu_minutes: float

    @property
    def speech_hours(self) -> float:
        return self.speech_seconds / 3600

    @property
    def gpu_hours(self) -> float:
        return self.gpu_minutes / 60


@dataclass(frozen=True)
class Estimate:
    clips: list[ClipEstimate]
    unmeasured: list[Unmeasured]
    gpu: GpuCost
    rate: Rate
    segmenting: Segmenting = field(default_factory=Segmenting)

    @property
    def totals(self) -> Totals:
        return Totals(
            clips=len(self.clips),
            speech_seconds=sum(c.speech_seconds for c in self.clips),
            frames=sum(c.frames for c in self.clips),
            windows=sum(c.windows for c in self.clips),
            segments=sum(c.segments for c in self.clips),
            gpu_minutes=sum(c.gpu_minutes for c in self.clips),
        )

    @property
    def assumption(self) -> str:
        return SCALING.format(size=f"{self.rate.width}x{self.rate.height}")

    def most_expensive(self, n: int) -> list[ClipEstimate]:
        return sorted(self.clips, key=lambda c: (-c.gpu_minutes, c.row_number))[:n]

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "gpu": self.gpu.name,
            "source": self.rate.source,
            "rate": self.rate.describe(),
            "seconds_per_window": self.rate.seconds_per_window,
            "reference_size": [self.rate.width, self.rate.height],
            "assumption": self.assumption,
            "segment_seconds": self.segmenting.max_seconds,
            "crossfade_frames": self.segmenting.crossfade_frames,
            "totals": asdict(totals) | {"speech_hours": totals.speech_hours, "gpu_hours": totals.gpu_hours},
            "clips": [c._asdict() for c in self.clips],
            "not_measured": [u._asdict() for u in self.unmeasured],
        }

    def metadata(self, table_clips: int = TABLE_CLIPS) -> dict[str, str | int | float]:
        """Plain values for a Dagster materialization; `estimate_table` is markdown (wrap it in MetadataValue.md):
        the most expensive clips first, then the rows that could not be measured."""
        totals = self.totals
        shown = self.most_expensive(table_clips)
        lines = [
            "| clip | speech s | frames | windows | segments | size | GPU min |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {c.clip_id} | {c.speech_seconds:.2f} | {c.frames} | {c.windows} | {c.segments} | "
                f"{c.width}x{c.height} | {c.gpu_minutes:.2f} |"
                for c in shown
            ),
        ]
        if len(self.clips) > len(shown):
            lines.append(f"\nThe {len(shown)} most expensive of {len(self.clips)} clips.")
        if self.unmeasured:
            lines.append(f"\n{len(self.unmeasured)} not measured (left out of the totals):")
            lines += [f"- {_unmeasured_line(u)}" for u in self.unmeasured[:table_clips]]
            if len(self.unmeasured) > table_clips:
                lines.append(f"- ... and {len(self.unmeasured) - table_clips} more")
        lines.append(f"\nSeconds per window from {self.rate.describe()}. {self.assumption}.")
        return {
            "estimate_clips": totals.clips,
            "estimate_not_measured": len(self.unmeasured),
            "estimate_speech_seconds": round(totals.speech_seconds, 3),
            "estimate_frames": totals.frames,
            "estimate_windows": totals.windows,
            "estimate_segments": totals.segments,
            "estimate_gpu_minutes": round(totals.gpu_minutes, 2),
            "estimate_gpu": self.gpu.name,
            "estimate_source": self.rate.source,
            "estimate_table": "\n".join(lines),
        }


def _unmeasured_line(u: Unmeasured) -> str:
    where = [f"row {u.row_number}" if u.row_number is not None else None]
    where += [f"clip {u.clip_id!r}" if u.clip_id else None, f"field {u.field!r}" if u.field else None]
    return f"{', '.join(w for w in where if w)}: {u.reason}"


def estimate_specs(
    specs: Sequence[ClipSpec],
    fetcher: MediaFetcher,
    gpu: GpuCost,
    rate: Rate | None = None,
    *,
    segmenting: Segmenting | None = None,
    threads: int | None = None,
) -> Estimate:
    """Measure each clip with `clip_timing` and price it at `rate` (default: `gpu`'s table figure), with `threads`
    threads (default: REMOTE_THREADS when a clip's speech is a URL or on S3, else this thread alone)."""
    segmenting = segmenting or Segmenting()
    rate = rate or Rate.of_table(gpu)
    # What a clip's timing depends on: its speech sources (by field: errors name it), how they combine and max_frame.
    # Read from the fields (`speaker_audio` builds objects), and little kept per clip: at 100,000 rows every object
    # that survives makes the garbage collector walk the registration's whole heap more often.
    keys = [
        (*_speech_sources(r), r.person_count, r.multi_audio_type, r.max_frame) for r in (spec.request for spec in specs)
    ]
    first: dict[tuple[Any, ...], ClipSpec] = {}
    for key, spec in zip(keys, specs, strict=True):
        first.setdefault(key, spec)

    def measure(spec: ClipSpec) -> ClipTiming | _Problem:
        try:
            return clip_timing(spec.request, fetcher, spec.clip_id, segmenting=segmenting)
        except ClipInputError as exc:
            return _Problem(exc.field, exc.reason)
        except Exception as exc:  # one clip's problem, whatever it is, is its row's: never the estimate's
            return _Problem(None, redact_text(f"{type(exc).__name__}: {exc}"))

    # (a fetcher that takes no local paths refuses them all, missing or not: it says so itself)
    outcomes: dict[tuple[Any, ...], ClipTiming | _Problem | str] = (
        _missing_files(first) if fetcher.policy.allowed_roots else {}
    )
    todo = [key for key in first if key not in outcomes]
    if threads is None:
        remote = any(value is not None and "://" in value for key in todo for value in key[: len(_SPEECH_FIELDS)])
        threads = REMOTE_THREADS if remote else 1
    if len(todo) > 1 and threads > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(todo)), thread_name_prefix="estimate") as pool:
            outcomes.update(zip(todo, pool.map(measure, (first[key] for key in todo)), strict=True))
    else:
        outcomes.update((key, measure(first[key])) for key in todo)
    clips, unmeasured = [], []
    for key, spec in zip(keys, specs, strict=True):
        outcome = outcomes[key]
        if isinstance(outcome, ClipTiming):
            clips.append(_clip_estimate(spec, outcome, rate))
        else:
            at, reason = (_SPEECH_FIELDS[0], outcome) if isinstance(outcome, str) else outcome
            unmeasured.append(Unmeasured(spec.row_number, spec.clip_id, at, reason))
    return Estimate(clips, unmeasured, gpu, rate, segmenting)


def estimate_manifest(
    uri: str,
    fetcher: MediaFetcher,
    gpu: GpuCost,
    rate: Rate | None = None,
    *,
    s3_client: Any = None,
    segmenting: Segmenting | None = None,
    threads: int | None = None,
) -> Estimate:
    """Estimate every row of a manifest (read as `clip_manifest` reads it: relative paths beside the manifest).
    Its invalid rows are listed as not measured. Raises ManifestError when the manifest cannot be read at all."""
    manifest = read_manifest(uri, s3_client=s3_client)
    requests = anchor_local_paths([row.request for row in manifest.valid], manifest.source)
    specs = [ClipSpec(row.clip_id, uri, row.row_number, req) for row, req in zip(manifest.valid, requests, strict=True)]
    estimate = estimate_specs(specs, fetcher, gpu, rate, segmenting=segmenting, threads=threads)
    invalid = [Unmeasured(bad.row_number, bad.clip_id, bad.field, bad.reason) for bad in manifest.invalid]
    unmeasured = sorted([*invalid, *estimate.unmeasured], key=lambda u: u.row_number or 0)
    return Estimate(estimate.clips, unmeasured, estimate.gpu, estimate.rate, estimate.segmenting)


def registration_metadata(
    store: OutputStore,
    specs: Sequence[ClipSpec],
    changed: Collection[str],
    fetcher: Callable[[], MediaFetcher],
    *,
    segmenting: Segmenting | None = None,
    table: GpuTable | None = None,
    table_path: str | None = None,
) -> dict[str, str | int | float]:
    """`Estimate.metadata` for the registered clips whose request is new or changed (what a backfill will render;
    an unchanged registration measures nothing), on the default GPU class of `table` (else of the file at `table_path`,
    else of the one INFINITETALK_GPU_COSTS names or the package's), measured renders in `store`'s
    catalog taking precedence. `fetcher` is called only when there is something to measure. An unusable GPU table
    gives `estimate_error` instead: the registration itself stands."""
    try:
        gpu = (table or load_gpu_table(table_path or None)).get()
    except EstimateError as exc:
        return {"estimate_error": str(exc)}
    wanted = set(changed)
    todo = [spec for spec in specs if spec.clip_id in wanted]
    if not todo:
        return Estimate([], [], gpu, Rate.of_table(gpu), segmenting or Segmenting()).metadata()
    return estimate_specs(todo, fetcher(), gpu, rate_for(gpu, store), segmenting=segmenting).metadata()


class _Problem(NamedTuple):
    """Why a clip could not be measured: the field at fault and the reason (credentials masked)."""

    field: str | None
    reason: str


def _missing_files(keys: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, ...], ClipTiming | _Problem | str]:
    """The fetcher's own "no such file" reason (for `wav_path`) for the clips whose first speech track is an absolute
    local path that does not exist, found with a stat (one per folder when the folder is missing too): the fetcher's
    refusal costs some 100 us (exceptions, raised again and redacted), which a 100,000-row manifest of missing files
    (one registered before its media were copied) turns into seconds. Anything else about a path, the fetcher finds
    and explains. A reason is kept as plain text: text is not tracked by the garbage collector."""
    folders: dict[str, bool] = {}  # folder -> missing (then so is every file in it)
    missing: dict[tuple[Any, ...], ClipTiming | _Problem | str] = {}
    for key in keys:
        # A key starts with the _SPEECH_FIELDS values: wav_path first, and a path is the first speech track when
        # given (ClipRequest.media takes the path, then the URL, then base64).
        value = key[0].strip() if key[0] is not None else ""
        if not value.startswith("/"):
            continue
        folder = value[: value.rfind("/")] or "/"
        if folder not in folders:
            folders[folder] = _stat_error(folder) is FileNotFoundError
        if folders[folder] or _stat_error(value) is FileNotFoundError:
            reason = f"no such file: {value}"  # redact_text changes only text with a URL or a `name=value` parameter
            missing[key] = redact_text(reason) if "=" in value or "://" in value else reason
    return missing


def _stat_error(path: str) -> type[Exception] | None:
    try:
        os.stat(path)
    except (OSError, ValueError) as exc:
        return type(exc)
    return None


def _clip_estimate(spec: ClipSpec, timing: ClipTiming, rate: Rate) -> ClipEstimate:
    # The render's size: each side rounded to a multiple of 16 (render.round_size), as the workflow gets it.
    width = round_size(spec.request.width, "width", spec.clip_id)[0]
    height = round_size(spec.request.height, "height", spec.clip_id)[0]
    return ClipEstimate(
        clip_id=spec.clip_id,
        row_number=spec.row_number,
        speech_seconds=timing.duration_seconds,
        frames=timing.frames,
        windows=timing.windows,
        segments=timing.segment_count,
        width=width,
        height=height,
        gpu_minutes=rate.gpu_seconds(timing.windows, width, height) / 60,
        source=rate.source,
    )

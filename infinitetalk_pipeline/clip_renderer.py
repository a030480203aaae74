"""One clip, from its spec to a stored, checked video and its catalog row: the core that the Dagster assets and
`infinitetalk render` share, and whose failure record the failure sensor reads. Plain Python, no Dagster.

    spec + timing -> fetch inputs -> fingerprint -> (unchanged, stored video verified: the kept record, `skipped`)
                  -> prepare (conform, masks) -> render on a worker -> check -> store the mp4 -> RenderRecord

The video is stored even when a check fails (someone will want to look at it), but only a clip whose checks all
pass gets a fingerprint, so a failed one is rendered again next time.

A render's scratch folder (conformed inputs, the downloaded mp4) lives under `<fetcher cache>/work/`, held by its
process (scratch.py): before each render, the folders of runs that were killed there (SIGKILL, OOM) are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast, get_args

import av
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from infinitetalk_pipeline.catalog import CatalogRow
from infinitetalk_pipeline.comfy.client import ProgressEvent, RenderResult
from infinitetalk_pipeline.comfy.errors import ComfyError, ComfyOutputMissing
from infinitetalk_pipeline.comfy.fleet import Fleet, Lineage
from infinitetalk_pipeline.errors import ClipInputError, PipelineError
from infinitetalk_pipeline.media.preview import preview_frame_markdown
from infinitetalk_pipeline.media.sources import FetchedMedia, MediaFetcher
from infinitetalk_pipeline.redact import redact_text, redact_url
from infinitetalk_pipeline.registry import ClipSpec, clear_failure, load_row, load_timing, save_row, save_timing
from infinitetalk_pipeline.render import Profile, clip_timing, fetch_media, prepare_clip, render_prepared
from infinitetalk_pipeline.scratch import scratch_dir, sweep
from infinitetalk_pipeline.segment_render import SegmentedRender, discard_kept, render_segments
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.storage import OutputStore, StoredVideoChanged
from infinitetalk_pipeline.timing import ClipTiming
from infinitetalk_pipeline.verify import CheckOutcome, Expectation, check_output, inspect_output
from infinitetalk_pipeline.workflows.templates import Template, load_template

WORK_DIR = "work"  # under the fetcher's cache dir: the scratch folders of every run on the machine


@dataclass(frozen=True)
class RenderRecord:
    """What one clip's render produced (or, `skipped`, what its unchanged earlier render produced)."""

    row: CatalogRow
    checks: tuple[CheckOutcome, ...]
    fingerprint: str | None  # None when a check failed: the next run renders the clip again
    preview: str  # markdown with the middle frame
    comfy_execution_seconds: float | None
    skipped: bool = False

    @property
    def clip_id(self) -> str:
        return self.row.clip_id

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def stored(self) -> dict[str, Any]:
        """The stored form (`catalog/rows/<clip_id>.json`): the catalog row plus the render's bookkeeping."""
        return dataclasses.asdict(self.row) | {
            "fingerprint": self.fingerprint,
            "comfy_execution_seconds": self.comfy_execution_seconds,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "preview": self.preview,
        }

    @classmethod
    def from_stored(cls, body: dict[str, Any]) -> RenderRecord:
        return cls(
            row=CatalogRow.from_dict(body),
            checks=tuple(CheckOutcome(**c) for c in body.get("checks", [])),
            fingerprint=body.get("fingerprint"),
            preview=body.get("preview", ""),
            comfy_execution_seconds=body.get("comfy_execution_seconds"),
            skipped=True,
        )


@dataclass(frozen=True)
class ClipFailure:
    """A clip's failure as the run records it (Dagster metadata) and the failure sensor reads it back."""

    clip_id: str
    error_type: str
    message: str  # names the clip and, for bad input, the field
    field: str | None
    transient: bool  # a retry may pass (worker down, object store hiccup); bad input never does

    @classmethod
    def of(cls, clip_id: str, exc: BaseException) -> ClipFailure:
        if isinstance(exc, ClipInputError):
            message = str(exc)
        elif isinstance(exc, PipelineError):
            message = f"clip {clip_id!r}: {exc}"
        else:  # a bug or an I/O failure below the library: still the clip's failure, not the run's
            message = f"clip {clip_id!r}: {type(exc).__name__}: {exc}"
        # S3UploadFailedError: boto3's upload manager wraps an S3 error answer (500, SlowDown) in it
        transient = (isinstance(exc, ComfyError) and exc.transient) or isinstance(
            exc, OSError | BotoCoreError | ClientError | S3UploadFailedError
        )
        field = exc.field if isinstance(exc, ClipInputError) else None
        # The message goes to the run log, the run's failure metadata and the CLI: library errors (httpx, botocore)
        # may quote an input's URL whole, credentials included.
        return cls(clip_id, type(exc).__name__, redact_text(message), field, transient)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint(
    spec: ClipSpec, timing: ClipTiming, profile: str, template: Template, media: dict[str, FetchedMedia]
) -> str:
    """What a render depends on: the request, the bytes of every input, the timing, the profile and the workflow
    file. Same fingerprint -> same video, so the render can be skipped."""
    body = json.dumps(
        [
            spec.request.model_dump(exclude_none=True, exclude={"clip_id"}),
            {role: fetched.sha256 for role, fetched in media.items()},
            _timing_body(timing),
            profile,
            hashlib.sha256(template.path.read_bytes()).hexdigest(),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _timing_body(timing: ClipTiming) -> dict[str, Any]:
    """The timing as the fingerprint holds it: an unsegmented clip's without `segments`, as before segments existed,
    so that no clip rendered earlier is rendered again (nor its prompts left on the fleet passed over)."""
    body = dataclasses.asdict(timing)
    if not timing.segments:
        del body["segments"]
    return body


def _lineage(clip_id: str, wanted: str, previous: dict[str, Any] | None, force: bool) -> Lineage | None:
    """The render's identity on the fleet: the clip and its fingerprint, so a retry or a re-run after a dead run
    adopts the prompt an earlier attempt left there. A forced render starts afresh; a stored render whose checks
    failed is never adopted again."""
    if force:
        return None
    failed = previous is not None and previous.get("fingerprint") is None and previous.get("comfy_prompt_id")
    # A segmented clip's row holds its segments' prompt ids, comma-separated.
    spent = frozenset(previous["comfy_prompt_id"].split(",")) if failed else frozenset()
    return Lineage(f"{clip_id}:{wanted}", spent)


class ClipRenderer:
    """Renders clips into one output store, on a fleet of ComfyUI workers, with one workflow profile."""

    def __init__(
        self,
        store: OutputStore,
        fetcher: MediaFetcher,
        fleet: Fleet,
        profile: str,
        log: logging.Logger | None = None,
        segmenting: Segmenting | None = None,
    ) -> None:
        if profile not in get_args(Profile):  # a resource's or the CLI's string: refused before any work
            raise PipelineError(f"unknown workflow profile {profile!r} (one of {', '.join(get_args(Profile))})")
        self.store = store
        self.fetcher = fetcher
        self.fleet = fleet
        self.profile: Profile = cast(Profile, profile)
        self.log = log or logging.getLogger(__name__)
        self.segmenting = segmenting or Segmenting()
        self.work_root = fetcher.cache_dir / WORK_DIR

    def measure_timing(self, spec: ClipSpec) -> ClipTiming:
        """Fetch the clip's speech, measure it exactly, derive frames and windows, and keep the result."""
        timing = clip_timing(spec.request, self.fetcher, spec.clip_id, segmenting=self.segmenting)
        save_timing(self.store, spec.clip_id, timing)
        return timing

    def timing(self, spec: ClipSpec) -> ClipTiming:
        """The kept timing, else a fresh measurement."""
        return load_timing(self.store, spec.clip_id) or self.measure_timing(spec)

    def _verified_skip(self, kept: RenderRecord, timing: ClipTiming) -> RenderRecord | None:
        """The kept record of an unchanged clip, with its checks re-evaluated on the stored video once that video is
        proven to be the one the record describes (size, sha256); None, with the reason logged, when the clip must
        be rendered again: the video changed or went missing, or fails a check now."""
        row = kept.row
        clip_id = row.clip_id
        want = Expectation(timing.frames, timing.fps, row.width, row.height, timing.duration_seconds)
        try:
            with (
                scratch_dir(self.work_root, f"verify-{clip_id}") as scratch,
                self.store.verified_copy(clip_id, row.size_bytes, row.sha256, scratch) as video,
            ):
                checks = check_output(inspect_output(video), want)
        except StoredVideoChanged as exc:
            self.log.warning(f"clip {clip_id!r}: stored video changed since its render ({exc}); rendering again")
            return None
        except (av.error.FFmpegError, IndexError) as exc:  # the recorded bytes, yet unreadable: render it anew
            self.log.warning(f"clip {clip_id!r}: stored video is not a readable video ({exc}); rendering again")
            return None
        failed = [f"{c.name}: {c.description}" for c in checks if not c.passed]
        if failed:
            self.log.warning(f"clip {clip_id!r}: stored video fails {'; '.join(failed)}; rendering again")
            return None
        self.log.info(
            f"clip {clip_id!r}: unchanged since its render, stored video verified ({row.output_uri}); skipping"
        )
        # The preview is kept: it was made from these very bytes (the sha256 matched) and costs a decode.
        rechecked = tuple(
            dataclasses.replace(c, description=f"{c.description} (re-checked on the stored video)") for c in checks
        )
        return dataclasses.replace(kept, checks=rechecked)

    def render(
        self,
        spec: ClipSpec,
        timing: ClipTiming,
        *,
        force: bool = False,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> RenderRecord:
        """The clip's stored, checked video; raises ClipInputError (bad input), ComfyError (render), or the store's
        errors. Skips the render when the fingerprint is unchanged and the stored video is still the recorded one
        (its checks re-evaluated on it), unless `force`."""
        clip_id = spec.clip_id
        sweep(self.work_root, self.log)  # a killed run never removed its folders; its locks are free now
        template = load_template(self.profile, spec.request.workflow_name)
        media = fetch_media(spec.request, self.fetcher, clip_id)
        wanted = fingerprint(spec, timing, self.profile, template, media)
        previous = load_row(self.store, clip_id)
        if not force and previous and previous.get("fingerprint") == wanted:
            skipped = self._verified_skip(RenderRecord.from_stored(previous), timing)
            if skipped:
                return skipped
        with scratch_dir(self.work_root, f"dub-{clip_id}") as scratch:
            prepared = prepare_clip(
                spec.request,
                self.fetcher,
                scratch / "prepared",
                profile=self.profile,
                clip_id=clip_id,
                timing=timing,
                media=media,
            )
            for warning in prepared.warnings:
                self.log.warning(warning)
            local = scratch / f"{clip_id}.mp4"
            segmented = f", {timing.segment_count} segments" if timing.segments else ""
            self.log.info(
                f"clip {clip_id!r}: rendering {template.name} ({self.profile}): "
                f"{timing.frames} frames, {timing.windows} window(s){segmented}"
            )
            lineage = _lineage(clip_id, wanted, previous, force)
            video_field = ref.field if (ref := spec.request.media("video")) else "video_path"  # V2V only
            started = time.monotonic()
            try:
                if timing.segments:
                    rendered: RenderResult | SegmentedRender = render_segments(
                        prepared,
                        self.fleet,
                        self.store,
                        scratch / "segments",
                        local,
                        key=f"{clip_id}:{wanted}" if lineage else f"{clip_id}:{wanted}:{uuid.uuid4()}",
                        spent=lineage.spent if lineage else frozenset(),
                        on_progress=on_progress,
                        check_upload=lambda media: self.fetcher.check_upload(media, clip_id, video_field),
                        log=self.log,
                    )
                else:
                    rendered = render_prepared(prepared, self.fleet, local, on_progress=on_progress, lineage=lineage)
            except ComfyOutputMissing:
                # Another run of the clip followed the same prompt, stored its video and released the worker's
                # files before this one downloaded them: its record is this render's.
                stored_meanwhile = load_row(self.store, clip_id)
                if force or not stored_meanwhile or stored_meanwhile.get("fingerprint") != wanted:
                    raise
                self.log.info(f"clip {clip_id!r}: stored meanwhile by another run of it")
                skipped = self._verified_skip(RenderRecord.from_stored(stored_meanwhile), timing)
                if skipped is None:
                    raise
                return skipped
            render_seconds = time.monotonic() - started
            if isinstance(rendered, SegmentedRender):  # its prompts' files went as each segment was kept
                prompt_ids, workers, execution = rendered.prompt_ids, rendered.workers, rendered.execution_seconds
                segments = rendered.segments_json()
            else:
                prompt_ids, workers = rendered.prompt_id, redact_url(rendered.worker_url)
                execution, segments = rendered.execution_seconds, None
            self.log.info(f"clip {clip_id!r}: rendered on {workers} in {render_seconds:.1f}s")
            want = Expectation(timing.frames, timing.fps, prepared.width, prepared.height, timing.duration_seconds)
            try:
                checks = tuple(check_output(inspect_output(local), want))
                preview = preview_frame_markdown(local)
            except (av.error.FFmpegError, IndexError) as exc:
                raise PipelineError(f"the rendered file is not a readable video with a video stream: {exc}") from exc
            stored = self.store.put_video(local, clip_id, metadata={"clip-id": clip_id})

        row = CatalogRow(
            clip_id=clip_id,
            manifest=spec.manifest,
            inputs=json.dumps({r: redact_url(m.source) for r, m in media.items()}, sort_keys=True),
            workflow=template.name,
            profile=self.profile,
            prompt=spec.request.prompt,
            width=prepared.width,
            height=prepared.height,
            frames=timing.frames,
            fps=float(timing.fps),
            duration_seconds=timing.frames / timing.fps,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            output_uri=stored.uri,
            comfy_prompt_id=prompt_ids,
            worker=workers,
            render_seconds=round(render_seconds, 3),
            rendered_at=datetime.now(UTC),
            windows=timing.windows,
            comfy_execution_seconds=execution,
            segments=segments,
        )
        passed = all(c.passed for c in checks)
        record = RenderRecord(
            row=row,
            checks=checks,
            fingerprint=wanted if passed else None,
            preview=preview,
            comfy_execution_seconds=execution,
        )
        save_row(self.store, clip_id, record.stored())
        if passed:
            clear_failure(self.store, clip_id)
        # Only now: until the row is saved, a retry adopts the prompt and its output, or the kept segments.
        if isinstance(rendered, RenderResult):
            self.fleet.release(rendered)
        discard_kept(self.store, clip_id, self.log)
        return record

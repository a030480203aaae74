"""A segmented clip's render: every segment a prompt of its own, in parallel on the fleet, joined into one video.

    prepared clip + its segments -> per segment: the speakers' stretch of audio (and for V2V the matching source
    frames) -> prompt on a free worker -> segment mp4, kept in the output store -> join: cross-fade over each
    segment's overlap, the clip's whole audio muxed over the picture (no audio seam)

A finished segment is kept in the store (`segments/<clip_id>/`) until the clip's row is saved, so a retry after a
failed segment renders that segment alone; the segments of a lineage are adopted from the fleet like a clip's
prompt, so a retry after a dead run takes over the prompts still queued or running there.

Two speakers render every segment in the `para` layout: their tracks are laid out on the clip's timeline first
(media/speech.py), so `add` (one after the other) is speaker 1 with speaker 2 silent, then the reverse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from botocore.exceptions import BotoCoreError, ClientError

from infinitetalk_pipeline.comfy.client import ProgressEvent
from infinitetalk_pipeline.comfy.errors import ComfyOutputMissing
from infinitetalk_pipeline.comfy.fleet import Fleet, Lineage
from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.media.join import cut_frames, join_segments
from infinitetalk_pipeline.media.sources import FetchedMedia
from infinitetalk_pipeline.media.speech import SpeechTracks, load_speech
from infinitetalk_pipeline.media.video import probe_video
from infinitetalk_pipeline.redact import redact_text, redact_url
from infinitetalk_pipeline.render import PreparedClip, local_media, render_prepared
from infinitetalk_pipeline.storage import OutputStore
from infinitetalk_pipeline.timing import FPS, ClipTiming, Segment

SEGMENTS_PREFIX = "segments/"


@dataclass(frozen=True)
class SegmentOutcome:
    """One segment's prompt: where it rendered, and whether an earlier attempt had (`kept`: taken from the store)."""

    segment: Segment
    prompt_id: str
    worker: str
    execution_seconds: float | None
    kept: bool = False

    def record(self) -> dict[str, Any]:
        """The segment as the catalog row lists it."""
        s = self.segment
        return {
            "index": s.index,
            "start_frame": s.start_frame,
            "end_frame": s.end_frame,
            "overlap_frames": s.overlap_frames,
            "frames": s.frames,
            "windows": s.windows,
            "start_seconds": round(s.start_frame / FPS, 3),
            "end_seconds": round(s.end_frame / FPS, 3),
            "worker": self.worker,
            "prompt_id": self.prompt_id,
            "execution_seconds": self.execution_seconds,
        }


@dataclass(frozen=True)
class SegmentedRender:
    """A joined clip: its segments' outcomes (their prompts' files are released on the workers already: each segment
    is kept in the store from the moment it is downloaded)."""

    outcomes: tuple[SegmentOutcome, ...]

    @property
    def prompt_ids(self) -> str:
        return ",".join(o.prompt_id for o in self.outcomes)

    @property
    def workers(self) -> str:
        return ",".join(dict.fromkeys(o.worker for o in self.outcomes))

    @property
    def execution_seconds(self) -> float | None:
        seconds = [o.execution_seconds for o in self.outcomes]
        return None if None in seconds else round(sum(s for s in seconds if s is not None), 3)

    def segments_json(self) -> str:
        return json.dumps([o.record() for o in self.outcomes])


def segment_names(clip_id: str) -> str:
    return f"{SEGMENTS_PREFIX}{clip_id}/"


def render_segments(
    prepared: PreparedClip,
    fleet: Fleet,
    store: OutputStore,
    scratch: Path,
    dest: Path,
    *,
    key: str,
    spent: frozenset[str] = frozenset(),
    on_progress: Callable[[ProgressEvent], None] | None = None,
    check_upload: Callable[[FetchedMedia], None] | None = None,
    log: logging.Logger | None = None,
) -> SegmentedRender:
    """Render `prepared` (whose timing has segments) segment by segment and join them into `dest`. `key` names the
    render (clip and fingerprint): it keys the kept segments and the prompts' lineages; `spent` prompt ids are
    never adopted (an output that failed its checks); `check_upload(media)` refuses a segment's V2V source
    frames that the workers would not take (the whole clip's are never uploaded)."""
    log = log or logging.getLogger(__name__)
    timing = prepared.timing
    clip_id = prepared.clip_id
    speech = load_speech(_speech_paths(prepared), prepared.request.multi_audio_type)
    total = len(timing.segments)
    outcomes: dict[int, SegmentOutcome] = {}
    paths: dict[int, Path] = {}
    todo: list[Segment] = []
    for segment in timing.segments:
        kept = _kept(store, clip_id, key, segment, scratch)
        if kept is None:
            todo.append(segment)
            continue
        paths[segment.index], outcomes[segment.index] = kept
        log.info(f"clip {clip_id!r}: segment {segment.index + 1}/{total} kept from an earlier attempt")

    def one(segment: Segment) -> tuple[Path, SegmentOutcome]:
        part = _segment_clip(prepared, speech, segment, scratch / f"s{segment.index:03d}", check_upload)
        out = scratch / f"s{segment.index:03d}.mp4"
        lineage = Lineage(f"{key}:s{segment.index}", spent)
        try:
            result = render_prepared(part, fleet, out, on_progress=on_progress, lineage=lineage)
        except ComfyOutputMissing:
            # Another run of the clip followed this very prompt, kept its output and released it first.
            kept = _kept(store, clip_id, key, segment, scratch)
            if kept is None:
                raise
            return kept
        rendered = probe_video(out).frames
        if rendered != segment.frames:  # a join would shift every later segment against the one audio track
            raise PipelineError(
                f"segment {segment.index + 1}/{total} came back with {rendered} frames instead of {segment.frames}"
            )
        outcome = SegmentOutcome(segment, result.prompt_id, redact_url(result.worker_url), result.execution_seconds)
        _keep(store, clip_id, key, outcome, out)
        # Kept in the store now, which a retry takes it from: the worker's copy can go at once.
        fleet.release(result)
        log.info(
            f"clip {clip_id!r}: segment {segment.index + 1}/{total} (frames {segment.start_frame}-"
            f"{segment.end_frame}) rendered on {outcome.worker}"
        )
        return out, outcome

    failures: list[tuple[Segment, BaseException]] = []
    if todo:
        # As many at once as the fleet takes; each waits for its own worker, so the segments spread over them all.
        lanes = min(len(todo), len(fleet.urls) * (fleet.queue_depth + 1))
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix=f"segment-{clip_id}") as pool:
            futures = {pool.submit(one, segment): segment for segment in todo}
            for future in as_completed(futures):
                segment = futures[future]
                try:
                    paths[segment.index], outcomes[segment.index] = future.result()
                except Exception as exc:  # the other segments go on, and are kept for the retry
                    # The run's log is not the fleet's: a worker URL in the message may carry credentials.
                    problem = redact_text(str(exc))
                    log.warning(f"clip {clip_id!r}: segment {segment.index + 1}/{total} failed: {problem}")
                    failures.append((segment, exc))
    if failures:
        # The first failure itself goes up: its type says whether a retry may pass (a lost worker) or not.
        failures.sort(key=lambda f: f[0].index)
        first = failures[0][1]
        failed = ", ".join(str(s.index + 1) for s, _ in failures)
        first.add_note(
            f"clip {clip_id!r}: segment(s) {failed} of {total} failed; the {total - len(failures)} others are kept "
            "for the retry of this render"
        )
        raise first
    order = [s.index for s in timing.segments]
    audio = speech.write_mix(timing.frames / timing.fps, scratch / "clip-audio.wav")
    join_segments([paths[i] for i in order], [s.overlap_frames for s in timing.segments], audio, dest, fps=timing.fps)
    return SegmentedRender(tuple(outcomes[i] for i in order))


def discard_kept(store: OutputStore, clip_id: str, log: logging.Logger) -> None:
    """Remove the clip's kept segments (this render's, and any an earlier request or attempt of the clip left). A
    failure is said, never raised: the clip is stored and recorded by then."""
    try:
        store.delete_many(store.list_names(segment_names(clip_id)))
    except (OSError, RuntimeError, BotoCoreError, ClientError) as exc:
        log.warning(f"clip {clip_id!r}: its kept segments could not be removed ({redact_text(str(exc))})")


def _speech_paths(prepared: PreparedClip) -> list[Path]:
    return [prepared.media[role].path for role in ("audio", "audio_2") if role in prepared.media]


def _segment_clip(
    prepared: PreparedClip,
    speech: SpeechTracks,
    segment: Segment,
    folder: Path,
    check_upload: Callable[[FetchedMedia], None] | None,
) -> PreparedClip:
    """The clip narrowed to one segment: its frames, every speaker's stretch of audio, for V2V its source frames."""
    start, end, fps = segment.render_start, segment.end_frame, prepared.timing.fps
    media = dict(prepared.media)
    for track, role in enumerate(("audio", "audio_2")[: len(speech.tracks)]):
        path = speech.write_span(track, start, end, folder / f"{role}.wav", fps)
        media[role] = local_media(path, "wav", media[role].source)
    if "video" in media:
        path = cut_frames(media["video"].path, folder / "video.mp4", start, segment.frames, fps=fps)
        media["video"] = local_media(path, "mp4", media["video"].source)
        if check_upload is not None:
            check_upload(media["video"])
    seconds = segment.frames / fps
    timing = ClipTiming(
        fps=fps,
        frames=segment.frames,
        audio_seconds=(seconds,) * len(speech.tracks),
        duration_seconds=seconds,
        windows=segment.windows,
        frames_source="audio",
    )
    request = prepared.request.model_copy(update={"multi_audio_type": "para"})
    return dataclasses.replace(
        prepared, clip_id=f"{prepared.clip_id}-s{segment.index:03d}", request=request, media=media, timing=timing
    )


def _name(clip_id: str, key: str, segment: Segment) -> str:
    digest = hashlib.sha256(json.dumps([key, dataclasses.asdict(segment)]).encode()).hexdigest()[:16]
    return f"{segment_names(clip_id)}{segment.index:03d}-{digest}"


def _keep(store: OutputStore, clip_id: str, key: str, outcome: SegmentOutcome, video: Path) -> None:
    name = _name(clip_id, key, outcome.segment)
    store.put_bytes(f"{name}.mp4", video.read_bytes())
    # Written last: a record names a complete video.
    store.put_bytes(f"{name}.json", json.dumps(dataclasses.asdict(outcome)).encode())


def _kept(
    store: OutputStore, clip_id: str, key: str, segment: Segment, scratch: Path
) -> tuple[Path, SegmentOutcome] | None:
    """The segment as an earlier attempt of this very render stored it, when its video is whole."""
    name = _name(clip_id, key, segment)
    record = store.get_bytes(f"{name}.json")
    video = store.get_bytes(f"{name}.mp4") if record else None
    if record is None or video is None:
        return None
    path = scratch / f"s{segment.index:03d}.kept.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(video)
    try:
        with av.open(str(path)) as container:
            frames = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    except (av.error.FFmpegError, IndexError):
        return None
    if frames != segment.frames:
        return None
    body = json.loads(record)
    return path, SegmentOutcome(**{**body, "segment": segment, "kept": True})

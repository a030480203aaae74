"""One clip, end to end: request -> local media + timing -> bound workflow -> render on ComfyUI -> local mp4.

The `infinitetalk render` command and the Dagster assets both go through here, so the two paths never diverge.
Storage (local dir or S3) and the catalog come after this, in the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from infinitetalk_pipeline.comfy.client import ComfyClient, ProgressEvent, RenderResult
from infinitetalk_pipeline.comfy.fleet import Fleet, Lineage
from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.media.audio import audio_duration
from infinitetalk_pipeline.media.masks import conform_mask, layout_masks, save_mask
from infinitetalk_pipeline.media.sniff import MediaError
from infinitetalk_pipeline.media.sources import FetchedMedia, MediaFetcher
from infinitetalk_pipeline.media.speech import load_speech
from infinitetalk_pipeline.media.video import conform_video
from infinitetalk_pipeline.segments import Segmenting, plan_segments
from infinitetalk_pipeline.spec import MAX_FRAMES, ClipRequest, MediaRole
from infinitetalk_pipeline.timing import ClipTiming, compute_timing
from infinitetalk_pipeline.worker.capabilities import FALLBACK_ATTENTION, attention_mode
from infinitetalk_pipeline.workflows.templates import Template, load_template

Profile = Literal["preview", "infinitetalk"]
SIZE_MULTIPLE = 16  # InfiniteTalk's latent grid; the original template resized with divisible_by=16
# Seconds one render may take on a worker, end to end: the CLI's default and the code location's
# (INFINITETALK_RENDER_DEADLINE_SECONDS), from which the render job's max runtime derives.
DEFAULT_RENDER_DEADLINE = 3 * 3600.0


@dataclass(frozen=True)
class PreparedClip:
    """Everything a render needs, on local disk: nothing left to fetch or decide."""

    clip_id: str
    request: ClipRequest
    template: Template
    media: dict[MediaRole, FetchedMedia]
    timing: ClipTiming
    width: int
    height: int
    warnings: tuple[str, ...] = field(default=())

    def binding_values(
        self, uploaded: dict[MediaRole, str], attention_mode: str = FALLBACK_ATTENTION
    ) -> dict[str, Any]:
        """Values for the template's bindings; only the ones the template declares are passed on."""
        values: dict[str, Any] = {
            "attention_mode": attention_mode,
            "prompt": self.request.prompt,
            "width": self.width,
            "height": self.height,
            "frames": self.timing.frames,
            "fps": self.timing.fps,
            "audio_seconds": self.timing.frames / self.timing.fps,
            "seed": self.request.seed,
            "multi_audio_type": self.request.multi_audio_type,
            "filename_prefix": f"infinitetalk/{self.clip_id}",
            **uploaded,
        }
        if self.request.negative_prompt is not None:
            values["negative_prompt"] = self.request.negative_prompt
        return {k: v for k, v in values.items() if k in self.template.bindings}


def round_size(value: int, name: str, clip_id: str) -> tuple[int, str | None]:
    """Nearest multiple of 16 (never below 16), with a warning when it changed."""
    rounded = max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
    if rounded == value:
        return value, None
    return rounded, f"clip {clip_id!r}: {name} {value} rounded to {rounded} (a multiple of {SIZE_MULTIPLE})"


def clip_timing(
    request: ClipRequest,
    fetcher: MediaFetcher,
    clip_id: str,
    fps: int = 25,
    segmenting: Segmenting | None = None,
) -> ClipTiming:
    """Fetch the speech tracks and turn their exact durations into a frame count; a clip longer than the segment
    threshold gets its segments, cut at pauses of the decoded speech."""
    segmenting = segmenting or Segmenting()
    refs = request.speaker_audio()
    fetched = [fetcher.fetch(ref, clip_id) for ref in refs]
    seconds = []
    for ref, media in zip(refs, fetched, strict=True):
        try:
            seconds.append(audio_duration(media.path))
        except MediaError as exc:
            raise exc.for_input(clip_id, ref.field) from exc
    timing = compute_timing(seconds, fps=fps, multi_audio_type=request.multi_audio_type, max_frame=request.max_frame)
    field = ", ".join(ref.field for ref in refs)
    if segmenting.splits(timing.frames, fps):
        try:
            speech = load_speech([m.path for m in fetched], request.multi_audio_type)
        except MediaError as exc:
            raise exc.for_input(clip_id, field) from exc
        return timing.segmented(plan_segments(speech.frame_levels(timing.frames, fps), timing.frames, segmenting, fps))
    if timing.frames > MAX_FRAMES:
        raise ClipInputError(
            clip_id,
            field,
            f"{timing.duration_seconds:.2f} s of speech needs {timing.frames} frames; one prompt stops at "
            f"{MAX_FRAMES} ({MAX_FRAMES / fps:.2f} s) and segmentation is off: turn it on, or set max_frame",
        )
    return timing


def prepare_clip(
    request: ClipRequest,
    fetcher: MediaFetcher,
    workdir: Path,
    *,
    profile: Profile = "preview",
    clip_id: str | None = None,
    timing: ClipTiming | None = None,
    media: dict[MediaRole, FetchedMedia] | None = None,
) -> PreparedClip:
    """Fetch (unless `media` is given) and check every input of a clip. Raises ClipInputError naming the clip and
    field on bad input."""
    clip_id = clip_id or request.clip_id or "clip"
    template = load_template(profile, request.workflow_name)
    timing = timing or clip_timing(request, fetcher, clip_id, fps=template.fps)
    width, w_warn = round_size(request.width, "width", clip_id)
    height, h_warn = round_size(request.height, "height", clip_id)
    # Returned, not logged: the caller logs them once, to its own log (the run's, the CLI's stderr).
    warnings = tuple(w for w in (w_warn, h_warn) if w)

    media = dict(media or fetch_media(request, fetcher, clip_id))
    if request.input_type == "video":
        visual_ref = request.media("video")
        assert visual_ref is not None  # guaranteed by ClipRequest validation
        # Conformed here, not in the graph, so preview and InfiniteTalk graphs get the very same 25 fps frames.
        workdir.mkdir(parents=True, exist_ok=True)
        conformed = workdir / f"{clip_id}.{media['video'].sha256[:16]}.{timing.frames}f.mp4"
        try:
            conform_video(media["video"].path, conformed, frames=timing.frames, fps=timing.fps, fit=request.video_fit)
        except MediaError as exc:
            raise exc.for_input(clip_id, visual_ref.field) from exc
        media["video"] = local_media(conformed, "mp4", media["video"].source)
        if not timing.segments:  # re-encoded: it may still be too big (a segmented clip uploads its segments' cuts)
            fetcher.check_upload(media["video"], clip_id, visual_ref.field)
    if request.person_count == "multi":
        media.update(_speaker_masks(request, media, workdir, clip_id, width, height))

    return PreparedClip(
        clip_id=clip_id,
        request=request,
        template=template,
        media=media,
        timing=timing,
        width=width,
        height=height,
        warnings=warnings,
    )


def fetch_media(request: ClipRequest, fetcher: MediaFetcher, clip_id: str) -> dict[MediaRole, FetchedMedia]:
    """The clip's portrait or source video, its speech tracks and any mask images, as local files (the fetcher
    caches them)."""
    visual_role: MediaRole = "image" if request.input_type == "image" else "video"
    visual_ref = request.media(visual_role)
    assert visual_ref is not None  # guaranteed by ClipRequest validation
    media = {visual_role: fetcher.fetch(visual_ref, clip_id)}
    for role, ref in zip(("audio", "audio_2"), request.speaker_audio(), strict=False):
        media[role] = fetcher.fetch(ref, clip_id)
    for ref in request.speaker_masks():
        media[ref.role] = fetcher.fetch(ref, clip_id)
    return media


def _speaker_masks(
    request: ClipRequest, media: dict[MediaRole, FetchedMedia], workdir: Path, clip_id: str, width: int, height: int
) -> dict[MediaRole, FetchedMedia]:
    """Both speakers' masks at the clip's size, as PNG files: the request's images conformed, else its layout."""
    roles: tuple[MediaRole, MediaRole] = ("mask", "mask_2")
    refs = request.speaker_masks()
    if refs:
        images = []
        for ref in refs:
            try:
                images.append(conform_mask(media[ref.role].path, width, height))
            except MediaError as exc:
                raise exc.for_input(clip_id, ref.field) from exc
        sources = [media[ref.role].source for ref in refs]
    else:
        images = list(layout_masks(width, height, request.speaker_layout))
        sources = [f"layout:{request.speaker_layout}:speaker{n}" for n in (1, 2)]
    out: dict[MediaRole, FetchedMedia] = {}
    for role, image, source in zip(roles, images, sources, strict=True):
        path = save_mask(image, workdir / f"{clip_id}.{role}.{width}x{height}.png")
        out[role] = local_media(path, "png", source)
    return out


def local_media(path: Path, format: str, source: str) -> FetchedMedia:
    """A file this layer made from a fetched input (conformed video, mask), described like a fetched one."""
    return FetchedMedia(path=path, digest=None, format=format, size_bytes=path.stat().st_size, source=source)


def render_prepared(
    prepared: PreparedClip,
    fleet: Fleet,
    dest: Path,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    lineage: Lineage | None = None,
) -> RenderResult:
    """Render on the fleet and stream the mp4 to `dest`. For whichever worker the prompt goes to, the inputs are
    uploaded there and the template bound with the best attention kernel that worker has. With a `lineage`, a
    render of it that an earlier attempt left on the fleet is adopted."""

    def graph_for(client: ComfyClient) -> dict[str, Any]:
        uploaded = {role: client.upload(media.path, sha256=media.sha256) for role, media in prepared.media.items()}
        bindings = prepared.template.bindings
        attention = attention_mode(client.worker_info()) if "attention_mode" in bindings else FALLBACK_ATTENTION
        return prepared.template.bind(prepared.binding_values(uploaded, attention))

    label = f"clip {prepared.clip_id!r}"
    output_node = prepared.template.output_node
    return fleet.render(graph_for, output_node, dest, label=label, on_progress=on_progress, lineage=lineage)

"""How many frames a clip renders, from its audio durations, and how many InfiniteTalk windows that costs.

Every workflow renders at 25 fps (InfiniteTalk's native rate); V2V sources are conformed to 25 fps before
upload (media/video.py), so one frame formula serves all four workflows. A clip longer than the segment threshold
is rendered as segments (segments.py plans them at pauses): its windows are those of its segments' prompts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

FPS = 25
WINDOW_FRAMES = 81  # frames per InfiniteTalk window
WINDOW_STRIDE = 72  # a window advances by 81 - 9 motion frames

MultiAudioType = Literal["para", "add"]


def windows(frames: int) -> int:
    """InfiniteTalk windows for `frames` frames: 1 + ceil((N - 81) / 72) past the first window, else 1."""
    if frames <= WINDOW_FRAMES:
        return 1
    return 1 + math.ceil((frames - WINDOW_FRAMES) / WINDOW_STRIDE)


def frames_for(seconds: float, fps: int = FPS) -> int:
    """Frames covering `seconds`: ceil, so the video never ends before the speech does.

    The product is rounded to 1e-6 first: 2.0 s is 50 frames even when the float reads 50.00000000000001.
    """
    return max(1, math.ceil(round(seconds * fps, 6)))


@dataclass(frozen=True)
class Segment:
    """One prompt of a segmented clip: it contributes frames [start_frame, end_frame) of the clip, and renders
    `overlap_frames` more before them, which are cross-faded with the end of the previous segment."""

    index: int
    start_frame: int
    end_frame: int
    overlap_frames: int = 0

    @property
    def render_start(self) -> int:
        return self.start_frame - self.overlap_frames

    @property
    def frames(self) -> int:
        """Frames this segment's prompt renders."""
        return self.end_frame - self.render_start

    @property
    def windows(self) -> int:
        return windows(self.frames)


@dataclass(frozen=True)
class ClipTiming:
    fps: int
    frames: int
    audio_seconds: tuple[float, ...]
    duration_seconds: float  # what the frames cover: the longer track (para) or the sum (add)
    windows: int  # of the one prompt, or the sum over the segments' prompts
    frames_source: Literal["audio", "max_frame"]
    segments: tuple[Segment, ...] = ()  # empty: one prompt renders the whole clip

    @property
    def segment_count(self) -> int:
        return len(self.segments) or 1

    def segmented(self, segments: tuple[Segment, ...]) -> ClipTiming:
        """This timing rendered as `segments` (one segment is no segmentation)."""
        if len(segments) <= 1:
            return replace(self, segments=(), windows=windows(self.frames))
        return replace(self, segments=segments, windows=sum(s.windows for s in segments))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> ClipTiming:
        return cls(
            **{
                **body,
                "audio_seconds": tuple(body["audio_seconds"]),
                "segments": tuple(Segment(**s) for s in body.get("segments", ())),
            }
        )


def compute_timing(
    audio_seconds: list[float],
    *,
    fps: int = FPS,
    multi_audio_type: MultiAudioType = "para",
    max_frame: int | None = None,
) -> ClipTiming:
    """Frames for one clip. `para` (both speak at once) lasts as long as the longer track, `add` (one after
    the other) as long as their sum; a user's `max_frame` overrides the audio."""
    if not audio_seconds:
        raise ValueError("at least one audio duration is needed")
    if any(not math.isfinite(s) or s <= 0 for s in audio_seconds):
        raise ValueError(f"audio durations must be positive seconds, got {audio_seconds}")
    if multi_audio_type not in ("para", "add"):
        raise ValueError(f"multi_audio_type must be 'para' or 'add', got {multi_audio_type!r}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    duration = sum(audio_seconds) if multi_audio_type == "add" else max(audio_seconds)
    source: Literal["audio", "max_frame"]
    if max_frame is not None:
        if max_frame < 1:
            raise ValueError(f"max_frame must be at least 1, got {max_frame}")
        frames, source = max_frame, "max_frame"
    else:
        frames, source = frames_for(duration, fps), "audio"
    return ClipTiming(
        fps=fps,
        frames=frames,
        audio_seconds=tuple(audio_seconds),
        duration_seconds=duration,
        windows=windows(frames),
        frames_source=source,
    )

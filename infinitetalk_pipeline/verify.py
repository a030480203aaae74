"""What a rendered mp4 really holds, and whether that is what the clip asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from infinitetalk_pipeline.media.audio import audio_duration


@dataclass(frozen=True)
class OutputFacts:
    size_bytes: int
    frames: int
    fps: float
    width: int
    height: int
    video_seconds: float
    audio_seconds: float | None  # None: no audio stream


@dataclass(frozen=True)
class Expectation:
    frames: int
    fps: float
    width: int
    height: int
    speech_seconds: float  # the (mixed) speech the video must carry

    @property
    def audio_seconds(self) -> float:
        # The graphs trim the audio to the video, and the video is ceil(speech * fps) frames long (or max_frame).
        return min(self.speech_seconds, self.frames / self.fps)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str


def inspect_output(path: Path) -> OutputFacts:
    """Counts the video packets (no decoding) and measures the audio with the exact reader: a packet sum would
    count AAC's priming and padding (tens of ms) as sound."""
    size = path.stat().st_size
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate or video.guessed_rate or 0)
        width, height = video.codec_context.width, video.codec_context.height
        has_audio = bool(container.streams.audio)
        frames = sum(1 for packet in container.demux(video) if packet.size)
    audio_seconds = audio_duration(path) if has_audio else None
    return OutputFacts(
        size_bytes=size,
        frames=frames,
        fps=fps,
        width=width,
        height=height,
        video_seconds=frames / fps if fps else 0.0,
        audio_seconds=audio_seconds,
    )


# The names `check_output` gives its outcomes, in its order (the Dagster check specs are declared from them).
CHECK_NAMES = ("frames_match_audio", "has_audio_stream", "size_as_requested", "file_not_empty")


def check_output(facts: OutputFacts, want: Expectation) -> list[CheckOutcome]:
    """The four checks of a rendered clip; tolerance is one frame."""
    one_frame = 1.0 / want.fps
    audio_ok = facts.audio_seconds is not None and abs(facts.audio_seconds - want.audio_seconds) <= one_frame
    return [
        CheckOutcome(
            "frames_match_audio",
            facts.frames == want.frames and abs(facts.fps - want.fps) < 0.01 and audio_ok,
            f"{facts.frames} frames at {facts.fps:g} fps (want {want.frames} at {want.fps:g}); audio "
            f"{facts.audio_seconds if facts.audio_seconds is not None else 'missing'} s "
            f"(want {want.audio_seconds:.3f} s ± {one_frame:.3f})",
        ),
        CheckOutcome(
            "has_audio_stream",
            facts.audio_seconds is not None and facts.audio_seconds > 0,
            "audio stream present" if facts.audio_seconds else "no audio stream",
        ),
        CheckOutcome(
            "size_as_requested",
            (facts.width, facts.height) == (want.width, want.height),
            f"{facts.width}x{facts.height} (want {want.width}x{want.height})",
        ),
        CheckOutcome("file_not_empty", facts.size_bytes > 0 and facts.frames > 0, f"{facts.size_bytes} bytes"),
    ]

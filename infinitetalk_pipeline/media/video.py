"""Source videos for V2V: probe them, and conform them to the clip's frame rate and frame count.

InfiniteTalk renders at 25 fps, so a source at any other rate is re-timed (each output frame shows the source
frame on screen at that instant) and cut or extended to exactly the clip's frame count before upload. The
preview and the InfiniteTalk graphs then receive identical frames, and the frame formula in timing.py holds
for every workflow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import av.error
import numpy as np

from infinitetalk_pipeline.media.atomic import atomic_output
from infinitetalk_pipeline.media.sniff import MediaError, describe

VideoFit = Literal["loop", "pingpong", "freeze"]
DEFAULT_FIT: VideoFit = "pingpong"  # no visible jump at the seam, unlike loop; livelier than a frozen frame

_EPS = 1e-6  # seconds; absorbs float error in timestamp comparisons

__all__ = ["DEFAULT_FIT", "MediaError", "VideoFit", "VideoInfo", "conform_video", "probe_video"]


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frames: int
    duration: float
    width: int  # upright, after rotation
    height: int
    rotation: int  # display-matrix rotation, counterclockwise degrees: 0, 90, 180 or 270


def probe_video(path: Path) -> VideoInfo:
    """Frame rate, frame count, duration, upright size and rotation of the first video stream.

    Header values where the container has them; otherwise the packets are counted (WebM/MKV carry no frame
    count).
    One frame is decoded: the rotation lives in the frames' display matrix.
    """
    path = Path(path)
    found = describe(path)
    if found.kind != "video":
        raise MediaError(f"expected a video, got a {found.format} {found.kind} file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"the {found.format} file has no video track")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise MediaError("the video has no frame rate")
            first = next(container.decode(stream), None)
            if first is None:
                raise MediaError("the video has no decodable frames")
            rotation = (first.rotation or 0) % 360
            frames = stream.frames
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            else:
                duration = 0.0
            if not frames:
                container.seek(0)
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            if not duration:
                duration = frames / float(rate)
    except av.error.FFmpegError as exc:
        raise MediaError(f"unreadable {found.format} video: {exc.strerror or exc}") from None
    w, h = first.width, first.height
    if rotation in (90, 270):
        w, h = h, w
    return VideoInfo(fps=float(rate), frames=frames, duration=duration, width=w, height=h, rotation=rotation)


def fit_order(index: int, available: int, fit: VideoFit) -> int:
    """Which of `available` re-timed source frames output frame `index` shows once the source has run out."""
    if index < available:
        return index
    if fit == "freeze" or available == 1:
        return available - 1
    if fit == "loop":
        return index % available
    period = 2 * (available - 1)  # 0 1 .. n-1 n-2 .. 1, then again
    phase = index % period
    return phase if phase < available else period - phase


def conform_video(src: Path, dest: Path, frames: int, fps: int = 25, fit: VideoFit = DEFAULT_FIT) -> Path:
    """Write `dest`: an H.264 mp4 (no audio) of exactly `frames` upright frames at `fps`, re-timed from `src`.

    Longer sources are trimmed (decoding stops there); shorter ones are extended by `fit`. Frames are
    streamed: only loop/ping-pong keep the source's frames, in a temporary file beside `dest`, never in
    memory.
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if fit not in ("loop", "pingpong", "freeze"):
        raise ValueError(f"fit must be loop, pingpong or freeze, got {fit!r}")
    src, dest = Path(src), Path(dest)
    info = probe_video(src)
    with atomic_output(dest, "conform the video") as tmp:
        # Keep frames for replay only if the header says the source may run out (a wrong header costs a pass).
        keep = fit != "freeze" and info.duration * fps < frames + 1
        if not _write(src, tmp, info, frames, fps, fit, keep):
            _write(src, tmp, info, frames, fps, fit, keep=True)
    return dest


def _write(src: Path, tmp: Path, info: VideoInfo, frames: int, fps: int, fit: VideoFit, keep: bool) -> bool:
    """One pass; False when the source ran out and its frames were not kept for a loop/ping-pong."""
    with (
        av.open(str(src)) as inp,
        av.open(str(tmp), "w", format="mp4") as out,
        tempfile.TemporaryFile(dir=tmp.parent) as spill,
    ):
        in_stream = inp.streams.video[0]
        in_stream.thread_type = "AUTO"
        out_stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "17", "preset": "fast"})
        out_stream.width, out_stream.height = info.width & ~1, info.height & ~1  # yuv420p needs even sides
        out_stream.pix_fmt = "yuv420p"
        written = 0
        last: np.ndarray | None = None
        for rgb in _retimed(inp, in_stream, fps, info.fps):
            last = rgb[: out_stream.height, : out_stream.width]
            _encode(out, out_stream, last, written)
            if keep:
                spill.write(np.ascontiguousarray(last).tobytes())
            written += 1
            if written == frames:
                break
        if last is None:
            raise MediaError("the video has no decodable frames")
        if written < frames:
            if fit != "freeze" and not keep:
                return False
            kept = np.memmap(spill, dtype=np.uint8, mode="r", shape=(written, *last.shape)) if keep else None
            for index in range(written, frames):
                _encode(out, out_stream, last if kept is None else kept[fit_order(index, written, fit)], index)
        for packet in out_stream.encode():
            out.mux(packet)
    return True


def _retimed(
    container: av.container.InputContainer, stream: av.VideoStream, fps: int, source_fps: float
) -> Iterator[np.ndarray]:
    """Upright RGB frames at `fps`: output frame i shows the last source frame stamped at or before i/fps."""
    start: float | None = None
    shown: np.ndarray | None = None
    shown_at = 0.0
    shown_for = 1 / source_fps
    index = 0
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        if start is None:
            start = frame.time
        at = frame.time - start
        while shown is not None and index / fps < at - _EPS:
            yield shown
            index += 1
        shown = np.rot90(frame.to_ndarray(format="rgb24"), k=(frame.rotation or 0) // 90)
        shown_at = at
        if frame.duration and frame.time_base:
            shown_for = float(frame.duration * frame.time_base)
    # The last source frame stays on screen for its own duration.
    while shown is not None and index / fps < shown_at + shown_for - _EPS:
        yield shown
        index += 1


def _encode(out: av.container.OutputContainer, stream: av.VideoStream, rgb: np.ndarray, index: int) -> None:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    frame.pts = index
    for packet in stream.encode(frame):
        out.mux(packet)

"""Join a clip's rendered segments into one video over the clip's original audio, and cut V2V source frames.

A long clip is rendered as several segments. Segment k starts `overlaps[k]` frames before its boundary, so those
frames show the same instants as the last frames of segment k-1: they are cross-faded, which hides the change of
render instead of cutting from one to the other. The segments' own audio is ignored: the clip's whole audio is
muxed once over the joined frames, so the sound has no seam at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from fractions import Fraction
from itertools import chain, islice
from pathlib import Path

import av
import av.error
import numpy as np

from infinitetalk_pipeline.media.atomic import atomic_output
from infinitetalk_pipeline.media.sniff import MediaError
from infinitetalk_pipeline.media.video import VideoInfo, probe_video

_AAC_RATES = frozenset(av.codec.Codec("aac", "w").audio_rates or ())
_FALLBACK_RATE = 48000  # for a source rate AAC has no table for

__all__ = ["MediaError", "cut_frames", "join_segments"]


def join_segments(segments: Sequence[Path], overlaps: Sequence[int], audio: Path, dest: Path, *, fps: int = 25) -> Path:
    """Write `dest`: the segments' frames in order, each overlap cross-faded, with `audio` as its AAC soundtrack.

    `overlaps[k]` frames of segment k show the same instants as the last ones of segment k-1 (0: a hard cut;
    `overlaps[0]` is 0). The result has sum(segment frames) - sum(overlaps) frames at `fps`, and `audio` is cut
    to that length. Frames are streamed: only those waiting for a cross-fade are held in memory.
    """
    segments, dest = [Path(s) for s in segments], Path(dest)
    infos = _check_segments(segments, overlaps, fps)
    total = sum(info.frames for info in infos) - sum(overlaps)
    with atomic_output(dest, "join the segments") as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            video = _h264(out, fps, infos[0].width, infos[0].height)
            _mux_audio(out, Path(audio), total / fps)
            written = 0
            for yuv in _joined(segments, overlaps):
                _encode(out, video, yuv, written)
                written += 1
            for packet in video.encode():
                out.mux(packet)
        if written != total:
            raise MediaError(f"joined {written} frames instead of {total}: a segment's header miscounts its frames")
    return dest


def cut_frames(src: Path, dest: Path, start: int, count: int, *, fps: int = 25) -> Path:
    """Write `dest`: an H.264 mp4 (no audio) of frames [start, start + count) of the constant-rate video `src`."""
    if start < 0 or count < 1:
        raise ValueError(f"start must be at least 0 and count at least 1, got start={start}, count={count}")
    src, dest = Path(src), Path(dest)
    info = probe_video(src)
    if start + count > info.frames:
        raise MediaError(f"cannot cut frames {start}..{start + count - 1}: the video has only {info.frames} frames")
    with atomic_output(dest, "cut the video") as tmp:
        with av.open(str(tmp), "w", format="mp4") as out, closing(_frames(src)) as frames:
            stream = _h264(out, fps, info.width, info.height)
            written = 0
            for yuv in islice(frames, start, start + count):  # decoding stops at the last frame wanted
                _encode(out, stream, yuv, written)
                written += 1
            for packet in stream.encode():
                out.mux(packet)
        if written != count:
            raise MediaError(f"the video ends after {start + written} frames, its header says {info.frames}")
    return dest


def _check_segments(segments: Sequence[Path], overlaps: Sequence[int], fps: int) -> list[VideoInfo]:
    if not segments:
        raise MediaError("no segments to join")
    if len(overlaps) != len(segments):
        raise MediaError(f"{len(segments)} segments need {len(segments)} overlaps, got {len(overlaps)}")
    if overlaps[0] != 0:
        raise MediaError(f"the first segment has nothing to overlap: overlaps[0] must be 0, got {overlaps[0]}")
    if min(overlaps) < 0:
        raise MediaError(f"overlaps cannot be negative, got {list(overlaps)}")
    infos = [probe_video(path) for path in segments]
    first = infos[0]
    for k, info in enumerate(infos):
        if (info.width, info.height) != (first.width, first.height):
            raise MediaError(f"segment {k} is {info.width}x{info.height}, segment 0 is {first.width}x{first.height}")
        if info.rotation:
            raise MediaError(f"segment {k} is rotated {info.rotation} degrees; rendered segments never are")
        if abs(info.fps - fps) > 1e-3:
            raise MediaError(f"segment {k} runs at {info.fps:g} fps, not {fps}")
        after = overlaps[k + 1] if k + 1 < len(segments) else 0
        if overlaps[k] + after > info.frames:
            raise MediaError(
                f"segment {k} has {info.frames} frames, fewer than its overlaps with its neighbours "
                f"({overlaps[k]} + {after})"
            )
    return infos


def _joined(segments: Sequence[Path], overlaps: Sequence[int]) -> Iterator[np.ndarray]:
    """The joined frames: the first overlaps[k] of segment k blended with the last ones of segment k-1, the new
    segment weighing (j + 1) / (n + 1) in frame j of an overlap of n."""
    fading: deque[np.ndarray] = deque()  # the previous segment's last frames, each dropped once blended
    for k, path in enumerate(segments):
        n = overlaps[k]
        keep = overlaps[k + 1] if k + 1 < len(segments) else 0
        held: deque[np.ndarray] = deque()  # this segment's latest frames: the last `keep` fade into the next one
        decoded = 0
        with closing(_frames(path)) as frames:
            for j, yuv in enumerate(frames):
                if j < n:
                    w = np.float32((j + 1) / (n + 1))
                    yuv = np.rint(fading.popleft() * (1 - w) + yuv * w).astype(np.uint8)
                held.append(yuv)
                if len(held) > keep:
                    yield held.popleft()
                decoded = j + 1
        if decoded < n + keep:
            raise MediaError(f"segment {k} decodes to {decoded} frames, fewer than its overlaps ({n} + {keep})")
        fading = held


def _frames(path: Path) -> Generator[np.ndarray, None, None]:
    """Decoded frames as yuv420p arrays: the encoder's own format, so no colour conversion either way (and a
    linear blend in YUV is the same blend in RGB)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="yuv420p")


def _h264(out: av.container.OutputContainer, fps: int, width: int, height: int) -> av.VideoStream:
    stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "17", "preset": "fast"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return stream


def _encode(out: av.container.OutputContainer, stream: av.VideoStream, yuv: np.ndarray, index: int) -> None:
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = index
    for packet in stream.encode(frame):
        out.mux(packet)


def _mux_audio(out: av.container.OutputContainer, audio: Path, seconds: float) -> None:
    """Encode `audio` as AAC, cut at `seconds`. The mp4 muxer's edit list skips the encoder's priming samples, so
    the track starts exactly where the source does."""
    with av.open(str(audio)) as inp:
        if not inp.streams.audio:
            raise MediaError("the audio file has no audio track")
        source = inp.streams.audio[0]
        rate = source.rate if source.rate in _AAC_RATES else _FALLBACK_RATE
        # WAV often leaves the channel order unspecified, which AAC refuses: take the usual one for the count.
        layout = av.AudioLayout(f"{source.layout.nb_channels}c")
        stream = out.add_stream("aac", rate=rate, layout=layout)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        limit = round(seconds * rate)
        sent = 0
        # None flushes the resampler; decoding stops once the video's length is reached.
        resampled = (f for d in chain(inp.decode(source), [None]) for f in resampler.resample(d))
        for frame in resampled:
            take = min(frame.samples, limit - sent)
            if take < frame.samples:
                frame = _first_samples(frame, take)
            frame.pts = sent
            for packet in stream.encode(frame):
                out.mux(packet)
            sent += take
            if sent == limit:
                break
        for packet in stream.encode():
            out.mux(packet)


def _first_samples(frame: av.AudioFrame, samples: int) -> av.AudioFrame:
    planes = np.ascontiguousarray(frame.to_ndarray()[:, :samples], dtype=np.float32)  # fltp, from the resampler
    cut = av.AudioFrame.from_ndarray(planes, format="fltp", layout=frame.layout.name)
    cut.sample_rate = frame.sample_rate
    return cut

"""Speech tracks as samples: decoded whole, laid out on the clip's timeline, measured per video frame, and cut.

A segmented clip (segments.py) needs the samples three times: the loudness of each 1/25 s frame to find the
pauses, each segment's stretch of every speaker's track as the audio of its prompt, and the clip's whole audio
(the speakers mixed, or one after the other) muxed over the joined video. They are decoded once, with PyAV (every
format the pipeline accepts), at the first track's sample rate, at most two channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np
import soundfile as sf

from infinitetalk_pipeline.media.atomic import atomic_output
from infinitetalk_pipeline.media.audio import SNDFILE_FORMATS
from infinitetalk_pipeline.media.sniff import MediaError, describe
from infinitetalk_pipeline.timing import FPS, MultiAudioType

SILENCE_DB = -100.0  # the level of digital silence (log of 0), and of frames past the end of the speech


@dataclass(frozen=True)
class SpeechTracks:
    """Every speaker's track on the clip's timeline: float32 arrays (samples, channels) of one length and rate.

    `para`: the tracks start together (the shorter padded with silence); `add`: speaker 2 starts where speaker 1
    ends, each track silent while the other speaks. A single speaker has one track."""

    rate: int
    tracks: tuple[np.ndarray, ...]

    @property
    def samples(self) -> int:
        return len(self.tracks[0])

    def mix(self) -> np.ndarray:
        """What the clip sounds like: the speakers summed (the workflows' own merge), clipped to full scale."""
        return np.clip(np.sum(self.tracks, axis=0), -1.0, 1.0)

    def frame_levels(self, frames: int, fps: int = FPS) -> np.ndarray:
        """RMS level in dBFS of each video frame of the clip, the loudest speaker's: a frame is quiet only when every
        speaker is. Frames past the speech are silent."""
        levels = np.full(frames, SILENCE_DB)
        for track in self.tracks:
            mono = track.mean(axis=1)
            bounds = np.round(np.arange(frames + 1) * self.rate / fps).astype(np.int64)
            bounds = np.minimum(bounds, len(mono))
            # Up to the clip's last frame only (a max_frame may end it before the speech does).
            squares = np.concatenate([mono[: bounds[-1]].astype(np.float64) ** 2, [0.0]])
            power = np.add.reduceat(squares, bounds[:-1])
            counts = np.diff(bounds)
            with np.errstate(divide="ignore", invalid="ignore"):
                db = 10 * np.log10(np.where(counts > 0, power / np.maximum(counts, 1), 0.0))
            levels = np.maximum(levels, np.nan_to_num(np.maximum(db, SILENCE_DB), nan=SILENCE_DB))
        return levels

    def write_span(self, track: int, start_frame: int, end_frame: int, dest: Path, fps: int = FPS) -> Path:
        """Frames [start_frame, end_frame) of one speaker's track as a 16-bit WAV, padded with silence past the
        speech's end (the last frame covers the speech's last fraction of a frame)."""
        first, last = (round(f * self.rate / fps) for f in (start_frame, end_frame))
        span = self.tracks[track][first:last]
        if len(span) < last - first:
            span = np.concatenate([span, np.zeros((last - first - len(span), span.shape[1]), np.float32)])
        return _write_wav(span, self.rate, dest)

    def write_mix(self, seconds: float, dest: Path) -> Path:
        """The clip's audio (`mix`), at most `seconds` long, as a 16-bit WAV: the audio of the joined video."""
        return _write_wav(self.mix()[: round(seconds * self.rate)], self.rate, dest)


def load_speech(paths: Sequence[Path], layout: MultiAudioType = "para") -> SpeechTracks:
    """Decode the speakers' tracks (in order) and lay them out on the clip's timeline."""
    if not paths:
        raise ValueError("at least one speech track is needed")
    first = decode(paths[0])
    rate, channels = first[1], first[0].shape[1]
    decoded = [first[0], *(decode(p, rate=rate, channels=channels)[0] for p in paths[1:])]
    if len(decoded) == 1:
        return SpeechTracks(rate, (decoded[0],))
    if layout == "add":
        total = sum(len(d) for d in decoded)
        laid, at = [], 0
        for d in decoded:
            track = np.zeros((total, channels), np.float32)
            track[at : at + len(d)] = d
            laid.append(track)
            at += len(d)
        return SpeechTracks(rate, tuple(laid))
    longest = max(len(d) for d in decoded)
    return SpeechTracks(rate, tuple(np.pad(d, ((0, longest - len(d)), (0, 0))) for d in decoded))


def decode(path: Path, rate: int | None = None, channels: int | None = None) -> tuple[np.ndarray, int]:
    """The whole track as float32 (samples, channels), at `rate` and `channels` (default: the file's, at most two)."""
    read = _sndfile_read(path)
    if read is not None and read[1] == (rate or read[1]) and read[0].shape[1] == (channels or min(read[0].shape[1], 2)):
        return read
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError("the file has no audio track")
            stream = container.streams.audio[0]
            rate = rate or stream.rate
            channels = channels or min(stream.channels, 2)
            resampler = av.AudioResampler(format="flt", layout="mono" if channels == 1 else "stereo", rate=rate)
            chunks = [
                out.to_ndarray().reshape(-1, channels)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1, channels) for out in resampler.resample(None)]
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode the audio: {exc.strerror or exc}") from None
    if not chunks:
        raise MediaError("the audio track holds no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False), rate


def _sndfile_read(path: Path) -> tuple[np.ndarray, int] | None:
    """WAV, FLAC and Ogg through libsndfile, some 20 times faster than PyAV's decode; None for other formats (MP3's
    encoder delay, AAC's priming: FFmpeg removes them as the duration probe does)."""
    if describe(path).format not in SNDFILE_FORMATS:
        return None
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        return None
    return (data, rate) if len(data) else None


def _write_wav(samples: np.ndarray, rate: int, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest, "write the audio") as tmp:
        sf.write(tmp, samples, rate, subtype="PCM_16", format="WAV")
    return dest

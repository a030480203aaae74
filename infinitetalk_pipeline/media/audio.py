"""Exact audio duration, with the cheapest reader that is exact for the file's real format.

Readers, measured against a full decode (benchmarks/audio_probe.py):
- WAV/RF64/AIFF, FLAC, Ogg Vorbis/Opus/FLAC: libsndfile (soundfile) reads the sample count from the header or
  the last Ogg page. Exact for pipe-written WAV (0xFFFFFFFF sizes), RF64, WAVE_FORMAT_EXTENSIBLE, 24/32-bit,
  float; it removes Opus' pre-skip (FFmpeg's header keeps it: +6.5 ms).
- MP3 with a LAME/Xing gapless header, M4A/MP4/MOV/WebM/MKV: PyAV's container header (FFmpeg subtracts the
  encoder delay and padding), then a look at the last packets so that a cut-off file does not pass for whole.
- MP3 without such a header (VBR estimates come from the first frame's bitrate: off by seconds) and raw ADTS
  AAC: the sum of PyAV's packet durations, which demuxes without decoding.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import av.error
import soundfile as sf

from infinitetalk_pipeline.media.sniff import AUDIO_CAPABLE_VIDEO, HEAD_BYTES, MediaError, describe, id3_size

# Tolerance for "the file ends where its header says": one 25 fps frame.
_END_SLACK = 0.04
SNDFILE_FORMATS = frozenset({"wav", "rf64", "aiff", "flac", "ogg", "opus", "oga"})  # read exactly by libsndfile
_HEADER_FORMATS = frozenset({"m4a"}) | AUDIO_CAPABLE_VIDEO
# FFmpeg probes several packets by default; one is enough once the format is known (WAV opens 25x faster).
_PYAV_OPTIONS = {"max_probe_packets": "1"}

__all__ = ["MediaError", "audio_duration"]


def audio_duration(path: Path) -> float:
    """Seconds of audio in `path`, exact to well under one 25 fps frame. Raises MediaError for an empty,
    truncated, silent (no samples) or non-audio file."""
    path = Path(path)
    found = describe(path)
    if found.kind != "audio" and found.format not in AUDIO_CAPABLE_VIDEO:
        raise MediaError(f"expected audio, got a {found.format} {found.kind} file")
    if found.format in SNDFILE_FORMATS:
        seconds = _sndfile_duration(path, found.format)
    else:
        seconds = _pyav_duration(path, found.format)
    if seconds <= 0:
        raise MediaError(f"the {found.format} file holds no audio samples")
    return seconds


def _sndfile_duration(path: Path, fmt: str) -> float:
    try:
        with sf.SoundFile(path) as f:
            frames, rate = f.frames, f.samplerate
            if fmt == "flac" and frames > 0 and not _last_sample_readable(f):
                raise MediaError("the flac file is truncated (it ends before the length in its header)")
    except sf.LibsndfileError as exc:
        raise MediaError(f"unreadable {fmt} audio: {exc.error_string}") from None
    if fmt == "wav":
        _check_wav_complete(path, frames, rate)
    return frames / rate


def _last_sample_readable(f: sf.SoundFile) -> bool:
    """FLAC's STREAMINFO states the total even when the file was cut short: the last sample must be there."""
    try:
        f.seek(f.frames - 1)
        return len(f.read(1)) == 1
    except RuntimeError:  # libsndfile reports a failed seek past the data as a plain RuntimeError
        return False


def _check_wav_complete(path: Path, frames: int, rate: int) -> None:
    """libsndfile quietly counts only the samples present; a WAV whose data chunk declares more was cut short.

    Streamed WAVs declare 0 or 0xFFFFFFFF ("unknown") and are measured as they are.
    """
    chunks = _riff_chunks(path)
    declared = chunks.get(b"data", (0, b""))[0]
    fmt = chunks.get(b"fmt ")
    if declared in (0, 0xFFFFFFFF) or fmt is None or len(fmt[1]) < 14:
        return
    block_align = struct.unpack_from("<H", fmt[1], 12)[0]
    if block_align and declared // block_align > frames + round(_END_SLACK * rate):
        want = declared // block_align / rate
        raise MediaError(
            f"the wav file is truncated: {frames / rate:.3f} s present, {want:.3f} s declared in its header"
        )


def _riff_chunks(path: Path) -> dict[bytes, tuple[int, bytes]]:
    """The top-level chunks up to `data`: id -> (declared size, first 16 bytes of the body)."""
    chunks: dict[bytes, tuple[int, bytes]] = {}
    with open(path, "rb") as f:
        f.seek(12)
        while len(header := f.read(8)) == 8:
            cid, size = header[:4], struct.unpack("<I", header[4:])[0]
            body_at = f.tell()
            chunks[cid] = (size, f.read(16))
            if cid == b"data":
                break
            f.seek(body_at + size + (size & 1))  # chunks are padded to even sizes
    return chunks


def _pyav_duration(path: Path, fmt: str) -> float:
    with open(path, "rb") as f:
        tag = id3_size(f.read(HEAD_BYTES))
    if tag >= path.stat().st_size:
        raise MediaError(f"the {fmt} file is truncated (it ends inside its ID3 tag)")
    # FFmpeg parses a leading ID3 tag, cover art included (15 ms for 3 MB): start past it.
    options = {**_PYAV_OPTIONS, "skip_initial_bytes": str(tag)} if tag else _PYAV_OPTIONS
    try:
        with av.open(str(path), options=options) as container:
            if not container.streams.audio:
                raise MediaError(f"the {fmt} file has no audio track")
            stream = container.streams.audio[0]
            # A start time means FFmpeg found a LAME/Xing header with the encoder delay and padding.
            gapless = fmt == "mp3" and bool(stream.start_time)
            if fmt in _HEADER_FORMATS or gapless:
                seconds = _header_seconds(container, stream)
                if seconds is not None:
                    _check_end(container, stream, seconds, fmt)
                    return seconds
            return _packet_seconds(container, stream)
    except av.error.FFmpegError as exc:
        raise MediaError(f"unreadable {fmt} audio: {exc.strerror or exc}") from None


def _header_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _check_end(container: av.container.InputContainer, stream: av.AudioStream, seconds: float, fmt: str) -> None:
    """Seek to the last half second the header promises and demux it: a cut-off file has no packets there."""
    tb: Fraction = stream.time_base
    start = stream.start_time or 0
    container.seek(start + int(max(seconds - 0.5, 0) / tb), stream=stream, backward=True)
    end = None
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            end = float((packet.pts + (packet.duration or 0) - start) * tb)
    if end is None or end < seconds - _END_SLACK:
        have = "nothing" if end is None else f"{end:.3f} s"
        raise MediaError(f"the {fmt} file is truncated: its header declares {seconds:.3f} s, the data ends at {have}")


def _packet_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    ticks = sum(packet.duration or 0 for packet in container.demux(stream) if packet.size)
    return float(ticks * stream.time_base)

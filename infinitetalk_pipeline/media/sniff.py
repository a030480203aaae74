"""The real format of a media file, from its first bytes: names and extensions lie (a `.wav` that is an MP3).

Also home of `MediaError`, the error every media reader raises for an unusable file; the layer that knows the
clip turns it into a `ClipInputError` with `for_input`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from infinitetalk_pipeline.errors import ClipInputError, PipelineError

MediaKind = Literal["image", "audio", "video"]

# Enough for every signature below (the Ogg codec id sits at byte 28, the EBML doctype within the first 64
# bytes).
HEAD_BYTES = 64


class MediaError(PipelineError):
    """A media file cannot be used: empty, truncated, not the expected kind, undecodable."""

    def for_input(self, clip_id: str | None, field: str | None) -> ClipInputError:
        return ClipInputError(clip_id, field, str(self))


@dataclass(frozen=True)
class Sniffed:
    format: str
    kind: MediaKind
    extension: str
    mime: str


_FORMATS: dict[str, Sniffed] = {
    s.format: s
    for s in (
        Sniffed("wav", "audio", ".wav", "audio/wav"),
        Sniffed("rf64", "audio", ".wav", "audio/wav"),
        Sniffed("aiff", "audio", ".aiff", "audio/aiff"),
        Sniffed("flac", "audio", ".flac", "audio/flac"),
        Sniffed("ogg", "audio", ".ogg", "audio/ogg"),  # Vorbis
        Sniffed("opus", "audio", ".opus", "audio/ogg"),
        Sniffed("oga", "audio", ".oga", "audio/ogg"),  # FLAC in Ogg
        Sniffed("mp3", "audio", ".mp3", "audio/mpeg"),
        Sniffed("aac", "audio", ".aac", "audio/aac"),  # raw ADTS
        Sniffed("m4a", "audio", ".m4a", "audio/mp4"),
        Sniffed("mp4", "video", ".mp4", "video/mp4"),
        Sniffed("mov", "video", ".mov", "video/quicktime"),
        Sniffed("3gp", "video", ".3gp", "video/3gpp"),
        Sniffed("webm", "video", ".webm", "video/webm"),
        Sniffed("mkv", "video", ".mkv", "video/x-matroska"),
        Sniffed("avi", "video", ".avi", "video/x-msvideo"),
        Sniffed("ogv", "video", ".ogv", "video/ogg"),  # Theora
        Sniffed("png", "image", ".png", "image/png"),
        Sniffed("jpeg", "image", ".jpg", "image/jpeg"),
        Sniffed("webp", "image", ".webp", "image/webp"),
        Sniffed("gif", "image", ".gif", "image/gif"),
        Sniffed("bmp", "image", ".bmp", "image/bmp"),
        Sniffed("tiff", "image", ".tiff", "image/tiff"),
    )
}

# Containers that often carry only a soundtrack (voice notes, browser recordings): acceptable where audio is
# wanted.
AUDIO_CAPABLE_VIDEO = frozenset({"mp4", "mov", "3gp", "webm", "mkv"})


def info(fmt: str) -> Sniffed:
    return _FORMATS[fmt]


def id3_size(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (0 when there is none): MP3s, and some AAC/FLAC files, start with
    one."""
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]  # syncsafe integer
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def _mpeg_audio_frame(h: bytes) -> bool:
    """An MPEG-1/2/2.5 layer I-III frame header: sync, a valid version, layer, bitrate and sample rate."""
    return (
        len(h) >= 4
        and h[0] == 0xFF
        and h[1] & 0xE0 == 0xE0
        and (h[1] >> 3) & 3 != 1  # reserved version
        and (h[1] >> 1) & 3 != 0  # layer 0 is ADTS
        and h[2] >> 4 != 15
        and (h[2] >> 2) & 3 != 3
    )


def _sniff(h: bytes) -> str | None:
    if h[:4] in (b"RIFF", b"RF64", b"BW64") and len(h) >= 12:
        sub = h[8:12]
        if sub == b"WAVE":
            return "wav" if h[:4] == b"RIFF" else "rf64"
        return {b"WEBP": "webp", b"AVI ": "avi"}.get(sub)
    if h[:4] == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if h[:4] == b"fLaC":
        return "flac"
    if h[:4] == b"OggS":
        codec = h[28:36]
        if codec.startswith(b"\x01vorbis"):
            return "ogg"
        if codec == b"OpusHead":
            return "opus"
        if codec.startswith(b"\x7fFLAC"):
            return "oga"
        if codec.startswith(b"\x80theora"):
            return "ogv"
        return None
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in (b"M4A ", b"M4B ", b"M4P ", b"F4A "):
            return "m4a"
        if brand == b"qt  ":
            return "mov"
        if brand.startswith(b"3g"):
            return "3gp"
        return "mp4"
    if h[:4] == b"\x1a\x45\xdf\xa3":  # EBML
        return "webm" if b"webm" in h[:HEAD_BYTES] else "mkv"
    if h[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if h[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if h[:2] == b"BM" and len(h) >= 10 and h[6:10] == b"\0\0\0\0":
        return "bmp"
    if h[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    if len(h) >= 2 and h[0] == 0xFF and h[1] & 0xF6 == 0xF0:  # ADTS: 12-bit sync, layer 00
        return "aac"
    if h[:3] == b"ID3" or _mpeg_audio_frame(h):
        return "mp3"
    return None


def sniff_bytes(head: bytes) -> Sniffed | None:
    """The format of data starting with `head` (give at least HEAD_BYTES). A leading ID3 tag reads as MP3."""
    fmt = _sniff(head)
    return None if fmt is None else _FORMATS[fmt]


def sniff_file(path: Path) -> Sniffed | None:
    """The format of a file; an ID3 tag is skipped so that an AAC or FLAC stream behind one is named right."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        skip = id3_size(head)
        if skip:
            f.seek(skip)
            after = f.read(HEAD_BYTES)
            inner = _sniff(after) if after else None
            if inner in ("aac", "flac"):
                return _FORMATS[inner]
            return _FORMATS["mp3"]
    return sniff_bytes(head)


def describe(path: Path) -> Sniffed:
    """`sniff_file`, as a MediaError when the file is empty or of no format we know."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MediaError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if size == 0:
        raise MediaError("the file is empty (0 bytes)")
    found = sniff_file(path)
    if found is None:
        raise MediaError("unrecognised file format (not an image, audio or video file we can read)")
    return found

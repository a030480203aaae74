"""The real format of a file comes from its first bytes, never from its name."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from PIL import Image

from infinitetalk_pipeline.media.sniff import MediaError, describe, sniff_bytes, sniff_file
from tests.fixtures.media import encode_audio, make_portrait, make_speech, make_video


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_speech(tmp_path_factory.mktemp("sniff") / "speech.wav")


@pytest.mark.parametrize(
    ("encoding", "fmt"),
    [
        ("wav_pcm16", "wav"),
        ("wav_rf64", "rf64"),
        ("mp3_cbr", "mp3"),
        ("mp3_vbr_no_header", "mp3"),
        ("mp3_cover_art", "mp3"),
        ("m4a", "m4a"),
        ("aac_adts", "aac"),
        ("flac", "flac"),
        ("ogg_vorbis", "ogg"),
        ("opus", "opus"),
    ],
)
def test_each_audio_encoding_is_recognised(speech: Path, tmp_path: Path, encoding: str, fmt: str) -> None:
    found = sniff_file(encode_audio(speech, tmp_path / f"x.{encoding}", encoding))
    assert found is not None
    assert (found.format, found.kind) == (fmt, "audio")


@pytest.mark.parametrize(("pil_format", "fmt"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_each_image_format_is_recognised(tmp_path: Path, pil_format: str, fmt: str) -> None:
    path = tmp_path / "img"
    Image.open(make_portrait(tmp_path / "p.png")).convert("RGB").save(path, format=pil_format)
    found = sniff_file(path)
    assert found is not None
    assert (found.format, found.kind) == (fmt, "image")


@pytest.mark.parametrize(("container", "fmt"), [("mp4", "mp4"), ("matroska", "mkv"), ("mov", "mov")])
def test_each_video_container_is_recognised(tmp_path: Path, container: str, fmt: str) -> None:
    src = make_video(tmp_path / "v.mp4", 0.2)
    dest = tmp_path / "v.out"
    with av.open(str(src)) as inp, av.open(str(dest), "w", format=container) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    found = sniff_file(dest)
    assert found is not None
    assert (found.format, found.kind) == (fmt, "video")


def test_webm_is_told_from_other_matroska() -> None:
    head = b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm"
    assert sniff_bytes(head.ljust(64, b"\0")).format == "webm"  # type: ignore[union-attr]


def test_a_wav_name_does_not_make_an_mp3_a_wav(speech: Path, tmp_path: Path) -> None:
    found = sniff_file(encode_audio(speech, tmp_path / "really-an-mp3.wav", "mp3_cbr"))
    assert found is not None
    assert (found.format, found.extension, found.mime) == ("mp3", ".mp3", "audio/mpeg")


def test_an_id3_tag_in_front_of_adts_aac_does_not_make_it_an_mp3(speech: Path, tmp_path: Path) -> None:
    aac = encode_audio(speech, tmp_path / "a.aac", "aac_adts").read_bytes()
    tag = b"ID3\x03\x00\x00" + bytes([0, 0, 0, 10]) + b"\0" * 10
    path = tmp_path / "tagged.aac"
    path.write_bytes(tag + aac)
    assert sniff_file(path).format == "aac"  # type: ignore[union-attr]


def test_unknown_bytes_are_no_format() -> None:
    assert sniff_bytes(b"just some text, not media".ljust(64)) is None


def test_an_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        describe(path)


def test_an_unknown_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("these are notes, not audio")
    with pytest.raises(MediaError, match="unrecognised file format"):
        describe(path)


def test_a_media_error_becomes_a_clip_input_error_naming_clip_and_field() -> None:
    error = MediaError("the file is empty (0 bytes)").for_input("clip-7", "wav_url")
    assert (error.clip_id, error.field) == ("clip-7", "wav_url")
    assert "clip-7" in str(error) and "wav_url" in str(error)

"""Audio duration is exact (within one 25 fps frame of a full decode) for every format users send, and every
unusable file is a clear error."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
import soundfile as sf

from infinitetalk_pipeline.media.audio import MediaError, audio_duration
from tests.fixtures.media import (
    AUDIO_ENCODINGS,
    decoded_seconds,
    encode_audio,
    make_portrait,
    make_speech,
    make_tone,
    make_video,
)

ONE_FRAME = 0.04


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_speech(
        tmp_path_factory.mktemp("speech") / "speech.wav",
        "Dubbing needs the video to end with the speech, so every format must be measured exactly.",
    )


@pytest.mark.parametrize("encoding", sorted(AUDIO_ENCODINGS))
def test_duration_matches_a_full_decode(speech: Path, tmp_path: Path, encoding: str) -> None:
    path = encode_audio(speech, tmp_path / f"speech{AUDIO_ENCODINGS[encoding][0]}", encoding)
    assert abs(audio_duration(path) - decoded_seconds(path)) <= ONE_FRAME


@pytest.mark.parametrize("encoding", ["wav_pcm16", "wav_pipe", "wav_rf64", "flac", "ogg_vorbis", "opus", "m4a"])
def test_duration_matches_the_source_where_the_format_keeps_it(speech: Path, tmp_path: Path, encoding: str) -> None:
    path = encode_audio(speech, tmp_path / f"speech{AUDIO_ENCODINGS[encoding][0]}", encoding)
    assert audio_duration(path) == pytest.approx(sf.info(speech).duration, abs=0.001)


def test_opus_pre_skip_is_not_counted(speech: Path, tmp_path: Path) -> None:
    path = encode_audio(speech, tmp_path / "speech.opus", "opus")
    assert audio_duration(path) == pytest.approx(decoded_seconds(path), abs=1 / 48000)


def test_headerless_vbr_mp3_is_measured_where_header_estimates_fail(speech: Path, tmp_path: Path) -> None:
    path = encode_audio(speech, tmp_path / "vbr.mp3", "mp3_vbr_no_header")
    with av.open(str(path)) as container:
        estimate = container.duration / av.time_base
    assert abs(estimate - decoded_seconds(path)) > ONE_FRAME  # the file is the hard case
    assert abs(audio_duration(path) - decoded_seconds(path)) <= ONE_FRAME


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "fmt"),
    [
        (8000, 1, "PCM_16", "WAV"),
        (96000, 2, "PCM_24", "WAV"),
        (44100, 1, "FLOAT", "WAV"),
        (22050, 6, "PCM_32", "WAVEX"),
        (48000, 2, "DOUBLE", "RF64"),
    ],
)
def test_wav_variants_are_exact(tmp_path: Path, rate: int, channels: int, subtype: str, fmt: str) -> None:
    path = tmp_path / "tone.wav"
    make_tone(tmp_path / "tmp.wav", 1.2345, rate=rate, channels=channels, subtype=subtype)
    data, _ = sf.read(tmp_path / "tmp.wav")
    sf.write(path, data, rate, subtype=subtype, format=fmt)
    assert audio_duration(path) == pytest.approx(round(1.2345 * rate) / rate, abs=1e-9)


def test_the_real_format_decides_not_the_name(speech: Path, tmp_path: Path) -> None:
    path = encode_audio(speech, tmp_path / "really-an-mp3.wav", "mp3_vbr_no_header")
    assert abs(audio_duration(path) - decoded_seconds(path)) <= ONE_FRAME


def test_an_mp4_soundtrack_is_measured(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", 1.0, audio_seconds=2.5)
    assert audio_duration(path) == pytest.approx(2.5, abs=ONE_FRAME)


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(MediaError, match="empty"):
        audio_duration(path)


def test_an_image_is_not_audio(tmp_path: Path) -> None:
    path = make_portrait(tmp_path / "face.png").rename(tmp_path / "face.wav")
    with pytest.raises(MediaError, match="expected audio, got a png image"):
        audio_duration(path)


def test_text_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "a.mp3"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(MediaError, match="unrecognised"):
        audio_duration(path)


def test_a_video_without_sound_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no audio track"):
        audio_duration(make_video(tmp_path / "silent.mp4", 0.5))


def test_a_wav_without_samples_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, [], 16000, subtype="PCM_16")
    with pytest.raises(MediaError, match="no audio samples"):
        audio_duration(path)


@pytest.mark.parametrize("encoding", ["wav_pcm16", "mp3_vbr", "mp3_cover_art", "m4a", "flac"])
def test_a_file_cut_short_is_an_error(speech: Path, tmp_path: Path, encoding: str) -> None:
    whole = encode_audio(speech, tmp_path / f"whole{AUDIO_ENCODINGS[encoding][0]}", encoding)
    if encoding == "m4a":  # index first, as a streamed upload would be
        fast = tmp_path / "fast.m4a"
        with (
            av.open(str(whole)) as inp,
            av.open(str(fast), "w", format="ipod", options={"movflags": "faststart"}) as o,
        ):
            stream = o.add_stream_from_template(inp.streams.audio[0])
            for packet in inp.demux(inp.streams.audio[0]):
                if packet.dts is not None:
                    packet.stream = stream
                    o.mux(packet)
        whole = fast
    cut = tmp_path / f"cut{AUDIO_ENCODINGS[encoding][0]}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated"):
        audio_duration(cut)

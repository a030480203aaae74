"""Rendered segments join into one video of exactly sum(frames) - sum(overlaps) frames, each overlap cross-faded,
over the clip's own audio with no seam; V2V segments are cut from the conformed source frame-exactly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from infinitetalk_pipeline.media.audio import audio_duration
from infinitetalk_pipeline.media.join import MediaError, cut_frames, join_segments
from tests.fixtures.media import correlation_by_lag, decoded_audio

FPS = 25
SIZE = (64, 64)
ONE_FRAME = 1 / FPS
CODEC_TOLERANCE = 3  # grey levels H.264 may move a flat frame by at crf 17


def make_segment(path: Path, greys: Sequence[int], size: tuple[int, int] = SIZE, *, tone: bool = False) -> Path:
    """A 25 fps H.264 mp4 whose frame i is a flat grey of greys[i]; `tone` adds a 440 Hz track of its own."""
    w, h = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=Fraction(FPS), options={"crf": "17", "g": "10"})
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        if tone:
            audio = out.add_stream("aac", rate=16000, layout="mono")
            t = np.arange(round(len(greys) / FPS * 16000)) / 16000
            wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
            sound.sample_rate, sound.pts = 16000, 0
            out.mux(audio.encode(sound))
            out.mux(audio.encode())
        for i, grey in enumerate(greys):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), grey, dtype=np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
    return path


def speech_like(seconds: float, rate: int) -> np.ndarray:
    """Voiced syllables: harmonics of a gliding pitch under a bursty envelope (tonal, so AAC keeps the waveform)."""
    t = np.arange(round(seconds * rate)) / rate
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4.3 * t) * np.sin(2 * np.pi * 1.1 * t + 0.5)
    return (0.25 * voiced * syllables).astype(np.float32)


def make_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    sf.write(path, np.repeat(speech_like(seconds, rate)[:, None], channels, axis=1), rate, subtype="PCM_16")
    return path


def frame_greys(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.to_ndarray(format="rgb24").mean()) for f in container.decode(video=0)]


def test_joined_video_has_the_segment_frames_less_the_overlaps(tmp_path: Path) -> None:
    segments = [make_segment(tmp_path / f"s{k}.mp4", [60 * k] * n) for k, n in enumerate([40, 33, 27])]
    out = join_segments(segments, [0, 8, 5], make_wav(tmp_path / "a.wav", 3.0), tmp_path / "out.mp4")
    assert len(frame_greys(out)) == 40 + 33 + 27 - 8 - 5


def test_overlap_frames_cross_fade_from_the_old_segment_to_the_new(tmp_path: Path) -> None:
    black = make_segment(tmp_path / "black.mp4", [0] * 30)
    white = make_segment(tmp_path / "white.mp4", [255] * 30)
    n = 9
    greys = frame_greys(join_segments([black, white], [0, n], make_wav(tmp_path / "a.wav", 2.1), tmp_path / "o.mp4"))
    assert len(greys) == 51
    before, fade, after = greys[: 30 - n], greys[30 - n : 30], greys[30:]
    assert max(before) <= CODEC_TOLERANCE
    assert min(after) >= 255 - CODEC_TOLERANCE
    assert all(a < b for a, b in pairwise(fade))
    # Frame j of the overlap weighs the new segment (j + 1) / (n + 1).
    assert fade == pytest.approx([255 * (j + 1) / (n + 1) for j in range(n)], abs=CODEC_TOLERANCE)


def test_overlap_zero_is_a_hard_cut(tmp_path: Path) -> None:
    black = make_segment(tmp_path / "black.mp4", [0] * 20)
    white = make_segment(tmp_path / "white.mp4", [255] * 20)
    greys = frame_greys(join_segments([black, white], [0, 0], make_wav(tmp_path / "a.wav", 1.6), tmp_path / "o.mp4"))
    assert len(greys) == 40
    assert max(greys[:20]) <= CODEC_TOLERANCE
    assert min(greys[20:]) >= 255 - CODEC_TOLERANCE


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2)])
def test_the_original_audio_runs_under_the_joins_without_a_seam(tmp_path: Path, rate: int, channels: int) -> None:
    seconds = 7.37
    wav = make_wav(tmp_path / "speech.wav", seconds, rate, channels)
    frames, overlaps = [70, 75, 60], [0, 10, 10]
    assert sum(frames) - sum(overlaps) == math.ceil(seconds * FPS)
    # The segments' own audio (a tone) must not be heard.
    segments = [make_segment(tmp_path / f"s{k}.mp4", [100] * n, tone=True) for k, n in enumerate(frames)]
    out = join_segments(segments, overlaps, wav, tmp_path / "out.mp4")

    assert abs(audio_duration(out) - seconds) <= ONE_FRAME
    source, heard = sf.read(wav, dtype="float32", always_2d=True)[0][:, 0], decoded_audio(out, rate)
    # The middle of each cross-fade, and the very start (where AAC's priming samples must not show).
    fades = [(sum(frames[:k]) - sum(overlaps[: k + 1]) + overlaps[k] / 2) / FPS for k in range(1, len(frames))]
    for at in [0.25, *fades]:
        lo, hi = round((at - 0.25) * rate), round((at + 0.25) * rate)
        # Lags up to 0.1 s: wider than AAC's priming (1024 samples, 64 ms at 16 kHz), so a shift by it would show.
        max_lag = rate // 10
        by_lag = correlation_by_lag(source, heard, lo, hi, max_lag)
        assert by_lag[max_lag] > 0.95, f"at {at:.2f} s"
        assert abs(int(np.argmax(by_lag)) - max_lag) <= 0.005 * rate, f"at {at:.2f} s"


def test_longer_audio_is_cut_to_the_video(tmp_path: Path) -> None:
    segments = [make_segment(tmp_path / f"s{k}.mp4", [100] * 55) for k in range(2)]
    out = join_segments(segments, [0, 10], make_wav(tmp_path / "long.wav", 9.0), tmp_path / "out.mp4")
    assert audio_duration(out) == pytest.approx(100 / FPS, abs=0.001)


def test_different_sizes_are_refused(tmp_path: Path) -> None:
    a = make_segment(tmp_path / "a.mp4", [0] * 10)
    b = make_segment(tmp_path / "b.mp4", [0] * 10, size=(64, 48))
    with pytest.raises(MediaError, match="segment 1 is 64x48, segment 0 is 64x64"):
        join_segments([a, b], [0, 2], make_wav(tmp_path / "a.wav", 1.0), tmp_path / "out.mp4")


def test_an_overlap_longer_than_a_segment_is_refused(tmp_path: Path) -> None:
    a = make_segment(tmp_path / "a.mp4", [0] * 20)
    b = make_segment(tmp_path / "b.mp4", [0] * 6)
    with pytest.raises(MediaError, match=r"segment 1 has 6 frames, fewer than its overlaps .*\(8 \+ 0\)"):
        join_segments([a, b], [0, 8], make_wav(tmp_path / "a.wav", 1.0), tmp_path / "out.mp4")


def test_a_segment_too_short_for_both_its_overlaps_is_refused(tmp_path: Path) -> None:
    a, b, c = (make_segment(tmp_path / f"{k}.mp4", [0] * n) for k, n in zip("abc", [20, 10, 20], strict=True))
    with pytest.raises(MediaError, match=r"segment 1 has 10 frames, fewer than its overlaps .*\(6 \+ 6\)"):
        join_segments([a, b, c], [0, 6, 6], make_wav(tmp_path / "a.wav", 1.0), tmp_path / "out.mp4")


@pytest.mark.parametrize(
    ("overlaps", "problem"),
    [([3, 0], r"overlaps\[0\] must be 0, got 3"), ([0], "2 segments need 2 overlaps, got 1"), ([0, -1], "negative")],
)
def test_bad_overlaps_are_refused(tmp_path: Path, overlaps: list[int], problem: str) -> None:
    segments = [make_segment(tmp_path / f"s{k}.mp4", [0] * 10) for k in range(2)]
    with pytest.raises(MediaError, match=problem):
        join_segments(segments, overlaps, make_wav(tmp_path / "a.wav", 1.0), tmp_path / "out.mp4")


def test_a_failed_join_leaves_no_file_behind(tmp_path: Path) -> None:
    segments = [make_segment(tmp_path / f"s{k}.mp4", [0] * 10) for k in range(2)]
    not_audio = tmp_path / "a.wav"
    not_audio.write_bytes(b"this is no audio file at all" * 10)
    with pytest.raises(MediaError, match="cannot join the segments"):
        join_segments(segments, [0, 2], not_audio, tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "s0.mp4", "s1.mp4"]


def test_cut_frames_gives_exactly_the_frames_asked(tmp_path: Path) -> None:
    src = make_segment(tmp_path / "src.mp4", [5 * i for i in range(50)])
    greys = frame_greys(cut_frames(src, tmp_path / "cut.mp4", 17, 20))
    assert [round(g / 5) for g in greys] == list(range(17, 37))


def test_cut_frames_refuses_a_range_past_the_end(tmp_path: Path) -> None:
    src = make_segment(tmp_path / "src.mp4", [0] * 50)
    with pytest.raises(MediaError, match=r"cannot cut frames 40\.\.59: the video has only 50 frames"):
        cut_frames(src, tmp_path / "cut.mp4", 40, 20)
    assert not (tmp_path / "cut.mp4").exists()

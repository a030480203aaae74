"""Frames from audio durations, and InfiniteTalk windows."""

from __future__ import annotations

import pytest

from infinitetalk_pipeline.timing import compute_timing, windows


def test_frames_cover_the_audio_rounding_up() -> None:
    assert compute_timing([3.01]).frames == 76  # 75.25 frames: the last word needs a 76th


def test_a_whole_number_of_frames_is_not_rounded_up_by_float_error() -> None:
    assert compute_timing([2.0]).frames == 50
    assert compute_timing([0.1 * 3]).frames == 8  # 0.30000000000000004 s is 7.5 frames -> 8, never 9


def test_timing_is_at_25_fps_by_default() -> None:
    assert compute_timing([1.0]).fps == 25


def test_para_lasts_as_long_as_the_longer_track() -> None:
    timing = compute_timing([2.0, 3.0], multi_audio_type="para")
    assert (timing.duration_seconds, timing.frames) == (3.0, 75)


def test_add_lasts_as_long_as_both_tracks_together() -> None:
    timing = compute_timing([2.0, 3.0], multi_audio_type="add")
    assert (timing.duration_seconds, timing.frames) == (5.0, 125)


def test_max_frame_overrides_the_audio() -> None:
    timing = compute_timing([10.0], max_frame=100)
    assert (timing.frames, timing.frames_source, timing.windows) == (100, "max_frame", 2)


def test_audio_decides_when_max_frame_is_absent() -> None:
    assert compute_timing([1.0]).frames_source == "audio"


def test_timing_keeps_every_track_duration() -> None:
    assert compute_timing([1.5, 2.5]).audio_seconds == (1.5, 2.5)


@pytest.mark.parametrize(
    ("frames", "expected"), [(1, 1), (81, 1), (82, 2), (153, 2), (154, 3), (225, 3), (226, 4), (1500, 21)]
)
def test_windows_are_one_plus_the_72_frame_strides_past_the_first_81(frames: int, expected: int) -> None:
    assert windows(frames) == expected


def test_timing_reports_windows_for_its_frames() -> None:
    assert compute_timing([6.0]).windows == windows(150) == 2


@pytest.mark.parametrize("bad", [[], [0.0], [-1.0], [float("nan")]])
def test_durations_must_be_positive(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        compute_timing(bad)


def test_max_frame_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        compute_timing([1.0], max_frame=0)


def test_unknown_multi_audio_type_is_refused() -> None:
    with pytest.raises(ValueError, match="multi_audio_type"):
        compute_timing([1.0], multi_audio_type="mix")  # type: ignore[arg-type]

"""Long speech is split at pauses into segments of at most the threshold, on frame boundaries, with the overlap the
cross-fade needs; short speech is one prompt. Real speech (espeak-ng) with known pauses, made by the tests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from infinitetalk_pipeline.clip_renderer import fingerprint
from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.media.sources import FetchedMedia, MediaFetcher, SourcePolicy
from infinitetalk_pipeline.media.speech import load_speech
from infinitetalk_pipeline.registry import ClipSpec, load_timing, save_timing
from infinitetalk_pipeline.render import clip_timing
from infinitetalk_pipeline.segments import Segmenting, plan_segments
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import LocalOutputStore
from infinitetalk_pipeline.timing import ClipTiming, compute_timing, frames_for, windows
from infinitetalk_pipeline.workflows.templates import load_template
from tests.fixtures.synth import make_long_speech, make_tone

SPEECH_SECONDS = 180.37


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float]]]:
    return make_long_speech(tmp_path_factory.mktemp("speech") / "lecture.wav", SPEECH_SECONDS)


def timing_of(tmp_path: Path, body: dict[str, object], segmenting: Segmenting | None = None) -> ClipTiming:
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(Path("/"),)), cache_dir=tmp_path / "cache")
    return clip_timing(parse_request(body, "talk"), fetcher, "talk", segmenting=segmenting)


def in_a_pause(frame: int, pauses: list[tuple[float, float]]) -> bool:
    """The boundary before `frame` lies inside a pause: the frames on both sides of it are quiet."""
    return any(a <= (frame - 1) / 25 and (frame + 1) / 25 <= b for a, b in pauses)


def test_three_minutes_of_speech_become_segments_of_at_most_a_minute_cut_in_pauses(
    tmp_path: Path, long_speech: tuple[Path, list[tuple[float, float]]]
) -> None:
    path, pauses = long_speech
    timing = timing_of(tmp_path, {"image_path": "/face.png", "wav_path": str(path)})
    segments = timing.segments
    assert timing.frames == 4510  # ceil(180.37 s x 25)
    assert len(segments) >= 3
    assert all(s.end_frame - s.start_frame <= 60 * 25 for s in segments)
    assert [s.start_frame for s in segments[1:]] == [s.end_frame for s in segments[:-1]]  # they tile the clip
    assert (segments[0].start_frame, segments[-1].end_frame) == (0, timing.frames)
    assert all(in_a_pause(s.start_frame, pauses) for s in segments[1:])


def test_every_segment_after_the_first_renders_the_cross_fade_as_overlap(
    tmp_path: Path, long_speech: tuple[Path, list[tuple[float, float]]]
) -> None:
    timing = timing_of(tmp_path, {"image_path": "/face.png", "wav_path": str(long_speech[0])})
    assert [s.overlap_frames for s in timing.segments] == [0] + [5] * (len(timing.segments) - 1)
    assert timing.windows == sum(windows(s.frames) for s in timing.segments)
    assert [s.frames for s in timing.segments[1:]] == [s.end_frame - s.start_frame + 5 for s in timing.segments[1:]]


def test_a_cross_fade_of_zero_frames_joins_with_hard_cuts(
    tmp_path: Path, long_speech: tuple[Path, list[tuple[float, float]]]
) -> None:
    timing = timing_of(
        tmp_path, {"image_path": "/face.png", "wav_path": str(long_speech[0])}, Segmenting(crossfade_frames=0)
    )
    assert {s.overlap_frames for s in timing.segments} == {0}


def test_speech_under_the_threshold_is_one_prompt(tmp_path: Path) -> None:
    make_tone(tmp_path / "tone.wav", 59.5)
    timing = timing_of(tmp_path, {"image_path": "/face.png", "wav_path": str(tmp_path / "tone.wav")})
    assert (timing.segments, timing.segment_count, timing.windows) == ((), 1, windows(1488))


def test_speech_without_pauses_is_cut_at_its_quietest_moments(tmp_path: Path) -> None:
    rate = 16000
    t = np.arange(150 * rate) / rate
    swell = 0.3 * (1.2 + np.sin(2 * np.pi * t / 7.0)) / 2.2 * np.sin(2 * np.pi * 220 * t)  # never silent
    sf.write(tmp_path / "hum.wav", swell, rate, subtype="PCM_16")
    speech = load_speech([tmp_path / "hum.wav"])
    levels = speech.frame_levels(3750)
    segments = plan_segments(levels, 3750, Segmenting())
    assert len(segments) == 3
    assert all(s.end_frame - s.start_frame <= 1500 for s in segments)
    quietest = np.percentile(levels, 25)
    assert all(levels[s.start_frame] <= quietest for s in segments[1:])


def test_two_speakers_in_para_are_cut_only_where_both_pause(tmp_path: Path) -> None:
    one, pauses_one = make_long_speech(tmp_path / "one.wav", 90.0)
    data, rate = sf.read(one, dtype="float32")
    # Speaker 2 speaks through speaker 1's pauses, except those in the middle third.
    two = np.zeros_like(data)
    for a, b in pauses_one:
        if not 30 < a < 60:
            two[int(a * rate) : int(b * rate)] = 0.2 * np.sin(
                2 * np.pi * 180 * np.arange(int(b * rate) - int(a * rate)) / rate
            )
    sf.write(tmp_path / "two.wav", two, rate, subtype="PCM_16")
    body = {
        "image_path": "/face.png",
        "person_count": "multi",
        "wav_path": str(one),
        "wav_path_2": str(tmp_path / "two.wav"),
    }
    timing = timing_of(tmp_path, body)
    both_quiet = [(a, b) for a, b in pauses_one if 30 < a < 60]
    assert len(timing.segments) == 2
    assert all(in_a_pause(s.start_frame, both_quiet) for s in timing.segments[1:])


def test_two_speakers_in_add_are_laid_one_after_the_other(tmp_path: Path) -> None:
    one, _ = make_long_speech(tmp_path / "one.wav", 40.0)
    two, _ = make_long_speech(tmp_path / "two.wav", 35.0)
    body = {
        "image_path": "/face.png",
        "person_count": "multi",
        "multi_audio_type": "add",
        "wav_path": str(one),
        "wav_path_2": str(two),
    }
    timing = timing_of(tmp_path, body)
    assert timing.frames == frames_for(75.0)
    assert len(timing.segments) == 2
    speech = load_speech([one, two], "add")
    assert speech.samples == round(75.0 * speech.rate)
    assert not speech.tracks[1][: round(40.0 * speech.rate)].any()  # speaker 2 silent while speaker 1 speaks


def test_long_speech_with_segmentation_off_is_refused_naming_the_clip_and_field(tmp_path: Path) -> None:
    make_tone(tmp_path / "long.wav", 170.0)
    with pytest.raises(ClipInputError) as refused:
        timing_of(tmp_path, {"image_path": "/face.png", "wav_path": str(tmp_path / "long.wav")}, Segmenting(0))
    assert (refused.value.clip_id, refused.value.field) == ("talk", "wav_path")
    assert "segmentation is off" in str(refused.value)


def test_a_kept_timing_keeps_its_segments(tmp_path: Path, long_speech: tuple[Path, list[tuple[float, float]]]) -> None:
    timing = timing_of(tmp_path, {"image_path": "/face.png", "wav_path": str(long_speech[0])})
    store = LocalOutputStore(tmp_path / "out")
    save_timing(store, "talk", timing)
    assert load_timing(store, "talk") == timing


@pytest.mark.parametrize("bad", [{"max_seconds": 1}, {"max_seconds": 170}, {"crossfade_frames": -1}])
def test_a_segmenting_setting_out_of_range_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Segmenting(**bad)  # type: ignore[arg-type]


def test_an_unsegmented_clip_keeps_the_fingerprint_it_had_before_segments_existed() -> None:
    """Clips rendered before segmentation are not rendered again: their fingerprint hashes the timing as it was."""
    spec = ClipSpec("talk", "m.csv", 2, parse_request({"image_path": "/face.png", "wav_path": "/speech.wav"}, "talk"))
    template = load_template("preview", "I2V_single")
    media = {
        "image": FetchedMedia(Path("/face.png"), "a" * 64, "png", 1, "/face.png"),
        "audio": FetchedMedia(Path("/speech.wav"), "b" * 64, "wav", 1, "/speech.wav"),
    }
    timing = compute_timing([3.01])
    before_segments = {k: v for k, v in dataclasses.asdict(timing).items() if k != "segments"}
    body = [
        spec.request.model_dump(exclude_none=True, exclude={"clip_id"}),
        {"image": "a" * 64, "audio": "b" * 64},
        before_segments,
        "preview",
        hashlib.sha256(template.path.read_bytes()).hexdigest(),
    ]
    expected = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    assert fingerprint(spec, timing, "preview", template, media) == expected


def test_no_segment_is_left_a_few_frames_long_by_a_pause_near_the_limit() -> None:
    levels = np.full(1503, -20.0)
    levels[1490:1500] = -90.0  # the only pause: cutting there would leave an 8-frame last segment
    segments = plan_segments(levels, 1503, Segmenting())
    assert min(s.end_frame - s.start_frame for s in segments) >= 5 * 25


def test_frames_past_a_max_frame_do_not_count_in_the_last_frames_level(tmp_path: Path) -> None:
    rate = 16000
    quiet_then_loud = np.concatenate([np.zeros(rate), 0.5 * np.ones(rate)]).astype(np.float32)
    sf.write(tmp_path / "a.wav", quiet_then_loud, rate, subtype="PCM_16")
    levels = load_speech([tmp_path / "a.wav"]).frame_levels(25)  # the clip ends after the first, silent second
    assert levels.max() < -90

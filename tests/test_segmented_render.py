"""A long clip renders as segments on several workers at once and comes back as one seamless video; a segment lost
with its worker, or failed, is rendered again alone. Real local ComfyUI workers, the preview workflows (some held by
BenchSleep so that a segment is caught mid-render), real speech with known pauses."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import dagster as dg
import httpx
import numpy as np
import pytest
import soundfile as sf

from infinitetalk_pipeline.catalog import read_catalog, refresh_catalog
from infinitetalk_pipeline.clip_renderer import ClipRenderer, RenderRecord
from infinitetalk_pipeline.comfy.fleet import Fleet
from infinitetalk_pipeline.comfy.server import LocalComfyUI
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.resources import ComfyUIResource
from infinitetalk_pipeline.media.audio import audio_duration
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.registry import ClipSpec
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import LocalOutputStore
from infinitetalk_pipeline.verify import inspect_output
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV
from tests.fixtures.fleet import finished_prompts, sleeping_fleet, sleeping_worker, wait_until, write_sleepy_workflows
from tests.fixtures.media import correlation_by_lag, decoded_audio
from tests.fixtures.pipeline import local_resources, one_clip_manifest
from tests.fixtures.synth import make_long_speech, make_portrait, make_video

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]
SPEECH_SECONDS = 180.37
ASSETS = [clip_manifest, clip_renders, video_catalog]
HELD_SECONDS = 2.0  # a sleepy segment holds its worker this long


@pytest.fixture(scope="module")
def workers(comfy_install: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalComfyUI]]:
    with sleeping_fleet(tmp_path_factory.mktemp("fleet"), 2) as servers:
        yield servers


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_portrait(folder / "face.png", size=(96, 96))
    make_long_speech(folder / "lecture.wav", SPEECH_SECONDS)
    make_long_speech(folder / "talk.wav", 40.0)
    return folder


def render(
    root: Path,
    media: Path,
    fleet: Fleet,
    speech: str,
    segmenting: Segmenting | None = None,
    log: logging.Logger | None = None,
) -> RenderRecord:
    body = {"image_path": str(media / "face.png"), "wav_path": str(media / speech), "width": 64, "height": 64}
    spec = ClipSpec("talk", str(root / "manifest.csv"), 2, parse_request(body, "talk"))
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(media,)), cache_dir=root / "cache")
    renderer = ClipRenderer(LocalOutputStore(root / "out"), fetcher, fleet, "preview", log=log, segmenting=segmenting)
    return renderer.render(spec, renderer.measure_timing(spec))


def segments_of(record: RenderRecord) -> list[dict[str, Any]]:
    assert record.row.segments is not None
    return json.loads(record.row.segments)


@pytest.fixture
def sleepy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(write_sleepy_workflows(tmp_path / "workflows", HELD_SECONDS)))


def test_three_minutes_of_speech_render_as_segments_on_both_workers_and_join_without_a_seam(
    tmp_path: Path, media: Path, workers: list[LocalComfyUI]
) -> None:
    with Fleet([w.url for w in workers]) as fleet:
        record = render(tmp_path, media, fleet, "lecture.wav")
    segments = segments_of(record)
    assert record.passed
    assert len(segments) >= 3
    assert all(s["end_frame"] - s["start_frame"] <= 60 * 25 for s in segments)
    assert {s["worker"] for s in segments} == {w.url for w in workers}

    video = Path(record.row.output_uri)
    facts = inspect_output(video)
    assert facts.frames == record.row.frames == 4510  # ceil(180.37 s x 25)
    assert abs(audio_duration(video) - SPEECH_SECONDS) <= 1 / 25
    source, rate = sf.read(media / "lecture.wav", dtype="float32")
    heard = decoded_audio(video, rate)
    max_lag = round(0.02 * rate)
    for segment in segments[1:]:
        at = round(segment["start_frame"] / 25 * rate)
        lo, hi = at - rate // 4, at + rate // 4
        by_lag = correlation_by_lag(source, heard, lo, hi, max_lag)
        assert by_lag[max_lag] > 0.95, f"join at {at / rate:.2f} s"
        assert abs(int(np.argmax(by_lag)) - max_lag) <= 0.005 * rate

    refresh_catalog(LocalOutputStore(tmp_path / "out"))
    (row,) = read_catalog(LocalOutputStore(tmp_path / "out")).to_dict("records")
    assert json.loads(row["segments"]) == segments
    assert row["windows"] == sum(s["windows"] for s in segments)
    assert row["comfy_prompt_id"].split(",") == [s["prompt_id"] for s in segments]


def test_a_segment_whose_worker_dies_mid_render_is_rendered_again_and_no_other_segment_is(
    tmp_path: Path, media: Path, workers: list[LocalComfyUI], sleepy: None, caplog: pytest.LogCaptureFixture
) -> None:
    survivor = workers[0]
    with sleeping_worker(tmp_path / "doomed") as doomed:
        # One prompt per worker (no queue): the doomed worker holds exactly the segment it renders when it dies.
        fleet = Fleet([doomed.url, survivor.url], queue_depth=0, poll_interval=0.2, dead_after=3)
        before = set(finished_prompts(survivor.url))

        def kill_once_it_renders_its_second_segment() -> None:
            wait_until(lambda: len(finished_prompts(doomed.url)) >= 1 and _running(doomed.url), 120)
            assert doomed.pid
            os.killpg(doomed.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_it_renders_its_second_segment)
        killer.start()
        with fleet, caplog.at_level(logging.INFO):
            record = render(tmp_path, media, fleet, "talk.wav", Segmenting(max_seconds=10))
        killer.join()
    segments = segments_of(record)
    on_doomed = [s for s in segments if s["worker"] == doomed.url]
    on_survivor = {str(s["prompt_id"]) for s in segments if s["worker"] == survivor.url}
    assert record.passed and len(segments) >= 4
    assert on_doomed  # finished there before it died: kept, not rendered again
    assert set(finished_prompts(survivor.url)) - before == on_survivor  # each other segment rendered once there
    assert caplog.text.count("rendering it on another worker") == 1


def test_a_failed_segment_is_rendered_alone_on_the_retry(
    tmp_path: Path, media: Path, workers: list[LocalComfyUI], sleepy: None, caplog: pytest.LogCaptureFixture
) -> None:
    worker = workers[1]
    before = set(finished_prompts(worker.url))
    failing = threading.Thread(target=_interrupt_the_second_prompt, args=(worker.url, before))
    failing.start()
    with Fleet([worker.url], queue_depth=0, poll_interval=0.2) as fleet, caplog.at_level(logging.INFO):
        with pytest.raises(Exception, match="interrupted"):
            render(tmp_path, media, fleet, "talk.wav", Segmenting(max_seconds=15))
        failing.join()
        first = set(finished_prompts(worker.url)) - before
        record = render(tmp_path, media, fleet, "talk.wav", Segmenting(max_seconds=15))
    retried = set(finished_prompts(worker.url)) - before - first
    assert record.passed
    assert len(retried) == 1  # the failed segment, and only it
    assert caplog.text.count("kept from an earlier attempt") == len(segments_of(record)) - 1
    assert not list((tmp_path / "out" / "segments").rglob("*.mp4"))  # the kept segments go once the clip is stored
    left = [p.name for p in (worker.workdir / "output").rglob("*") if p.name in record.row.comfy_prompt_id]
    assert left == []  # and so do their prompts' files on the worker, the earlier attempt's included


def test_a_long_two_speaker_video_to_video_clip_renders_each_segment_from_its_own_source_frames(
    tmp_path: Path, media: Path, workers: list[LocalComfyUI]
) -> None:
    make_video(tmp_path / "source.mp4", 30.0, size=(96, 96))
    one, _ = make_long_speech(tmp_path / "one.wav", 11.0)
    two, _ = make_long_speech(tmp_path / "two.wav", 12.5)
    body = {
        "input_type": "video",
        "person_count": "multi",
        "multi_audio_type": "add",
        "video_path": str(tmp_path / "source.mp4"),
        "wav_path": str(one),
        "wav_path_2": str(two),
        "width": 64,
        "height": 64,
    }
    spec = ClipSpec("duo", str(tmp_path / "manifest.csv"), 2, parse_request(body, "duo"))
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(tmp_path,)), cache_dir=tmp_path / "cache")
    with Fleet([w.url for w in workers]) as fleet:
        renderer = ClipRenderer(LocalOutputStore(tmp_path / "out"), fetcher, fleet, "preview", segmenting=Segmenting(8))
        record = renderer.render(spec, renderer.measure_timing(spec))
    video = Path(record.row.output_uri)
    assert record.passed
    assert len(segments_of(record)) >= 3
    assert inspect_output(video).frames == 588  # ceil((11 + 12.5) s x 25), one after the other
    assert abs(audio_duration(video) - 23.5) <= 1 / 25
    # The source's bar moves across the picture: frame i of the output shows it where source frame i does.
    source, out = bar_positions(tmp_path / "source.mp4"), bar_positions(video)
    middles = [(s["start_frame"] + s["end_frame"]) // 2 for s in segments_of(record)]
    assert all(abs(out[i] - source[i] * 64 / 96) <= 1.5 for i in middles), [(out[i], source[i]) for i in middles]


def bar_positions(video: Path) -> list[float]:
    """Where the bright bar of each frame is (its centre column)."""
    positions = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            columns = frame.to_ndarray(format="gray").mean(axis=0)
            bright = np.flatnonzero(columns > (columns.max() + columns.min()) / 2)
            positions.append(float(bright.mean()))
    return positions


def test_the_dagster_assets_show_the_segments_of_a_long_clip(tmp_path: Path, media: Path, comfy_url: str) -> None:
    (tmp_path / "face.png").write_bytes((media / "face.png").read_bytes())
    (tmp_path / "tone.wav").write_bytes((media / "talk.wav").read_bytes())  # 40 s of speech
    one_clip_manifest(tmp_path, "talk", 64)
    resources = local_resources(tmp_path, comfy_url) | {
        "comfyui": ComfyUIResource(urls=comfy_url, profile="preview", segment_seconds=15, crossfade_frames=3)
    }
    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)
        result = dg.materialize(
            ASSETS, selection=[TIMING, VIDEO], partition_key="talk", instance=instance, resources=resources
        )
    timing, video = (result.asset_materializations_for_node("clip_renders")[i].metadata for i in (0, 1))
    assert timing["segments"].value == video["segments"].value >= 3
    assert timing["segment_boundaries"].value.count("\n") == 1 + timing["segments"].value  # header rows + one each
    assert video["segment_renders"].value.count(comfy_url) == video["segments"].value


def _running(url: str) -> bool:
    return bool(httpx.get(f"{url}/infinitetalk/state", timeout=10).json()["running"])


def _interrupt_the_second_prompt(url: str, before: set[str]) -> None:
    wait_until(lambda: len(set(finished_prompts(url)) - before) >= 1 and _running(url), 120)
    httpx.post(f"{url}/interrupt", json={}, timeout=10)

"""The bulk path through real Dagster and a real local ComfyUI: manifest -> partitions -> renders -> catalog."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.verify import inspect_output
from tests.fixtures.media import make_portrait, make_speech, make_video
from tests.fixtures.pipeline import local_resources

ASSETS = [clip_manifest, clip_renders, video_catalog]
FIELDS = [
    "clip_id",
    "input_type",
    "person_count",
    "image_path",
    "video_path",
    "wav_path",
    "wav_path_2",
    "prompt",
    "width",
    "height",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    media = root / "media"
    media.mkdir()
    make_portrait(media / "face.png")
    make_portrait(media / "duo.png", size=(640, 360))
    make_speech(media / "a.wav", "One, two, three.")
    make_speech(media / "b.wav", "This second speaker talks for a little longer.")
    make_video(media / "src.mp4", seconds=1.2, fps=30, size=(320, 240))
    rows = [
        ["i2v-single", "image", "single", "media/face.png", "", "media/a.wav", "", "talking", "256", "256"],
        ["i2v-multi", "image", "multi", "media/duo.png", "", "media/a.wav", "media/b.wav", "two talk", "320", "192"],
        ["v2v-single", "video", "single", "", "media/src.mp4", "media/b.wav", "", "talking", "256", "192"],
        ["v2v-multi", "video", "multi", "", "media/src.mp4", "media/a.wav", "media/b.wav", "two talk", "256", "256"],
        ["no-audio", "image", "single", "media/face.png", "", "", "", "talking", "256", "256"],
        ["too-wide", "image", "single", "media/face.png", "", "media/a.wav", "", "talking", "99999", "256"],
    ]
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def resources(workspace: Path, comfy_url: str) -> dict[str, object]:
    return local_resources(workspace, comfy_url)


@pytest.fixture(scope="module")
def pipeline_run(instance: dg.DagsterInstance, resources: dict[str, object]) -> dict[str, dg.ExecuteInProcessResult]:
    """Materializes the manifest, every clip (one run each, as backfills do) and the catalog once for the module."""
    results = {"manifest": dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)}
    for key in instance.get_dynamic_partitions("clips"):
        results[key] = dg.materialize(
            ASSETS,
            selection=[TIMING, VIDEO],
            partition_key=key,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    results["catalog"] = dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)
    return results


def test_valid_rows_become_partitions(pipeline_run, instance: dg.DagsterInstance) -> None:
    assert sorted(instance.get_dynamic_partitions("clips")) == ["i2v-multi", "i2v-single", "v2v-multi", "v2v-single"]


def test_invalid_rows_are_reported_with_row_clip_and_reason(pipeline_run) -> None:
    result = pipeline_run["manifest"]
    meta = result.asset_materializations_for_node("clip_manifest")[0].metadata
    assert meta["invalid_rows"].value == 2
    table = meta["invalid"].value
    assert "no-audio" in table and "too-wide" in table and "| 6 |" in table and "| 7 |" in table
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == "no_invalid_rows" and not check.passed


def test_every_clip_renders_with_passing_checks(pipeline_run) -> None:
    for key in ["i2v-single", "i2v-multi", "v2v-single", "v2v-multi"]:
        result = pipeline_run[key]
        assert result.success, key
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == dict.fromkeys(
            ["frames_match_audio", "has_audio_stream", "size_as_requested", "file_not_empty"], True
        ), key


def test_videos_have_the_frames_their_audio_needs(pipeline_run, workspace: Path) -> None:
    catalog = pd.read_parquet(workspace / "out" / "catalog" / "video_catalog")
    for row in catalog.itertuples():
        facts = inspect_output(Path(row.output_uri))
        assert facts.frames == row.frames
        assert (facts.width, facts.height) == (row.width, row.height)


def test_catalog_has_one_row_per_clip(pipeline_run, workspace: Path) -> None:
    catalog = pd.read_parquet(workspace / "out" / "catalog" / "video_catalog")
    assert sorted(catalog["clip_id"]) == ["i2v-multi", "i2v-single", "v2v-multi", "v2v-single"]
    assert set(catalog["workflow"]) == {"I2V_single", "I2V_multi", "V2V_single", "V2V_multi"}


def test_rematerializing_a_clip_skips_the_render_and_keeps_one_row(
    pipeline_run, instance: dg.DagsterInstance, resources: dict[str, object], workspace: Path
) -> None:
    again = dg.materialize(
        ASSETS, selection=[TIMING, VIDEO], partition_key="i2v-single", instance=instance, resources=resources
    )
    [meta] = [e.materialization.metadata for e in again.get_asset_materialization_events() if e.asset_key == VIDEO]
    assert meta["skipped"].value is True
    dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)
    catalog = pd.read_parquet(workspace / "out" / "catalog" / "video_catalog")
    assert len(catalog) == 4 and catalog["clip_id"].is_unique

"""One run over several clips (a backfill range): each clip is recorded as its own, and a bad one stops no other."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import pytest

from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders
from tests.fixtures.media import make_portrait, make_tone
from tests.fixtures.pipeline import local_resources

pytestmark = pytest.mark.comfyui


@pytest.fixture
def batch(tmp_path: Path, comfy_url: str) -> tuple[dg.DagsterInstance, dict[str, object], Path]:
    make_portrait(tmp_path / "face.png")
    make_tone(tmp_path / "short.wav", 0.6)
    make_tone(tmp_path / "long.wav", 1.0, freq=300)
    (tmp_path / "noise.wav").write_bytes(b"this is not audio at all" * 10)
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "image_path", "wav_path", "width", "height"])
        w.writerow(["a-short", "face.png", "short.wav", "128", "128"])
        w.writerow(["b-noise", "face.png", "noise.wav", "128", "128"])
        w.writerow(["c-long", "face.png", "long.wav", "128", "128"])
    resources = local_resources(tmp_path, comfy_url)
    with dg.instance_for_test() as instance:
        dg.materialize([clip_manifest, clip_renders], selection=[clip_manifest], instance=instance, resources=resources)
        yield instance, resources, tmp_path


def _run_range(instance: dg.DagsterInstance, resources: dict[str, object]) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [clip_manifest, clip_renders],
        selection=[TIMING, VIDEO],
        instance=instance,
        resources=resources,
        tags={"dagster/asset_partition_range_start": "a-short", "dagster/asset_partition_range_end": "c-long"},
        raise_on_error=False,
    )


def test_a_run_over_a_range_records_each_clip_and_fails_only_for_the_bad_one(batch) -> None:
    instance, resources, _ = batch
    result = _run_range(instance, resources)
    assert not result.success
    assert instance.get_materialized_partitions(VIDEO) == {"a-short", "c-long"}
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "clip 'b-noise', field 'wav_path'" in failure.message
    checks = {(c.partition, c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks[("a-short", "frames_match_audio")] and checks[("c-long", "frames_match_audio")]
    assert ("b-noise", "frames_match_audio") not in checks


def test_each_clip_in_a_range_gets_its_own_frame_count(batch) -> None:
    instance, resources, _ = batch
    result = _run_range(instance, resources)
    frames = {
        e.partition: e.materialization.metadata["frames"].value
        for e in result.get_asset_materialization_events()
        if e.asset_key == TIMING
    }
    assert frames == {"a-short": 15, "c-long": 25}


def test_rerunning_the_range_skips_clips_already_rendered(batch) -> None:
    instance, resources, _ = batch
    _run_range(instance, resources)
    again = _run_range(instance, resources)
    skipped = {
        e.partition: e.materialization.metadata["skipped"].value
        for e in again.get_asset_materialization_events()
        if e.asset_key == VIDEO
    }
    assert skipped == {"a-short": True, "c-long": True}


def _skipped(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.partition: e.materialization.metadata["skipped"].value
        for e in result.get_asset_materialization_events()
        if e.asset_key == VIDEO
    }


def _render_one(
    instance: dg.DagsterInstance, resources: dict[str, object], **config: object
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [clip_manifest, clip_renders],
        selection=[TIMING, VIDEO],
        instance=instance,
        resources=resources,
        partition_key="a-short",
        run_config={"ops": {"clip_renders": {"config": config}}} if config else None,
    )


def test_new_bytes_under_the_same_file_name_are_rendered_again(batch) -> None:
    instance, resources, root = batch
    _render_one(instance, resources)
    assert _skipped(_render_one(instance, resources)) == {"a-short": True}  # control: same bytes are skipped
    make_portrait(root / "face.png", colour="#405060")
    assert _skipped(_render_one(instance, resources)) == {"a-short": False}


def test_force_renders_an_unchanged_clip_again(batch) -> None:
    instance, resources, _ = batch
    _render_one(instance, resources)
    assert _skipped(_render_one(instance, resources)) == {"a-short": True}  # control: unchanged is skipped
    assert _skipped(_render_one(instance, resources, force=True)) == {"a-short": False}


def test_a_clip_id_owned_by_another_manifest_is_an_invalid_row(batch) -> None:
    instance, resources, root = batch
    other = root / "other.csv"
    other.write_text("clip_id,image_path,wav_path\na-short,face.png,long.wav\nd-new,face.png,long.wav\n")
    result = dg.materialize(
        [clip_manifest, clip_renders],
        selection=[clip_manifest],
        instance=instance,
        resources=resources,
        run_config={"ops": {"clip_manifest": {"config": {"manifest": str(other)}}}},
    )
    meta = result.asset_materializations_for_node("clip_manifest")[0].metadata
    assert meta["invalid_rows"].value == 1 and meta["valid_rows"].value == 1
    assert "a-short" in meta["invalid"].value and "already registered by" in meta["invalid"].value
    assert "d-new" in instance.get_dynamic_partitions("clips")


def test_a_successful_render_clears_the_clips_failure_record(batch) -> None:
    instance, resources, _ = batch
    store = resources["storage"].store()
    store.put_bytes("failures/a-short.json", b'{"error": "worker down"}')
    _render_one(instance, resources)
    assert store.get_bytes("failures/a-short.json") is None

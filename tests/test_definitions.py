"""The code location loads, and its shape is what the UI, sensors and schedules rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from infinitetalk_pipeline.definitions import defs as load_defs

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _snapshot() -> dict[str, list[str]]:
    defs = load_defs()
    repo = defs.get_repository_def()
    return {
        "assets": sorted(k.to_user_string() for k in defs.resolve_all_asset_keys()),
        "checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in repo.asset_graph.asset_check_keys),
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "resources": sorted(defs.resources or {}),
    }


def test_definitions_snapshot() -> None:
    snapshot = _snapshot()
    assert snapshot["assets"] == ["clip_manifest", "clip_timing", "comfyui_workers", "dubbed_video", "video_catalog"]
    assert snapshot["checks"] == [
        "clip_manifest:no_invalid_rows",
        "dubbed_video:file_not_empty",
        "dubbed_video:frames_match_audio",
        "dubbed_video:has_audio_stream",
        "dubbed_video:size_as_requested",
    ]
    assert {"render_clips", "refresh_catalog"} <= set(snapshot["jobs"])
    assert snapshot["sensors"] == [
        "comfyui_workers_sensor",
        "dead_render_run_sensor",
        "manifest_upload_sensor",
        "media_drop_sensor",
        "render_failure_sensor",
    ]
    assert snapshot["schedules"] == ["refresh_catalog_schedule", "render_catchup_schedule"]
    assert snapshot["resources"] == ["comfyui", "s3", "storage", "watch"]


def test_render_steps_share_the_clips_in_flight_pool_and_retry_transient_failures() -> None:
    renders = load_defs().resolve_assets_def("dubbed_video")
    assert renders.op.pool == "gpu_render"
    assert renders.op.retry_policy is not None and renders.op.retry_policy.max_retries >= 1


def test_dagster_validates_the_workspace() -> None:
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_resources_read_their_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("COMFYUI_URLS", "http://gpu-1:8188,http://gpu-2:8188")
    monkeypatch.setenv("INFINITETALK_OUTPUT_ROOT", "s3://dubs/out/")
    from infinitetalk_pipeline.defs.resources import build_resources

    resources = build_resources()
    assert isinstance(resources["comfyui"].urls, dg.EnvVar)
    assert resources["comfyui"].urls.env_var_name == "COMFYUI_URLS"
    assert isinstance(resources["storage"].output_root, dg.EnvVar)
    with dg.build_resources(resources) as resolved:  # as a run resolves them
        assert resolved.comfyui.worker_urls() == ["http://gpu-1:8188", "http://gpu-2:8188"]
        assert resolved.storage.output_root == "s3://dubs/out/"


def test_the_sensors_watch_what_the_environment_names(monkeypatch) -> None:
    monkeypatch.setenv("INFINITETALK_MANIFEST_PREFIX", "s3://dubs/manifests/")
    monkeypatch.setenv("INFINITETALK_DROP_QUIET_SECONDS", "60")
    from infinitetalk_pipeline.defs.resources import build_resources

    with dg.build_resources({"watch": build_resources()["watch"]}) as resolved:
        assert resolved.watch.manifest_prefix == "s3://dubs/manifests/"
        assert resolved.watch.drop_prefix == ""  # unset: that sensor skips
        assert resolved.watch.drop_quiet_seconds == 60

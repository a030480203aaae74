"""Resource settings compose: each field defaults to its environment variable, so a run config that sets one field
keeps the environment's value of the others, and the variables are read when a run starts (issue 12, item 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from infinitetalk_pipeline.definitions import defs as load_defs
from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.assets import clip_manifest
from infinitetalk_pipeline.defs.resources import build_resources
from infinitetalk_pipeline.registry import shard_of
from tests.fixtures.processes import REPO, dagster_materialize

ALLOW_PRIVATE_URLS = {"resources": {"storage": {"config": {"allow_private_urls": True}}}}

# Every resource field's variable set to a value that is not its default, and what the field must then hold.
SET: dict[str, tuple[str, Any]] = {
    "COMFYUI_URLS": ("http://gpu-1:8188,http://gpu-2:8188", "http://gpu-1:8188,http://gpu-2:8188"),
    "INFINITETALK_PROFILE": ("infinitetalk", "infinitetalk"),
    "INFINITETALK_CACHE_MAX_GB": ("2", 2),
    "INFINITETALK_CACHE_MAX_AGE_DAYS": ("7", 7),
    "INFINITETALK_WORKER_MAX_UPLOAD_MB": ("200", 200),
    "INFINITETALK_COMFYUI_REQUEST_TIMEOUT_SECONDS": ("12", 12),
    "INFINITETALK_COMFYUI_SILENCE_TIMEOUT_SECONDS": ("120", 120),
    "INFINITETALK_RENDER_DEADLINE_SECONDS": ("1800.5", 1800.5),
    "INFINITETALK_QUEUE_DEPTH": ("2", 2),
    "INFINITETALK_WORKER_DEAD_AFTER_SECONDS": ("30", 30),
    "INFINITETALK_WORKER_FREE_AFTER_JOB": ("free", "free"),
    "INFINITETALK_WORKER_MAX_JOBS": ("7", 7),
    "INFINITETALK_WORKER_MAX_RAM_PERCENT": ("80", 80),
    "INFINITETALK_WORKER_MAX_VRAM_PERCENT": ("95", 95),
    "INFINITETALK_SEGMENT_SECONDS": ("45", 45),
    "INFINITETALK_CROSSFADE_FRAMES": ("3", 3),
    "INFINITETALK_OUTPUT_ROOT": ("s3://dubs/out/", "s3://dubs/out/"),
    "INFINITETALK_CACHE_DIR": ("/data/cache", "/data/cache"),
    "INFINITETALK_ALLOWED_ROOTS": ("/data/in:/data/more", "/data/in:/data/more"),
    "INFINITETALK_ALLOW_PRIVATE_URLS": ("true", True),
    "INFINITETALK_MANIFEST": ("s3://dubs/manifest.csv", "s3://dubs/manifest.csv"),
    "INFINITETALK_S3_ENDPOINT_URL": ("http://minio:9000", "http://minio:9000"),
    "AWS_REGION": ("eu-west-1", "eu-west-1"),
    "INFINITETALK_S3_MAX_ATTEMPTS": ("3", 3),
    "INFINITETALK_S3_VERIFY": ("false", False),
    "INFINITETALK_S3_USE_SSL": ("0", False),
    "INFINITETALK_S3_UNSIGNED": ("1", True),
    "INFINITETALK_MANIFEST_PREFIX": ("s3://dubs/manifests/", "s3://dubs/manifests/"),
    "INFINITETALK_DROP_PREFIX": ("s3://dubs/drops/", "s3://dubs/drops/"),
    "INFINITETALK_DROP_QUIET_SECONDS": ("60", 60),
}


def _manifest(folder: Path, clip_id: str) -> Path:
    """A one-row manifest; registering it writes the clip's spec, no input is read."""
    path = folder / "manifest.csv"
    path.write_text(f"clip_id,image_path,wav_path,width,height\n{clip_id},face.png,hello.wav,192,192\n")
    return path


def test_a_run_config_setting_one_storage_field_keeps_the_environment_of_the_others(tmp_path: Path) -> None:
    """The reported case, launched as an operator does: the code location from the shell, run config for one field."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "INFINITETALK_OUTPUT_ROOT": str(tmp_path / "out"),
        "INFINITETALK_CACHE_DIR": str(tmp_path / "cache"),
        "INFINITETALK_ALLOWED_ROOTS": str(tmp_path),
        "INFINITETALK_MANIFEST": str(_manifest(tmp_path, "composed-clip")),
    }
    dagster_materialize(env, "--select", "clip_manifest", "--config-json", json.dumps(ALLOW_PRIVATE_URLS))
    # registered under $INFINITETALK_OUTPUT_ROOT, not the default var/output
    assert "composed-clip" in json.loads((tmp_path / "out" / shard_of("composed-clip")).read_text())


def test_the_variables_are_read_when_a_run_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment changes a variable without a code reload: the run reads the value set when it starts."""
    monkeypatch.setenv("INFINITETALK_MANIFEST", str(_manifest(tmp_path, "late-clip")))
    monkeypatch.setenv("INFINITETALK_OUTPUT_ROOT", str(tmp_path / "at-load"))
    resources = build_resources()  # the definitions load
    monkeypatch.setenv("INFINITETALK_OUTPUT_ROOT", str(tmp_path / "at-run"))
    with dg.instance_for_test() as instance:
        result = dg.materialize([clip_manifest], resources=resources, instance=instance)
    assert result.success
    assert "late-clip" in json.loads((tmp_path / "at-run" / shard_of("late-clip")).read_text())
    assert not (tmp_path / "at-load").exists()


def test_every_resource_field_takes_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (value, _) in SET.items():
        monkeypatch.setenv(name, value)
    resources = build_resources()
    with dg.build_resources({k: v for k, v in resources.items() if k != "s3"}) as resolved:  # as a run does
        held = {
            variable: getattr(resolved.storage.s3 if key == "s3" else getattr(resolved, key), field)
            for key, fields in settings.RESOURCE_FIELDS.items()
            for field, variable in fields.items()
        }
    assert held == {name: expected for name, (_, expected) in SET.items()}


def test_every_resource_field_has_an_environment_variable() -> None:
    """Each field the run config can set, of each resource of the code location, has its listed variable; the S3
    credentials and profile are boto3's (its own environment chain)."""
    listed = {s.name for s in settings.ENV_VARS}
    for key, resource in (load_defs().resources or {}).items():
        fields = set(type(resource).to_config_schema().as_field().config_type.fields)
        with_variable = settings.RESOURCE_FIELDS[key]
        assert fields - set(with_variable) == (settings.BOTO3_CHAIN if key == "s3" else set()), key
        assert set(with_variable.values()) <= listed, key


def test_a_boolean_variable_is_true_or_false_or_the_definitions_do_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster reads any value but false/0 as true: `no` must not switch the SSRF guard off."""
    monkeypatch.setenv("INFINITETALK_ALLOW_PRIVATE_URLS", "no")
    with pytest.raises(ValueError, match="INFINITETALK_ALLOW_PRIVATE_URLS='no'"):
        build_resources()


def test_an_unknown_free_mode_fails_the_run_start_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFINITETALK_WORKER_FREE_AFTER_JOB", "purge")
    comfyui = build_resources()["comfyui"]
    with pytest.raises(dg.DagsterResourceFunctionError) as failed, dg.build_resources({"comfyui": comfyui}):
        pass
    assert "free_after_job must be one of off, unload, free, not 'purge'" in str(failed.value.__cause__)

"""One clip through the whole Dagster path on the `infinitetalk` profile: the real graph on the tiny-weights worker."""

from __future__ import annotations

import csv
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest

from infinitetalk_pipeline.comfy.server import LocalComfyUI
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.resources import build_resources
from infinitetalk_pipeline.verify import inspect_output
from tests.fixtures.synth import make_video
from tests.fixtures.tiny_worker import speech_like

ASSETS = [clip_manifest, clip_renders, video_catalog]


@pytest.mark.infinitetalk
def test_a_v2v_clip_goes_manifest_to_catalog_on_the_infinitetalk_profile(
    tiny_worker: LocalComfyUI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_video(tmp_path / "source.mp4", seconds=1.0, fps=30, size=(80, 64))  # 30 fps: conformed to 25 upstream
    speech_like(tmp_path / "speech.wav", 4.0)  # 100 frames: two InfiniteTalk windows
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["clip_id", "input_type", "video_path", "wav_path", "prompt", "width", "height"],
                ["tiny-v2v", "video", "source.mp4", "speech.wav", "a person talking", "64", "64"],
            ]
        )
    # Configured the way a deployment is: environment variables read by the code location's resources.
    for name, value in {
        "COMFYUI_URLS": tiny_worker.url,
        "INFINITETALK_PROFILE": "infinitetalk",
        "INFINITETALK_OUTPUT_ROOT": str(tmp_path / "out"),
        "INFINITETALK_CACHE_DIR": str(tmp_path / "cache"),
        "INFINITETALK_ALLOWED_ROOTS": str(tmp_path),
        "INFINITETALK_MANIFEST": str(tmp_path / "manifest.csv"),
    }.items():
        monkeypatch.setenv(name, value)
    resources = build_resources()

    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)
        assert instance.get_dynamic_partitions("clips") == ["tiny-v2v"]
        rendered = dg.materialize(
            ASSETS, selection=[TIMING, VIDEO], partition_key="tiny-v2v", instance=instance, resources=resources
        )
        dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)

    checks = {c.check_name: c.passed for c in rendered.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(
        ["frames_match_audio", "has_audio_stream", "size_as_requested", "file_not_empty"], True
    )
    [row] = pd.read_parquet(tmp_path / "out" / "catalog" / "video_catalog").to_dict("records")
    assert (row["clip_id"], row["profile"], row["workflow"], row["frames"]) == (
        "tiny-v2v",
        "infinitetalk",
        "V2V_single",
        100,
    )
    assert row["worker"] == tiny_worker.url
    history = httpx.get(f"{tiny_worker.url}/history/{row['comfy_prompt_id']}", timeout=10).json()
    entry = history[row["comfy_prompt_id"]]
    assert entry["status"]["status_str"] == "success"
    # the graph asked for an attention kernel this worker reported, never one it lacks (sageattn)
    submitted = entry["prompt"][2]
    [mode] = [n["inputs"]["attention_mode"] for n in submitted.values() if n["class_type"] == "WanVideoModelLoader"]
    reported = httpx.get(f"{tiny_worker.url}/infinitetalk/worker", timeout=10).json()["attention_modes"]
    assert mode in reported and "sageattn" not in reported
    facts = inspect_output(Path(row["output_uri"]))
    assert (facts.frames, facts.width, facts.height) == (100, 64, 64)

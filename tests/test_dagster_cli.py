"""The shell path: `dagster asset materialize` with a persistent instance and settings from the environment.

(`dagster asset materialize` of dagster 1.13 takes `-m MODULE`, not `-w workspace.yaml`; the module is the one
workspace.yaml names.)"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from infinitetalk_pipeline.verify import inspect_output
from tests.fixtures.media import make_portrait, make_speech
from tests.fixtures.processes import REPO, dagster_materialize

pytestmark = pytest.mark.comfyui


def test_dubbed_video_materializes_from_the_shell_for_one_partition(tmp_path: Path, comfy_url: str) -> None:
    make_portrait(tmp_path / "face.png")
    make_speech(tmp_path / "hello.wav", "Hello from the shell.")
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["clip_id", "image_path", "wav_path", "width", "height"],
                ["shell-clip", "face.png", "hello.wav", "192", "192"],
            ]
        )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COMFYUI_URLS": comfy_url,
        "INFINITETALK_MANIFEST": str(tmp_path / "manifest.csv"),
        "INFINITETALK_OUTPUT_ROOT": str(tmp_path / "out"),
        "INFINITETALK_CACHE_DIR": str(tmp_path / "cache"),
        "INFINITETALK_ALLOWED_ROOTS": str(tmp_path),
    }

    dagster_materialize(env, "--select", "clip_manifest")
    dagster_materialize(env, "--select", "dubbed_video", "--partition", "shell-clip")
    video = tmp_path / "out" / "videos" / "shell-clip.mp4"
    facts = inspect_output(video)
    assert (facts.width, facts.height) == (192, 192) and facts.audio_seconds
    assert facts.frames == pytest.approx(facts.audio_seconds * 25, abs=1)

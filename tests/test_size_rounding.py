"""Sizes are rounded to multiples of 16 with one warning per rounding per render, on the local ComfyUI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from infinitetalk_pipeline.clip_renderer import ClipRenderer
from infinitetalk_pipeline.comfy.fleet import Fleet
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.registry import ClipSpec
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import LocalOutputStore
from tests.fixtures.media import make_portrait, make_tone

pytestmark = pytest.mark.comfyui


def test_a_rounded_width_is_warned_about_once_per_render(
    tmp_path: Path, comfy_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_portrait(tmp_path / "face.png")
    make_tone(tmp_path / "tone.wav", 0.4)
    body = {"image_path": str(tmp_path / "face.png"), "wav_path": str(tmp_path / "tone.wav"), "width": 130}
    spec = ClipSpec("talk", str(tmp_path / "manifest.csv"), 2, parse_request(body, "talk"))
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(tmp_path,)), cache_dir=tmp_path / "cache")
    run_log = logging.getLogger("tests.size_rounding")  # in the logging tree: caplog sees it beside the library's
    with Fleet([comfy_url]) as fleet, caplog.at_level(logging.WARNING):
        renderer = ClipRenderer(LocalOutputStore(tmp_path / "out"), fetcher, fleet, "preview", log=run_log)
        record = renderer.render(spec, renderer.measure_timing(spec))
    rounded = [r.getMessage() for r in caplog.records if "rounded" in r.getMessage()]
    assert rounded == ["clip 'talk': width 130 rounded to 128 (a multiple of 16)"]
    assert (record.row.width, record.row.height) == (128, 512)

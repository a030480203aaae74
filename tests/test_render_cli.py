"""`infinitetalk render REQUEST.json`: the original template's request and response shapes, on a real ComfyUI."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from infinitetalk_pipeline.cli import main
from infinitetalk_pipeline.verify import inspect_output
from tests.fixtures.media import make_portrait, make_speech, make_tone, make_video

pytestmark = pytest.mark.comfyui


def _render(tmp_path: Path, comfy_url: str, body: dict, *extra: str) -> tuple[int, str, str]:
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"input": body}))
    result = CliRunner().invoke(
        main, ["render", str(request), "--comfyui-url", comfy_url, "--output-dir", str(tmp_path / "out"), *extra]
    )
    return result.exit_code, result.stdout, result.stderr


def test_base64_image_with_data_uri_renders_and_prints_the_video_path(tmp_path: Path, comfy_url: str) -> None:
    face = make_portrait(tmp_path / "face.png")
    speech = make_speech(tmp_path / "hi.wav", "Good morning.")
    body = {
        "image_base64": "data:image/png;base64," + base64.b64encode(face.read_bytes()).decode(),
        "wav_path": str(speech),
        "width": 256,
        "height": 256,
    }
    code, out, _ = _render(tmp_path, comfy_url, body)
    assert code == 0, out
    video = Path(json.loads(out)["video_path"])
    facts = inspect_output(video)
    assert (facts.width, facts.height, facts.fps) == (256, 256, 25.0)
    assert facts.audio_seconds is not None and facts.frames == pytest.approx(facts.audio_seconds * 25, abs=1)


def test_network_volume_false_returns_the_video_inline(tmp_path: Path, comfy_url: str) -> None:
    make_portrait(tmp_path / "face.png")
    make_tone(tmp_path / "tone.wav", 1.0)
    body = {"image_path": "face.png", "wav_path": "tone.wav", "width": 128, "height": 128, "network_volume": False}
    code, out, _ = _render(tmp_path, comfy_url, body, "--allow-root", str(tmp_path))
    assert code == 0
    data_uri = json.loads(out)["video"]
    assert data_uri.startswith("data:video/mp4;base64,")
    (tmp_path / "inline.mp4").write_bytes(base64.b64decode(data_uri.split(",", 1)[1]))
    assert inspect_output(tmp_path / "inline.mp4").frames == 25


def test_v2v_multi_with_second_speaker_renders_the_longer_track(tmp_path: Path, comfy_url: str) -> None:
    make_video(tmp_path / "src.mp4", seconds=1.0, fps=30)
    make_tone(tmp_path / "a.wav", 0.8)
    make_tone(tmp_path / "b.wav", 1.6, freq=330)
    body = {
        "input_type": "video",
        "person_count": "multi",
        "video_path": str(tmp_path / "src.mp4"),
        "wav_path": str(tmp_path / "a.wav"),
        "wav_path_2": str(tmp_path / "b.wav"),
        "width": 160,
        "height": 128,
    }
    code, out, _ = _render(tmp_path, comfy_url, body, "--allow-root", str(tmp_path))
    assert code == 0, out
    facts = inspect_output(Path(json.loads(out)["video_path"]))
    assert facts.frames == 40 and (facts.width, facts.height) == (160, 128)


def test_sizes_are_rounded_to_multiples_of_16_with_a_warning(tmp_path: Path, comfy_url: str) -> None:
    make_portrait(tmp_path / "face.png")
    make_tone(tmp_path / "tone.wav", 0.4)
    body = {
        "image_path": str(tmp_path / "face.png"),
        "wav_path": str(tmp_path / "tone.wav"),
        "width": 250,
        "height": 130,
    }
    code, out, err = _render(tmp_path, comfy_url, body, "--allow-root", str(tmp_path))
    assert code == 0, out
    assert "width 250 rounded to 256" in err and "height 130 rounded to 128" in err
    facts = inspect_output(Path(json.loads(out)["video_path"]))
    assert (facts.width, facts.height) == (256, 128)


def test_a_misspelled_media_field_is_an_error_not_a_default(tmp_path: Path, comfy_url: str) -> None:
    code, out, _ = _render(tmp_path, comfy_url, {"image_path": "face.png", "wav_paht": "a.wav"})
    assert code == 1
    error = json.loads(out)["error"]
    assert "clip 'req'" in error and "wav_paht" in error


def test_an_unreadable_audio_file_names_the_clip_and_field(tmp_path: Path, comfy_url: str) -> None:
    make_portrait(tmp_path / "face.png")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    body = {"clip_id": "promo-7", "image_path": str(tmp_path / "face.png"), "wav_path": str(tmp_path / "broken.wav")}
    code, out, _ = _render(tmp_path, comfy_url, body, "--allow-root", str(tmp_path))
    assert code == 1
    error = json.loads(out)["error"]
    assert error.startswith("clip 'promo-7', field 'wav_path':")


def test_a_path_outside_the_allowed_roots_is_refused(tmp_path: Path, comfy_url: str) -> None:
    make_tone(tmp_path / "tone.wav", 0.4)
    code, out, _ = _render(tmp_path, comfy_url, {"image_path": "/etc/hostname", "wav_path": "tone.wav"})
    assert code == 1
    assert "field 'image_path'" in json.loads(out)["error"]


def test_an_unreachable_worker_is_a_clear_error_at_once(tmp_path: Path) -> None:
    make_portrait(tmp_path / "face.png")
    make_tone(tmp_path / "tone.wav", 0.4)
    body = {"image_path": str(tmp_path / "face.png"), "wav_path": str(tmp_path / "tone.wav")}
    started = time.monotonic()
    code, out, _ = _render(tmp_path, "http://127.0.0.1:9", body, "--allow-root", str(tmp_path))
    assert time.monotonic() - started < 30  # a person waits: not the minute a run gives workers to start
    assert code == 1
    error = json.loads(out)["error"]
    assert error.startswith("clip 'req':") and "127.0.0.1:9" in error

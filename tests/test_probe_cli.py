"""`infinitetalk probe FILE...`: one JSON line per file, errors included, non-zero exit on any error."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from infinitetalk_pipeline.media.cli import probe
from tests.fixtures.media import encode_audio, make_portrait, make_tone, make_video


def run(*files: Path) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(probe, [str(f) for f in files])
    return result.exit_code, [json.loads(line) for line in result.output.splitlines()]


def test_audio_gets_duration_frames_and_windows(tmp_path: Path) -> None:
    code, [row] = run(make_tone(tmp_path / "a.wav", 6.0))
    assert code == 0
    assert row == {
        "path": str(tmp_path / "a.wav"),
        "kind": "audio",
        "format": "wav",
        "duration": 6.0,
        "fps": 25,
        "frames": 150,
        "windows": 2,
    }


def test_the_real_format_is_reported(tmp_path: Path) -> None:
    mp3 = encode_audio(make_tone(tmp_path / "a.wav", 1.0), tmp_path / "a.wav.ogg", "mp3_vbr")
    _, [row] = run(mp3)
    assert row["format"] == "mp3"


def test_video_also_gets_its_own_rate_frames_size_and_rotation(tmp_path: Path) -> None:
    code, [row] = run(make_video(tmp_path / "v.mp4", 2.0, fps=30))
    assert code == 0
    assert row["kind"] == "video"
    assert (row["source_fps"], row["source_frames"], row["width"], row["height"], row["rotation"]) == (
        30,
        60,
        320,
        240,
        0,
    )
    assert (row["duration"], row["fps"], row["frames"], row["windows"]) == (2.0, 25, 50, 1)


def test_images_get_kind_and_format(tmp_path: Path) -> None:
    _, [row] = run(make_portrait(tmp_path / "p.png"))
    assert (row["kind"], row["format"]) == ("image", "png")


def test_one_line_per_file_and_errors_set_the_exit_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code, rows = run(make_tone(tmp_path / "a.wav", 1.0), bad)
    assert code == 1
    assert rows[0]["frames"] == 25
    assert rows[1] == {
        "path": str(bad),
        "error": "unrecognised file format (not an image, audio or video file we can read)",
    }


def test_a_missing_file_is_an_error_line(tmp_path: Path) -> None:
    code, [row] = run(tmp_path / "absent.wav")
    assert code == 1
    assert "absent.wav" in row["path"] and "cannot read" in row["error"]

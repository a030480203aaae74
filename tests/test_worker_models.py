"""Locked model files: check, download, resume, verify, and `infinitetalk worker fetch-models`, against a real local
HTTP server (tests/fixtures/http_files.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from infinitetalk_pipeline.worker.cli import worker
from infinitetalk_pipeline.worker.lock import ModelPin, WorkerLock, default_lock_path, load_lock
from infinitetalk_pipeline.worker.models import FetchResult, ModelFetchError, check_model, fetch_models
from tests.fixtures.http_files import FileServer

SIZE = 300_000


def _payload(seed: str = "weights") -> bytes:
    """SIZE random-looking bytes, the same for the same seed."""
    return hashlib.shake_256(seed.encode()).digest(SIZE)


def _pin(url: str, data: bytes, file: str = "model.safetensors", folder: str = "diffusion_models") -> ModelPin:
    return ModelPin(file=file, folder=folder, url=url, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _toml(pin: ModelPin) -> str:
    lines = ["[[models]]", f'file = "{pin.file}"', f'folder = "{pin.folder}"', f'url = "{pin.url}"']
    if pin.size is not None:
        lines.append(f"size = {pin.size}")
    if pin.sha256 is not None:
        lines.append(f'sha256 = "{pin.sha256}"')
    return "\n".join(lines) + "\n"


def _write_lock(tmp_path: Path, *pins: ModelPin) -> WorkerLock:
    """The real lock up to its models, with `[[models]]` entries for `pins` instead."""
    top = default_lock_path().read_text().split("\n[[models]]", 1)[0]
    models = "".join(f"\n{_toml(p)}" for p in pins)
    path = tmp_path / "worker.lock.toml"
    path.write_text(top + models)
    return load_lock(path)


def _fetch(lock: WorkerLock, models_dir: Path) -> list[FetchResult]:
    return fetch_models(lock, models_dir, log=lambda _line: None)


def test_a_model_is_downloaded_and_verified_into_its_folder(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    lock = _write_lock(tmp_path, _pin(http_files.put("wan.safetensors", data), data))
    [result] = _fetch(lock, tmp_path / "models")
    assert result.action == "downloaded" and result.bytes_downloaded == SIZE
    assert (tmp_path / "models/diffusion_models/model.safetensors").read_bytes() == data
    assert not (tmp_path / "models/diffusion_models/model.safetensors.part").exists()


def test_a_cut_connection_is_resumed_with_a_range_request(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    lock = _write_lock(tmp_path, _pin(http_files.put("wan.safetensors", data), data))
    http_files.cut_after = 100_000
    _fetch(lock, tmp_path / "models")
    assert [r.range for r in http_files.requests] == [None, "bytes=100000-"]
    assert [r.status for r in http_files.requests] == [200, 206]
    assert sum(r.body_bytes for r in http_files.requests) == SIZE  # nothing fetched twice
    assert (tmp_path / "models/diffusion_models/model.safetensors").read_bytes() == data


def test_a_server_that_ignores_range_still_yields_the_right_file(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    lock = _write_lock(tmp_path, _pin(http_files.put("wan.safetensors", data), data))
    part = tmp_path / "models/diffusion_models/model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:50_000])  # left by an earlier run
    http_files.ignore_range = True
    _fetch(lock, tmp_path / "models")
    assert [(r.range, r.status) for r in http_files.requests] == [("bytes=50000-", 200)]
    assert (tmp_path / "models/diffusion_models/model.safetensors").read_bytes() == data


def test_a_sha256_mismatch_fails_naming_the_file_and_keeps_nothing(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    pin = _pin(http_files.put("wan.safetensors", data), _payload("something else"))
    lock = _write_lock(tmp_path, pin)
    with pytest.raises(ModelFetchError) as err:
        _fetch(lock, tmp_path / "models")
    message = str(err.value)
    assert "diffusion_models/model.safetensors" in message
    assert f"sha256 {hashlib.sha256(data).hexdigest()} != locked {pin.sha256}" in message
    assert list((tmp_path / "models/diffusion_models").iterdir()) == []


def test_a_present_correct_file_is_not_downloaded_again(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    lock = _write_lock(tmp_path, _pin(http_files.put("wan.safetensors", data), data))
    final = tmp_path / "models/diffusion_models/model.safetensors"
    final.parent.mkdir(parents=True)
    final.write_bytes(data)
    [result] = _fetch(lock, tmp_path / "models")
    assert result.action == "present"
    assert http_files.requests == []


def test_errors_do_not_show_credentials_of_the_url(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    url = http_files.url.replace("http://", "http://user:s3cret@") + "/absent.safetensors?token=s3cret"
    lock = _write_lock(tmp_path, _pin(url, data))
    with pytest.raises(ModelFetchError, match="HTTP 404") as err:
        _fetch(lock, tmp_path / "models")
    assert "s3cret" not in str(err.value)


def test_an_unpinned_model_is_downloaded_and_its_measured_values_reported(
    http_files: FileServer, tmp_path: Path
) -> None:
    data = _payload()
    pin = ModelPin(file="new.safetensors", folder="loras", url=http_files.put("new.safetensors", data))
    [result] = _fetch(_write_lock(tmp_path, pin), tmp_path / "models")
    assert result.unpinned
    assert (result.action, result.size, result.sha256) == ("downloaded", SIZE, hashlib.sha256(data).hexdigest())
    assert check_model(tmp_path / "models", pin).problem == "unpinned: no size or sha256 in the lock"


def test_a_complete_part_of_an_unpinned_model_ends_with_a_416(http_files: FileServer, tmp_path: Path) -> None:
    data = _payload()
    pin = ModelPin(file="new.safetensors", folder="loras", url=http_files.put("new.safetensors", data))
    part = tmp_path / "models/loras/new.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)  # an earlier run was stopped after the last byte, before the move
    [result] = _fetch(_write_lock(tmp_path, pin), tmp_path / "models")
    assert [(r.range, r.status) for r in http_files.requests] == [(f"bytes={SIZE}-", 416)]
    assert (result.action, result.bytes_downloaded) == ("downloaded", 0)
    assert (tmp_path / "models/loras/new.safetensors").read_bytes() == data


def test_check_model_names_what_differs(tmp_path: Path) -> None:
    data = _payload()
    pin = _pin("http://127.0.0.1:9/unused", data, file="vae.safetensors", folder="vae")
    assert check_model(tmp_path, pin).problem == "missing"
    path = tmp_path / "vae/vae.safetensors"
    path.parent.mkdir()
    path.write_bytes(data[:-2])
    assert check_model(tmp_path, pin).problem == f"size {SIZE - 2} != locked {SIZE}"
    changed = bytes([data[0] ^ 1]) + data[1:]
    path.write_bytes(changed)
    actual = hashlib.sha256(changed).hexdigest()
    assert check_model(tmp_path, pin).problem == f"sha256 {actual[:12]}… != locked {pin.sha256[:12]}…"
    assert check_model(tmp_path, pin, hash=False).ok  # the quick check compares sizes only
    path.write_bytes(data)
    assert check_model(tmp_path, pin).ok


def test_fetch_models_cli_prints_a_line_per_model_and_fails_cleanly(http_files: FileServer, tmp_path: Path) -> None:
    good, bad = _payload("good"), _payload("bad")
    lock = _write_lock(
        tmp_path,
        _pin(http_files.put("a.safetensors", good), good, file="a.safetensors", folder="loras"),
        _pin(http_files.put("b.safetensors", bad), good, file="b.safetensors", folder="vae"),
    )
    models = tmp_path / "models"
    args = ["fetch-models", "--models-dir", str(models), "--lock", str(lock.path)]
    ok = CliRunner().invoke(worker, [*args, "--only", "a.safetensors"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith(f"downloaded {models / 'loras/a.safetensors'} (0.3 MB, ")
    again = CliRunner().invoke(worker, [*args, "--only", "loras/a.safetensors"])
    assert again.stdout == f"present    {models / 'loras/a.safetensors'}\n"
    failed = CliRunner().invoke(worker, args)
    assert failed.exit_code == 1
    assert "Error: vae/b.safetensors: the download from" in failed.stderr
    assert "Traceback" not in failed.output

"""`infinitetalk worker verify` against real workers: the tiny-weights test worker, and one that lacks a node."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from infinitetalk_pipeline.cli import main
from infinitetalk_pipeline.comfy.client import ComfyClient
from infinitetalk_pipeline.comfy.errors import ComfyError
from infinitetalk_pipeline.comfy.fleet import Fleet
from infinitetalk_pipeline.comfy.server import LocalComfyUI, default_install_dir
from infinitetalk_pipeline.worker.lock import default_lock_path, load_lock
from tests.fixtures.tiny_worker import MANIFEST


def tiny_lock(path: Path, tiny_models: Path, *, tamper: str | None = None) -> Path:
    """The real lock with its [[models]] measured on the tiny files (`tamper`: one sha256 changed)."""
    head = default_lock_path().read_text().split("[[models]]", 1)[0]
    made = {f["relpath"]: f for f in json.loads((tiny_models / MANIFEST).read_text())["files"]}
    entries = []
    for pin in load_lock().models:
        facts = made[pin.relpath]
        sha = facts["sha256"] if pin.file != tamper else "0" * 64
        entries.append(
            f'[[models]]\nfile = "{pin.file}"\nfolder = "{pin.folder}"\nurl = "{pin.url}"\n'
            f'size = {facts["size"]}\nsha256 = "{sha}"\n'
        )
    path.write_text(head + "\n".join(entries))
    return path


@pytest.mark.infinitetalk
def test_the_worker_extension_reports_kernels_node_commits_and_packages(tiny_worker: LocalComfyUI) -> None:
    with ComfyClient(tiny_worker.url) as client:
        info = client.worker_info()
    assert info is not None
    assert info["attention_modes"] == ["sdpa"]  # no sageattention on this machine
    lock = load_lock()
    assert {n.name: info["custom_nodes"][n.name]["commit"] for n in lock.custom_nodes} == {
        n.name: n.commit for n in lock.custom_nodes
    }
    assert info["packages"]["transformers"] == "4.57.6"


def test_a_comfyui_without_the_extension_reports_nothing_and_gets_no_work(comfy_install: None, tmp_path: Path) -> None:
    with LocalComfyUI(tmp_path / "plain", extension=False) as plain:
        with ComfyClient(plain.url) as client:
            assert client.worker_info() is None
        with Fleet([plain.url]) as fleet, pytest.raises(ComfyError, match="lacks the infinitetalk_worker extension"):
            fleet.state(plain.url)


def verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["worker", "verify", *args])
    return result.exit_code, result.output


@pytest.mark.infinitetalk
def test_verify_passes_on_the_tiny_worker(tiny_worker: LocalComfyUI, tiny_models: Path, tmp_path: Path) -> None:
    lock = tiny_lock(tmp_path / "lock.toml", tiny_models)
    code, out = verify("--comfyui-url", tiny_worker.url, "--models-dir", str(tiny_models), "--lock", str(lock))
    assert code == 0, out
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert {row[2] for row in rows} == {"OK", "INFO"}, out
    kinds = {row[0] for row in rows}
    assert {"comfyui", "extension", "custom_node", "node", "python", "model", "attention"} <= kinds
    assert len([r for r in rows if r[0] == "model"]) == len(load_lock().models)
    assert "sdpa (kernels that import: sdpa)" in out  # no sageattention here: the render binds sdpa
    assert out.splitlines()[-1] == "0 mismatches"


@pytest.mark.infinitetalk
def test_verify_names_a_model_file_whose_sha256_differs(
    tiny_worker: LocalComfyUI, tiny_models: Path, tmp_path: Path
) -> None:
    """A models folder where one file was changed after the lock was written: the same bytes count, other bytes."""
    changed = "Wan2_1_VAE_bf16.safetensors"
    models = tmp_path / "models"
    for pin in load_lock().models:
        (models / pin.folder).mkdir(parents=True, exist_ok=True)
        (models / pin.relpath).symlink_to(tiny_models / pin.relpath)
    vae = models / "vae" / changed
    vae.unlink()
    shutil.copyfile(tiny_models / "vae" / changed, vae)
    with vae.open("r+b") as f:  # flip one byte near the end (a weight, not the header)
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    lock = tiny_lock(tmp_path / "lock.toml", tiny_models)
    code, out = verify("--comfyui-url", tiny_worker.url, "--models-dir", str(models), "--lock", str(lock))
    assert code == 1
    [row] = [line for line in out.splitlines() if changed in line and "FAIL" in line]
    assert "sha256" in row and "!= locked" in row
    assert out.splitlines()[-1] == f"1 mismatch: model vae/{changed}"


@pytest.mark.infinitetalk
def test_verify_names_a_missing_custom_node_and_its_classes(tiny_models: Path, tmp_path: Path) -> None:
    """A worker built without MelBandRoFormer: the node pack and both classes the multi graphs need are named."""
    nodes = default_install_dir() / "custom_nodes"
    present = [p for p in nodes.iterdir() if p.is_dir() and not p.name.startswith(".")]
    kept = [p for p in present if p.name != "ComfyUI-MelBandRoFormer"]
    with LocalComfyUI(tmp_path / "worker", profile="preview", extra_custom_nodes=kept, models_dir=tiny_models) as w:
        code, out = verify("--comfyui-url", w.url)
    assert code == 1
    failed = {tuple(line.split()[:2]) for line in out.splitlines() if " FAIL " in line}
    assert failed == {
        ("custom_node", "ComfyUI-MelBandRoFormer"),
        ("node", "MelBandRoFormerModelLoader"),
        ("node", "MelBandRoFormerSampler"),
        ("model", "diffusion_models/MelBandRoformer_fp16.safetensors"),
    }, out
    assert "not loaded (used by" in out


def test_verify_of_an_unreachable_worker_is_one_clear_line() -> None:
    code, out = verify("--comfyui-url", "http://127.0.0.1:9")
    assert code == 1
    assert out.startswith("Error: ") and "127.0.0.1:9" in out and "Traceback" not in out

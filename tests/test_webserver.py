"""The Dagster UI server loads the code location from workspace.yaml with no errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infinitetalk_pipeline.comfy.server import free_port

REPO = Path(__file__).resolve().parents[1]
QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message }
      ... on RepositoryLocation { repositories { name assetNodes { assetKey { path } } } } }
} } } }
"""


def test_the_ui_loads_the_code_location(tmp_path: Path) -> None:
    port = free_port()
    webserver = str(Path(sys.executable).with_name("dagster-webserver"))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    log = tmp_path / "webserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [webserver, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        entry = _loaded_entry(f"http://127.0.0.1:{port}/graphql", proc, log)
        location = entry["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location
        assets = {"/".join(n["assetKey"]["path"]) for n in location["repositories"][0]["assetNodes"]}
        assert {"clip_manifest", "clip_timing", "dubbed_video", "video_catalog"} <= assets
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _loaded_entry(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            data = httpx.post(url, json={"query": QUERY}, timeout=10).json()["data"]["workspaceOrError"]
            [entry] = data["locationEntries"]
            if entry["loadStatus"] == "LOADED":
                return entry
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError("the code location did not load within 180 s")

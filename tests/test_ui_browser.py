"""The Dagster UI, used in a real browser (issue 14): someone who opens `dagster dev` sees the dubbing assets,
backfills two clips from dubbed_video's partitions page through the UI's own launch dialog, watches both become
materialized, and finds a clip's preview frame and its four checks.

Nothing is stubbed: the `dagster dev` CLI (webserver, daemon, code server) on a fresh instance with the repo's
dagster.yaml, the session's local ComfyUI rendering the preview profile, and headless Chromium driven by Playwright.
Each step leaves a screenshot in the test's tmp folder (its path is printed).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from infinitetalk_pipeline.defs.settings import ENV_VARS
from infinitetalk_pipeline.verify import CHECK_NAMES
from infinitetalk_pipeline.workflows.templates import WORKFLOWS_DIR_ENV
from tests.fixtures.browser import Screenshots, chromium_page, dagster_dev
from tests.fixtures.processes import REPO, dagster_materialize
from tests.fixtures.synth import make_portrait, make_tone

pytestmark = pytest.mark.comfyui

LOCATION = "infinitetalk_pipeline"  # workspace.yaml's location_name
ASSETS = ("clip_manifest", "clip_timing", "dubbed_video", "video_catalog")
CLIPS = ("ui-clip-0", "ui-clip-1", "ui-clip-2")
BACKFILLED = CLIPS[:2]
SHOWN = CLIPS[0]  # the clip whose materialization the test opens
SIZE = 128
LOAD_TIMEOUT_MS = 180_000  # the first page waits for the code location to load
RENDER_TIMEOUT_MS = 300_000  # the daemon queues the backfill's runs, ComfyUI renders them on 2 shared cores


def test_a_backfill_launched_in_the_ui_shows_each_clips_preview_and_checks(tmp_path: Path, comfy_url: str) -> None:
    env = instance_env(tmp_path, comfy_url, write_manifest(tmp_path / "inputs"))
    register_clips(env)
    print(f"screenshots: {tmp_path / 'screenshots'}")
    with dagster_dev(env, tmp_path / "dagster-dev.log") as url, chromium_page() as page:
        shot = Screenshots(page, tmp_path / "screenshots")

        # a. The dubbing group's lineage: the four assets, the two per-clip ones with a partition per registered clip.
        page.goto(f"{url}/locations/{LOCATION}/asset-groups/dubbing")
        for asset in ASSETS:
            expect(page.get_by_text(asset, exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        expect(page.get_by_text(f"{len(CLIPS)} partitions", exact=True)).to_have_count(2)
        shot("asset-graph")

        # b. dubbed_video's partitions page: Materialize…, two clips chosen in the launch dialog, Launch backfill.
        page.goto(f"{url}/assets/dubbed_video?view=partitions")
        expect(page.get_by_text(f"Missing ({len(CLIPS)})")).to_be_visible()
        shot("partitions-before")
        page.get_by_role("button", name="Materialize…").click()
        # Nothing has materialized clip_timing yet, so the UI asks first; dubbed_video's run measures the timing itself.
        confirm = page.get_by_role("dialog").filter(has_text="Are you sure?")
        expect(confirm).to_contain_text("clip_timing")
        confirm.get_by_role("button", name="Confirm").click()
        launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize dubbed_video")
        launch.get_by_text("Select a partition or create one").click()
        for clip in BACKFILLED:
            page.get_by_role("menuitem").filter(has_text=clip).click()
        launch.get_by_text("Launch runs to materialize dubbed_video").click()  # closes the partition picker
        expect(launch).to_contain_text(f"{len(BACKFILLED)} partitions")
        shot("launch-dialog")
        launch.get_by_role("button", name="Launch backfill").click()
        expect(page.get_by_text("Created backfill")).to_be_visible()
        shot("backfill-launched")

        # c. The daemon runs the backfill; the page refreshes its partition counts by itself.
        expect(page.get_by_text(f"Materialized ({len(BACKFILLED)})")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        expect(page.get_by_text("Failed (0)")).to_be_visible()
        expect(page.get_by_text(f"Missing ({len(CLIPS) - len(BACKFILLED)})")).to_be_visible()
        shot("partitions-materialized")

        # d. One clip's materialization: its `preview` metadata (markdown with an inline JPEG frame) ...
        page.get_by_title(SHOWN, exact=True).click()
        expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
        page.get_by_text("[Show Markdown]").click()
        frame = page.get_by_role("dialog").get_by_role("img", name=f"{SHOWN}.mp4")
        expect(frame).to_be_visible()
        assert (frame.get_attribute("src") or "").startswith("data:image/jpeg;base64,")
        assert frame.evaluate("img => img.naturalWidth") > 0, "the preview frame did not decode"
        shot("preview")
        page.get_by_role("button", name="Close").click()

        # ... and its checks: each one's history has a passing evaluation for this clip.
        page.get_by_role("tab", name="Checks").click()
        expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(CHECK_NAMES))
        for check in CHECK_NAMES:
            page.get_by_title(check, exact=True).click()
            page.get_by_role("tab", name="Execution history").click()
            expect(page.get_by_role("row").filter(has_text=SHOWN)).to_contain_text("Passed")
        shot("checks")


def write_manifest(folder: Path) -> Path:
    """A manifest of CLIPS: one portrait, a one-second tone each (different pitches), rendered at SIZE x SIZE."""
    folder.mkdir()
    portrait = make_portrait(folder / "face.png", size=(SIZE, SIZE))
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["clip_id", "image_path", "wav_path", "width", "height"])
        for i, clip in enumerate(CLIPS):
            tone = make_tone(folder / f"{clip}.wav", 1.0, freq=200 + 40 * i)
            writer.writerow([clip, portrait, tone, SIZE, SIZE])
    return manifest


def instance_env(root: Path, comfy_url: str, manifest: Path) -> dict[str, str]:
    """The environment of the CLI and of `dagster dev` (so of its code server and runs): a fresh DAGSTER_HOME with
    the repo's dagster.yaml, every path of the code location under `root`, nothing inherited from a deployment."""
    home = root / "dagster_home"
    home.mkdir()
    # The repo's instance (run queue, gpu_render pool, run retries), less the first-visit dialog over the pages.
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text() + "\nnux:\n  enabled: false\n")
    ours = {s.name for s in ENV_VARS} | {WORKFLOWS_DIR_ENV, "DAGSTER_HOME"}
    return {k: v for k, v in os.environ.items() if k not in ours} | {
        "DAGSTER_HOME": str(home),
        "COMFYUI_URLS": comfy_url,
        "INFINITETALK_PROFILE": "preview",
        "INFINITETALK_OUTPUT_ROOT": str(root / "out"),
        "INFINITETALK_MANIFEST": str(manifest),
        "INFINITETALK_CACHE_DIR": str(root / "cache"),
        "INFINITETALK_ALLOWED_ROOTS": str(manifest.parent),
    }


def register_clips(env: dict[str, str]) -> None:
    """clip_manifest materialized from the shell, so the UI starts with the clips' partitions registered."""
    dagster_materialize(env, "--select", "clip_manifest")

"""What Dagster adds on top of ComfyUI, and how fast a big manifest becomes partitions.

    python benchmarks/pipeline_overhead.py [--clips 50] [--rows 10000] [--comfyui-url URL]

1. Renders a manifest of N preview clips twice through the real pipeline (a persistent SQLite instance, a local
   ComfyUI), each run in its own process as a run worker would be:
   - one run per clip (what a backfill launches by default, `INFINITETALK_CLIPS_PER_RUN=1`);
   - a single run over all clips (a partition range in one run).
   It prints the pipeline's wall time over the sum of ComfyUI's own execution times for each mode.
2. Times `clip_manifest` on a 10,000-row manifest: read, validate, save every clip's request, add partitions
   (target: under 5 s).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg

from infinitetalk_pipeline.comfy.server import LocalComfyUI, install
from tests.fixtures.synth import make_portrait, make_tone

VIDEO = dg.AssetKey("dubbed_video")

# A run worker: load the code location, open the instance in DAGSTER_HOME, materialize the given clips.
RUN_CHILD = """
import sys, dagster as dg
from infinitetalk_pipeline.definitions import defs
first, last = sys.argv[1:3]
job = defs().resolve_implicit_global_asset_job_def()
tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
result = job.execute_in_process(
    instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey("clip_timing"), dg.AssetKey("dubbed_video")],
    tags=tags,
)
sys.exit(0 if result.success else 1)
"""


def write_manifest(path: Path, media: Path, rows: int, prefix: str) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "image_path", "wav_path", "width", "height", "prompt"])
        for i in range(rows):
            w.writerow([f"{prefix}{i:05d}", media / "face.png", media / f"tone{i % 10}.wav", 256, 256, "talking"])


def run_worker(env: dict[str, str], first: str, last: str) -> None:
    subprocess.run([sys.executable, "-c", RUN_CHILD, first, last], env=env, check=True, capture_output=True)


def comfy_seconds(instance: dg.DagsterInstance, keys: list[str], since: float) -> float:
    total = 0.0
    for record in instance.fetch_materializations(VIDEO, limit=10 * len(keys)).records:
        mat = record.asset_materialization
        if mat is not None and mat.partition in keys and record.timestamp >= since:
            total += mat.metadata["comfy_execution_seconds"].value or 0.0
    return total


def render_modes(base: Path, comfy_url: str, clips: int) -> None:
    media = base / "media"
    media.mkdir()
    make_portrait(media / "face.png")
    for i in range(10):
        make_tone(media / f"tone{i}.wav", 1.0 + 0.1 * i, freq=200 + 20 * i)
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(Path("dagster.yaml").read_text())
    for mode in ("per_clip", "single_run"):
        out = base / mode
        manifest = out / "manifest.csv"
        out.mkdir()
        write_manifest(manifest, media, clips, prefix=f"{mode[:3]}-")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "COMFYUI_URLS": comfy_url,
            "INFINITETALK_MANIFEST": str(manifest),
            "INFINITETALK_OUTPUT_ROOT": str(out / "out"),
            "INFINITETALK_CACHE_DIR": str(out / "cache"),
            "INFINITETALK_ALLOWED_ROOTS": str(base),
        }
        register(env)
        keys = [f"{mode[:3]}-{i:05d}" for i in range(clips)]
        started_wall, started = time.time(), time.perf_counter()
        if mode == "per_clip":
            for key in keys:
                run_worker(env, key, key)
        else:
            run_worker(env, keys[0], keys[-1])
        wall = time.perf_counter() - started
        with dg.DagsterInstance.from_config(str(home)) as instance:
            comfy = comfy_seconds(instance, keys, started_wall)
        print(
            f"{mode:>10}: {clips} clips, wall {wall:7.1f} s, ComfyUI execution {comfy:6.1f} s, "
            f"wall / ComfyUI = {wall / comfy:5.2f}"
        )


def register(env: dict[str, str]) -> float:
    """Materializes clip_manifest in-process for the manifest in env; returns its seconds."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from infinitetalk_pipeline.definitions import defs

        job = defs().resolve_implicit_global_asset_job_def()
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            started = time.perf_counter()
            result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("clip_manifest")])
            seconds = time.perf_counter() - started
        assert result.success
        return seconds
    finally:
        os.environ.clear()
        os.environ.update(saved)


def manifest_to_partitions(base: Path, rows: int) -> None:
    media = base / "big_media"
    media.mkdir()
    home = base / "big_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(Path("dagster.yaml").read_text())
    manifest = base / "big.csv"
    write_manifest(manifest, media, rows, prefix="clip-")
    env = {
        "DAGSTER_HOME": str(home),
        "INFINITETALK_MANIFEST": str(manifest),
        "INFINITETALK_OUTPUT_ROOT": str(base / "big_out"),
        "INFINITETALK_ALLOWED_ROOTS": str(base),
    }
    seconds = register(env)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        partitions = len(instance.get_dynamic_partitions("clips"))
    print(f"manifest -> partitions: {rows} rows -> {partitions} partitions in {seconds:.2f} s (target < 5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--comfyui-url")
    args = parser.parse_args()
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pipeline-bench-")))
        manifest_to_partitions(base, args.rows)
        url = args.comfyui_url
        if url is None:
            install()
            url = stack.enter_context(LocalComfyUI(base / "comfyui", cache="none")).url
        render_modes(base, url, args.clips)


if __name__ == "__main__":
    main()

"""100,000 clips: registration, the incremental catalog, the sensor tick and the UI, measured in one run.

    .venv/bin/python -m benchmarks.scale [--rows 100000] [--new 1000] [--backfill 10000] [--skip-ui]

1. `clip_manifest` materialized (Dagster's `materialize`, a SQLite instance) on a `--rows` CSV manifest, with a
   local output root and with an S3 one (moto's server on 127.0.0.1), each in a fresh process whose peak RSS is
   reported; then the same manifest registered again (nothing changed: nothing should be written).
2. `refresh_catalog` on S3 after `--new` renders on top of a catalog of `--rows` clips (the base table is written
   in one go; the renders save their rows through the S3 API as a render does).
3. `manifest_upload_sensor`'s tick with `--new` new keys on top of `--rows` existing ones (benchmarks.sensor_scale).
4. The Dagster UI with `--rows` partitions: the partitions page of `dubbed_video` in headless Chromium, and the
   GraphQL launch of a backfill of `--backfill` non-contiguous partitions (benchmarks.scale_ui).

moto is a Python server: its requests cost far more than AWS S3's, so the S3 figures are upper bounds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from benchmarks.manifest_scale import COLUMNS, make_rows
from infinitetalk_pipeline.catalog import CatalogRow, refresh_catalog, upsert
from infinitetalk_pipeline.registry import save_row
from infinitetalk_pipeline.storage import S3OutputStore
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY, make_s3_client, moto_server

BUCKET = "scale"
TARGETS = {"local": 10.0, "s3": 60.0}  # seconds for 100,000 rows (issue 13)


def write_manifest(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(make_rows(rows))
    return path


def register(manifest: Path, output_root: str, home: Path, endpoint: str | None) -> dict[str, Any]:
    """In this process: materialize clip_manifest, return its seconds, what it wrote and this process's peak RSS."""
    from infinitetalk_pipeline.defs.assets import clip_manifest
    from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage

    s3 = (
        S3Resource(
            endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
        )
        if endpoint
        else S3Resource(region_name=REGION)
    )
    storage = PipelineStorage(output_root=output_root, manifest=str(manifest), s3=s3)
    home.mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.local_temp(str(home)) as instance:  # kept in `home`: the second child sees the first's
        started = time.perf_counter()
        result = dg.materialize(
            [clip_manifest], instance=instance, resources={"storage": storage, "comfyui": ComfyUIResource()}
        )
        seconds = time.perf_counter() - started
        meta = result.asset_materializations_for_node("clip_manifest")[0].metadata
        partitions = len(instance.get_dynamic_partitions("clips"))
    return {
        "seconds": seconds,
        "partitions": partitions,
        "valid_rows": meta["valid_rows"].value,
        "requests_written": meta["requests_written"].value,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def register_in_child(manifest: Path, output_root: str, home: Path, endpoint: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.scale", "--child", str(manifest), output_root, str(home)]
    done = subprocess.run([*command, endpoint or ""], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_registration(where: str, rows: int, first: dict[str, Any], again: dict[str, Any]) -> None:
    target = TARGETS[where] * rows / 100_000
    print(
        f"registration ({where} output root): {rows:,} rows -> {first['partitions']:,} partitions in "
        f"{first['seconds']:.1f} s (target < {target:.0f} s), peak RSS {first['peak_rss_mb']:,.0f} MB "
        f"(target < 1,024 MB), {first['requests_written']:,} requests written"
    )
    print(
        f"  again, unchanged: {again['seconds']:.1f} s, {again['requests_written']} requests written, "
        f"peak RSS {again['peak_rss_mb']:,.0f} MB"
    )


def catalogued_row(i: int, rendered_at: datetime) -> CatalogRow:
    clip_id = f"clip-{i:06d}"
    return CatalogRow(
        clip_id=clip_id,
        manifest="s3://scale/manifests/big.csv",
        inputs=json.dumps({"image": f"s3://scale/media/{clip_id}.png", "audio": f"s3://scale/media/{clip_id}.wav"}),
        workflow="I2V_single",
        profile="infinitetalk",
        prompt="A person talking naturally, studio light",
        width=640,
        height=640,
        frames=250,
        fps=25.0,
        duration_seconds=10.0,
        size_bytes=2_500_000 + i,
        sha256=f"{i:064x}",
        output_uri=f"s3://scale/out/videos/{clip_id}.mp4",
        comfy_prompt_id=f"{i:08x}-0000-4000-8000-000000000000",
        worker="http://gpu-3.internal:8188",
        render_seconds=600.0,
        rendered_at=rendered_at,
    )


def incremental_catalog(endpoint: str, rows: int, new: int) -> None:
    store = S3OutputStore(make_s3_client(endpoint), BUCKET, "catalog-bench")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    upsert(store, [catalogued_row(i, t0 + timedelta(seconds=i)) for i in range(rows)])
    print(f"catalog: base table of {rows:,} clips written in {time.perf_counter() - started:.1f} s (setup)")
    started = time.perf_counter()
    for i in range(rows, rows + new):
        save_row(store, f"clip-{i:06d}", dataclasses.asdict(catalogued_row(i, t0 + timedelta(seconds=i))))
    print(f"catalog: {new:,} renders saved their rows in {time.perf_counter() - started:.1f} s (setup)")
    started = time.perf_counter()
    update = refresh_catalog(store)
    seconds = time.perf_counter() - started
    print(
        f"incremental catalog (S3): {new:,} new on {rows:,} catalogued -> {update.state.rows:,} rows in "
        f"{seconds:.2f} s (target < 10 s); {update.parts_written} part(s) written, {len(update.parts_read)} "
        f"read whole, {len(update.state.parts)} parts in the table"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--backfill", type=int, default=10_000)
    parser.add_argument("--skip-ui", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("MANIFEST", "ROOT", "HOME", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        manifest, root, home, endpoint = args.child
        print(json.dumps(register(Path(manifest), root, Path(home), endpoint or None)))
        return

    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint:
        base = Path(tmp)
        manifest = write_manifest(base / "big.csv", args.rows)
        for where, root in (("local", str(base / "out")), ("s3", f"s3://{BUCKET}/out")):
            if where == "s3":
                make_s3_client(endpoint).create_bucket(Bucket=BUCKET)
            home = base / f"home-{where}"
            first = register_in_child(manifest, root, home, endpoint)
            again = register_in_child(manifest, root, home, endpoint)
            print_registration(where, args.rows, first, again)
        incremental_catalog(endpoint, args.rows, args.new)

    from benchmarks.sensor_scale import measure_sensor

    sensor = measure_sensor(existing=args.rows, new=args.new)
    print(f"sensor: {json.dumps(sensor)}")
    if not args.skip_ui:
        from benchmarks.scale_ui import measure_ui

        ui = measure_ui(partitions=args.rows, backfill=args.backfill)
        print(f"UI: {json.dumps(ui)}")


if __name__ == "__main__":
    main()

"""Tick time of `manifest_upload_sensor` for new keys on top of many existing ones, on a local moto server.

    .venv/bin/python benchmarks/sensor_scale.py [--existing 100000] [--new 1000] [--fill api]

Starts moto's S3 server (ThreadedMotoServer) on 127.0.0.1, fills `manifests/` with `--existing` objects (1% of
them one-clip manifests, the rest media), brings a cursor up to date by running the sensor from an empty
cursor, then PUTs `--new` keys (5% manifests) through the S3 API and times the ticks that pick them up. For
comparison it times one full listing of the prefix, what a sensor without a cursor (or dagster-aws's
`get_objects`) pays on every tick.

`--fill direct` (default) writes the existing objects straight into the in-process moto backend: moto takes
PUTs at 100-350/s on two cores, so 100,000 of them through the API (`--fill api`, 32 threads) take 5-17
minutes. Everything timed goes through the S3 API either way. moto answers a listing in time proportional to
the whole bucket (about 5 us per key), which AWS S3 does not: the tick times below are an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from botocore.config import Config
from dagster_aws.s3 import S3Resource
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from infinitetalk_pipeline.defs.resources import PipelineStorage
from infinitetalk_pipeline.defs.sensors import manifest_upload_sensor
from tests.fixtures.s3 import moto_server

BUCKET = "bench"
PREFIX = "manifests/"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}


def client_for(url: str) -> Any:
    config = Config(signature_version="s3v4", max_pool_connections=64)
    return boto3.client("s3", endpoint_url=url, config=config, **CREDENTIALS)


def manifest_body(clip_id: str) -> bytes:
    row = {
        "clip_id": clip_id,
        "image_path": f"s3://{BUCKET}/m/{clip_id}.png",
        "wav_path": f"s3://{BUCKET}/m/a.wav",
    }
    return json.dumps(row).encode() + b"\n"


def objects(tag: str, count: int, manifest_every: int) -> list[tuple[str, bytes]]:
    # Zero-padded with a batch tag that sorts later for later batches: new uploads land after the frontier.
    return [
        (f"{PREFIX}{tag}/{i:06d}.jsonl", manifest_body(f"{tag}-{i:06d}"))
        if i % manifest_every == 0
        else (f"{PREFIX}{tag}/{i:06d}.wav", b"x")
        for i in range(count)
    ]


def put_all(s3: Any, items: list[tuple[str, bytes]]) -> tuple[int, float]:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        count = sum(1 for _ in pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), items))
    return count, time.monotonic() - started


def fill_directly(items: list[tuple[str, bytes]]) -> tuple[int, float]:
    started = time.monotonic()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key, body in items:
        backend.put_object(BUCKET, key, body)
    return len(items), time.monotonic() - started


def run_ticks(
    instance: dg.DagsterInstance, storage: PipelineStorage, cursor: str | None, until_after: str
) -> tuple[str, list[tuple[float, int]]]:
    """Ticks until the frontier reaches `until_after`, nothing pending; (cursor, [(seconds, renders)])."""
    ticks = []
    while True:
        started = time.monotonic()
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage}) as ctx:
            result = manifest_upload_sensor(ctx)
        seconds = time.monotonic() - started
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        renders = sum(1 for r in result.run_requests or [] if r.job_name == "render_clips")
        ticks.append((seconds, renders))
        cursor = result.cursor
        assert cursor is not None
        state = json.loads(cursor)
        if state["list"]["after"] >= until_after and not state["pending"] and not renders:
            return cursor, ticks


def full_listing_seconds(s3: Any) -> tuple[int, float]:
    started = time.monotonic()
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        count += len(page.get("Contents", []))
    return count, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--existing", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--fill", choices=["direct", "api"], default="direct")
    args = parser.parse_args()

    with moto_server() as url, tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        s3 = client_for(url)
        s3.create_bucket(Bucket=BUCKET)
        os.environ["INFINITETALK_MANIFEST_PREFIX"] = f"s3://{BUCKET}/{PREFIX}"
        storage = PipelineStorage(output_root=str(Path(tmp) / "out"), s3=S3Resource(endpoint_url=url, **CREDENTIALS))

        existing = objects("a-existing", args.existing, 100)
        count, seconds = put_all(s3, existing) if args.fill == "api" else fill_directly(existing)
        print(f"setup ({args.fill}): {count:,} existing objects in {seconds:.1f} s ({count / seconds:,.0f}/s)")
        cursor, ticks = run_ticks(instance, storage, None, max(k for k, _ in existing))
        print(
            f"catch-up from an empty cursor: {len(ticks)} ticks, {sum(t for t, _ in ticks):.1f} s in all, "
            f"slowest {max(t for t, _ in ticks):.2f} s, {sum(r for _, r in ticks):,} clips registered"
        )

        new = objects("b-new", args.new, 20)
        count, seconds = put_all(s3, new)
        print(f"setup (api): put {count:,} new objects in {seconds:.1f} s")
        last_key = max(k for k, _ in new)
        cursor, ticks = run_ticks(instance, storage, cursor, last_key)
        first_seconds, first_renders = ticks[0]
        print(
            f"tick with {args.new:,} new keys on top of {args.existing:,}: {first_seconds:.3f} s "
            f"({first_renders} new clips requested); {len(ticks)} ticks until caught up; "
            f"cursor {len(cursor):,} bytes"
        )
        _, idle = run_ticks(instance, storage, cursor, last_key)
        print(f"tick with nothing new: {idle[0][0]:.3f} s")

        total, seconds = full_listing_seconds(s3)
        print(f"for comparison, one full listing of {total:,} keys: {seconds:.2f} s")


if __name__ == "__main__":
    main()

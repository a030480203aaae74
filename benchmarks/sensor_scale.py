"""Tick time of `manifest_upload_sensor` for new keys on top of many existing ones, on a local moto server.

    .venv/bin/python benchmarks/sensor_scale.py [--existing 100000] [--new 1000] [--fill api] [--repeats 3]

Starts moto's S3 server (ThreadedMotoServer) on 127.0.0.1 in a child process, fills `manifests/` with
`--existing` objects (1% of them one-clip manifests, the rest media), brings a cursor up to date by running the
sensor from an empty cursor, then PUTs `--new` keys (5% manifests) through the S3 API and times the ticks that
pick them up, `--repeats` times, reporting the median tick. For comparison it times one full listing of the
prefix, what a sensor without a cursor (or dagster-aws's `get_objects`) pays on every tick. `measure_sensor`
returns the same figures to other scripts.

`--fill direct` (default) writes the existing objects straight into the server process's moto backend: moto
takes PUTs at 100-350/s on two cores, so 100,000 of them through the API (`--fill api`, 32 threads) take 5-17
minutes. Everything timed goes through the S3 API either way. moto answers each listing request in time that
grows with the keys under the prefix (it collects and sorts all of them whatever StartAfter and MaxKeys say:
about 0.3 s per request at 100,000 keys on two cores, plus ~0.2 s to render a 1,000-key page), which AWS S3
does not, so each tick is split: the time its ListObjectsV2 requests spent on the wire and in the server
(moto's share), and the rest (our code, botocore's signing and parsing included). The server runs in its own
process so that its work does not hold the sensor's interpreter lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import boto3
import dagster as dg
from botocore.config import Config
from dagster_aws.s3 import S3Resource
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from infinitetalk_pipeline.defs.resources import PipelineStorage, S3WatchResource
from infinitetalk_pipeline.defs.sensors import manifest_upload_sensor
from tests.fixtures.s3 import moto_server

BUCKET = "bench"
PREFIX = "manifests/"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
Fill = Literal["direct", "api"]


class S3Calls:
    """Seconds S3 requests spent on the wire and in the server (request sent to response read), by operation.

    Signing, retries and parsing fall outside, on the caller's side. Thread-safe: the sensor reads manifests
    from a pool."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = threading.local()
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-send.s3", self._before_send)
        client.meta.events.register("before-parse.s3", self._before_parse)
        return client

    def _before_send(self, **_: Any) -> None:
        self.sent.at = time.perf_counter()

    def _before_parse(self, operation_model: Any, **_: Any) -> None:
        seconds = time.perf_counter() - self.sent.at
        with self.lock:
            self.seconds[operation_model.name] += seconds
            self.calls[operation_model.name] += 1

    def take(self) -> tuple[Counter[str], Counter[str]]:
        with self.lock:
            taken = self.seconds, self.calls
            self.seconds, self.calls = Counter(), Counter()
        return taken


# Module level: Dagster builds the resources anew for each sensor context, so no instance could hold it.
S3_CALLS = S3Calls()


class TimedStorage(PipelineStorage):
    """The pipeline's storage resource, its S3 clients reporting to `S3_CALLS`."""

    def s3_client(self) -> Any:
        return S3_CALLS.attach(super().s3_client())


@dataclass(frozen=True)
class Tick:
    seconds: float
    cpu_seconds: float  # this process, all threads: the server runs in another one
    renders: int
    list_seconds: float  # ListObjectsV2 requests in the server, one after another: moto's share of the tick
    lists: int
    get_seconds: float  # GetObject requests in the server, 8 at a time: overlapping the sensor's own work

    @property
    def own_seconds(self) -> float:
        return self.seconds - self.list_seconds


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


def existing_objects(count: int) -> list[tuple[str, bytes]]:
    return objects("a-existing", count, 100)


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


def _serve(direct: int, conn: Connection) -> None:
    """The server process: a bucket with `direct` existing objects written into the backend; runs until told."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    with moto_server() as url:
        client_for(url).create_bucket(Bucket=BUCKET)
        _, seconds = fill_directly(existing_objects(direct))
        conn.send((url, seconds))
        conn.recv()


@contextmanager
def s3_server(existing: int, fill: Fill) -> Iterator[tuple[str, float]]:
    """(endpoint URL, seconds the existing objects took to write) of a server in a child process."""
    spawn = multiprocessing.get_context("spawn")  # no fork of a process running threads
    ours, theirs = spawn.Pipe()
    process = spawn.Process(target=_serve, args=(existing if fill == "direct" else 0, theirs), daemon=True)
    process.start()
    try:
        url, seconds = ours.recv()
        if fill == "api":
            _, seconds = put_all(client_for(url), existing_objects(existing))
        yield url, seconds
    finally:
        ours.send(None)
        process.join(timeout=30)


def run_ticks(
    instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None, until_after: str
) -> tuple[str, list[Tick]]:
    """Ticks until the frontier reaches `until_after`, nothing pending; (cursor, ticks)."""
    ticks = []
    while True:
        S3_CALLS.take()
        started, cpu = time.perf_counter(), time.process_time()
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
            result = manifest_upload_sensor(ctx)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        spent, calls = S3_CALLS.take()
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        renders = sum(1 for r in result.run_requests or [] if r.job_name == "render_clips")
        lists = calls["ListObjectsV2"]
        ticks.append(Tick(seconds, cpu, renders, spent["ListObjectsV2"], lists, spent["GetObject"]))
        cursor = result.cursor
        assert cursor is not None
        state = json.loads(cursor)
        if state["list"]["after"] >= until_after and not state["pending"] and not renders:
            return cursor, ticks


def full_listing_seconds(s3: Any) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
        count += len(page.get("Contents", []))
    return count, time.perf_counter() - started


def median(ticks: list[Tick]) -> Tick:
    """The tick of median duration: its parts still add up, unlike medians taken part by part."""
    return sorted(ticks, key=lambda t: t.seconds)[len(ticks) // 2]


def measure_sensor(
    existing: int = 100_000, new: int = 1_000, fill: Fill = "direct", repeats: int = 3
) -> dict[str, float | int]:
    """Times `manifest_upload_sensor` on a fresh moto server holding `existing` keys, then `new` more, `repeats`
    times (each batch after the last; the median tick is reported: a shared machine makes single ticks noisy).

    `tick_*` describe the first tick after a batch arrives: `tick_list_seconds` is what its ListObjectsV2 requests
    spent in moto (growing with the keys under the prefix, unlike AWS), `tick_own_seconds` the rest, and
    `tick_cpu_seconds` the CPU this process used (moto runs in another). `idle_tick_*` describe a tick with
    nothing new.
    """
    with (
        s3_server(existing, fill) as (url, fill_seconds),
        tempfile.TemporaryDirectory() as tmp,
        dg.instance_for_test() as instance,
    ):
        s3 = S3Resource(endpoint_url=url, **CREDENTIALS)
        resources = {
            "storage": TimedStorage(output_root=str(Path(tmp) / "out"), s3=s3),
            "watch": S3WatchResource(manifest_prefix=f"s3://{BUCKET}/{PREFIX}"),
        }
        last_key = max(k for k, _ in existing_objects(existing))
        cursor, catch_up = run_ticks(instance, resources, None, last_key)

        client = client_for(url)
        put_seconds, firsts, until_caught_up, idle = [], [], [], []
        for batch in range(repeats):
            added = objects(f"b-new-{batch}", new, 20)
            put_seconds.append(put_all(client, added)[1])
            last_key = max(k for k, _ in added)
            cursor, ticks = run_ticks(instance, resources, cursor, last_key)
            firsts.append(ticks[0])
            until_caught_up.append(len(ticks))
            idle += run_ticks(instance, resources, cursor, last_key)[1]
        listed, listing_seconds = full_listing_seconds(client)

    first, quiet = median(firsts), median(idle)
    return {
        "existing": existing,
        "new": new,
        "repeats": repeats,
        "fill_seconds": fill_seconds,
        "put_new_seconds": max(put_seconds),
        "catch_up_ticks": len(catch_up),
        "catch_up_seconds": sum(t.seconds for t in catch_up),
        "catch_up_list_seconds": sum(t.list_seconds for t in catch_up),
        "catch_up_slowest_seconds": max(t.seconds for t in catch_up),
        "catch_up_clips": sum(t.renders for t in catch_up),
        "tick_seconds": first.seconds,
        "tick_max_seconds": max(t.seconds for t in firsts),
        "tick_list_seconds": first.list_seconds,
        "tick_lists": first.lists,
        "tick_own_seconds": first.own_seconds,
        "tick_cpu_seconds": first.cpu_seconds,
        "tick_get_seconds": first.get_seconds,
        "tick_clips": first.renders,
        "ticks_until_caught_up": max(until_caught_up),
        "cursor_bytes": len(cursor),
        "idle_tick_seconds": quiet.seconds,
        "idle_tick_list_seconds": quiet.list_seconds,
        "idle_tick_own_seconds": quiet.own_seconds,
        "full_listing_keys": listed,
        "full_listing_seconds": listing_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--existing", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--fill", choices=["direct", "api"], default="direct")
    parser.add_argument("--repeats", type=int, default=3, help="batches of new keys; the median tick is reported")
    args = parser.parse_args()

    m = measure_sensor(args.existing, args.new, args.fill, args.repeats)
    print(
        f"setup: {m['existing']:,} existing objects ({args.fill}) in {m['fill_seconds']:.1f} s, "
        f"{m['repeats']} x {m['new']:,} new ones (api) in {m['put_new_seconds']:.1f} s at most"
    )
    print(
        f"catch-up from an empty cursor: {m['catch_up_ticks']} ticks, {m['catch_up_seconds']:.1f} s in all "
        f"({m['catch_up_list_seconds']:.1f} s of it moto's listing), slowest {m['catch_up_slowest_seconds']:.2f} s, "
        f"{m['catch_up_clips']:,} clips registered"
    )
    print(
        f"tick with {m['new']:,} new keys on top of {m['existing']:,} (median; slowest "
        f"{m['tick_max_seconds']:.3f} s): {m['tick_seconds']:.3f} s = "
        f"{m['tick_list_seconds']:.3f} s moto listing ({m['tick_lists']} requests) + {m['tick_own_seconds']:.3f} s "
        f"ours ({m['tick_cpu_seconds']:.3f} s CPU; manifest GETs {m['tick_get_seconds']:.3f} s in moto, "
        f"overlapped); {m['tick_clips']} clips requested; {m['ticks_until_caught_up']} ticks until caught up; "
        f"cursor {m['cursor_bytes']:,} bytes"
    )
    print(
        f"tick with nothing new (median): {m['idle_tick_seconds']:.3f} s = {m['idle_tick_list_seconds']:.3f} s moto "
        f"listing + {m['idle_tick_own_seconds']:.3f} s ours"
    )
    print(f"for comparison, one full listing of {m['full_listing_keys']:,} keys: {m['full_listing_seconds']:.2f} s")


if __name__ == "__main__":
    main()

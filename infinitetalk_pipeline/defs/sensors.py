"""Sensors: manifests uploaded to S3, media drop folders, and failed renders.

All three are STOPPED unless `INFINITETALK_SENSORS=on` when the code location loads. The S3 sensors read their
prefixes from the environment at each evaluation and skip while unset:

    INFINITETALK_MANIFEST_PREFIX   s3://bucket/manifests/  (*.csv / *.jsonl; parts starting with `_` ignored)
    INFINITETALK_DROP_PREFIX       s3://bucket/incoming/   (`<clip_id>/` drop folders, see s3watch)
    INFINITETALK_DROP_QUIET_SECONDS  quiet period completing a drop folder without `_READY` (default 300)

Each registered clip gets its request saved in the registry by the sensor itself, before the tick returns,
so a render run never starts ahead of its spec (a `register_manifest` run is requested too, for its metadata
and check, but nothing waits on it). Run keys make a re-evaluation harmless: `<manifest key>@<etag>` for the
manifest run and `<clip_id>:<request digest>` per clip; a clip is requested only while it is not yet a `clips`
partition.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain, islice
from typing import Any, TypeVar, cast

import dagster as dg
from dagster_aws.s3 import S3Resource

from infinitetalk_pipeline.defs import settings
from infinitetalk_pipeline.defs.assets import clip_manifest
from infinitetalk_pipeline.defs.jobs import render_clips_job
from infinitetalk_pipeline.defs.keys import FAILED_CLIPS, VIDEO
from infinitetalk_pipeline.defs.partitions import clips
from infinitetalk_pipeline.defs.resources import PipelineStorage, S3WatchResource
from infinitetalk_pipeline.defs.schedules import clips_of_run, renders_video
from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.manifest import ManifestError, ManifestResult, read_manifest
from infinitetalk_pipeline.registry import FAILURES_PREFIX, ClipSpec, save_specs
from infinitetalk_pipeline.s3watch import (
    MAX_FOLDER_OBJECTS,
    Budget,
    EtagTracker,
    ListCursor,
    S3Object,
    classify,
    drop_row,
    fingerprint,
    folder_of,
    is_complete,
    is_manifest_key,
    list_folder,
    parse_settings,
    poll,
    signature,
    with_fast_timestamps,
)
from infinitetalk_pipeline.spec import normalise_clip_id, parse_request
from infinitetalk_pipeline.storage import parse_s3_uri

SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if settings.SENSORS_ON else dg.DefaultSensorStatus.STOPPED
INTERVAL_SECONDS = 30
# Stop starting new work after this; the daemon cancels an evaluation at 60 s and keeps the old cursor.
WORK_SECONDS = 40.0
MANIFEST_BUDGET = Budget()
MAX_NEW_CLIPS = 5_000  # clips registered per tick: their specs are written before the tick returns
CHECK_CLIPS = 1_000  # manifests read are checked against the registered clips in batches of about this many clips
MAX_TRACKED = 200  # manifest ETags kept in the cursor (about 70 bytes each)
DROP_BUDGET = Budget(max_items=200)  # new drop folders discovered per tick
MAX_OPEN_FOLDERS = 1_000  # incomplete folders remembered in the cursor
FOLDERS_PER_TICK = 100  # open folders re-listed per tick, round robin
IN_FLIGHT = 8  # S3 requests a tick keeps in flight (reads, listings, PUTs): within botocore's 10 pooled connections
GENERATED_MANIFESTS = "_manifests/"  # under the drop prefix: one JSONL manifest per completed folder
MANIFEST_TAG = "infinitetalk/manifest"

register_manifest_job = dg.define_asset_job(
    "register_manifest",
    selection=dg.AssetSelection.assets(clip_manifest),
    description="Read one manifest (run config) and register its clips; requested by the S3 sensors.",
)


def _manifest_run(bucket: str, key: str, etag: str) -> dg.RunRequest:
    uri = f"s3://{bucket}/{key}"
    return dg.RunRequest(
        job_name=register_manifest_job.name,
        run_key=f"{key}@{etag}",
        run_config={"ops": {"clip_manifest": {"config": {"manifest": uri}}}},
        tags={MANIFEST_TAG: uri},
    )


def _render_run(spec: ClipSpec) -> dg.RunRequest:
    digest = fingerprint(spec.request.model_dump(mode="json", exclude_none=True))
    return dg.RunRequest(
        job_name=render_clips_job.name,
        partition_key=spec.clip_id,
        run_key=f"{spec.clip_id}:{digest}",
        tags={MANIFEST_TAG: spec.manifest},
    )


_CLIENTS: dict[S3Resource, Any] = {}  # S3 configuration -> its client (a deployment has one)


def _s3_client(storage: PipelineStorage) -> Any:
    """The sensors' S3 client, kept for the life of the process: building one takes ~0.1 s (botocore loads the
    service model), which every tick paid. Clients are thread-safe and renew expiring credentials themselves."""
    client = _CLIENTS.get(storage.s3)
    if client is None:
        client = _CLIENTS[storage.s3] = with_fast_timestamps(storage.s3_client())
    return client


T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def _ahead(work: Callable[[T], R], items: list[T], ahead: int = IN_FLIGHT) -> Iterator[Iterator[tuple[T, R]]]:
    """`work` on each item in order, `ahead` calls in flight: a tick does not pay one S3 round trip per item, and a
    consumer that stops early wastes at most `ahead` calls."""

    def results() -> Iterator[tuple[T, R]]:
        queue: deque[tuple[T, Future[R]]] = deque()
        waiting = iter(items)
        for item in islice(waiting, ahead):
            queue.append((item, pool.submit(work, item)))
        while queue:
            item, future = queue.popleft()
            for following in islice(waiting, 1):
                queue.append((following, pool.submit(work, following)))
            yield item, future.result()

    with ThreadPoolExecutor(max_workers=ahead) as pool:
        yield results()


def _result(
    specs: list[ClipSpec], manifest_runs: list[dg.RunRequest], storage: PipelineStorage, cursor: str
) -> dg.SensorResult:
    if specs:
        save_specs(storage.store(), specs)
    return dg.SensorResult(
        run_requests=[*manifest_runs, *(_render_run(s) for s in specs)],
        dynamic_partitions_requests=[clips.build_add_request([s.clip_id for s in specs])] if specs else [],
        cursor=cursor,
    )


# --- manifest_upload_sensor ---------------------------------------------------------------------------------


def _reader(client: Any, bucket: str) -> Callable[[str], ManifestResult | ManifestError]:
    def read(key: str) -> ManifestResult | ManifestError:
        try:
            return read_manifest(f"s3://{bucket}/{key}", client)
        except ManifestError as exc:
            return exc

    return read


def _batches(
    reads: Iterator[tuple[str, ManifestResult | ManifestError]], clips_per_batch: int
) -> Iterator[list[tuple[str, ManifestResult | ManifestError]]]:
    """Manifests read, grouped until a group holds `clips_per_batch` valid rows: one query per group asks which
    clips are registered (on SQLite a query costs ~2.5 ms however few ids it asks about: one per manifest took
    0.13 s of a tick reading 50 one-clip manifests, one for 1,000 ids takes 7 ms)."""
    batch: list[tuple[str, ManifestResult | ManifestError]] = []
    rows = 0
    for key, outcome in reads:
        batch.append((key, outcome))
        rows += 0 if isinstance(outcome, ManifestError) else len(outcome.valid)
        if rows >= clips_per_batch:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


@dataclass
class ManifestCursor:
    listing: ListCursor
    etags: EtagTracker
    pending: dict[str, str] = field(default_factory=dict)  # key -> etag: found, not fully registered yet

    def to_json(self) -> str:
        body = {"list": self.listing.to_dict(), "etags": self.etags.digests, "pending": self.pending}
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> ManifestCursor:
        body = json.loads(text) if text else {}
        return cls(
            ListCursor.from_dict(body.get("list")),
            EtagTracker(body.get("etags"), MAX_TRACKED),
            dict(body.get("pending", {})),
        )


@dg.sensor(
    name="manifest_upload_sensor",
    jobs=[register_manifest_job, render_clips_job],
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=SENSOR_STATUS,
    description="New or overwritten manifests under INFINITETALK_MANIFEST_PREFIX -> partitions and renders.",
)
def manifest_upload_sensor(
    context: dg.SensorEvaluationContext, storage: PipelineStorage, watch: S3WatchResource
) -> dg.SensorResult | dg.SkipReason:
    watched = watch.manifest_prefix
    if not watched:
        return dg.SkipReason("INFINITETALK_MANIFEST_PREFIX is not set (s3://bucket/prefix/)")
    bucket, prefix = parse_s3_uri(watched)
    client = _s3_client(storage)
    started = time.time()
    state = ManifestCursor.from_json(context.cursor)

    todo = dict(state.pending)  # unfinished work first, in the order it was found
    room = MANIFEST_BUDGET.max_items - len(todo)
    if room > 0:
        polled = poll(
            client,
            bucket,
            prefix,
            state.listing,
            replace(MANIFEST_BUDGET, max_items=room),
            want_new=lambda o: is_manifest_key(o.key, prefix),
            want_changed=lambda o, t: (
                is_manifest_key(o.key, prefix) and o.key not in todo and state.etags.changed(o, t)
            ),
        )
        state.listing = polled.cursor
        for obj in [*polled.changed, *polled.new]:
            todo.setdefault(obj.key, obj.etag)
        context.log.info(f"listed {polled.listed} keys in {polled.requests} requests; {len(todo)} manifests to read")

    specs: list[ClipSpec] = []
    taken: set[str] = set()
    manifest_runs: list[dg.RunRequest] = []
    done: set[str] = set()
    partial: dict[str, str] = {}
    with _ahead(_reader(client, bucket), list(todo)) as reads:
        for batch in _batches(reads, CHECK_CLIPS):
            if len(specs) >= MAX_NEW_CLIPS or time.time() - started > WORK_SECONDS:
                break
            ids = [r.clip_id for _, o in batch if not isinstance(o, ManifestError) for r in o.valid]
            registered = context.instance.get_existing_dynamic_partitions(clips.name, ids)
            for key, outcome in batch:
                room = MAX_NEW_CLIPS - len(specs)
                if room <= 0:
                    break
                done.add(key)
                if isinstance(outcome, ManifestError):
                    context.log.warning(str(outcome))  # looked at again once it is overwritten
                    state.etags.record(key, todo[key])
                    continue
                uri, etag = outcome.source, outcome.etag or todo[key]
                candidates = [ClipSpec(r.clip_id, uri, r.row_number, r.request) for r in outcome.valid]
                fresh = [s for s in candidates if s.clip_id not in registered and s.clip_id not in taken]
                specs.extend(fresh[:room])
                taken.update(s.clip_id for s in fresh[:room])
                if len(fresh) > room:
                    partial[key] = etag  # the rest next tick: those taken are partitions by then
                    continue
                state.etags.record(key, etag)
                manifest_runs.append(_manifest_run(bucket, key, etag))
                context.log.info(
                    f"{uri}: {len(outcome.valid)} valid rows ({len(outcome.invalid)} invalid), "
                    f"{len(fresh)} new clips registered"
                )
    state.pending = partial | {k: e for k, e in todo.items() if k not in done}
    return _result(specs, manifest_runs, storage, state.to_json())


# --- media_drop_sensor --------------------------------------------------------------------------------------


@dataclass
class DropCursor:
    listing: ListCursor
    open: dict[str, list[Any]]  # folder -> [listing signature, epoch when first seen with it]

    def to_json(self) -> str:
        return json.dumps({"list": self.listing.to_dict(), "open": self.open}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> DropCursor:
        body = json.loads(text) if text else {}
        return cls(ListCursor.from_dict(body.get("list")), dict(body.get("open", {})))


class _Discovery:
    """Folders not open yet, found by a tick's listing: the first object of each is wanted (the listing then goes
    on). Their other objects listed after the frontier are kept, so that a folder the frontier listed from its
    first key to past its last needs no listing of its own: a burst of new folders costs the frontier's requests,
    not one more per folder."""

    def __init__(self, prefix: str, state: DropCursor) -> None:
        self.prefix = prefix
        self.state = state
        self.start = state.listing.after  # the frontier before this tick's listing
        self.found: dict[str, list[S3Object]] = {}  # folder -> its objects listed, in the order found
        self.behind: set[str] = set()  # found by the re-scan behind the frontier: only some objects seen

    def want_new(self, obj: S3Object) -> bool:
        folder = folder_of(obj.key, self.prefix)
        if folder is None or folder in self.state.open:
            return False
        if folder in self.found:
            self.found[folder].append(obj)
            return False
        self.found[folder] = [obj]
        return True

    def want_changed(self, obj: S3Object, threshold: float) -> bool:
        folder = folder_of(obj.key, self.prefix)
        if obj.last_modified <= threshold or folder is None or folder in self.state.open or folder in self.found:
            return False
        self.found[folder] = [obj]
        self.behind.add(folder)
        return True

    def listed_in_full(self, folder: str, end: str) -> bool:
        """Whether the frontier listed every object of `folder`: it started before the folder's first key and
        stopped (at `end`) past its last."""
        first = f"{self.prefix}{folder}/"
        return folder not in self.behind and self.start < first < end and not end.startswith(first)


def _clip_id(folder: str, log: Any) -> str | None:
    try:
        return normalise_clip_id(folder)
    except ValueError as exc:
        log.warning(f"drop folder {folder!r} ignored: {exc}")
        return None


@dg.sensor(
    name="media_drop_sensor",
    jobs=[register_manifest_job, render_clips_job],
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=SENSOR_STATUS,
    description="Complete drop folders under INFINITETALK_DROP_PREFIX (`<clip_id>/` with a portrait or "
    "video, one or two audio files, optional clip.json and `_READY`) -> one-clip manifests and renders.",
)
def media_drop_sensor(
    context: dg.SensorEvaluationContext, storage: PipelineStorage, watch: S3WatchResource
) -> dg.SensorResult | dg.SkipReason:
    watched = watch.drop_prefix
    if not watched:
        return dg.SkipReason("INFINITETALK_DROP_PREFIX is not set (s3://bucket/incoming/)")
    quiet = float(watch.drop_quiet_seconds)
    bucket, prefix = parse_s3_uri(watched)
    client = _s3_client(storage)
    started = now = time.time()
    state = DropCursor.from_json(context.cursor)

    discovery = _Discovery(prefix, state)
    room = min(DROP_BUDGET.max_items, MAX_OPEN_FOLDERS - len(state.open))
    if room > 0:
        polled = poll(
            client,
            bucket,
            prefix,
            state.listing,
            replace(DROP_BUDGET, max_items=room),
            want_new=discovery.want_new,
            want_changed=discovery.want_changed,
        )
        state.listing = polled.cursor
    named = {folder: clip_id for folder in discovery.found if (clip_id := _clip_id(folder, context.log))}
    registered = context.instance.get_existing_dynamic_partitions(clips.name, list(named.values()))
    listed: dict[str, tuple[list[S3Object], bool]] = {}  # folder -> (objects, more than a folder may hold)
    for folder, clip_id in named.items():
        if clip_id not in registered:
            state.open[folder] = ["", now]
            if discovery.listed_in_full(folder, state.listing.after):
                objects = discovery.found[folder]
                listed[folder] = (objects, len(objects) > MAX_FOLDER_OBJECTS)
    to_list = [folder for folder in state.open if folder not in listed][:FOLDERS_PER_TICK]

    ready: list[tuple[str, str, dict[str, Any]]] = []  # (folder, clip id, manifest row)
    with _ahead(lambda f: list_folder(client, bucket, f"{prefix}{f}/"), to_list) as lists:
        for folder, (objects, too_big) in chain(listed.items(), lists):
            if time.time() - started > WORK_SECONDS:
                break
            old_sig, since = state.open.pop(folder)  # re-inserted at the end: round robin
            folder_prefix = f"{prefix}{folder}/"
            if not objects:
                continue  # deleted
            sig = signature(objects)
            since = since if sig == old_sig else now
            contents = classify(objects, folder_prefix)
            if too_big:
                contents.problems.append(f"more than {MAX_FOLDER_OBJECTS:,} objects")
            if contents.ready and not contents.has_media:
                contents.problems.append("_READY but no portrait/video or no audio")
            try:
                if contents.problems:
                    raise ClipInputError(folder, None, "; ".join(contents.problems))
                if is_complete(contents, now - since, quiet):
                    clip_id = normalise_clip_id(folder)  # checked when the folder was opened
                    settings = {}
                    if contents.settings is not None:
                        body = client.get_object(Bucket=bucket, Key=contents.settings.key)["Body"].read()
                        settings = parse_settings(body, clip_id)
                    ready.append((folder, clip_id, drop_row(bucket, clip_id, contents, settings)))
                    continue
            except ClipInputError as exc:
                if sig != old_sig:  # once per state of the folder, not every tick
                    context.log.warning(f"drop folder s3://{bucket}/{folder_prefix} waits: {exc}")
            state.open[folder] = [sig, since]

    registered = context.instance.get_existing_dynamic_partitions(clips.name, [c for _, c, _ in ready])
    rows: dict[str, tuple[str, dict[str, Any]]] = {}  # clip id -> (folder, manifest row)
    for folder, clip_id, row in ready:
        if clip_id in registered or clip_id in rows:
            context.log.warning(f"drop folder {folder!r}: clip {clip_id!r} is already registered; ignored")
        else:
            rows[clip_id] = (folder, row)

    def key_of(clip_id: str) -> str:
        return f"{prefix}{GENERATED_MANIFESTS}{clip_id}.jsonl"

    def write(clip_id: str) -> str:
        """Writes the clip's one-row manifest; its ETag."""
        body = json.dumps(rows[clip_id][1]).encode() + b"\n"
        put = client.put_object(Bucket=bucket, Key=key_of(clip_id), Body=body, ContentType="application/x-ndjson")
        return put["ETag"].strip('"')

    specs: list[ClipSpec] = []
    manifest_runs: list[dg.RunRequest] = []
    with _ahead(write, list(rows)) as written:  # the manifests' PUTs overlap
        for clip_id, etag in written:
            folder, row = rows[clip_id]
            uri = f"s3://{bucket}/{key_of(clip_id)}"
            specs.append(ClipSpec(clip_id, uri, 1, parse_request(row, clip_id)))
            manifest_runs.append(_manifest_run(bucket, key_of(clip_id), etag))
            context.log.info(f"drop folder {folder!r} complete: clip {clip_id!r} registered from {uri}")
    return _result(specs, manifest_runs, storage, state.to_json())


# --- render_failure_sensor ----------------------------------------------------------------------------------


def _failed_clips(context: dg.RunFailureSensorContext) -> dict[str, dict[str, Any]]:
    """clip id -> its ClipFailure, as the render step's Failure lists them (metadata, never parsed from text)."""
    found: dict[str, dict[str, Any]] = {}
    for event in context.get_step_failure_events():
        data = event.step_failure_data.user_failure_data if event.step_failure_data else None
        if data is not None and FAILED_CLIPS in data.metadata:
            found.update(cast(dict[str, dict[str, Any]], data.metadata[FAILED_CLIPS].value))
    return found


# No monitored_jobs: the sensor sees failed runs of every job in this code location, since clips are rendered
# by `render_clips` and also by the implicit asset job (UI backfills, `dagster asset materialize --select
# dubbed_video`); runs that do not render dubbed_video are left alone.
@dg.run_failure_sensor(
    name="render_failure_sensor",
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=SENSOR_STATUS,
    description="Failed runs rendering dubbed_video (render_clips, backfills, materializations) -> the run log, "
    "`failures/<clip_id>.json` under the output root for each clip the run left unrendered, and an observation "
    "on that clip's dubbed_video partition.",
)
def render_failure_sensor(context: dg.RunFailureSensorContext, storage: PipelineStorage) -> None:
    run = context.dagster_run
    instance = context.instance
    if not renders_video(instance, run):
        return  # e.g. a register_manifest or refresh_catalog run: not a render
    steps = {
        e.step_key or "run": e.step_failure_data.error.message.strip() if e.step_failure_data.error else ""
        for e in context.get_step_failure_events()
    }
    errors = list(steps.values()) or [context.failure_event.message or "run failed"]
    rendered = {
        r.partition_key
        for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        if r.asset_key == VIDEO
    }
    covered = clips_of_run(run.tags, list(instance.get_dynamic_partitions(clips.name)))
    failed = [c for c in covered if c not in rendered]
    base = {
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_at": datetime.now(UTC).isoformat(),
        "reason": context.failure_event.message,
        "steps": steps,
        "tags": {k: v for k, v in run.tags.items() if not k.startswith("dagster/") or k == "dagster/backfill"},
    }
    store = storage.store()
    if not failed:  # no clip to attribute it to (no partition tags): keep the run's record
        where = store.put_bytes(f"{FAILURES_PREFIX}_runs/{run.run_id}.json", json.dumps(base, indent=2).encode())
        context.log.error(f"render run {run.run_id} failed: {'; '.join(errors)}; recorded at {where}")
        return
    failures = _failed_clips(context)
    for clip_id in failed:
        # A clip the step reported gets its own error; one the run never reached (a crash, a resource that did not
        # start) gets the run's.
        failure = failures.get(clip_id)
        error = failure["message"] if failure else "; ".join(errors)
        record = {"clip_id": clip_id, "error": error, "failure": failure, **base}
        where = store.put_bytes(f"{FAILURES_PREFIX}{clip_id}.json", json.dumps(record, indent=2).encode())
        context.log.error(f"render of clip {clip_id!r} failed (run {run.run_id}): {error}; recorded at {where}")
        instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=VIDEO,
                partition=clip_id,
                metadata={"render_failed": True, "run_id": run.run_id, "error": error[:2000], "failure_record": where},
            )
        )

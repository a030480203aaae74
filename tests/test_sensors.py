"""The S3 sensors evaluated against a real Dagster instance and the real local S3 server.

`build_sensor_context` returns a sensor's raw result without applying its dynamic-partition requests: `tick`
applies them as the daemon would, so later ticks see the clips registered.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from infinitetalk_pipeline.defs import sensors
from infinitetalk_pipeline.defs.assets import clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.jobs import render_clips_job
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage, build_resources
from infinitetalk_pipeline.defs.sensors import (
    manifest_upload_sensor,
    media_drop_sensor,
    render_failure_sensor,
)
from infinitetalk_pipeline.registry import ClipSpec, load_spec, save_specs
from infinitetalk_pipeline.s3watch import Budget, list_folder
from infinitetalk_pipeline.spec import ClipRequest
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.s3


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def storage(s3_endpoint: str, tmp_path: Path) -> PipelineStorage:
    s3 = S3Resource(
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    return PipelineStorage(output_root=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), s3=s3)


def tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, storage: PipelineStorage, cursor: str | None
) -> dg.SensorResult:
    # A context manager: the storage resource depends on the S3 resource, which dagster builds as a generator.
    # What to watch comes from the environment, through the code location's own resource.
    resources = {"storage": storage, "watch": build_resources()["watch"]}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult), result
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def renders(result: dg.SensorResult) -> list[str]:
    return [r.partition_key for r in result.run_requests or [] if r.job_name == "render_clips"]


def manifest_runs(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.job_name == "register_manifest"]


def row(clip_id: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "clip_id": clip_id,
        "image_path": f"s3://{bucket}/media/{clip_id}.png",
        "wav_path": f"s3://{bucket}/media/{clip_id}.wav",
        **extra,
    }


def jsonl(*rows: dict[str, Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --- manifest_upload_sensor ---------------------------------------------------------------------------------


@pytest.fixture
def watch(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("INFINITETALK_MANIFEST_PREFIX", f"s3://{s3_bucket}/manifests/")
    return s3_bucket


def test_unconfigured_sensor_skips(instance: dg.DagsterInstance, storage: PipelineStorage) -> None:
    resources = {"storage": storage, "watch": build_resources()["watch"]}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        assert isinstance(manifest_upload_sensor(context), dg.SkipReason)


def test_uploaded_manifest_registers_clips_and_requests_runs_once(
    s3: Any, watch: str, instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    body = (
        "clip_id,image_path,wav_path,prompt\n"
        f"anna,s3://{watch}/media/anna.png,s3://{watch}/media/anna.wav,hello\n"
        f"ben,s3://{watch}/media/ben.png,s3://{watch}/media/ben.wav,\n"
        "broken,,,no media\n"
    )
    put = s3.put_object(Bucket=watch, Key="manifests/2025-06-01.csv", Body=body.encode())
    s3.put_object(Bucket=watch, Key="manifests/readme.txt", Body=b"not a manifest")

    first = tick(manifest_upload_sensor, instance, storage, None)
    assert renders(first) == ["anna", "ben"]
    assert set(instance.get_dynamic_partitions("clips")) == {"anna", "ben"}
    [manifest_run] = manifest_runs(first)
    uri = f"s3://{watch}/manifests/2025-06-01.csv"
    assert manifest_run.run_config == {"ops": {"clip_manifest": {"config": {"manifest": uri}}}}
    assert manifest_run.run_key == f"manifests/2025-06-01.csv@{put['ETag'].strip(chr(34))}"
    assert {r.run_key.split(":")[0] for r in first.run_requests if r.job_name == "render_clips"} == {
        "anna",
        "ben",
    }
    spec = load_spec(storage.store(), "anna")  # saved before any render can start
    assert spec.manifest == uri and spec.request.prompt == "hello"

    second = tick(manifest_upload_sensor, instance, storage, first.cursor)
    assert second.run_requests == [] and not second.dynamic_partitions_requests
    # A re-evaluation from the same cursor (a tick whose result was lost) asks for the same run keys only.
    again = tick(manifest_upload_sensor, instance, storage, None)
    assert renders(again) == [] and [r.run_key for r in manifest_runs(again)] == [manifest_run.run_key]


def test_overwritten_manifest_adds_only_its_new_clips(
    s3: Any, watch: str, instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    key = "manifests/team-a.jsonl"
    s3.put_object(Bucket=watch, Key=key, Body=jsonl(row("c1", watch), row("c2", watch)))
    cursor = tick(manifest_upload_sensor, instance, storage, None).cursor
    s3.put_object(Bucket=watch, Key="manifests/team-b.jsonl", Body=jsonl(row("b1", watch)))
    later = tick(manifest_upload_sensor, instance, storage, cursor)
    assert renders(later) == ["b1"]

    put = s3.put_object(
        Bucket=watch,
        Key=key,  # overwritten in place, behind the cursor's frontier
        Body=jsonl(row("c1", watch), row("c2", watch, prompt="changed"), row("c3", watch)),
    )
    changed = tick(manifest_upload_sensor, instance, storage, later.cursor)
    assert renders(changed) == ["c3"]
    assert [r.run_key for r in manifest_runs(changed)] == [f"{key}@{put['ETag'].strip(chr(34))}"]
    assert tick(manifest_upload_sensor, instance, storage, changed.cursor).run_requests == []


def test_new_key_sorting_before_the_frontier_is_found(
    s3: Any, watch: str, instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    s3.put_object(Bucket=watch, Key="manifests/zeta.jsonl", Body=jsonl(row("z1", watch)))
    cursor = tick(manifest_upload_sensor, instance, storage, None).cursor
    s3.put_object(Bucket=watch, Key="manifests/alpha.jsonl", Body=jsonl(row("a1", watch)))
    assert renders(tick(manifest_upload_sensor, instance, storage, cursor)) == ["a1"]


def test_large_manifest_is_registered_over_several_ticks(
    s3: Any,
    watch: str,
    instance: dg.DagsterInstance,
    storage: PipelineStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sensors, "MAX_NEW_CLIPS", 2)
    s3.put_object(Bucket=watch, Key="manifests/big.jsonl", Body=jsonl(*(row(f"k{i}", watch) for i in range(5))))
    cursor, seen, manifest_requests = None, [], 0
    for _ in range(4):
        result = tick(manifest_upload_sensor, instance, storage, cursor)
        cursor, seen = result.cursor, seen + renders(result)
        assert len(renders(result)) <= 2
        manifest_requests += len(manifest_runs(result))
    assert seen == [f"k{i}" for i in range(5)]
    assert manifest_requests == 1  # once the whole manifest is registered


def test_a_bucket_too_big_for_one_tick_is_listed_over_several_and_no_clip_is_requested_twice(
    s3: Any, watch: str, instance: dg.DagsterInstance, storage: PipelineStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tick's listing budget at a tenth of its size, and a bucket at a tenth of 20,000 keys: the same ticks as
    # 20,000 keys take at full size, without uploading them. 40 manifests (two clips each, neighbours sharing one: 41
    # clips) among 1,960 other objects.
    monkeypatch.setattr(
        sensors, "MANIFEST_BUDGET", Budget(max_keys=1_000, page_size=100, max_items=20, rescan_keys=100)
    )
    keys = {f"manifests/media/{i:05d}.wav": b"x" for i in range(1_960)}
    for i in range(40):
        keys[f"manifests/batch-{i:04d}.jsonl"] = jsonl(row(f"clip{i}", watch), row(f"clip{i + 1}", watch))
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=watch, Key=kv[0], Body=kv[1]), keys.items()))

    requested: Counter[str] = Counter()
    cursor, ticks = None, 0
    while True:
        result = tick(manifest_upload_sensor, instance, storage, cursor)
        ticks += 1
        requested.update(renders(result))
        cursor = result.cursor
        state = json.loads(cursor)
        if not result.run_requests and state["list"]["after"] == max(keys) and not state["pending"]:
            break
        assert ticks < 20
    assert set(requested) == {f"clip{i}" for i in range(41)}
    assert max(requested.values()) == 1
    assert ticks >= 3  # 2,000 keys do not fit one tick's budget of 1,000
    assert len(cursor or "") < 20_000  # bounded: at most MAX_TRACKED ETag digests


# --- media_drop_sensor --------------------------------------------------------------------------------------


@pytest.fixture
def drops(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("INFINITETALK_DROP_PREFIX", f"s3://{s3_bucket}/incoming/")
    monkeypatch.setenv("INFINITETALK_DROP_QUIET_SECONDS", "3600")
    return s3_bucket


def test_drop_folder_becomes_a_clip_only_when_complete(
    s3: Any, drops: str, instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    s3.put_object(Bucket=drops, Key="incoming/anna/face.png", Body=b"png")
    first = tick(media_drop_sensor, instance, storage, None)
    assert first.run_requests == []
    s3.put_object(Bucket=drops, Key="incoming/anna/speech.wav", Body=b"wav")
    s3.put_object(Bucket=drops, Key="incoming/anna/clip.json", Body=b'{"prompt": "hi there", "width": 640}')
    waiting = tick(media_drop_sensor, instance, storage, first.cursor)
    assert waiting.run_requests == []  # media complete, but no _READY and not quiet for an hour

    s3.put_object(Bucket=drops, Key="incoming/anna/_READY", Body=b"")
    done = tick(media_drop_sensor, instance, storage, waiting.cursor)
    assert renders(done) == ["anna"]
    assert instance.get_dynamic_partitions("clips") == ["anna"]
    [manifest_run] = manifest_runs(done)
    uri = f"s3://{drops}/incoming/_manifests/anna.jsonl"
    assert manifest_run.run_config["ops"]["clip_manifest"]["config"]["manifest"] == uri
    generated = json.loads(s3.get_object(Bucket=drops, Key="incoming/_manifests/anna.jsonl")["Body"].read())
    assert generated["image_path"] == f"s3://{drops}/incoming/anna/face.png"
    assert generated["wav_path"] == f"s3://{drops}/incoming/anna/speech.wav"
    spec = load_spec(storage.store(), "anna")
    assert spec.request.prompt == "hi there" and spec.request.width == 640

    s3.put_object(Bucket=drops, Key="incoming/anna/extra.txt", Body=b"late file")
    assert tick(media_drop_sensor, instance, storage, done.cursor).run_requests == []


def test_quiet_period_completes_a_folder_without_a_marker(
    s3: Any,
    drops: str,
    instance: dg.DagsterInstance,
    storage: PipelineStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFINITETALK_DROP_QUIET_SECONDS", "1")
    for name in ["studio.mp4", "b_ben.wav", "a_anna.wav"]:
        s3.put_object(Bucket=drops, Key=f"incoming/duo/{name}", Body=name.encode())
    first = tick(media_drop_sensor, instance, storage, None)
    assert first.run_requests == []  # just seen: not yet quiet
    time.sleep(1.2)
    second = tick(media_drop_sensor, instance, storage, first.cursor)
    assert renders(second) == ["duo"]
    request = load_spec(storage.store(), "duo").request
    assert request.input_type == "video" and request.person_count == "multi"
    assert request.wav_path.endswith("a_anna.wav") and request.wav_path_2.endswith("b_ben.wav")


def put_folders(s3: Any, bucket: str, names: list[str], files: list[str]) -> None:
    keys = [f"incoming/{n}/{f}" for n in names for f in files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))


def test_a_burst_of_new_folders_needs_no_listing_of_each(
    s3: Any,
    drops: str,
    instance: dg.DagsterInstance,
    storage: PipelineStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"clip{i:02d}" for i in range(30)]
    put_folders(s3, drops, names, ["_READY", "face.png", "speech.wav", "sub/", "sub/notes.txt"])
    listed: list[str] = []
    monkeypatch.setattr(sensors, "list_folder", lambda *args: listed.append(args[2]) or list_folder(*args))
    first = tick(media_drop_sensor, instance, storage, None)
    assert renders(first) == names
    # The frontier listed every folder but the last one in full: it ends in that folder.
    assert listed == ["incoming/clip29/"]
    assert json.loads(first.cursor)["open"] == {}
    assert tick(media_drop_sensor, instance, storage, first.cursor).run_requests == []


def test_open_folders_are_listed_again_until_complete(
    s3: Any, drops: str, instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    names = [f"clip{i:02d}" for i in range(3 * sensors.IN_FLIGHT)]  # listed IN_FLIGHT at a time
    put_folders(s3, drops, names, ["face.png", "speech.wav"])
    first = tick(media_drop_sensor, instance, storage, None)
    assert first.run_requests == [] and list(json.loads(first.cursor)["open"]) == names
    put_folders(s3, drops, names, ["_READY"])  # behind the frontier: found by listing the open folders
    assert renders(tick(media_drop_sensor, instance, storage, first.cursor)) == names


def test_ambiguous_folder_waits_until_fixed_and_registered_ids_are_left_alone(
    s3: Any, drops: str, instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    instance.add_dynamic_partitions("clips", ["taken"])
    for key in ["incoming/two/a.png", "incoming/two/b.png", "incoming/two/s.wav", "incoming/two/_READY"]:
        s3.put_object(Bucket=drops, Key=key, Body=b"x")
    for key in ["incoming/taken/a.png", "incoming/taken/s.wav", "incoming/taken/_READY"]:
        s3.put_object(Bucket=drops, Key=key, Body=b"x")
    first = tick(media_drop_sensor, instance, storage, None)
    assert first.run_requests == []
    assert list(json.loads(first.cursor)["open"]) == ["two"]  # "taken" is a registered clip: never opened
    s3.delete_object(Bucket=drops, Key="incoming/two/b.png")
    assert renders(tick(media_drop_sensor, instance, storage, first.cursor)) == ["two"]


# --- render_failure_sensor ----------------------------------------------------------------------------------


def failed_run(
    instance: dg.DagsterInstance,
    storage: PipelineStorage,
    tags: dict[str, str],
    selection: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """A failed render of clips with no registered request (they fail fast): a `render_clips` run, or with a
    `selection` a run of the implicit asset job, as UI backfills and `dagster asset materialize` launch."""
    defs = dg.Definitions(
        assets=[clip_manifest, clip_renders, video_catalog],
        jobs=[render_clips_job],
        resources={"storage": storage, "comfyui": ComfyUIResource()},
    )
    if selection is None:
        job, extra = defs.resolve_job_def("render_clips"), {}
    else:
        job, extra = defs.resolve_implicit_global_asset_job_def(), {"asset_selection": selection}
    run = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False, **extra)
    assert not run.success
    return run


def failed_run_context(
    instance: dg.DagsterInstance, storage: PipelineStorage, tags: dict[str, str]
) -> tuple[str, dg.RunFailureSensorContext]:
    """Runs render_clips for clips with no registered request (they fail fast) and builds the failure context."""
    run = failed_run(instance, storage, tags)
    [record] = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    context = dg.build_run_status_sensor_context(
        sensor_name="render_failure_sensor",
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run.dagster_run,
        resources={"storage": storage},
    ).for_run_failure()
    return run.run_id, context


def failure_tick(instance: dg.DagsterInstance, storage: PipelineStorage, cursor: str | None) -> str | None:
    """One evaluation of the sensor as the daemon runs it: its own run filtering included (the runs here and the
    test context both have no code location, which dagster counts as the same one)."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage}) as context:
        return render_failure_sensor.evaluate_tick(context).cursor


def failure_records(storage: PipelineStorage) -> dict[str, dict[str, Any]]:
    store = storage.store()
    return {name: json.loads(store.get_bytes(name) or b"{}") for name in store.list_names("failures/")}


def test_failed_render_is_recorded_and_observed(instance: dg.DagsterInstance, storage: PipelineStorage) -> None:
    instance.add_dynamic_partitions("clips", ["ghost"])
    run_id, context = failed_run_context(instance, storage, {"dagster/partition": "ghost"})
    with context:
        render_failure_sensor(context)

    failure = json.loads(storage.store().get_bytes("failures/ghost.json") or b"{}")
    assert failure["run_id"] == run_id and failure["clip_id"] == "ghost"
    assert "no registered request" in failure["error"]
    [observation] = instance.fetch_observations(dg.AssetKey("dubbed_video"), limit=1).records
    assert observation.partition_key == "ghost"
    assert observation.asset_observation.metadata["run_id"].value == run_id


def test_a_run_over_several_clips_records_each_failed_clip(
    instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    instance.add_dynamic_partitions("clips", ["g1", "g2", "g3"])
    tags = {"dagster/asset_partition_range_start": "g1", "dagster/asset_partition_range_end": "g2"}
    _, context = failed_run_context(instance, storage, tags)
    with context:
        render_failure_sensor(context)
    store = storage.store()
    errors = {c: json.loads(store.get_bytes(f"failures/{c}.json") or b"{}").get("error", "") for c in ["g1", "g2"]}
    assert "'g1'" in errors["g1"] and "'g2'" not in errors["g1"]
    assert "'g2'" in errors["g2"]
    assert store.get_bytes("failures/g3.json") is None  # not in the run


def test_each_clip_is_blamed_for_its_own_error_even_when_it_names_another_clip(
    instance: dg.DagsterInstance, storage: PipelineStorage, tmp_path: Path
) -> None:
    """g1's error quotes a path that contains 'g2': the clips' errors come from the run's structured failure, not
    from searching messages for clip ids."""
    instance.add_dynamic_partitions("clips", ["g1", "g2"])
    request = ClipRequest(image_path=str(tmp_path / "face.png"), wav_path=str(tmp_path / "dub of 'g2'.wav"))
    save_specs(storage.store(), [ClipSpec("g1", str(tmp_path / "m.csv"), 2, request)])
    tags = {"dagster/asset_partition_range_start": "g1", "dagster/asset_partition_range_end": "g2"}
    _, context = failed_run_context(instance, storage, tags)
    with context:
        render_failure_sensor(context)
    records = failure_records(storage)
    g1, g2 = records["failures/g1.json"], records["failures/g2.json"]
    assert "'g2'" in g1["error"] and g1["failure"]["field"] == "wav_path"
    assert g2["error"] == "clip 'g2': no registered request: materialize clip_manifest for its manifest"
    assert (g2["failure"]["clip_id"], g2["failure"]["error_type"], g2["failure"]["transient"]) == (
        "g2",
        "ClipInputError",
        False,
    )


def test_failed_backfill_run_of_the_asset_job_is_recorded(
    instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    # A UI backfill (or `dagster asset materialize --select dubbed_video`) runs the implicit asset job, not
    # render_clips: the sensor must see its failures too, and find its clips from the range tags.
    instance.add_dynamic_partitions("clips", ["g1", "g2", "g3"])
    cursor = failure_tick(instance, storage, None)  # the first tick only sets the cursor
    tags = {
        "dagster/asset_partition_range_start": "g1",
        "dagster/asset_partition_range_end": "g2",
        "dagster/backfill": "bf1",
    }
    run = failed_run(instance, storage, tags, selection=[dg.AssetKey("dubbed_video")])
    assert run.dagster_run.job_name == "__ASSET_JOB"
    failure_tick(instance, storage, cursor)

    records = failure_records(storage)
    assert set(records) == {"failures/g1.json", "failures/g2.json"}
    for clip in ["g1", "g2"]:
        record = records[f"failures/{clip}.json"]
        assert record["run_id"] == run.run_id and record["job"] == "__ASSET_JOB"
        assert f"'{clip}'" in record["error"] and record["tags"]["dagster/backfill"] == "bf1"
    observed = instance.fetch_observations(dg.AssetKey("dubbed_video"), limit=10).records
    assert sorted(o.partition_key for o in observed) == ["g1", "g2"]


def test_single_clip_materialization_of_the_asset_job_is_recorded(
    instance: dg.DagsterInstance, storage: PipelineStorage
) -> None:
    instance.add_dynamic_partitions("clips", ["ghost"])
    cursor = failure_tick(instance, storage, None)
    run = failed_run(
        instance, storage, {"dagster/partition": "ghost"}, [dg.AssetKey("clip_timing"), dg.AssetKey("dubbed_video")]
    )
    failure_tick(instance, storage, cursor)
    record = failure_records(storage)["failures/ghost.json"]
    assert record["run_id"] == run.run_id and "no registered request" in record["error"]


def test_failed_runs_that_render_no_video_are_ignored(instance: dg.DagsterInstance, storage: PipelineStorage) -> None:
    instance.add_dynamic_partitions("clips", ["ghost"])
    start = failure_tick(instance, storage, None)
    failed_run(instance, storage, {"dagster/partition": "ghost"}, selection=[dg.AssetKey("clip_timing")])
    defs = dg.Definitions(assets=[clip_manifest], resources={"storage": storage, "comfyui": ComfyUIResource()})
    manifest = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        run_config={"ops": {"clip_manifest": {"config": {"manifest": str(Path(storage.output_root) / "no.csv")}}}},
        raise_on_error=False,
    )
    assert not manifest.success
    cursor = failure_tick(instance, storage, start)
    assert failure_records(storage) == {}
    assert instance.fetch_observations(dg.AssetKey("dubbed_video"), limit=1).records == []
    assert cursor != start  # both failures were looked at and passed over

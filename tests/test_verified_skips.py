"""A clip is skipped only when its stored video is still the one its render recorded (size, then sha256), and the
checks a skip reports are evaluated again on that stored video. Real stores (a folder, moto's S3 server), real
Dagster runs on the local ComfyUI."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster_aws.s3 import S3Resource

from infinitetalk_pipeline.catalog import read_catalog
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.resources import PipelineStorage
from infinitetalk_pipeline.registry import load_row, save_row
from infinitetalk_pipeline.storage import LocalOutputStore, S3OutputStore, StoredObject, StoredVideoChanged
from infinitetalk_pipeline.verify import inspect_output
from tests.fixtures.media import make_portrait, make_tone, make_video
from tests.fixtures.pipeline import local_resources, one_clip_manifest
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY

ASSETS = [clip_manifest, clip_renders, video_catalog]
CLIP = "talk"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flip_middle(data: bytes, span: int = 64) -> bytes:
    """The same number of bytes, `span` of them in the middle inverted."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + span]) + data[mid + span :]


# --- the stores: verified_copy ------------------------------------------------------------------------------


def refusal(store: LocalOutputStore | S3OutputStore, stored: StoredObject) -> str:
    """Why the store refuses to vouch for `stored` (the test fails if it does vouch)."""
    with pytest.raises(StoredVideoChanged) as refused, store.verified_copy(CLIP, stored.size_bytes, stored.sha256):
        pass
    return str(refused.value)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "render.mp4", 1.0, audio_seconds=1.0)


def test_local_verified_copy_is_the_stored_file_when_size_and_sha256_match(tmp_path: Path, video: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    stored = store.put_video(video, CLIP, {})
    with store.verified_copy(CLIP, stored.size_bytes, stored.sha256) as path:
        assert path == Path(stored.uri)


def test_local_truncated_video_is_refused_by_its_size(tmp_path: Path, video: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    stored = store.put_video(video, CLIP, {})
    os.truncate(stored.uri, 10_000)
    assert refusal(store, stored) == f"size 10000 != {stored.size_bytes} bytes"


def test_local_bytes_changed_in_place_are_refused_even_with_size_and_mtime_kept(tmp_path: Path, video: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    stored = store.put_video(video, CLIP, {})
    path = Path(stored.uri)
    before = path.stat()
    path.write_bytes(flip_middle(path.read_bytes()))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the sidecar would still call it the same file
    assert refusal(store, stored).endswith("(same size, other bytes)")


def test_local_missing_video_is_refused(tmp_path: Path, video: Path) -> None:
    store = LocalOutputStore(tmp_path / "out")
    stored = store.put_video(video, CLIP, {})
    Path(stored.uri).unlink()
    assert refusal(store, stored) == f"no video at {stored.uri}"


@pytest.mark.s3
def test_s3_verified_copy_is_a_temporary_copy_of_the_stored_bytes(s3: Any, s3_bucket: str, video: Path) -> None:
    store = S3OutputStore(s3, s3_bucket, "out")
    stored = store.put_video(video, CLIP, {})
    with store.verified_copy(CLIP, stored.size_bytes, stored.sha256) as path:
        assert path.read_bytes() == video.read_bytes()
    assert not path.exists()


@pytest.mark.s3
def test_s3_object_replaced_by_another_render_is_refused_from_its_metadata(
    s3: Any, s3_bucket: str, video: Path, tmp_path: Path
) -> None:
    store = S3OutputStore(s3, s3_bucket, "out")
    stored = store.put_video(video, CLIP, {})
    other = tmp_path / "other.mp4"
    other.write_bytes(flip_middle(video.read_bytes()))
    store.put_video(other, CLIP, {})  # same size, its own sha256 in the metadata
    assert refusal(store, stored).startswith("replaced: its sha256 metadata")


@pytest.mark.s3
def test_s3_object_overwritten_with_its_metadata_kept_is_refused_by_the_hash(
    s3: Any, s3_bucket: str, video: Path
) -> None:
    store = S3OutputStore(s3, s3_bucket, "out")
    stored = store.put_video(video, CLIP, {})
    key = f"out/videos/{CLIP}.mp4"
    metadata = s3.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
    s3.put_object(Bucket=s3_bucket, Key=key, Body=flip_middle(video.read_bytes()), Metadata=metadata)
    assert refusal(store, stored).endswith("(same size, other bytes)")


@pytest.mark.s3
def test_s3_missing_object_is_refused(s3: Any, s3_bucket: str, video: Path) -> None:
    store = S3OutputStore(s3, s3_bucket, "out")
    stored = store.put_video(video, CLIP, {})
    s3.delete_object(Bucket=s3_bucket, Key=f"out/videos/{CLIP}.mp4")
    assert refusal(store, stored) == f"no object at {stored.uri}"


# --- the pipeline: a clip rendered once, then its stored video tampered with ------------------------------------


def write_workspace(root: Path) -> Path:
    """A portrait, 0.6 s of tone and a one-clip manifest (15 frames at 128x128: a quick preview render)."""
    make_portrait(root / "face.png")
    make_tone(root / "tone.wav", 0.6)
    return one_clip_manifest(root, CLIP, 128)


def render(instance: dg.DagsterInstance, resources: dict[str, object]) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=[TIMING, VIDEO], partition_key=CLIP, instance=instance, resources=resources)


def skipped(result: dg.ExecuteInProcessResult) -> bool:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == VIDEO]
    return event.materialization.metadata["skipped"].value


def run_log(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def rendered(
    tmp_path: Path, comfy_url: str, instance: dg.DagsterInstance
) -> tuple[dict[str, object], LocalOutputStore]:
    """The clip registered and rendered once into a local output root."""
    write_workspace(tmp_path)
    resources = local_resources(tmp_path, comfy_url)
    dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)
    assert not skipped(render(instance, resources))
    store = resources["storage"].store()
    assert isinstance(store, LocalOutputStore)
    return resources, store


@pytest.mark.comfyui
def test_a_truncated_video_is_rendered_again_and_catalogued_anew(
    rendered: tuple[dict[str, object], LocalOutputStore], instance: dg.DagsterInstance
) -> None:
    resources, store = rendered
    video = store.path_for(CLIP)
    recorded = video.stat().st_size
    os.truncate(video, 10_000)

    again = render(instance, resources)
    assert not skipped(again)
    assert (
        f"clip '{CLIP}': stored video changed since its render (size 10000 != {recorded} bytes); rendering again"
        in run_log(instance, again)
    )
    assert inspect_output(video).frames == 15
    dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)
    [row] = pq.read_table(store.root / "catalog" / "video_catalog").to_pylist()
    assert (row["size_bytes"], row["sha256"]) == (video.stat().st_size, sha256(video.read_bytes()))


@pytest.mark.comfyui
def test_a_video_corrupted_without_changing_its_size_is_rendered_again(
    rendered: tuple[dict[str, object], LocalOutputStore], instance: dg.DagsterInstance
) -> None:
    resources, store = rendered
    video = store.path_for(CLIP)
    before = video.stat()
    video.write_bytes(flip_middle(video.read_bytes()))
    os.utime(video, ns=(before.st_atime_ns, before.st_mtime_ns))

    again = render(instance, resources)
    assert not skipped(again)
    assert "stored video changed since its render (sha256 " in run_log(instance, again)
    assert load_row(store, CLIP)["sha256"] == sha256(video.read_bytes())


@pytest.mark.comfyui
def test_an_untouched_video_is_skipped_and_its_checks_are_evaluated_on_the_stored_file(
    rendered: tuple[dict[str, object], LocalOutputStore], instance: dg.DagsterInstance
) -> None:
    resources, store = rendered
    # Plant outcomes in the kept record that the stored file contradicts: a skip must not repeat them.
    kept = load_row(store, CLIP)
    kept["checks"] = [{**check, "description": "copied from the old row"} for check in kept["checks"]]
    save_row(store, CLIP, kept)

    again = render(instance, resources)
    assert skipped(again)
    assert "stored video verified" in run_log(instance, again)
    checks = {c.check_name: c for c in again.get_asset_check_evaluations()}
    assert all(c.passed for c in checks.values()) and len(checks) == 4
    size = store.path_for(CLIP).stat().st_size
    assert checks["file_not_empty"].description == f"{size} bytes (re-checked on the stored video)"
    assert checks["frames_match_audio"].description.startswith("15 frames at 25 fps (want 15 at 25)")


@pytest.mark.s3
@pytest.mark.comfyui
def test_an_s3_video_overwritten_with_other_bytes_is_rendered_again(
    s3: Any, s3_bucket: str, s3_endpoint: str, comfy_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    manifest = write_workspace(tmp_path)
    s3_resource = S3Resource(
        endpoint_url=s3_endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
    resources = local_resources(tmp_path, comfy_url) | {
        "storage": PipelineStorage(
            output_root=f"s3://{s3_bucket}/out/",
            cache_dir=str(tmp_path / "cache"),
            allowed_roots=str(tmp_path),
            manifest=str(manifest),
            s3=s3_resource,
        ),
        "s3": s3_resource,
    }
    dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)
    assert not skipped(render(instance, resources))
    assert skipped(render(instance, resources))  # control: the untouched object is verified and skipped

    key = f"out/videos/{CLIP}.mp4"
    stored = s3.get_object(Bucket=s3_bucket, Key=key)
    # Same size and the same metadata (sha256 included): only the hash of the bytes can tell.
    s3.put_object(Bucket=s3_bucket, Key=key, Body=flip_middle(stored["Body"].read()), Metadata=stored["Metadata"])

    again = render(instance, resources)
    assert not skipped(again)
    assert "stored video changed since its render (sha256 " in run_log(instance, again)
    body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    kept = load_row(resources["storage"].store(), CLIP)
    assert (kept["size_bytes"], kept["sha256"]) == (len(body), sha256(body))
    dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)
    [row] = read_catalog(resources["storage"].store()).to_dict("records")
    assert row["sha256"] == sha256(body)

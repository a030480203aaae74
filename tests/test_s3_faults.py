"""The S3 connection is cut while a finished video goes up: a real TCP proxy (tests/fixtures/tcp_proxy.py) between the
pipeline's boto3 client and moto's S3 server resets every connection in the middle of the upload.

No reader ever sees a partial object: the buckets here are versioned, so anything the cut attempt had made visible at
the key, whole or partial, would stay listed. The upload is then completed by a retry: boto3's own while it has
attempts left; otherwise the clip fails as transient and Dagster's RetryPolicy retries the step in the same run, which
adopts the finished ComfyUI prompt (its id is derived from the clip and its fingerprint) instead of rendering again.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError
from dagster_aws.s3 import S3Resource
from PIL import Image

from infinitetalk_pipeline.catalog import read_catalog
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.resources import PipelineStorage
from infinitetalk_pipeline.storage import S3OutputStore
from tests.fixtures.fleet import finished_prompts
from tests.fixtures.media import make_tone
from tests.fixtures.pipeline import local_resources, one_clip_manifest
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY
from tests.fixtures.tcp_proxy import TcpProxy

pytestmark = pytest.mark.s3

KiB = 1024
MiB = 1024 * KiB
CUT_AFTER = 16 * KiB  # bytes of the PUT request (line, headers, then body) that reach S3 before the cut
ASSETS = [clip_manifest, clip_renders, video_catalog]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[TcpProxy]:
    with TcpProxy.in_front_of(s3_endpoint) as tcp_proxy:
        yield tcp_proxy


@pytest.fixture
def bucket(s3: Any, s3_bucket: str) -> str:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    return s3_bucket


def s3_through(proxy: TcpProxy, retries: int) -> S3Resource:
    """The pipeline's S3 resource, reaching moto through the proxy, with boto3 retrying each call `retries` times.

    dagster_aws hands `max_attempts` to botocore as `retries.max_attempts`, which counts the retries: a call makes
    up to `max_attempts + 1` attempts."""
    return S3Resource(
        endpoint_url=proxy.url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        max_attempts=retries,
    )


def stored_versions(s3: Any, bucket: str, key: str) -> list[bytes]:
    """The bytes of every version ever stored at `key` (read directly from moto, not through the proxy)."""
    listing = s3.list_object_versions(Bucket=bucket, Prefix=key)
    ids = [v["VersionId"] for v in listing.get("Versions", []) if v["Key"] == key]
    return [s3.get_object(Bucket=bucket, Key=key, VersionId=i)["Body"].read() for i in ids]


def unfinished_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


# --- the store ---------------------------------------------------------------------------------------------------


def test_one_cut_mid_put_is_absorbed_by_boto3s_own_retry(proxy: TcpProxy, s3: Any, bucket: str, tmp_path: Path) -> None:
    video = random_file(tmp_path / "render.mp4", 256 * KiB)
    store = S3OutputStore(s3_through(proxy, retries=1).get_client(), bucket, "out")
    proxy.cut_after(CUT_AFTER, after=f"PUT /{bucket}/out/videos/clip-1.mp4".encode())

    stored = store.put_video(video, "clip-1", {})

    assert proxy.cuts == 1  # the first PUT died mid-body; boto3's one retry sent the whole file again
    assert stored_versions(s3, bucket, "out/videos/clip-1.mp4") == [video.read_bytes()]
    assert stored.sha256 == sha256(video.read_bytes())


def test_a_multipart_upload_cut_mid_part_keeps_the_earlier_video_and_leaves_no_upload_behind(
    proxy: TcpProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)  # moto's smallest parts
    store = S3OutputStore(s3_through(proxy, retries=0).get_client(), bucket, "out", transfer_config=config)
    earlier = random_file(tmp_path / "earlier.mp4", 64 * KiB)
    store.put_video(earlier, "clip-1", {})
    proxy.cut_after(MiB, after=b"partNumber=")  # 1 MiB into the first part request (5 + 1 MiB parts)

    with pytest.raises(BotoCoreError):  # a connection error: transient for the pipeline (clip_renderer.ClipFailure)
        store.put_video(random_file(tmp_path / "rerender.mp4", 6 * MiB), "clip-1", {})

    assert proxy.cuts == 1
    assert stored_versions(s3, bucket, "out/videos/clip-1.mp4") == [earlier.read_bytes()]
    assert unfinished_uploads(s3, bucket) == []  # the failed upload was aborted: no parts left to pay for
    stored = store.exists("clip-1")
    assert stored is not None and stored.sha256 == sha256(earlier.read_bytes())


# --- the pipeline ----------------------------------------------------------------------------------------------


def write_workspace(root: Path, clip_id: str) -> Path:
    """A noise portrait (it barely compresses: the mp4 is far bigger than CUT_AFTER), 1 s of tone, a one-clip
    manifest (25 frames at 256x256)."""
    Image.effect_noise((256, 256), 90).convert("RGB").save(root / "face.png")
    make_tone(root / "tone.wav", 1.0)
    return one_clip_manifest(root, clip_id, 256)


def prompts_rendering(comfy_url: str, clip_id: str) -> list[str]:
    """The worker's successful prompts whose graph saves this clip's video: a `filename_prefix` under `infinitetalk/`
    whose name is the clip id (comfy/fleet.py may put it in a folder named after the prompt)."""

    def saves_clip(node: dict[str, Any]) -> bool:
        prefix = node.get("inputs", {}).get("filename_prefix")
        return isinstance(prefix, str) and prefix.startswith("infinitetalk/") and prefix.rpartition("/")[2] == clip_id

    return [
        prompt_id
        for prompt_id, entry in finished_prompts(comfy_url).items()
        if any(saves_clip(node) for node in entry["prompt"][2].values())
    ]


@pytest.mark.comfyui
def test_a_cut_mid_upload_fails_the_clip_as_transient_and_dagsters_retry_stores_the_one_render(
    proxy: TcpProxy, s3: Any, bucket: str, comfy_url: str, tmp_path: Path
) -> None:
    # A clip id of its own: the session's worker holds no earlier test's prompt of this lineage to adopt.
    clip = f"cut-{uuid.uuid4().hex[:8]}"
    key = f"out/videos/{clip}.mp4"
    s3_resource = s3_through(proxy, retries=0)  # one attempt per call: the cut reaches the pipeline
    resources = local_resources(tmp_path, comfy_url) | {
        "storage": PipelineStorage(
            output_root=f"s3://{bucket}/out/",
            cache_dir=str(tmp_path / "cache"),
            allowed_roots=str(tmp_path),
            manifest=str(write_workspace(tmp_path, clip)),
            s3=s3_resource,
        ),
        "s3": s3_resource,
    }
    with dg.instance_for_test() as instance:
        dg.materialize(ASSETS, selection=[clip_manifest], instance=instance, resources=resources)
        proxy.cut_after(CUT_AFTER, after=f"PUT /{bucket}/{key}".encode())
        run = dg.materialize(
            ASSETS, selection=[TIMING, VIDEO], partition_key=clip, instance=instance, resources=resources
        )
        dg.materialize(ASSETS, selection=[video_catalog], instance=instance, resources=resources)
        run_log = "\n".join(entry.user_message for entry in instance.all_logs(run.run_id))

    assert run.success and proxy.cuts == 1
    # The first attempt failed with the clip's connection error and went up for retry, which only a transient
    # failure does (bad input raises Failure(allow_retries=False)); the retry, in the same run, completed.
    [retry] = [event for event in run.all_events if event.is_step_up_for_retry]
    cause = retry.step_retry_data.error.cause
    assert cause is not None and f"clip {clip!r}: ConnectionClosedError" in cause.message
    # It adopted the finished prompt and stored its output: one render of the clip on the worker.
    [prompt_id] = prompts_rendering(comfy_url, clip)
    assert f"adopting prompt {prompt_id}, finished" in run_log

    [row] = read_catalog(S3OutputStore(s3, bucket, "out")).to_dict("records")
    assert (row["clip_id"], row["comfy_prompt_id"], row["output_uri"]) == (clip, prompt_id, f"s3://{bucket}/{key}")
    [video] = stored_versions(s3, bucket, key)  # nothing of the cut attempt, partial or whole, was ever stored
    assert (row["size_bytes"], row["sha256"]) == (len(video), sha256(video))
    assert len(video) > 2 * CUT_AFTER  # the cut fell while the video's bytes were going up
    assert unfinished_uploads(s3, bucket) == []

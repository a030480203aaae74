"""Upload to S3 -> sensor tick -> the requested runs render through the real local ComfyUI -> videos and catalog
under an S3 output root. Everything real: moto's S3 server, a Dagster instance, ComfyUI on CPU."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from infinitetalk_pipeline.catalog import read_catalog
from infinitetalk_pipeline.defs.assets import clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.jobs import refresh_catalog_job, render_clips_job
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage, S3WatchResource
from infinitetalk_pipeline.defs.sensors import manifest_upload_sensor, register_manifest_job
from infinitetalk_pipeline.storage import S3OutputStore
from tests.fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY
from tests.fixtures.synth import make_portrait, make_tone

pytestmark = [pytest.mark.s3, pytest.mark.comfyui]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def upload_media(s3: Any, bucket: str, folder: Path) -> None:
    files = {
        "face.png": make_portrait(folder / "face.png", size=(256, 256)),
        "a.wav": make_tone(folder / "a.wav", seconds=1.0),
        "b.wav": make_tone(folder / "b.wav", seconds=0.6, freq=330.0),
    }
    for name, path in files.items():
        s3.upload_file(str(path), bucket, f"media/{name}")


def test_manifest_upload_renders_into_an_s3_output_root(
    s3: Any,
    s3_bucket: str,
    s3_endpoint: str,
    comfy_url: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    upload_media(s3, s3_bucket, tmp_path)
    media = f"s3://{s3_bucket}/media"
    rows = [
        {
            "clip_id": "solo",
            "image_path": f"{media}/face.png",
            "wav_path": f"{media}/a.wav",
            "width": 128,
            "height": 128,
        },
        {
            "clip_id": "duo",
            "person_count": "multi",
            "image_path": f"{media}/face.png",
            "wav_path": f"{media}/a.wav",
            "wav_path_2": f"{media}/b.wav",
            "width": 128,
            "height": 128,
        },
    ]
    s3.put_object(
        Bucket=s3_bucket, Key="manifests/e2e.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode()
    )
    watch = S3WatchResource(manifest_prefix=f"s3://{s3_bucket}/manifests/")
    s3_resource = S3Resource(
        endpoint_url=s3_endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
    )
    storage = PipelineStorage(output_root=f"s3://{s3_bucket}/out/", cache_dir=str(tmp_path / "cache"), s3=s3_resource)
    defs = dg.Definitions(
        assets=[clip_manifest, clip_renders, video_catalog],
        jobs=[render_clips_job, refresh_catalog_job, register_manifest_job],
        resources={
            "storage": storage,
            "comfyui": ComfyUIResource(urls=comfy_url, profile="preview"),
            "s3": s3_resource,
            "watch": watch,
        },
    )

    with dg.build_sensor_context(instance=instance, resources={"storage": storage, "watch": watch}) as context:
        result = manifest_upload_sensor(context)
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:  # what the daemon does before launching
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert sorted(instance.get_dynamic_partitions("clips")) == ["duo", "solo"]
    # Renders first: they must not need the register_manifest run (the sensor saved their requests).
    for request in sorted(result.run_requests or [], key=lambda r: r.job_name != "render_clips"):
        job = defs.resolve_job_def(request.job_name)
        run = job.execute_in_process(
            run_config=request.run_config,
            partition_key=request.partition_key,
            instance=instance,
            tags=request.tags,
        )
        assert run.success, request
    assert defs.resolve_job_def("refresh_catalog").execute_in_process(instance=instance).success

    for clip in ["solo", "duo"]:
        head = s3.head_object(Bucket=s3_bucket, Key=f"out/videos/{clip}.mp4")
        assert head["ContentType"] == "video/mp4" and head["ContentLength"] > 0
        assert head["Metadata"]["clip-id"] == clip and len(head["Metadata"]["sha256"]) == 64
    catalog = read_catalog(S3OutputStore(s3, s3_bucket, "out")).to_dict("list")
    assert sorted(catalog["clip_id"]) == ["duo", "solo"]
    assert all(uri.startswith(f"s3://{s3_bucket}/out/videos/") for uri in catalog["output_uri"])

    with dg.build_sensor_context(
        instance=instance, cursor=result.cursor, resources={"storage": storage, "watch": watch}
    ) as ctx:
        again = manifest_upload_sensor(ctx)
    assert isinstance(again, dg.SensorResult) and again.run_requests == []

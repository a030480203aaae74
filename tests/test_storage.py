"""Output stores: videos and the catalog under a local directory or an S3 prefix, never seen half-written."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from infinitetalk_pipeline.storage import (
    LocalOutputStore,
    S3OutputStore,
    StoredObject,
    output_store_for,
)
from tests.fixtures.media import make_video

MiB = 1024 * 1024
TABLE = "catalog/video_catalog.parquet"  # a small named object beside the videos


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "render.mp4", 1.0, audio_seconds=1.0)


@pytest.fixture
def local(tmp_path: Path) -> LocalOutputStore:
    return LocalOutputStore(tmp_path / "out")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- building a store ---------------------------------------------------------------------------------------


def test_a_directory_uri_gives_a_local_store(tmp_path: Path) -> None:
    store = output_store_for(str(tmp_path / "out"))
    assert isinstance(store, LocalOutputStore)
    assert store.uri_for("a") == str(tmp_path / "out" / "videos" / "a.mp4")


def test_an_s3_uri_gives_an_s3_store_under_its_prefix() -> None:
    store = output_store_for("s3://bucket/runs/2024/", s3_client=object())
    assert isinstance(store, S3OutputStore)
    assert store.uri_for("a") == "s3://bucket/runs/2024/videos/a.mp4"
    assert store.root_uri == "s3://bucket/runs/2024/"


def test_an_s3_uri_without_a_client_is_refused() -> None:
    with pytest.raises(ValueError, match="S3 client"):
        output_store_for("s3://bucket/")


@pytest.mark.parametrize("clip_id", ["a b", "../escape", "", ".hidden"])
def test_clip_ids_that_are_not_normalised_are_refused(local: LocalOutputStore, clip_id: str) -> None:
    with pytest.raises(ValueError):
        local.uri_for(clip_id)


# --- local store --------------------------------------------------------------------------------------------


def test_local_put_video_stores_the_bytes_under_videos(local: LocalOutputStore, video: Path) -> None:
    stored = local.put_video(video, "clip-1", {"workflow": "I2V_single"})
    data = video.read_bytes()
    assert stored == StoredObject(str(local.root / "videos" / "clip-1.mp4"), len(data), sha256(data))
    assert Path(stored.uri).read_bytes() == data


def test_local_put_video_replaces_an_earlier_render(local: LocalOutputStore, video: Path, tmp_path: Path) -> None:
    local.put_video(video, "clip-1", {})
    second = make_video(tmp_path / "second.mp4", 2.0)
    stored = local.put_video(second, "clip-1", {})
    assert Path(stored.uri).read_bytes() == second.read_bytes()
    assert local.clip_ids() == {"clip-1"}


def test_local_video_is_invisible_until_complete(local: LocalOutputStore, tmp_path: Path) -> None:
    # A FIFO as the source lets the test look at the folder while the copy is half done.
    fifo = tmp_path / "render.fifo"
    os.mkfifo(fifo)
    result: list[StoredObject] = []
    writer = threading.Thread(target=lambda: result.append(local.put_video(fifo, "clip-1", {})))
    writer.start()
    with fifo.open("wb") as pipe:
        pipe.write(b"x" * MiB)
        pipe.flush()
        final = local.root / "videos" / "clip-1.mp4"
        assert not final.exists()
        assert local.exists("clip-1") is None
        assert [p.name.startswith(".clip-1.mp4.") for p in final.parent.iterdir()] == [True]
        pipe.write(b"y" * MiB)
    writer.join(timeout=30)
    assert final.read_bytes() == b"x" * MiB + b"y" * MiB
    assert result[0].size_bytes == 2 * MiB


def test_local_failed_copy_leaves_no_final_file_and_no_temp_file(local: LocalOutputStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        local.put_video(tmp_path / "never-rendered.mp4", "clip-1", {})
    assert local.exists("clip-1") is None
    assert list((local.root / "videos").iterdir()) == []


def test_local_failed_copy_keeps_the_earlier_render(local: LocalOutputStore, video: Path, tmp_path: Path) -> None:
    first = local.put_video(video, "clip-1", {})
    with pytest.raises(FileNotFoundError):
        local.put_video(tmp_path / "never-rendered.mp4", "clip-1", {})
    assert local.exists("clip-1") == first


def test_local_exists_is_none_before_and_describes_the_video_after(local: LocalOutputStore, video: Path) -> None:
    assert local.exists("clip-1") is None
    stored = local.put_video(video, "clip-1", {})
    assert local.exists("clip-1") == stored


def test_local_exists_rehashes_a_video_replaced_behind_its_back(local: LocalOutputStore, video: Path) -> None:
    stored = local.put_video(video, "clip-1", {})
    Path(stored.uri).write_bytes(b"changed by hand")
    assert local.exists("clip-1") == StoredObject(stored.uri, 15, sha256(b"changed by hand"))


def test_local_metadata_is_kept_beside_the_video(local: LocalOutputStore, video: Path) -> None:
    stored = local.put_video(video, "clip-1", {"workflow": "I2V_single", "prompt-id": "p1"})
    assert local.metadata("clip-1") == {
        "workflow": "I2V_single",
        "prompt-id": "p1",
        "clip-id": "clip-1",
        "sha256": stored.sha256,
    }
    assert local.metadata("clip-2") is None


def test_metadata_keys_must_be_header_safe(local: LocalOutputStore, video: Path) -> None:
    with pytest.raises(ValueError, match="metadata key"):
        local.put_video(video, "clip-1", {"Prompt Id": "p1"})


def test_local_clip_ids_lists_stored_videos_only(local: LocalOutputStore, video: Path) -> None:
    local.put_video(video, "a", {})
    local.put_video(video, "b.v2", {})
    local.put_bytes(TABLE, b"table")
    assert local.clip_ids() == {"a", "b.v2"}


def test_local_bytes_round_trip_and_absent_is_none(local: LocalOutputStore) -> None:
    assert local.get_bytes(TABLE) is None
    uri = local.put_bytes(TABLE, b"table")
    assert uri == str(local.root / "catalog" / "video_catalog.parquet")
    assert local.get_bytes(TABLE) == b"table"


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a//b", "", ".meta/videos/a.mp4.json"])
def test_object_names_outside_the_root_or_hidden_are_refused(local: LocalOutputStore, name: str) -> None:
    with pytest.raises(ValueError):
        local.put_bytes(name, b"x")


def test_local_list_names_matches_prefixes_like_s3_and_skips_hidden_files(local: LocalOutputStore, video: Path) -> None:
    local.put_video(video, "a", {})
    for name in ["catalog/rows/a.json", "catalog/rows/b.json", "catalog/video_catalog.parquet"]:
        local.put_bytes(name, b"{}")
    assert local.list_names("catalog/rows/") == ["catalog/rows/a.json", "catalog/rows/b.json"]
    assert local.list_names("catalog/r") == ["catalog/rows/a.json", "catalog/rows/b.json"]
    assert local.list_names("") == [*local.list_names("catalog/"), "videos/a.mp4"]
    assert local.list_names("nothing/") == []


def test_local_uri_for_name_is_the_file_path(local: LocalOutputStore) -> None:
    assert local.uri_for_name(TABLE) == str(local.root / "catalog" / "video_catalog.parquet")


def test_local_copy_of_a_local_video_is_the_file_itself(local: LocalOutputStore, video: Path) -> None:
    stored = local.put_video(video, "clip-1", {})
    with local.local_copy(stored.uri) as path:
        assert path == Path(stored.uri)


def test_local_download_copies_the_video(local: LocalOutputStore, video: Path, tmp_path: Path) -> None:
    stored = local.put_video(video, "clip-1", {})
    assert local.download(stored.uri, tmp_path / "copy.mp4").read_bytes() == video.read_bytes()


# --- S3 store (real local S3 server) ------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_put_video_sets_content_type_and_metadata(s3: Any, s3_bucket: str, video: Path) -> None:
    store = output_store_for(f"s3://{s3_bucket}/run-1/", s3_client=s3)
    stored = store.put_video(video, "clip-1", {"workflow": "I2V_single"})
    data = video.read_bytes()
    assert stored == StoredObject(f"s3://{s3_bucket}/run-1/videos/clip-1.mp4", len(data), sha256(data))
    obj = s3.get_object(Bucket=s3_bucket, Key="run-1/videos/clip-1.mp4")
    assert obj["ContentType"] == "video/mp4"
    assert obj["Metadata"] == {"workflow": "I2V_single", "clip-id": "clip-1", "sha256": sha256(data)}
    assert obj["Body"].read() == data


@pytest.mark.s3
def test_s3_put_video_above_the_threshold_uses_multipart(s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(11 * MiB))
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = S3OutputStore(s3, s3_bucket, "run-1", transfer_config=config)
    stored = store.put_video(big, "big", {})
    head = s3.head_object(Bucket=s3_bucket, Key="run-1/videos/big.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag counts its parts: 5 + 5 + 1 MiB
    assert (head["ContentLength"], head["Metadata"]["sha256"]) == (11 * MiB, stored.sha256)


@pytest.mark.s3
def test_s3_put_video_below_the_threshold_is_one_put(s3: Any, s3_bucket: str, video: Path) -> None:
    S3OutputStore(s3, s3_bucket).put_video(video, "small", {})
    assert "-" not in s3.head_object(Bucket=s3_bucket, Key="videos/small.mp4")["ETag"]


@pytest.mark.s3
def test_s3_non_ascii_metadata_is_percent_encoded(s3: Any, s3_bucket: str, video: Path) -> None:
    store = S3OutputStore(s3, s3_bucket)
    store.put_video(video, "clip-1", {"manifest": "s3://m/café.csv"})
    assert store.metadata("clip-1")["manifest"] == "s3://m/caf%C3%A9.csv"


@pytest.mark.s3
def test_s3_exists_is_none_before_and_describes_the_video_after(s3: Any, s3_bucket: str, video: Path) -> None:
    store = S3OutputStore(s3, s3_bucket, "run-1")
    assert store.exists("clip-1") is None
    stored = store.put_video(video, "clip-1", {})
    assert store.exists("clip-1") == stored


@pytest.mark.s3
def test_s3_clip_ids_lists_stored_videos_only(s3: Any, s3_bucket: str, video: Path) -> None:
    store = S3OutputStore(s3, s3_bucket, "run-1")
    store.put_video(video, "a", {})
    store.put_video(video, "b", {})
    store.put_bytes(TABLE, b"table")
    S3OutputStore(s3, s3_bucket, "run-2").put_video(video, "other-run", {})
    assert store.clip_ids() == {"a", "b"}


@pytest.mark.s3
def test_s3_bytes_round_trip_and_absent_is_none(s3: Any, s3_bucket: str) -> None:
    store = S3OutputStore(s3, s3_bucket, "run-1")
    assert store.get_bytes(TABLE) is None
    assert store.put_bytes(TABLE, b"table") == f"s3://{s3_bucket}/run-1/catalog/video_catalog.parquet"
    assert store.get_bytes(TABLE) == b"table"


@pytest.mark.s3
def test_s3_list_names_lists_every_page_under_the_prefix(s3: Any, s3_bucket: str) -> None:
    store = S3OutputStore(s3, s3_bucket, "run-1")
    names = [f"catalog/rows/c{i:04d}.json" for i in range(1005)]  # more than one 1,000-key page
    for name in names:
        s3.put_object(Bucket=s3_bucket, Key=f"run-1/{name}", Body=b"{}")
    s3.put_object(Bucket=s3_bucket, Key="run-2/catalog/rows/other.json", Body=b"{}")
    assert store.list_names("catalog/rows/") == names
    assert store.uri_for_name(TABLE) == f"s3://{s3_bucket}/run-1/catalog/video_catalog.parquet"


@pytest.mark.s3
def test_s3_local_copy_is_downloaded_then_removed(s3: Any, s3_bucket: str, video: Path) -> None:
    store = S3OutputStore(s3, s3_bucket)
    stored = store.put_video(video, "clip-1", {})
    with store.local_copy(stored.uri) as path:
        assert path.read_bytes() == video.read_bytes()
    assert not path.exists()

"""s3watch against the real local S3 server: frontier listing, budgets, re-scan laps, drop-folder rules."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.s3watch import (
    Budget,
    EtagTracker,
    ListCursor,
    S3Object,
    classify,
    drop_row,
    folder_of,
    is_complete,
    is_manifest_key,
    list_folder,
    poll,
    signature,
    with_fast_timestamps,
)
from tests.fixtures.s3 import make_s3_client

pytestmark = pytest.mark.s3


def put_all(s3: Any, bucket: str, keys: list[str], body: bytes = b"x") -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=body), keys))


def everything(_obj: S3Object) -> bool:
    return True


def nothing(_obj: S3Object, _threshold: float) -> bool:
    return False


def test_frontier_lists_each_key_once_within_the_budget(s3: Any, s3_bucket: str) -> None:
    keys = [f"in/{i:04d}.bin" for i in range(230)]
    put_all(s3, s3_bucket, [*keys, "in/dir/", "other/ignored.bin"])
    budget = Budget(max_keys=100, page_size=40, max_items=1_000)
    cursor, seen, ticks = ListCursor(), [], 0
    while True:
        result = poll(s3, s3_bucket, "in/", cursor, budget, everything, nothing)
        ticks += 1
        assert result.listed <= budget.max_keys + budget.rescan_keys
        seen += [o.key for o in result.new]
        cursor = result.cursor
        if not result.new:
            break
    assert seen == sorted(keys)  # the "in/dir/" marker is skipped, nothing outside the prefix
    assert ticks == 4  # 231 keys at 100 per tick, then one empty tick
    assert cursor.after == "in/dir/"


def test_max_items_stops_the_frontier_at_the_last_item_taken(s3: Any, s3_bucket: str) -> None:
    put_all(s3, s3_bucket, [f"m/{i:02d}.csv" for i in range(10)])
    budget = Budget(max_items=3)
    first = poll(s3, s3_bucket, "m/", ListCursor(), budget, everything, nothing)
    assert [o.key for o in first.new] == ["m/00.csv", "m/01.csv", "m/02.csv"]
    assert first.cursor.after == "m/02.csv"
    second = poll(s3, s3_bucket, "m/", first.cursor, budget, everything, nothing)
    assert [o.key for o in second.new] == ["m/03.csv", "m/04.csv", "m/05.csv"]


def test_rescan_finds_overwrites_and_late_keys_behind_the_frontier(s3: Any, s3_bucket: str) -> None:
    put_all(s3, s3_bucket, [f"m/{i:02d}.csv" for i in range(1, 30)])
    tracker = EtagTracker(max_tracked=100)
    budget = Budget(rescan_keys=10)

    def tick(cursor: ListCursor) -> tuple[list[str], ListCursor]:
        result = poll(s3, s3_bucket, "m/", cursor, budget, everything, tracker.changed)
        for obj in [*result.changed, *result.new]:
            tracker.record(obj.key, obj.etag)
        return [o.key for o in result.changed], result.cursor

    changed, cursor = tick(ListCursor())
    assert changed == []
    for _ in range(4):  # a lap is 3 pages of 10; nothing changed, nothing reported
        changed, cursor = tick(cursor)
        assert changed == []
    s3.put_object(Bucket=s3_bucket, Key="m/05.csv", Body=b"new content")  # overwrite behind the frontier
    s3.put_object(Bucket=s3_bucket, Key="m/00.csv", Body=b"late")  # new key sorting before the frontier
    found: list[str] = []
    for _ in range(4):  # within one lap (3 ticks) plus the tick in progress
        changed, cursor = tick(cursor)
        found += changed
    assert sorted(found) == ["m/00.csv", "m/05.csv"]


def test_etag_tracker_stays_bounded_and_evicts_least_recently_changed() -> None:
    tracker = EtagTracker(max_tracked=3)
    for key in ["a", "b", "c"]:
        tracker.record(key, f"etag-{key}")
    tracker.record("a", "etag-a2")  # a changed: now the most recent
    tracker.record("d", "etag-d")
    assert list(tracker.digests) == ["c", "a", "d"]
    assert tracker.is_current("a", "etag-a2") and not tracker.is_current("a", "etag-a")
    old = S3Object("b", "etag-b", last_modified=100.0, size=1)
    assert tracker.changed(old, threshold=200.0) is False  # untracked, not modified since the lap threshold
    assert tracker.changed(old, threshold=50.0) is True


def test_manifest_keys_and_drop_folders_by_name() -> None:
    assert is_manifest_key("manifests/2025/batch.CSV", "manifests/")
    assert is_manifest_key("manifests/b.jsonl", "manifests/")
    assert not is_manifest_key("manifests/_archive/b.jsonl", "manifests/")
    assert not is_manifest_key("manifests/notes.txt", "manifests/")
    assert folder_of("incoming/anna/face.png", "incoming/") == "anna"
    assert folder_of("incoming/readme.txt", "incoming/") is None
    assert folder_of("incoming/_manifests/anna.jsonl", "incoming/") is None


def obj(key: str, etag: str = "e") -> S3Object:
    return S3Object(key, etag, last_modified=0.0, size=1)


def test_a_folder_with_two_audio_files_is_multi_person_sorted_by_name() -> None:
    prefix = "in/duo/"
    contents = classify([obj(f"{prefix}b.wav"), obj(f"{prefix}studio.mp4"), obj(f"{prefix}a.mp3")], prefix)
    assert contents.has_media and not contents.ready
    row = drop_row("bkt", "duo", contents, {"prompt": "two people talking", "width": 640})
    assert row["input_type"] == "video" and row["person_count"] == "multi"
    assert row["video_path"] == "s3://bkt/in/duo/studio.mp4"
    assert (row["wav_path"], row["wav_path_2"]) == ("s3://bkt/in/duo/a.mp3", "s3://bkt/in/duo/b.wav")
    assert row["prompt"] == "two people talking" and row["width"] == 640


def test_mask_images_in_a_two_speaker_folder_place_the_speakers() -> None:
    prefix = "in/duo/"
    media = [obj(f"{prefix}face.png"), obj(f"{prefix}a.wav"), obj(f"{prefix}b.wav")]
    contents = classify([*media, obj(f"{prefix}MASK_2.png"), obj(f"{prefix}mask_1.jpg")], prefix)
    assert contents.has_media and contents.visual == media[0]
    row = drop_row("bkt", "duo", contents, {})
    assert (row["mask_path"], row["mask_path_2"]) == ("s3://bkt/in/duo/mask_1.jpg", "s3://bkt/in/duo/MASK_2.png")
    with pytest.raises(ClipInputError, match="mask_path needs the other speaker's mask"):
        drop_row("bkt", "duo", classify([*media, obj(f"{prefix}mask_1.png")], prefix), {})


def test_completion_needs_media_and_a_marker_or_quiet() -> None:
    prefix = "in/anna/"
    only_image = classify([obj(f"{prefix}face.PNG"), obj(f"{prefix}_READY")], prefix)
    assert only_image.ready and not only_image.has_media
    assert not is_complete(only_image, unchanged_for=1e9, quiet_seconds=0)
    media = [obj(f"{prefix}face.png"), obj(f"{prefix}speech.wav")]
    assert not is_complete(classify(media, prefix), unchanged_for=10, quiet_seconds=300)
    assert is_complete(classify(media, prefix), unchanged_for=300, quiet_seconds=300)
    assert is_complete(classify([*media, obj(f"{prefix}_READY")], prefix), unchanged_for=0, quiet_seconds=300)
    assert signature(media) != signature([obj(f"{prefix}face.png"), obj(f"{prefix}speech.wav", "e2")])


def test_ambiguous_folders_and_folder_owned_settings_are_refused() -> None:
    prefix = "in/x/"
    two_faces = classify([obj(f"{prefix}a.png"), obj(f"{prefix}b.jpg"), obj(f"{prefix}s.wav")], prefix)
    assert two_faces.problems == ["2 portraits/videos, expected one"] and not two_faces.has_media
    three = classify([obj(f"{prefix}a.png"), *(obj(f"{prefix}{i}.wav") for i in range(3))], prefix)
    assert three.problems == ["3 audio files, expected one or two"]
    fine = classify([obj(f"{prefix}a.png"), obj(f"{prefix}s.wav")], prefix)
    with pytest.raises(ClipInputError, match="may not set wav_path"):
        drop_row("bkt", "x", fine, {"wav_path": "s3://elsewhere/a.wav"})
    with pytest.raises(ClipInputError, match="width"):
        drop_row("bkt", "x", fine, {"width": 5})  # validated as a ClipRequest


def test_list_folder_reads_one_folder_only(s3: Any, s3_bucket: str) -> None:
    put_all(s3, s3_bucket, ["in/anna/face.png", "in/anna/s.wav", "in/anna2/face.png"])
    objects, too_big = list_folder(s3, s3_bucket, "in/anna/")
    assert [o.key for o in objects] == ["in/anna/face.png", "in/anna/s.wav"] and not too_big
    _, too_big = list_folder(s3, s3_bucket, "in/anna/", max_keys=1)
    assert too_big


def test_fast_timestamps_read_listings_and_headers_as_botocore_does(s3: Any, s3_endpoint: str, s3_bucket: str) -> None:
    s3.put_object(Bucket=s3_bucket, Key="in/a.csv", Body=b"x")
    fast = with_fast_timestamps(make_s3_client(s3_endpoint))
    # Installed: a botocore that moved its parser factory would leave the slow parser in place unnoticed.
    assert "timestamp_parser" in fast._endpoint._response_parser_factory._defaults
    [listed] = fast.list_objects_v2(Bucket=s3_bucket, Prefix="in/")["Contents"]
    [expected] = s3.list_objects_v2(Bucket=s3_bucket, Prefix="in/")["Contents"]
    assert listed["LastModified"] == expected["LastModified"] and listed["LastModified"].utcoffset() is not None
    head = fast.head_object(Bucket=s3_bucket, Key="in/a.csv")  # an RFC 1123 header: botocore's parser reads it
    assert head["LastModified"] == s3.head_object(Bucket=s3_bucket, Key="in/a.csv")["LastModified"]

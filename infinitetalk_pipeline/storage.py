"""Where finished videos and the catalog go: a local directory or an S3 prefix, written atomically.

Layout under the root (a directory or `s3://bucket/prefix/`):

    videos/<clip_id>.mp4                 one per clip; a re-render replaces it
    registry/clips/<shard>.json          the registered requests (registry.py)
    catalog/                             the catalog's rows and Parquet dataset (catalog.py)

A reader never sees a partial video. Locally a video is copied to a hidden temporary name in the same
directory, flushed to disk and renamed over the final name; on S3 an object (multipart or not) becomes visible
only when its upload completes. Locally the user metadata and the sha256 go to a sidecar under the hidden
`.meta/` folder so `exists` need not re-hash the video; on S3 they are the object's metadata. Names starting
with `.` are the store's own (temporary files, sidecars): callers cannot use them and listings skip them.

`verified_copy` proves a stored video is still the one a render recorded (size, then the sha256 of its bytes)
before a render is skipped: a truncated, corrupted or replaced video raises `StoredVideoChanged` with the reason.

`update_many` is the read-modify-write that concurrent writers cannot lose (the clip registry's shards): locally
under an exclusive lock on the objects' folder (`.locks/`), on S3 with conditional PUTs (`If-Match` the ETag read,
`If-None-Match: *` for a new object) retried after losing to another writer.

An S3 root whose bucket does not exist raises `OutputRootError` naming the root from the first read, write, list or
delete (a HEAD answers a bare 404, which cannot tell a missing bucket from a missing object).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Concatenate, ParamSpec, Protocol, TypeVar, cast
from urllib.parse import quote

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from infinitetalk_pipeline.digest import file_sha256
from infinitetalk_pipeline.errors import OutputRootError
from infinitetalk_pipeline.spec import normalise_clip_id

VIDEO_DIR = "videos"
VIDEO_CONTENT_TYPE = "video/mp4"
_CHUNK = 1024 * 1024
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_PRINTABLE_BUT_PERCENT = "".join(chr(c) for c in range(32, 127) if chr(c) != "%")
_UPDATE_ATTEMPTS = 30  # conditional PUTs of one object that lost to another writer before giving up
_P = ParamSpec("_P")
# A read-modify-write of one object: the current bytes (None when absent) -> the new bytes, or None to keep them.
# It may be called more than once (after losing to a concurrent writer), so it must not keep state across calls.
Change = Callable[[bytes | None], bytes | None]
_R = TypeVar("_R")


@dataclass(frozen=True)
class StoredObject:
    """A stored video: where, how big, its sha256 (None only for an S3 object written by someone else)."""

    uri: str
    size_bytes: int
    sha256: str | None


class StoredVideoChanged(Exception):
    """The stored video is not the one its render recorded: missing, another size or other bytes (the message
    says which)."""


class OutputStore(Protocol):
    """The output root. `clip_id`s must already be normalised (`spec.normalise_clip_id`)."""

    root_uri: str

    def uri_for(self, clip_id: str) -> str: ...

    def put_video(self, local_path: Path, clip_id: str, metadata: dict[str, str]) -> StoredObject: ...

    def exists(self, clip_id: str) -> StoredObject | None: ...

    def verified_copy(
        self, clip_id: str, size_bytes: int, sha256: str, scratch: Path | None = None
    ) -> contextlib.AbstractContextManager[Path]: ...

    def metadata(self, clip_id: str) -> dict[str, str] | None: ...

    def clip_ids(self) -> set[str]: ...

    def put_bytes(self, name: str, data: bytes) -> str: ...

    def put_many(self, items: Mapping[str, bytes]) -> None: ...

    def update_many(self, changes: Mapping[str, Change]) -> set[str]: ...

    def open_ranged(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def get_bytes(self, name: str) -> bytes | None: ...

    def delete(self, name: str) -> None: ...

    def delete_many(self, names: Iterable[str]) -> None: ...

    def uri_for_name(self, name: str) -> str: ...

    def list_names(self, prefix: str) -> list[str]: ...

    def download(self, uri: str, dest: Path) -> Path: ...

    def local_copy(self, uri: str) -> contextlib.AbstractContextManager[Path]: ...


def output_store_for(uri: str, s3_client: Any = None, transfer_config: TransferConfig | None = None) -> OutputStore:
    """The store for an output root: a directory (`/data/out`, `file:///data/out`) or `s3://bucket/prefix/`."""
    if uri.startswith("s3://"):
        if s3_client is None:
            raise ValueError(f"output root {uri} is on S3: pass an S3 client")
        bucket, prefix = parse_s3_uri(uri)
        return S3OutputStore(s3_client, bucket, prefix, transfer_config)
    return LocalOutputStore(Path(uri.removeprefix("file://")))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def _check_clip_id(clip_id: str) -> str:
    # The id becomes a path or key: refuse rather than rewrite, so nothing lands under an unasked name.
    if normalise_clip_id(clip_id) != clip_id:
        raise ValueError(f"clip id {clip_id!r} is not normalised; use spec.normalise_clip_id first")
    return clip_id


def _check_name(name: str) -> str:
    if not name or any(part == "" or part.startswith(".") for part in name.split("/")):
        raise ValueError(f"object name {name!r}: use a relative path whose parts do not start with '.'")
    return name


def _check_metadata(metadata: dict[str, str]) -> None:
    for key in metadata:
        if not _METADATA_KEY.match(key):
            raise ValueError(f"metadata key {key!r}: use lower-case letters, digits and '-'")


class LocalOutputStore:
    """Output root on a local (or mounted) file system."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.root_uri = str(self.root)

    def path_for(self, clip_id: str) -> Path:
        return self.root / VIDEO_DIR / f"{_check_clip_id(clip_id)}.mp4"

    def uri_for(self, clip_id: str) -> str:
        return str(self.path_for(clip_id))

    def put_video(self, local_path: Path, clip_id: str, metadata: dict[str, str]) -> StoredObject:
        _check_metadata(metadata)
        final = self.path_for(clip_id)
        digest = hashlib.sha256()

        def copy(out: IO[bytes]) -> None:
            with Path(local_path).open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

        # The sidecar goes first, recording the size and mtime the video will have (a rename keeps both):
        # a crash between the two renames leaves a sidecar that does not match, so `exists` re-hashes.
        tmp = _write_temp(final, copy)
        try:
            stat = tmp.stat()
            sidecar = {
                "clip-id": clip_id,
                "sha256": digest.hexdigest(),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "metadata": metadata,
            }
            _atomic_write(self._sidecar(final), lambda out: out.write(json.dumps(sidecar).encode()))
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return StoredObject(str(final), stat.st_size, digest.hexdigest())

    def exists(self, clip_id: str) -> StoredObject | None:
        path = self.path_for(clip_id)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        sidecar = self._matching_sidecar(path, stat)
        sha256 = sidecar["sha256"] if sidecar else file_sha256(path)
        return StoredObject(str(path), stat.st_size, sha256)

    @contextlib.contextmanager
    def verified_copy(self, clip_id: str, size_bytes: int, sha256: str, scratch: Path | None = None) -> Iterator[Path]:
        """The stored video itself (no copy: `scratch` is not used), once proven to be the recorded one: its size
        (a stat), then the sha256 of its bytes; raises StoredVideoChanged. The sidecar's sha256 is not trusted here:
        it is keyed on size and mtime, which disk corruption never changes and an in-place edit can keep
        (`touch -r`, a restored backup)."""
        path = self.path_for(clip_id)
        try:
            _check_size(path.stat().st_size, size_bytes)  # a stat: a truncated video costs no read
            _check_sha256(file_sha256(path), sha256)
        except FileNotFoundError as exc:
            raise StoredVideoChanged(f"no video at {path}") from exc
        except OSError as exc:
            raise StoredVideoChanged(f"unreadable: {exc}") from exc
        yield path

    def metadata(self, clip_id: str) -> dict[str, str] | None:
        """The metadata given to `put_video`, when the video and its matching sidecar are present."""
        path = self.path_for(clip_id)
        try:
            sidecar = self._matching_sidecar(path, path.stat())
        except FileNotFoundError:
            return None
        return {**sidecar["metadata"], "clip-id": sidecar["clip-id"], "sha256": sidecar["sha256"]} if sidecar else None

    def clip_ids(self) -> set[str]:
        return _clip_ids(self.list_names(f"{VIDEO_DIR}/"))

    def put_bytes(self, name: str, data: bytes) -> str:
        path = self.root / _check_name(name)
        _atomic_write(path, lambda out: out.write(data))
        return str(path)

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Many small objects, each replaced atomically, with one sync for the batch instead of one per file
        (registering 10,000 clips: about 1 s instead of 14)."""
        renames = []
        folders: set[Path] = set()
        try:
            for name, data in items.items():
                final = self.root / _check_name(name)
                if final.parent not in folders:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(final.parent)
                tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
                tmp.write_bytes(data)
                renames.append((tmp, final))
            os.sync()
        except BaseException:
            for tmp, _ in renames:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in renames:
            os.replace(tmp, final)
        for folder in folders:
            _fsync_dir(folder)

    def update_many(self, changes: Mapping[str, Change]) -> set[str]:
        """Apply each change to its object under an exclusive lock on the objects' folders (one lock file per
        folder, not per object: a registration changes a thousand shards of one folder); the names written.
        Written objects are replaced atomically, with one sync for the batch (as `put_many`)."""
        folders = sorted({name.rpartition("/")[0] for name in map(_check_name, changes)})
        with contextlib.ExitStack() as locks:
            for folder in folders:  # one order for every writer: two batches never wait on each other
                locks.enter_context(self._locked(folder or "_root"))
            updates = {}
            for name, change in changes.items():
                current = self.get_bytes(name)
                new = change(current)
                if new is not None and new != current:
                    updates[name] = new
            if updates:
                self.put_many(updates)
            return set(updates)

    @contextlib.contextmanager
    def open_ranged(self, name: str) -> Iterator[BinaryIO]:
        """The object opened for reading, seekable (a Parquet reader then reads only the columns it needs)."""
        try:
            with (self.root / _check_name(name)).open("rb") as handle:
                yield handle
        except FileNotFoundError as exc:
            raise ObjectMissing(name) from exc

    @contextlib.contextmanager
    def _locked(self, folder: str) -> Iterator[None]:
        lock = self.root / ".locks" / f"{folder}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
            yield

    def uri_for_name(self, name: str) -> str:
        return str(self.root / _check_name(name))

    def list_names(self, prefix: str) -> list[str]:
        """Names under the root that start with `prefix` (as on S3), sorted; hidden ones skipped."""
        folder = prefix.rpartition("/")[0]
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root / _check_name(folder) if folder else self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath).relative_to(self.root)
            names += [(base / f).as_posix() for f in filenames if not f.startswith(".")]
        return sorted(n for n in names if n.startswith(prefix))

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / _check_name(name)).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.root / _check_name(name)).unlink(missing_ok=True)

    def delete_many(self, names: Iterable[str]) -> None:
        for name in names:
            self.delete(name)

    def download(self, uri: str, dest: Path) -> Path:
        shutil.copyfile(self._own_path(uri), dest)
        return dest

    @contextlib.contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """The file itself: no copy is needed on a local root."""
        yield self._own_path(uri)

    def _own_path(self, uri: str) -> Path:
        path = Path(uri.removeprefix("file://")).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{uri} is not under the output root {self.root}")
        return path

    def _sidecar(self, video: Path) -> Path:
        return self.root / ".meta" / VIDEO_DIR / f"{video.name}.json"

    def _matching_sidecar(self, video: Path, stat: os.stat_result) -> dict[str, Any] | None:
        """The sidecar, if it describes this very file (same size and modification time)."""
        try:
            sidecar = json.loads(self._sidecar(video).read_text())
            matches = (sidecar["size"], sidecar["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return sidecar if matches else None


def _write_temp(final: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a hidden temporary file beside `final`, flushed to disk; the caller renames it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("xb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _atomic_write(final: Path, write: Callable[[IO[bytes]], object]) -> None:
    tmp = _write_temp(final, write)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _bucket_must_exist(
    method: Callable[Concatenate[S3OutputStore, _P], _R],
) -> Callable[Concatenate[S3OutputStore, _P], _R]:
    """A missing bucket is the whole root's configuration error, not one object's: raise an OutputRootError naming
    the root (never retried) instead of botocore's error from whichever call met it first."""

    @functools.wraps(method)
    def call(store: S3OutputStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(store, *args, **kwargs)
        except (ClientError, S3UploadFailedError) as exc:
            if _error_code(exc) != "NoSuchBucket":
                raise
            reason = f"bucket {store.bucket!r} does not exist (NoSuchBucket)"
            raise OutputRootError(f"output root {store.root_uri}: {reason}") from None

    return call


class S3OutputStore:
    """Output root under an S3 prefix. Works with any S3-compatible server the boto3 client points at."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", transfer_config: TransferConfig | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # boto3's defaults: multipart from 8 MiB in 8 MiB parts, read from disk part by part.
        self.transfer_config = transfer_config or TransferConfig()
        self.root_uri = f"s3://{bucket}/{self.prefix}/" if self.prefix else f"s3://{bucket}/"

    def key_for(self, clip_id: str) -> str:
        return self._key(f"{VIDEO_DIR}/{_check_clip_id(clip_id)}.mp4")

    def uri_for(self, clip_id: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(clip_id)}"

    @_bucket_must_exist
    def put_video(self, local_path: Path, clip_id: str, metadata: dict[str, str]) -> StoredObject:
        _check_metadata(metadata)
        key = self.key_for(clip_id)
        local_path = Path(local_path)
        sha256 = file_sha256(local_path)
        size = local_path.stat().st_size
        meta = {k: _ascii(v) for k, v in metadata.items()} | {"clip-id": clip_id, "sha256": sha256}
        self.client.upload_file(
            str(local_path),
            self.bucket,
            key,
            ExtraArgs={"ContentType": VIDEO_CONTENT_TYPE, "Metadata": meta},
            Config=self.transfer_config,
        )
        return StoredObject(f"s3://{self.bucket}/{key}", size, sha256)

    def exists(self, clip_id: str) -> StoredObject | None:
        key = self.key_for(clip_id)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        sha256 = head.get("Metadata", {}).get("sha256")
        return StoredObject(f"s3://{self.bucket}/{key}", int(head["ContentLength"]), sha256)

    @contextlib.contextmanager
    def verified_copy(self, clip_id: str, size_bytes: int, sha256: str, scratch: Path | None = None) -> Iterator[Path]:
        """A temporary local copy of the stored video (in `scratch`, a folder the caller owns, else a temporary
        folder), proven to be the recorded one; removed on exit. Raises StoredVideoChanged.

        A HEAD first decides, with no download, an object that is missing, of another size, or whose sha256 metadata
        (written by every `put_video`; S3 metadata changes only with a new write) names other bytes. The ETag is not
        used: it is the MD5 of the bytes only for single-part uploads without SSE-KMS/SSE-C. What proves the content
        is the sha256 of the downloaded copy (the caller reads that copy anyway, to re-check the video): a HEAD cannot
        tell an upload that kept the metadata, or a foreign one that has none."""
        key = self.key_for(clip_id)
        uri = f"s3://{self.bucket}/{key}"
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                raise StoredVideoChanged(f"no object at {uri}") from exc
            raise  # denied or unavailable: a store error (retried), not a reason to pay for a render
        _check_size(int(head["ContentLength"]), size_bytes)
        claimed = head.get("Metadata", {}).get("sha256")
        if claimed and claimed != sha256:
            raise StoredVideoChanged(f"replaced: its sha256 metadata {claimed[:16]}... != {sha256[:16]}...")
        with contextlib.ExitStack() as stack:
            folder = scratch or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="infinitetalk-")))
            copy = folder / f"{clip_id}.mp4"
            stack.callback(copy.unlink, missing_ok=True)
            _check_sha256(self._download_sha256(key, copy), sha256)
            yield copy

    def _download_sha256(self, key: str, dest: Path) -> str:
        try:
            self.client.download_file(self.bucket, key, str(dest), Config=self.transfer_config)
        except ClientError as exc:
            if _is_missing(exc):  # deleted since the HEAD
                raise StoredVideoChanged(f"no object at s3://{self.bucket}/{key}") from exc
            raise
        return file_sha256(dest)

    def metadata(self, clip_id: str) -> dict[str, str] | None:
        """The object's user metadata (including `clip-id` and `sha256`), or None when it is absent."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key_for(clip_id))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return dict(head.get("Metadata", {}))

    def clip_ids(self) -> set[str]:
        return _clip_ids(self.list_names(f"{VIDEO_DIR}/"))

    @_bucket_must_exist
    def put_bytes(self, name: str, data: bytes) -> str:
        key = self._key(_check_name(name))
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def put_many(self, items: Mapping[str, bytes]) -> None:
        # One PUT per object (each atomic), overlapped: an object store answers them in parallel.
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda item: self.put_bytes(*item), items.items()))

    def update_many(self, changes: Mapping[str, Change]) -> set[str]:
        """Apply each change to its object with conditional PUTs, objects in parallel; the names written."""
        with ThreadPoolExecutor(max_workers=16) as pool:
            done = pool.map(lambda item: (item[0], self._update(*item)), changes.items())
            return {name for name, wrote in done if wrote}

    @contextlib.contextmanager
    def open_ranged(self, name: str) -> Iterator[BinaryIO]:
        """The object as a seekable file that GETs only the byte ranges read (a Parquet reader then fetches only
        the footer and the column chunks it needs, not the whole object)."""
        key = self._key(_check_name(name))
        try:
            size = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectMissing(name) from exc
            raise
        with io.BufferedReader(_RangeReader(self.client, self.bucket, key, size), buffer_size=256 * 1024) as handle:
            yield cast(BinaryIO, handle)

    @_bucket_must_exist
    def _update(self, name: str, change: Change) -> bool:
        key = self._key(_check_name(name))
        for attempt in range(_UPDATE_ATTEMPTS):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                current, condition = response["Body"].read(), {"IfMatch": response["ETag"]}
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
                current, condition = None, {"IfNoneMatch": "*"}
            new = change(current)
            if new is None or new == current:
                return False
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=new, **condition)
                return True
            except ClientError as exc:
                # 412: another writer changed it since our read; 409: its write was in flight. Read again.
                if _error_code(exc) not in {"PreconditionFailed", "ConditionalRequestConflict"}:
                    raise
            time.sleep(random.uniform(0, 0.02 * 2 ** min(attempt, 5)))
        raise RuntimeError(f"s3://{self.bucket}/{key}: still changed by other writers after {_UPDATE_ATTEMPTS} tries")

    def uri_for_name(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(_check_name(name))}"

    @_bucket_must_exist
    def list_names(self, prefix: str) -> list[str]:
        """Names under the root starting with `prefix`, sorted (S3 lists keys in order), all pages."""
        root = self._key("")
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
            # Keys ending in '/' are folder markers that some S3-compatible servers leave behind.
            names += [o["Key"][len(root) :] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return names

    @_bucket_must_exist
    def get_bytes(self, name: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(_check_name(name)))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return response["Body"].read()

    @_bucket_must_exist
    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(_check_name(name)))  # no error when missing

    @_bucket_must_exist
    def delete_many(self, names: Iterable[str]) -> None:
        keys = [{"Key": self._key(_check_name(name))} for name in names]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise RuntimeError(f"could not delete s3://{self.bucket}/{first['Key']}: {first.get('Message')}")

    def download(self, uri: str, dest: Path) -> Path:
        bucket, key = parse_s3_uri(uri)
        self.client.download_file(bucket, key, str(dest), Config=self.transfer_config)
        return dest

    @contextlib.contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """A temporary local copy of a stored object, removed on exit."""
        with tempfile.TemporaryDirectory(prefix="infinitetalk-") as tmp:
            yield self.download(uri, Path(tmp) / Path(parse_s3_uri(uri)[1]).name)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


class ObjectMissing(Exception):
    """The named object is not in the store (deleted since it was listed, say)."""


class _RangeReader(io.RawIOBase):
    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        end = min(self._position + len(buffer), self._size)
        if end <= self._position:
            return 0
        try:
            body = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._position}-{end - 1}"
            )["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectMissing(self._key) from exc
            raise
        buffer[: len(body)] = body
        self._position += len(body)
        return len(body)


def _check_size(size: int, recorded: int) -> None:
    if size != recorded:
        raise StoredVideoChanged(f"size {size} != {recorded} bytes")


def _check_sha256(sha256: str, recorded: str) -> None:
    if sha256 != recorded:
        raise StoredVideoChanged(f"sha256 {sha256[:16]}... != {recorded[:16]}... (same size, other bytes)")


def _clip_ids(video_names: list[str]) -> set[str]:
    start = len(VIDEO_DIR) + 1
    return {n[start : -len(".mp4")] for n in video_names if n.endswith(".mp4") and "/" not in n[start:]}


def _ascii(value: str) -> str:
    # S3 user metadata travels in HTTP headers, which carry ASCII only: percent-encode anything else.
    return value if value.isascii() else quote(value, safe=_PRINTABLE_BUT_PERCENT)


def _error_code(exc: ClientError | S3UploadFailedError) -> str | None:
    # upload_file raises S3UploadFailedError in place of the ClientError, which stays its context
    error = exc.__context__ if isinstance(exc, S3UploadFailedError) else exc
    return error.response.get("Error", {}).get("Code") if isinstance(error, ClientError) else None


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}

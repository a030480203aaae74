"""A request's media field -> a local file of a known format: local path, http(s) URL, `s3://` URI or base64.

Every source is checked before it is read (allowed roots, URL schemes, public addresses only, size caps) and
every file is identified by its bytes, not its name. Downloads land in a content-addressed cache: blobs are
stored by sha256 (under their real extension, which ComfyUI's loaders go by), and a small index maps each URL
or S3 object, with its ETag/Last-Modified, to its blob. A portrait shared by 500 clips is downloaded once;
later runs revalidate it with one conditional request (HTTP 304 / S3 If-None-Match).

Two sizes bound an input: the fetch limit, and for the inputs uploaded to the workers as fetched (portrait,
speech) the workers' upload limit (ComfyUI's `--max-upload-size`), so an input a worker would refuse with HTTP
413 at render time is refused here, naming the clip and field. Base64 is decoded a block at a time into the cache:
the request's string is the only full-size copy. The cache is kept under `CacheLimits` (size, age) by `evict`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from infinitetalk_pipeline.digest import file_sha256
from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.media.sniff import AUDIO_CAPABLE_VIDEO, MediaError, describe, info
from infinitetalk_pipeline.redact import redact_text, redact_url
from infinitetalk_pipeline.spec import MediaRef, MediaRole

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MB = 1 << 20  # ComfyUI's --max-upload-size counts MB of 2**20 bytes
COMFYUI_MAX_UPLOAD_MB = 100  # ComfyUI's default --max-upload-size
# The upload limit covers the whole multipart request: room for the form around the file (its headers, the
# subfolder, type and overwrite fields: well under 1 KiB).
_FORM_ROOM = 4096
# Inputs uploaded to the workers as fetched; the source video and the masks are conformed first (render.py).
_UPLOADED_AS_FETCHED: frozenset[MediaRole] = frozenset({"image", "audio", "audio_2"})
_B64_BLOCK = 1 << 20  # base64 characters decoded at a time
_B64_URLSAFE = bytes.maketrans(b"-_", b"+/")
_ASCII_WHITESPACE = b" \t\n\r\v\f"


@dataclass(frozen=True)
class SourcePolicy:
    """What a request may point at. The defaults suit a service that takes requests from users."""

    allowed_roots: tuple[Path, ...] = ()  # local paths must resolve under one of these; none: no local paths
    allow_private_hosts: bool = False  # loopback, private, link-local (cloud metadata) addresses
    max_bytes: int = 512 * _MB
    # The workers' `--max-upload-size` in bytes (0: none): portraits and speech are uploaded as fetched.
    max_upload_bytes: int = COMFYUI_MAX_UPLOAD_MB * _MB
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # between two reads
    total_timeout: float = 600.0  # a whole download: a server dribbling bytes never trips the read timeout
    url_schemes: frozenset[str] = frozenset({"http", "https", "s3"})
    max_redirects: int = 5


@dataclass(frozen=True)
class FetchedMedia:
    path: Path
    digest: str | None  # sha256 hex; None: read from the file the first time `sha256` is asked for
    format: str  # from the bytes: see media/sniff.py
    size_bytes: int
    source: str  # where it came from: a path, a URL, an s3:// URI or "base64"; credentials masked (see __post_init__)

    def __post_init__(self) -> None:
        # `source` describes the input to people and the catalog and is never fetched again: no credentials in it.
        object.__setattr__(self, "source", redact_url(self.source))

    @property
    def sha256(self) -> str:
        """The file's sha256. A local input is hashed only when a render needs it (its fingerprint, its upload):
        measuring speech (clip_timing, the estimate) reads the header alone."""
        if self.digest is None:
            object.__setattr__(self, "digest", file_sha256(self.path))
        assert self.digest is not None
        return self.digest

    @property
    def kind(self) -> str:
        return info(self.format).kind

    @property
    def extension(self) -> str:
        """The real extension (a local `.wav` that holds an MP3 is `.mp3`): name uploads with it."""
        return info(self.format).extension


@dataclass(frozen=True)
class CacheLimits:
    """How much of the fetch cache is kept (0: no limit). Blobs unused for `max_age_seconds` go, and the least
    recently used go first while the blobs take more than `max_bytes`. Nothing used in the last
    `keep_recent_seconds` is removed: a fetched input may wait for its upload while a worker finishes other clips
    (up to a render deadline, 3 h by default), and a download in progress is that recent too. Eviction runs at most
    once per `every_seconds` among all the processes that share the cache."""

    max_bytes: int = 0
    max_age_seconds: float = 0
    keep_recent_seconds: float = 6 * 3600
    every_seconds: float = 600


class _Refused(Exception):
    """A source broke the policy or could not be read; the message is the user-facing reason."""


@dataclass(frozen=True)
class _Limit:
    """A size cap on an input, and how a refusal names it."""

    max_bytes: int
    name: str

    def check(self, size: int) -> None:
        if size > self.max_bytes:
            raise self.refusal(_size(size))

    def refusal(self, size: str) -> _Refused:
        return _Refused(f"{size}: larger than {self.name}")


@dataclass
class _Download:
    """A file being written into the cache's temporary folder, hashed and size-capped as it arrives; removed when
    the writing fails."""

    path: Path
    limit: _Limit
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        try:
            with open(self.path, "wb") as f:
                for chunk in chunks:
                    self.size += len(chunk)
                    if self.size > self.limit.max_bytes:
                        raise self.limit.refusal(f"more than {self.limit.max_bytes} bytes")
                    self.digest.update(chunk)
                    f.write(chunk)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise


class MediaFetcher:
    """Resolves `MediaRef`s to local files under `policy`, caching downloads in `cache_dir`.

    One fetcher also remembers what it fetched, so a run asks the network about each source once. With
    `cache_limits`, storing a download also evicts what the limits say must go (at most once per
    `every_seconds`).
    """

    def __init__(
        self,
        policy: SourcePolicy,
        cache_dir: Path,
        s3_client: Any | None = None,
        cache_limits: CacheLimits | None = None,
    ) -> None:
        self.policy = policy
        self.cache_dir = Path(cache_dir)
        self.s3_client = s3_client
        self.cache_limits = cache_limits
        self._roots = tuple(Path(r).resolve() for r in policy.allowed_roots)
        self._seen: dict[str, FetchedMedia] = {}
        for sub in ("blobs", "sources", "tmp"):
            (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)

    def fetch(self, ref: MediaRef, clip_id: str | None = None) -> FetchedMedia:
        """The local file for `ref`, its format checked against the role. Errors are ClipInputErrors naming
        the clip and `ref.field`; a portrait or speech track larger than the workers accept is refused here."""
        limit = self._limit(ref.role)
        try:
            media = self._fetch(ref, limit)
            _check_role(ref.role, media)
            limit.check(media.size_bytes)  # a remembered or cached file may have been fetched for another role
        except (_Refused, MediaError) as exc:
            raise ClipInputError(clip_id, ref.field, str(exc)) from None
        return media

    def check_upload(self, media: FetchedMedia, clip_id: str | None, field: str) -> None:
        """Raise a ClipInputError naming the clip and `field` when `media`, a file made from an input (a conformed
        video), is larger than the workers accept: refused before any upload, not with HTTP 413 at render time."""
        upload = self._upload_limit()
        try:
            if upload is not None:
                upload.check(media.size_bytes)
        except _Refused as exc:
            raise ClipInputError(clip_id, field, str(exc)) from None

    def _limit(self, role: MediaRole) -> _Limit:
        """The fetch limit, or for an input uploaded as fetched the workers' upload limit when that is smaller."""
        fetch = _Limit(self.policy.max_bytes, f"the {self.policy.max_bytes} byte limit")
        upload = self._upload_limit()
        if role in _UPLOADED_AS_FETCHED and upload is not None and upload.max_bytes < fetch.max_bytes:
            return upload
        return fetch

    def _upload_limit(self) -> _Limit | None:
        upload = self.policy.max_upload_bytes
        if upload <= 0:
            return None
        return _Limit(
            upload - _FORM_ROOM,
            f"the workers' upload limit of {upload / _MB:g} MB (ComfyUI's --max-upload-size, which also counts "
            "the upload's form): make the file smaller, or raise that limit on the workers and in the "
            "pipeline's settings",
        )

    def _fetch(self, ref: MediaRef, limit: _Limit) -> FetchedMedia:
        if ref.kind == "base64":
            return self._from_base64(ref.value, limit)  # not stripped: that could copy a 200 MB string
        value = ref.value.strip()
        scheme = urlsplit(value).scheme.lower() if "://" in value else ""
        if scheme and scheme not in self.policy.url_schemes:
            raise _Refused(
                f"URL scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(self.policy.url_schemes))})"
            )
        if scheme == "s3":
            return self._remembered(value, lambda uri: self._from_s3(uri, limit))
        if ref.kind == "path":
            if scheme:
                raise _Refused(f"a *_path takes a local path or an s3:// URI, not a {scheme} URL: use the *_url field")
            return self._from_path(value, limit)
        if scheme not in ("http", "https"):
            raise _Refused(f"not an http(s) or s3:// URL: {_short(value)!r}")
        return self._remembered(value, lambda url: self._from_url(url, limit))

    def _remembered(self, source: str, fetch: Callable[[str], FetchedMedia]) -> FetchedMedia:
        known = self._seen.get(source)
        # Another process sharing the cache may have evicted the blob since: fetch it again.
        if known is None or not _touch(known.path):
            self._seen[source] = fetch(source)
        return self._seen[source]

    # -- local paths -----------------------------------------------------------------------------------------

    def _from_path(self, value: str, limit: _Limit) -> FetchedMedia:
        if not self._roots:
            raise _Refused("local paths are not allowed here (no allowed roots configured)")
        given = Path(value)
        if not given.is_absolute():
            given = self._roots[0] / given
        try:
            # resolve() follows symlinks and `..`, so the containment check below sees the real location.
            real = given.resolve(strict=True)
        except FileNotFoundError:
            raise _Refused(f"no such file: {value}") from None
        except (OSError, RuntimeError) as exc:
            raise _Refused(f"cannot resolve path {value}: {exc}") from None
        if not any(real.is_relative_to(root) for root in self._roots):
            raise _Refused(f"path {value} is outside the allowed roots")
        if not real.is_file():
            raise _Refused(f"not a regular file: {value}")
        size = real.stat().st_size
        limit.check(size)
        return FetchedMedia(real, None, describe(real).format, size, str(real))

    # -- base64 ----------------------------------------------------------------------------------------------

    def _from_base64(self, value: str, limit: _Limit) -> FetchedMedia:
        """Decoded a block at a time into the cache (see `_base64_blocks`): no full-size copy of the value or of
        the decoded bytes is ever made."""
        start = _payload_start(value)
        decoded = _decoded_size(value, start)
        if decoded > limit.max_bytes:
            raise limit.refusal(f"about {decoded} bytes once decoded")
        download = self._new_download(limit)
        try:
            download.write_all(_base64_blocks(value, start))
        except binascii.Error as exc:
            raise _Refused(f"invalid base64 ({exc})") from None
        if download.size == 0:
            download.path.unlink(missing_ok=True)
            raise _Refused("the base64 value is empty")
        return self._store(download, "base64")

    # -- http(s) ---------------------------------------------------------------------------------------------

    def _from_url(self, url: str, limit: _Limit) -> FetchedMedia:
        cached, entry = self._cached(url)
        headers = {}
        if entry.get("etag"):
            headers["If-None-Match"] = entry["etag"]
        if entry.get("last_modified"):
            headers["If-Modified-Since"] = entry["last_modified"]
        timeout = httpx.Timeout(self.policy.read_timeout, connect=self.policy.connect_timeout)
        deadline = time.monotonic() + self.policy.total_timeout
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                target = url
                for _ in range(self.policy.max_redirects + 1):
                    with self._request(client, target, headers) as response:
                        if response.is_redirect and "location" in response.headers:
                            target = urljoin(target, response.headers["location"])
                            scheme = urlsplit(target).scheme.lower()
                            if scheme not in ("http", "https") or scheme not in self.policy.url_schemes:
                                raise _Refused(f"redirected to a refused URL scheme: {_short(target)}")
                            continue
                        if response.status_code == 304 and cached is not None:
                            return cached
                        if response.status_code != 200:
                            raise _Refused(f"HTTP {response.status_code} from {_short(target)}")
                        return self._save_response(url, response, deadline, limit)
                raise _Refused(f"more than {self.policy.max_redirects} redirects from {_short(url)}")
        except httpx.TimeoutException:
            raise _Refused(f"timed out fetching {_short(url)}") from None
        except httpx.HTTPError as exc:
            raise _Refused(f"cannot fetch {_short(url)}: {exc}") from None

    def _request(self, client: httpx.Client, url: str, headers: dict[str, str]) -> Any:
        """Stream a GET to a checked address: the host is resolved here, every address must be allowed, and
        the connection goes to that address (Host header and TLS name unchanged), so DNS cannot be switched
        between the check and the connection."""
        parts = httpx.URL(url)
        if not parts.host:
            raise _Refused(f"URL has no host: {_short(url)}")
        address = self._checked_address(parts.host, parts.port or (443 if parts.scheme == "https" else 80))
        pinned = parts.copy_with(host=address)
        host_header = parts.netloc.decode("ascii")
        return client.stream(
            "GET",
            pinned,
            headers={**headers, "Host": host_header},
            extensions={"sni_hostname": parts.host},
        )

    def _checked_address(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Refused(f"cannot resolve host {host!r}: {exc.strerror}") from None
        addresses = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
        if not self.policy.allow_private_hosts:
            for address in addresses:
                if not _public(address):
                    raise _Refused(f"host {host!r} resolves to a non-public address ({address}): refused")
        return str(addresses[0])

    def _save_response(self, url: str, response: httpx.Response, deadline: float, limit: _Limit) -> FetchedMedia:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit():
            limit.check(int(declared))
        download = self._new_download(limit)
        download.write_all(_until(deadline, response.iter_bytes(_CHUNK), url))
        validators = {
            "etag": response.headers.get("etag"),
            "last_modified": response.headers.get("last-modified"),
        }
        return self._store(download, url, validators)

    # -- s3 --------------------------------------------------------------------------------------------------

    def _from_s3(self, uri: str, limit: _Limit) -> FetchedMedia:
        if self.s3_client is None:
            raise _Refused("s3:// sources need an S3 client (configure the pipeline's S3 resource)")
        parts = urlsplit(uri)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or not key:
            raise _Refused(f"an S3 URI is s3://bucket/key, got {uri!r}")
        cached, entry = self._cached(uri)
        kwargs: dict[str, str] = {"Bucket": bucket, "Key": key}
        if entry.get("etag"):
            kwargs["IfNoneMatch"] = entry["etag"]
        try:
            obj = self.s3_client.get_object(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if (code == "304" or status == 304) and cached is not None:
                return cached
            if code in ("NoSuchKey", "404"):
                raise _Refused(f"no such S3 object: {uri}") from None
            if code == "NoSuchBucket":
                raise _Refused(f"no such S3 bucket: {bucket}") from None
            raise _Refused(f"cannot read {uri}: {code or status} {exc}") from None
        except BotoCoreError as exc:
            raise _Refused(f"cannot read {uri}: {exc}") from None
        body = obj["Body"]
        try:
            limit.check(int(obj.get("ContentLength") or 0))
            download = self._new_download(limit)
            deadline = time.monotonic() + self.policy.total_timeout
            download.write_all(_until(deadline, body.iter_chunks(_CHUNK), uri))
        except BotoCoreError as exc:
            raise _Refused(f"cannot read {uri}: {exc}") from None
        finally:
            body.close()
        validators = {"etag": obj.get("ETag"), "last_modified": None}
        return self._store(download, uri, validators)

    # -- the cache -------------------------------------------------------------------------------------------

    def _new_download(self, limit: _Limit) -> _Download:
        return _Download(self.cache_dir / "tmp" / f"{uuid.uuid4().hex}.part", limit)

    def _index_path(self, source: str) -> Path:
        return self.cache_dir / "sources" / f"{hashlib.sha256(source.encode()).hexdigest()}.json"

    def _cached(self, source: str) -> tuple[FetchedMedia | None, dict[str, Any]]:
        """The blob `source` was last stored as and its index entry (validators); (None, {}) when it was never
        fetched or its blob is gone, so that no conditional request is sent."""
        index = self._index_path(source)
        try:
            entry = json.loads(index.read_text())
            path = self.cache_dir / "blobs" / f"{entry['sha256']}{info(entry['format']).extension}"
            size = path.stat().st_size
        except (OSError, ValueError, KeyError):
            return None, {}
        if not (_touch(path) and _touch(index)):  # used now: eviction goes by last use
            return None, {}
        return FetchedMedia(path, entry["sha256"], entry["format"], size, source), entry

    def _store(self, download: _Download, source: str, validators: dict[str, str | None] | None = None) -> FetchedMedia:
        """Move a finished download to its content address, and index the source when it can be
        revalidated."""
        try:
            if download.size == 0:
                raise _Refused("the file is empty (0 bytes)")
            found = describe(download.path)
            sha = download.digest.hexdigest()
            blob = self.cache_dir / "blobs" / f"{sha}{found.extension}"
            # Atomic; a concurrent writer of the same content writes the same bytes.
            os.replace(download.path, blob)
        finally:
            download.path.unlink(missing_ok=True)
        if validators is not None:
            entry = {"sha256": sha, "format": found.format, **validators}
            index = self._index_path(source)
            part = index.with_suffix(f".{uuid.uuid4().hex}.part")
            part.write_text(json.dumps(entry))
            os.replace(part, index)
        self._evict_when_due()
        return FetchedMedia(blob, sha, found.format, download.size, source)

    def _evict_when_due(self) -> None:
        """`evict` under `cache_limits`, unless a process sharing the cache did within `every_seconds` (the stamp
        file's time says when). Two processes that both find it due evict twice, which is harmless."""
        if self.cache_limits is None:
            return
        stamp = self.cache_dir / "evicted.stamp"
        with contextlib.suppress(FileNotFoundError):
            if time.time() - stamp.stat().st_mtime < self.cache_limits.every_seconds:
                return
        stamp.touch()
        evict(self.cache_dir, self.cache_limits)


@dataclass(frozen=True)
class _CacheFile:
    path: Path
    size: int
    used: float  # last use: atime or mtime, whichever is later (a cache hit sets both)


def evict(cache_dir: Path, limits: CacheLimits) -> None:
    """Remove from the fetch cache at `cache_dir` what `limits` say must go.

    Blobs go least recently used first; index entries (a few hundred bytes each) go by age alone, and one whose blob
    went only costs an unconditional download. Partial downloads older than `keep_recent_seconds` were left by a
    killed process. Safe beside other processes: a file open for reading stays readable after its unlink
    (POSIX), a remembered blob that went is fetched again, and nothing used recently is touched."""
    now = time.time()
    recent = now - limits.keep_recent_seconds
    stale = now - limits.max_age_seconds if limits.max_age_seconds > 0 else float("-inf")
    blobs = sorted(_cache_files(cache_dir / "blobs"), key=lambda f: f.used)
    total = sum(f.size for f in blobs)
    for blob in blobs:
        over = 0 < limits.max_bytes < total
        if blob.used >= recent or not (over or blob.used < stale):
            break  # sorted by last use: every later blob is as recent
        _remove(blob.path)
        total -= blob.size
    for folder, before in (("tmp", recent), ("sources", min(stale, recent))):
        for leftover in _cache_files(cache_dir / folder):
            if leftover.used < before:
                _remove(leftover.path)


def _cache_files(folder: Path) -> list[_CacheFile]:
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except FileNotFoundError:
        return []
    files = []
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                files.append(_CacheFile(Path(entry.path), st.st_size, max(st.st_atime, st.st_mtime)))
        except FileNotFoundError:  # removed meanwhile by another process
            continue
    return files


def _remove(path: Path) -> None:
    """Unlink, never failing the fetch that triggered the eviction."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass  # another process evicted it first
    except OSError as exc:
        log.warning(f"fetch cache: cannot remove {path}: {exc}")


def _touch(path: Path) -> bool:
    """Mark a cache file used now; False when it is gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


_ROLE_KINDS: dict[MediaRole, str] = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "audio_2": "audio",
    "mask": "image",
    "mask_2": "image",
}


def _check_role(role: MediaRole, media: FetchedMedia) -> None:
    wanted = _ROLE_KINDS[role]
    if media.kind == wanted or (wanted == "audio" and media.format in AUDIO_CAPABLE_VIDEO):
        return
    raise _Refused(f"expected {'an' if wanted[0] in 'aeiou' else 'a'} {wanted}, got a {media.format} {media.kind} file")


def _payload_start(value: str) -> int:
    """Where the base64 characters begin: after leading whitespace and a `data:<type>;base64,` prefix."""
    start = 0
    while start < len(value) and value[start].isspace():
        start += 1
    if not value.startswith("data:", start):
        return start
    comma = value.find(",", start, start + 1024)  # bounded: a long value without a comma is not a data: URI
    if comma < 0 or not value[start:comma].endswith(";base64"):
        raise _Refused("a data: URI must be base64 (data:<type>;base64,<data>)")
    return comma + 1


def _decoded_size(value: str, start: int) -> int:
    """Bytes `value[start:]` decodes to, padding aside: counted, not copied."""
    characters = len(value) - start - sum(value.count(chr(c), start) for c in _ASCII_WHITESPACE)
    return characters // 4 * 3


def _base64_blocks(value: str, start: int) -> Iterator[bytes]:
    """The bytes `value[start:]` decodes to, a block at a time. Whitespace is dropped (line-wrapped base64 is
    common) and URL-safe letters are read as standard ones. Base64 decodes in groups of 4 characters: each block
    decodes a multiple of 4 and carries the rest into the next; `=` may only end the value."""
    carry = b""
    padded = False
    for at in range(start, len(value), _B64_BLOCK):
        try:
            text = value[at : at + _B64_BLOCK].encode("ascii")
        except UnicodeEncodeError:
            raise binascii.Error("a character that is not base64") from None
        chunk = carry + text.translate(_B64_URLSAFE, _ASCII_WHITESPACE)
        usable = len(chunk) - len(chunk) % 4
        carry = chunk[usable:]
        if usable:
            if padded:
                raise binascii.Error("padding before the end")
            padded = chunk[usable - 1] == ord("=")
            yield base64.b64decode(chunk[:usable], validate=True)
    if carry:
        raise binascii.Error("the length is not a multiple of 4: truncated, or its padding is missing")


def _size(size: int) -> str:
    return f"{size} bytes ({size / _MB:.1f} MB)" if size >= _MB else f"{size} bytes"


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address.is_global and not address.is_multicast


def _until(deadline: float, chunks: Iterable[bytes], source: str) -> Iterator[bytes]:
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise _Refused(f"timed out fetching {_short(source)} (too slow)")
        yield chunk


def _short(url: str) -> str:
    """A URL for a message: credentials masked first (a cut could split user-info from its `@`), then shortened."""
    url = redact_url(url)
    return url if len(url) <= 120 else url[:117] + "..."


def _redact_log_record(record: logging.LogRecord) -> bool:
    """httpx logs every request's URL at INFO (`HTTP Request: GET https://...?X-Amz-Signature=...`), and a
    deployment may route that logger into run logs: mask it where the line is made."""
    record.msg, record.args = redact_text(record.getMessage()), None
    return True


logging.getLogger("httpx").addFilter(_redact_log_record)

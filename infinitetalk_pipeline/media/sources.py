"""A request's media field -> a local file of a known format: local path, http(s) URL, `s3://` URI or base64.

Every source is checked before it is read (allowed roots, URL schemes, public addresses only, size caps) and
every file is identified by its bytes, not its name. Downloads land in a content-addressed cache: blobs are
stored by sha256 (under their real extension, which ComfyUI's loaders go by), and a small index maps each URL
or S3 object, with its ETag/Last-Modified, to its blob. A portrait shared by 500 clips is downloaded once;
later runs revalidate it with one conditional request (HTTP 304 / S3 If-None-Match).
"""

from __future__ import annotations

import base64
import binascii
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

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.media.sniff import AUDIO_CAPABLE_VIDEO, MediaError, describe, info
from infinitetalk_pipeline.redact import redact_text, redact_url
from infinitetalk_pipeline.spec import MediaRef, MediaRole

_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourcePolicy:
    """What a request may point at. The defaults suit a service that takes requests from users."""

    allowed_roots: tuple[Path, ...] = ()  # local paths must resolve under one of these; none: no local paths
    allow_private_hosts: bool = False  # loopback, private, link-local (cloud metadata) addresses
    max_bytes: int = 512 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # between two reads
    total_timeout: float = 600.0  # a whole download: a server dribbling bytes never trips the read timeout
    url_schemes: frozenset[str] = frozenset({"http", "https", "s3"})
    max_redirects: int = 5


@dataclass(frozen=True)
class FetchedMedia:
    path: Path
    sha256: str
    format: str  # from the bytes: see media/sniff.py
    size_bytes: int
    source: str  # where it came from: a path, a URL, an s3:// URI or "base64"; credentials masked (see __post_init__)

    def __post_init__(self) -> None:
        # `source` describes the input to people and the catalog and is never fetched again: no credentials in it.
        object.__setattr__(self, "source", redact_url(self.source))

    @property
    def kind(self) -> str:
        return info(self.format).kind

    @property
    def extension(self) -> str:
        """The real extension (a local `.wav` that holds an MP3 is `.mp3`): name uploads with it."""
        return info(self.format).extension


class _Refused(Exception):
    """A source broke the policy or could not be read; the message is the user-facing reason."""


@dataclass
class _Download:
    """A file being written into the cache's temporary folder, hashed and size-capped as it arrives."""

    path: Path
    max_bytes: int
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        with open(self.path, "wb") as f:
            for chunk in chunks:
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    raise _Refused(f"larger than the {self.max_bytes} byte limit")
                self.digest.update(chunk)
                f.write(chunk)


class MediaFetcher:
    """Resolves `MediaRef`s to local files under `policy`, caching downloads in `cache_dir`.

    One fetcher also remembers what it fetched, so a run asks the network about each source once.
    """

    def __init__(self, policy: SourcePolicy, cache_dir: Path, s3_client: Any | None = None) -> None:
        self.policy = policy
        self.cache_dir = Path(cache_dir)
        self.s3_client = s3_client
        self._roots = tuple(Path(r).resolve() for r in policy.allowed_roots)
        self._seen: dict[str, FetchedMedia] = {}
        for sub in ("blobs", "sources", "tmp"):
            (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)

    def fetch(self, ref: MediaRef, clip_id: str | None = None) -> FetchedMedia:
        """The local file for `ref`, its format checked against the role. Errors are ClipInputErrors naming
        the clip and `ref.field`."""
        try:
            media = self._fetch(ref)
            _check_role(ref.role, media)
        except (_Refused, MediaError) as exc:
            raise ClipInputError(clip_id, ref.field, str(exc)) from None
        return media

    def _fetch(self, ref: MediaRef) -> FetchedMedia:
        value = ref.value.strip()
        if ref.kind == "base64":
            return self._from_base64(value)
        scheme = urlsplit(value).scheme.lower() if "://" in value else ""
        if scheme and scheme not in self.policy.url_schemes:
            raise _Refused(
                f"URL scheme {scheme!r} is not allowed (allowed: {', '.join(sorted(self.policy.url_schemes))})"
            )
        if scheme == "s3":
            return self._remembered(value, self._from_s3)
        if ref.kind == "path":
            if scheme:
                raise _Refused(f"a *_path takes a local path or an s3:// URI, not a {scheme} URL: use the *_url field")
            return self._from_path(value)
        if scheme not in ("http", "https"):
            raise _Refused(f"not an http(s) or s3:// URL: {_short(value)!r}")
        return self._remembered(value, self._from_url)

    def _remembered(self, source: str, fetch: Callable[[str], FetchedMedia]) -> FetchedMedia:
        if source not in self._seen:
            self._seen[source] = fetch(source)
        return self._seen[source]

    # -- local paths -----------------------------------------------------------------------------------------

    def _from_path(self, value: str) -> FetchedMedia:
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
        if size > self.policy.max_bytes:
            raise _Refused(f"larger than the {self.policy.max_bytes} byte limit ({size} bytes)")
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return FetchedMedia(real, digest.hexdigest(), describe(real).format, size, str(real))

    # -- base64 ----------------------------------------------------------------------------------------------

    def _from_base64(self, value: str) -> FetchedMedia:
        payload = value
        if value.startswith("data:"):
            meta, sep, payload = value.partition(",")
            if not sep or not meta.endswith(";base64"):
                raise _Refused("a data: URI must be base64 (data:<type>;base64,<data>)")
        payload = "".join(payload.split())  # line-wrapped base64 is common
        if len(payload) // 4 * 3 > self.policy.max_bytes:
            raise _Refused(f"larger than the {self.policy.max_bytes} byte limit once decoded")
        try:
            data = base64.b64decode(payload.translate(str.maketrans("-_", "+/")), validate=True)
        except binascii.Error as exc:
            raise _Refused(f"invalid base64 ({exc})") from None
        if not data:
            raise _Refused("the base64 value is empty")
        download = self._new_download()
        download.write_all([data])
        return self._store(download, "base64")

    # -- http(s) ---------------------------------------------------------------------------------------------

    def _from_url(self, url: str) -> FetchedMedia:
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
                        return self._save_response(url, response, deadline)
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

    def _save_response(self, url: str, response: httpx.Response, deadline: float) -> FetchedMedia:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
            raise _Refused(f"larger than the {self.policy.max_bytes} byte limit ({declared} bytes)")
        download = self._new_download()
        download.write_all(_until(deadline, response.iter_bytes(_CHUNK), url))
        validators = {
            "etag": response.headers.get("etag"),
            "last_modified": response.headers.get("last-modified"),
        }
        return self._store(download, url, validators)

    # -- s3 --------------------------------------------------------------------------------------------------

    def _from_s3(self, uri: str) -> FetchedMedia:
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
            if int(obj.get("ContentLength") or 0) > self.policy.max_bytes:
                raise _Refused(f"larger than the {self.policy.max_bytes} byte limit ({obj['ContentLength']} bytes)")
            download = self._new_download()
            deadline = time.monotonic() + self.policy.total_timeout
            download.write_all(_until(deadline, body.iter_chunks(_CHUNK), uri))
        except BotoCoreError as exc:
            raise _Refused(f"cannot read {uri}: {exc}") from None
        finally:
            body.close()
        validators = {"etag": obj.get("ETag"), "last_modified": None}
        return self._store(download, uri, validators)

    # -- the cache -------------------------------------------------------------------------------------------

    def _new_download(self) -> _Download:
        return _Download(self.cache_dir / "tmp" / f"{uuid.uuid4().hex}.part", self.policy.max_bytes)

    def _index_path(self, source: str) -> Path:
        return self.cache_dir / "sources" / f"{hashlib.sha256(source.encode()).hexdigest()}.json"

    def _cached(self, source: str) -> tuple[FetchedMedia | None, dict[str, Any]]:
        """The blob `source` was last stored as and its index entry (validators); (None, {}) when it was never
        fetched or its blob is gone, so that no conditional request is sent."""
        try:
            entry = json.loads(self._index_path(source).read_text())
            path = self.cache_dir / "blobs" / f"{entry['sha256']}{info(entry['format']).extension}"
            size = path.stat().st_size
        except (OSError, ValueError, KeyError):
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
        return FetchedMedia(blob, sha, found.format, download.size, source)


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

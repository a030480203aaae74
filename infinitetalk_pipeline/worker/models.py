"""The model files of a GPU worker: check them against the lock, download them resumably, verify before use.

A download goes to `<models_dir>/<folder>/<file>.part` and is moved into place only once its size and sha256 match
the lock, so ComfyUI never sees a half-written or wrong file under a name it loads. A pin without size or sha256
(not yet measured) is checked on what it has; its result carries the measured values to record in the lock.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from infinitetalk_pipeline.digest import file_sha256
from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.worker.lock import ModelPin, WorkerLock

Log = Callable[[str], None]

TIMEOUT = httpx.Timeout(30.0, connect=30.0, read=60.0)
# One delay per retry: a transient failure (network, 5xx, 429) is retried this many times, each retry resuming.
RETRY_DELAYS_S = (1.0, 4.0, 15.0)
# Files at least this big get a progress line every 10%; smaller ones only a start and a done line.
PROGRESS_MIN_BYTES = 64 << 20

_URL_RE = re.compile(r"https?://[^\s'\"<>]+")


class ModelFetchError(PipelineError):
    """A model file could not be downloaded, or what was downloaded is not the file the lock pins."""


class _TransientError(Exception):
    """A server answer worth retrying (5xx, 429)."""


@dataclass(frozen=True)
class ModelStatus:
    pin: ModelPin
    path: Path
    problem: str | None  # None when the file is present and matches; else what differs, e.g. "missing"
    size: int | None = None  # measured; None when missing
    sha256: str | None = None  # measured; None when missing or not hashed

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class FetchResult:
    pin: ModelPin
    path: Path
    action: Literal["present", "downloaded"]
    size: int  # measured, as is sha256: what to record for a pin without them
    sha256: str
    bytes_downloaded: int  # over all attempts, so a restarted download counts twice
    seconds: float

    @property
    def unpinned(self) -> bool:
        return self.pin.size is None or self.pin.sha256 is None

    @property
    def mb_per_s(self) -> float:
        return self.bytes_downloaded / 1e6 / self.seconds if self.seconds > 0 else 0.0


def check_model(models_dir: Path, pin: ModelPin, *, hash: bool = True) -> ModelStatus:
    """Is `<models_dir>/<folder>/<file>` the locked file? `hash=False` compares the size only (seconds, not minutes
    for the 15 GB weights). A pin without size or sha256 is a problem even when the file is there: nothing says the
    file is the right one."""
    path = models_dir / pin.relpath
    if not path.is_file():
        return ModelStatus(pin, path, "missing")
    size, digest = _measure(path, pin, hash=hash)
    return ModelStatus(pin, path, _mismatch(pin, size, digest, short=True) or _unpinned(pin), size, digest)


def _measure(path: Path, pin: ModelPin, *, hash: bool) -> tuple[int, str | None]:
    size = path.stat().st_size
    # hashing a file whose size is already wrong would only cost time
    digest = file_sha256(path) if hash and pin.size in (None, size) else None
    return size, digest


def _mismatch(pin: ModelPin, size: int, digest: str | None, *, short: bool) -> str | None:
    """What differs from the values the lock pins (those it leaves out cannot differ)."""
    if pin.size is not None and size != pin.size:
        return f"size {size} != locked {pin.size}"
    if digest is not None and pin.sha256 is not None and digest != pin.sha256.lower():
        actual, locked = digest, pin.sha256.lower()
        if short:
            actual, locked = f"{actual[:12]}…", f"{locked[:12]}…"
        return f"sha256 {actual} != locked {locked}"
    return None


def _unpinned(pin: ModelPin) -> str | None:
    absent = [name for name, value in (("size", pin.size), ("sha256", pin.sha256)) if value is None]
    return f"unpinned: no {' or '.join(absent)} in the lock" if absent else None


def safe_url(url: str) -> str:
    """The URL without user:password and query (signed URLs carry their credentials there), for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _scrub(text: str) -> str:
    return _URL_RE.sub(lambda m: safe_url(m.group(0)), text)


def fetch_models(
    lock: WorkerLock,
    models_dir: Path,
    *,
    only: set[str] | None = None,
    log: Log = print,
    client: httpx.Client | None = None,
) -> list[FetchResult]:
    """Make every locked model (or those named in `only`, by file name or `folder/file`) present and verified.

    Files that already match are left alone; the others are downloaded, resuming any `.part` left by an earlier
    run. Raises `ModelFetchError` on the first file that cannot be fetched or does not match the lock.
    """
    pins = lock.models
    if only is not None:
        unknown = only - {p.file for p in pins} - {p.relpath for p in pins}
        if unknown:
            known = ", ".join(p.relpath for p in pins) or "none"
            raise ModelFetchError(f"not in {lock.path}: {', '.join(sorted(unknown))} (locked models: {known})")
        pins = tuple(p for p in pins if p.file in only or p.relpath in only)
    if not pins:
        log(f"{lock.path} pins no models")
        return []
    own_client = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=TIMEOUT)
    results = []
    try:
        for pin in pins:
            try:
                results.append(_fetch_one(http, pin, models_dir, log))
            except OSError as exc:  # disk full, permissions: a message naming the file, not a traceback
                raise ModelFetchError(f"{pin.relpath}: {exc}") from exc
    finally:
        if own_client:
            http.close()
    return results


class _Progress:
    """Counts the bytes received for one file and logs every 10% of big files."""

    def __init__(self, pin: ModelPin, log: Log) -> None:
        self.pin = pin
        self.log = log
        self.total = pin.size  # from the server's answer when the lock has no size
        self.received = 0
        self.next_tenth = 1

    def advance(self, n: int, position: int) -> None:
        self.received += n
        if not self.total or self.total < PROGRESS_MIN_BYTES:
            return
        tenth = position * 10 // self.total
        if self.next_tenth <= tenth < 10:
            self.log(f"{self.pin.relpath}: {tenth * 10}% ({position / 1e6:.0f} of {self.total / 1e6:.0f} MB)")
            self.next_tenth = tenth + 1


def _fetch_one(client: httpx.Client, pin: ModelPin, models_dir: Path, log: Log) -> FetchResult:
    final = models_dir / pin.relpath
    if final.is_file():
        size, digest = _measure(final, pin, hash=True)
        if digest is not None and _mismatch(pin, size, digest, short=True) is None:
            log(f"{pin.relpath}: present")
            return FetchResult(pin, final, "present", size, digest, 0, 0.0)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    progress = _Progress(pin, log)
    started = time.monotonic()
    size_text = "" if pin.size is None else f" {pin.size / 1e6:.1f} MB"
    log(f"{pin.relpath}: downloading{size_text} from {safe_url(pin.url)}")
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        try:
            _download(client, pin, part, progress, log)
            break
        except (httpx.TransportError, _TransientError) as exc:
            reason = _scrub(f"{type(exc).__name__}: {exc}")
            if attempt == len(RETRY_DELAYS_S):
                raise ModelFetchError(
                    f"{pin.relpath}: download from {safe_url(pin.url)} failed after {attempt + 1} attempts: {reason}"
                    f" (the partial file {part} is kept; run again to resume)"
                ) from None  # the chained error's request carries the full URL, credentials included
            delay = RETRY_DELAYS_S[attempt]
            log(f"{pin.relpath}: {reason}; retry {attempt + 1}/{len(RETRY_DELAYS_S)} in {delay:.0f} s")
            time.sleep(delay)
    size, digest = _measure(part, pin, hash=True)
    problem = _mismatch(pin, size, digest, short=False)
    if problem is not None:
        part.unlink(missing_ok=True)  # resuming a wrong file could never succeed
        raise ModelFetchError(
            f"{pin.relpath}: the download from {safe_url(pin.url)} does not match the lock: {problem}"
            " (deleted it; fix the url or the pin in the lock)"
        )
    assert digest is not None  # the size matched (or is unpinned), so _measure hashed it
    os.replace(part, final)
    seconds = time.monotonic() - started
    result = FetchResult(pin, final, "downloaded", size, digest, progress.received, seconds)
    log(f"{pin.relpath}: done, {progress.received / 1e6:.1f} MB in {seconds:.1f} s ({result.mb_per_s:.1f} MB/s)")
    return result


def _download(client: httpx.Client, pin: ModelPin, part: Path, progress: _Progress, log: Log) -> None:
    """One attempt: append to `part` from where it ends. Returns when the server has sent all it will."""
    have = part.stat().st_size if part.exists() else 0
    if pin.size is not None and have > pin.size:  # not a prefix of the locked file
        part.unlink()
        have = 0
    if have and have == pin.size:
        return  # complete already (an earlier run stopped before verifying): verification decides
    # identity: offsets into a compressed body would not be offsets into the file
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with client.stream("GET", pin.url, headers=headers, follow_redirects=True) as response:
        status = response.status_code
        if status == 416 and have:
            return  # the server has nothing past `have`: complete, or shorter than locked; verification says which
        if status >= 500 or status == 429:
            raise _TransientError(f"HTTP {status}")
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
            if match is None or int(match.group(1)) != have:
                raise ModelFetchError(
                    f"{pin.relpath}: asked {safe_url(pin.url)} for bytes {have}-, got Content-Range {content_range!r}"
                )
            if progress.total is None and match.group(2) != "*":
                progress.total = int(match.group(2))
            if have:
                log(f"{pin.relpath}: resuming at {have / 1e6:.1f} MB")
            mode = "ab"
        elif status == 200:
            if have:
                log(f"{pin.relpath}: the server ignored the Range request; starting again from zero")
            have = 0
            if progress.total is None and "Content-Length" in response.headers:
                progress.total = int(response.headers["Content-Length"])
            mode = "wb"
        else:
            raise ModelFetchError(f"{pin.relpath}: HTTP {status} from {safe_url(pin.url)}")
        with part.open(mode) as f:
            # no chunk_size: httpx would buffer up to it, and bytes buffered when the connection drops are lost
            for chunk in response.iter_bytes():
                f.write(chunk)
                have += len(chunk)
                progress.advance(len(chunk), have)

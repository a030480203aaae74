"""The REST layer of one ComfyUI server: one request helper with the retry policy, and the plain endpoint calls.

The retry policy: a GET is safe to repeat, so a transport error or a 5xx answer is retried with backoff (a 4xx is
an answer, and the same request gets it again); a POST is sent exactly once, because a lost answer may hide a
queued prompt and sending it again would render it twice (ComfyClient.submit settles that case instead).

Failures are typed: ComfyConnectFailed (the request never reached the server; ComfyRefused when the port refused
it, so nothing listens there), ComfyUnreachable (no usable answer: reset, timeout, 5xx), ComfyHTTPError (any other
status that is not 2xx).
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from infinitetalk_pipeline.comfy.errors import (
    ComfyConnectFailed,
    ComfyError,
    ComfyHTTPError,
    ComfyOutputMissing,
    ComfyRefused,
    ComfyUnreachable,
    ComfyValidationError,
)
from infinitetalk_pipeline.digest import file_sha256

T = TypeVar("T")
HistoryEntry = dict[str, Any]
CHUNK = 1 << 20
GET_ATTEMPTS = 3


def with_backoff(call: Callable[[], T], *, attempts: int, first_delay: float) -> T:
    """`call()`, tried up to `attempts` times while it raises ComfyUnreachable, waiting `first_delay` seconds before
    the second try and twice as long before each next one."""
    for attempt in range(attempts - 1):
        try:
            return call()
        except ComfyUnreachable:
            time.sleep(first_delay * 2**attempt)
    return call()


def json_object(resp: httpx.Response) -> dict[str, Any]:
    """The response's body as a JSON object; ComfyError for anything else (e.g. a proxy's HTML page)."""
    data = _parsed(resp.read())
    if data is None:
        raise ComfyError(f"{resp.request.method} {resp.url}: not a JSON object: {resp.text[:200]!r}")
    return data


class ComfyRest:
    """The HTTP endpoints of one ComfyUI server. `timeout` bounds connecting and each read of every request (a
    streamed download may take longer in all); a call's own `timeout` replaces it for that call."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        read: Callable[[httpx.Response], T],
        *,
        attempts: int = GET_ATTEMPTS,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T:
        """`read(response)` of the 2xx answer to `method path` (`kwargs` go to httpx), under the retry policy: a GET
        is tried up to `attempts` times while it meets a transport error or a 5xx, including a body cut off while
        `read` streams it; any other method is sent once, whatever `attempts` says."""
        tries = attempts if method == "GET" else 1
        return with_backoff(lambda: self._once(method, path, read, timeout, kwargs), attempts=tries, first_delay=0.5)

    def _once(
        self,
        method: str,
        path: str,
        read: Callable[[httpx.Response], T],
        timeout: float | None,
        kwargs: dict[str, Any],
    ) -> T:
        target = f"{method} {self.base_url}{path}"
        try:
            with self._http.stream(method, path, timeout=timeout or self.timeout, **kwargs) as resp:
                if resp.is_success:
                    return read(resp)
                body = resp.read().decode(errors="replace")
                problem = f"{target}: HTTP {resp.status_code} {body[:300]}"
                if resp.status_code >= 500:
                    raise ComfyUnreachable(problem, worker_url=self.base_url)
                raise ComfyHTTPError(problem, resp.status_code, body, worker_url=self.base_url)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failed = ComfyRefused if _refused(exc) else ComfyConnectFailed
            raise failed(f"{target} failed: {type(exc).__name__}: {exc}", worker_url=self.base_url) from exc
        except httpx.TransportError as exc:
            raise ComfyUnreachable(f"{target} failed: {type(exc).__name__}: {exc}", worker_url=self.base_url) from exc

    def system_stats(self, *, attempts: int = GET_ATTEMPTS) -> dict[str, Any]:
        return self.request("GET", "/system_stats", json_object, attempts=attempts)

    def object_info(self) -> dict[str, Any]:
        """The node schema: every installed node class with its inputs and outputs."""
        return self.request("GET", "/object_info", json_object)

    def worker(self) -> dict[str, Any] | None:
        """What the worker's `infinitetalk_worker` extension reports; None for a ComfyUI without it."""
        try:
            return self.request("GET", "/infinitetalk/worker", json_object)
        except ComfyHTTPError as exc:
            if exc.status_code == 404:
                return None
            raise

    def state(self, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None) -> dict[str, Any]:
        """The worker extension's live state: boot id, jobs done, running and pending prompt ids, draining, RSS."""
        return self._extension("GET", "/infinitetalk/state", attempts=attempts, timeout=timeout)

    def admit(self, graph: dict[str, Any], *, client_id: str, prompt_id: str, max_depth: int) -> dict[str, Any] | None:
        """Queue the graph only if the worker holds fewer than `max_depth` prompts and is not draining (decided
        atomically on the worker); None when it refused for that reason. Like POST /prompt otherwise: a 400 is a
        ComfyValidationError, and a 200 answer may carry `node_errors` (its valid outputs were queued)."""
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id, "max_depth": max_depth}
        try:
            return self._queue_post("/infinitetalk/admit", graph, body)
        except ComfyHTTPError as exc:
            if exc.status_code == 409:
                return None
            if exc.status_code == 404:
                raise self._no_extension("POST /infinitetalk/admit") from exc
            raise

    def withdraw(self, prompt_id: str) -> bool:
        """Take back a pending prompt; False when it is already running, finished or unknown here."""
        return bool(self._extension("POST", "/infinitetalk/withdraw", json={"prompt_id": prompt_id}).get("withdrawn"))

    def delete_outputs(self, prompt_id: str) -> int | None:
        """Delete a finished prompt's files on the worker; the bytes freed, or None while it is still queued or
        running there (the extension keeps its files then)."""
        try:
            body = self._extension("POST", "/infinitetalk/outputs/delete", json={"prompt_id": prompt_id})
        except ComfyHTTPError as exc:
            if exc.status_code == 409:
                return None
            raise
        return int(body.get("bytes", 0))

    def drain(self, reason: str | None) -> dict[str, Any]:
        """Stop admitting prompts (`reason`), or admit again (None); answers the new state."""
        return self._extension("POST", "/infinitetalk/drain", json={"reason": reason})

    def live(self) -> bool | None:
        """The worker's liveness: False once it was drained and has gone idle (it asks for a restart: 503), True
        otherwise; None when it does not answer. Read as a status, not through the retry policy (503 is an answer)."""
        try:
            resp = self._http.get("/infinitetalk/live")
        except httpx.TransportError:
            return None
        return resp.status_code != 503

    def free(self, *, unload_models: bool, free_memory: bool) -> None:
        """POST /free: ComfyUI unloads models and/or drops its caches after the prompt it is running."""
        body = {"unload_models": unload_models, "free_memory": free_memory}
        self.request("POST", "/free", _discard, json=body)

    def _extension(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A call to our worker extension; a ComfyUI without it is told apart from other failures."""
        try:
            return self.request(method, path, json_object, **kwargs)
        except ComfyHTTPError as exc:
            if exc.status_code == 404:
                raise self._no_extension(f"{method} {path}") from exc
            raise

    def _no_extension(self, call: str) -> ComfyError:
        return ComfyError(
            f"{self.base_url} lacks the infinitetalk_worker extension ({call}: 404): install it with"
            " `infinitetalk comfyui install` (local) or the worker recipe (deploy/worker/Dockerfile)",
            worker_url=self.base_url,
        )

    def queue(self, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None) -> tuple[list[str], list[str]]:
        """Prompt ids (running, pending)."""
        data = self.request("GET", "/queue", json_object, attempts=attempts, timeout=timeout)
        try:
            return [item[1] for item in data["queue_running"]], [item[1] for item in data["queue_pending"]]
        except (KeyError, IndexError, TypeError) as exc:
            raise ComfyError(f"GET {self.base_url}/queue: unexpected answer {data!r:.200}") from exc

    def history(
        self, prompt_id: str, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None
    ) -> HistoryEntry | None:
        """The finished prompt's history entry; None while it is queued or running (ComfyUI answers `{}`)."""
        data = self.request("GET", f"/history/{prompt_id}", json_object, attempts=attempts, timeout=timeout)
        entry = data.get(prompt_id)
        return dict(entry) if entry else None

    def queue_prompt(self, graph: dict[str, Any], *, client_id: str, prompt_id: str) -> dict[str, Any]:
        """POST /prompt: ComfyUI's answer (a 200 may still carry `node_errors`: its valid outputs were queued);
        ComfyValidationError when it refused the whole graph (400)."""
        return self._queue_post("/prompt", graph, {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id})

    def _queue_post(self, path: str, graph: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """A POST that queues a graph: the answer (a 200 whose body got mangled still means "queued", so it is not
        json_object); ComfyValidationError on a 400."""
        try:
            return self.request("POST", path, lambda resp: _parsed(resp.read()) or {}, json=body)
        except ComfyHTTPError as exc:
            if exc.status_code != 400:
                raise
            data = _parsed(exc.body.encode()) or {}
            raise ComfyValidationError(
                data.get("error"), data.get("node_errors") or {}, graph=graph, worker_url=self.base_url
            ) from exc

    def delete_queued(self, prompt_ids: list[str], *, timeout: float | None = None) -> None:
        """Remove prompts from the pending queue (a no-op for one that is not pending)."""
        self.request("POST", "/queue", _discard, json={"delete": prompt_ids}, timeout=timeout)

    def interrupt(self, prompt_id: str, *, timeout: float | None = None) -> None:
        """Interrupt `prompt_id` if it is the one running (a no-op otherwise)."""
        self.request("POST", "/interrupt", _discard, json={"prompt_id": prompt_id}, timeout=timeout)

    def upload(self, path: Path, subfolder: str = "infinitetalk", sha256: str | None = None) -> str:
        """Upload an image, audio or video file; returns the value for LoadImage/LoadAudio/LoadVideo inputs.

        The name is the content hash and `overwrite` is off: ComfyUI then leaves an identical file in place (a
        running prompt may be reading it) and answers its name, and saves different content under a new name
        ("<hash> (1).png", e.g. beside a truncated leftover); the answered name is the one returned. Pass the
        file's `sha256` when it is known, so a large file is not read twice.
        """
        path = Path(path)
        name = f"{(sha256 or file_sha256(path))[:32]}{path.suffix.lower()}"
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as f:  # httpx streams file objects in the multipart body
            try:
                info = self.request(
                    "POST",
                    "/upload/image",
                    json_object,
                    files={"image": (name, f, mime)},
                    data={"subfolder": subfolder, "type": "input", "overwrite": "false"},
                )
            except ComfyError as exc:
                exc.add_note(f"uploading {path}")
                raise
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else str(info["name"])

    def download(self, file_info: dict[str, Any], dest: Path) -> Path:
        """Stream one `/view` file to `dest` (via a temporary name, then an atomic rename); ComfyOutputMissing when
        the server has no such file."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        params = {
            "filename": file_info["filename"],
            "subfolder": file_info.get("subfolder", ""),
            "type": file_info.get("type", "output"),
        }

        def save(resp: httpx.Response) -> None:
            with tmp.open("wb") as out:  # "wb": a retry starts the file afresh
                for chunk in resp.iter_bytes(CHUNK):
                    out.write(chunk)

        try:
            try:
                self.request("GET", "/view", save, params=params)
            except ComfyHTTPError as exc:
                if exc.status_code == 404:
                    raise ComfyOutputMissing(f"/view has no {params}", worker_url=self.base_url) from exc
                raise
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ComfyRest:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _parsed(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _discard(resp: httpx.Response) -> None:
    resp.read()


def _refused(exc: BaseException) -> bool:
    """True when `exc` was caused by a refused connection (ECONNREFUSED, wrapped by httpx and httpcore)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False

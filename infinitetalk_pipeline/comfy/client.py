"""A ComfyUI client built for unattended bulk rendering.

Choices, each against a failure seen in the wild:
- the client picks the `prompt_id` (uuid4), so after a lost POST response it can ask the server whether the
  prompt exists instead of submitting it twice: it looks for a grace period, adopts the prompt if it shows up,
  and otherwise cancels that id (harmless if it was never queued) before reporting the failure; POSTs are never
  retried on 5xx, GETs are;
- progress comes from the websocket, but the socket can stall while HTTP still answers, so a quiet socket
  falls back to polling `/history`, and a *silence* deadline (no sign of life) ends a stuck render, rather
  than a fixed timeout; a server that does not answer is no sign of life either, so a short network blip
  during a long render is ridden out and a dead server ends at the silence deadline;
- outputs are streamed from `/view` to a temporary name and renamed, never held in memory;
- any failure or KeyboardInterrupt while our prompt is queued or running cancels it (retried briefly), so no
  orphan keeps a worker busy;
- uploads never overwrite: names are content hashes, ComfyUI keeps an identical file as it is (a prompt may be
  reading it) and renames a different one, and the name it answers is the one used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from infinitetalk_pipeline.comfy.errors import (
    ComfyError,
    ComfyExecutionError,
    ComfyInterrupted,
    ComfyOutputMissing,
    ComfyTimeout,
    ComfyUnreachable,
    ComfyValidationError,
)

Graph = dict[str, Any]
HistoryEntry = dict[str, Any]
CHUNK = 1 << 20
GET_ATTEMPTS = 3
CANCEL_ATTEMPTS = 4  # retried after 0.25, 0.5, 1 s: rides out a blip without holding up a failing render long
# Output keys that carry files, in preference order: VHS_VideoCombine reports under "gifs", core SaveVideo
# under "images" (animated), newer core nodes under "video"/"audio".
OUTPUT_KEYS = ("gifs", "video", "images", "audio")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a render, for logs such as "45% node 12 (KSampler)"."""

    kind: str  # "executing", "progress", "executed", "cached"
    node_id: str | None
    node_class: str | None = None
    value: float | None = None
    max: float | None = None

    def __str__(self) -> str:
        where = f"node {self.node_id}" + (f" ({self.node_class})" if self.node_class else "")
        if self.kind == "progress" and self.max:
            return f"{100 * (self.value or 0) / self.max:.0f}% {where}"
        return f"{self.kind} {where}"


@dataclass(frozen=True)
class RenderResult:
    prompt_id: str
    output_path: Path
    worker_url: str
    execution_seconds: float | None  # ComfyUI's own time, execution_start -> execution_success
    upload_seconds: float  # uploads made through this client since its previous render
    submit_seconds: float
    wait_seconds: float
    download_seconds: float


ProgressCallback = Callable[[ProgressEvent], None]


class ComfyClient:
    """One client per thread: it holds one websocket and is not thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        request_timeout: float = 30.0,
        silence_timeout: float = 300.0,
        render_deadline: float = 3 * 3600.0,
        client_id: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.silence_timeout = silence_timeout
        self.render_deadline = render_deadline
        self.client_id = client_id or uuid.uuid4().hex
        self.poll_interval = poll_interval
        self._http = httpx.Client(base_url=self.base_url, timeout=request_timeout)
        self._ws: ClientConnection | None = None
        self._graphs: dict[str, Graph] = {}
        self._pending_upload_seconds = 0.0
        self._worker_info: dict[str, Any] | None = None
        self._worker_info_asked = False

    def _get(self, path: str, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None) -> httpx.Response:
        """GET with retries on transport errors and 5xx (GETs are safe to repeat)."""
        for attempt in range(attempts):
            try:
                resp = self._http.get(path, timeout=timeout or self.request_timeout)
                if resp.status_code < 500:
                    resp.raise_for_status()
                    return resp
                problem: str = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPStatusError as exc:
                raise ComfyError(f"GET {path}: {exc}", worker_url=self.base_url) from exc
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < attempts:
                time.sleep(0.5 * 2**attempt)
        raise ComfyUnreachable(f"GET {self.base_url}{path} failed: {problem}", worker_url=self.base_url)

    def _post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> httpx.Response:
        try:
            return self._http.post(path, json=body, timeout=timeout or self.request_timeout)
        except httpx.TransportError as exc:
            raise ComfyUnreachable(
                f"POST {self.base_url}{path} failed: {type(exc).__name__}: {exc}", worker_url=self.base_url
            ) from exc

    def system_stats(self) -> dict[str, Any]:
        return dict(self._get("/system_stats").json())

    def worker_info(self) -> dict[str, Any] | None:
        """What the worker's `infinitetalk_worker` extension reports (attention kernels, node commits, packages);
        None for a ComfyUI without it. Asked once per client."""
        if not self._worker_info_asked:
            try:
                self._worker_info = dict(self._get("/infinitetalk/worker").json())
            except ComfyError as exc:
                if not isinstance(exc.__cause__, httpx.HTTPStatusError) or exc.__cause__.response.status_code != 404:
                    raise
            self._worker_info_asked = True
        return self._worker_info

    def queue(self, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None) -> tuple[list[str], list[str]]:
        """Prompt ids (running, pending)."""
        data = self._get("/queue", attempts=attempts, timeout=timeout).json()
        return [item[1] for item in data["queue_running"]], [item[1] for item in data["queue_pending"]]

    def history(
        self, prompt_id: str, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None
    ) -> HistoryEntry | None:
        """The finished prompt's history entry; None while it is queued or running (ComfyUI answers `{}`)."""
        entry = self._get(f"/history/{prompt_id}", attempts=attempts, timeout=timeout).json().get(prompt_id)
        return dict(entry) if entry else None

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return dict(self._http.get("/system_stats", timeout=min(5.0, self.request_timeout)).json())
            except (httpx.HTTPError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise ComfyUnreachable(
                        f"{self.base_url} not ready after {timeout:.0f}s: {exc}", worker_url=self.base_url
                    ) from exc
                time.sleep(0.5)

    def upload(self, path: Path, subfolder: str = "infinitetalk", sha256: str | None = None) -> str:
        """Upload an image, audio or video file; returns the value for LoadImage/LoadAudio/LoadVideo inputs.

        The name is the content hash and `overwrite` is off: ComfyUI then leaves an identical file in place (a
        running prompt may be reading it) and answers its name, and saves different content under a new name
        ("<hash> (1).png", e.g. beside a truncated leftover); the answered name is the one returned. Pass the
        file's `sha256` when it is known, so a large file is not read twice.
        """
        started = time.perf_counter()
        path = Path(path)
        if sha256 is None:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    digest.update(block)
            sha256 = digest.hexdigest()
        name = f"{sha256[:32]}{path.suffix.lower()}"
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as f:  # httpx streams file objects in the multipart body
            try:
                resp = self._http.post(
                    "/upload/image",
                    files={"image": (name, f, mime)},
                    data={"subfolder": subfolder, "type": "input", "overwrite": "false"},
                )
            except httpx.TransportError as exc:
                raise ComfyUnreachable(f"upload of {path.name} failed: {exc}", worker_url=self.base_url) from exc
        if resp.status_code != 200:
            raise ComfyError(
                f"upload of {path.name} refused: HTTP {resp.status_code} {resp.text[:200]}",
                transient=resp.status_code >= 500,
                worker_url=self.base_url,
            )
        info = resp.json()
        self._pending_upload_seconds += time.perf_counter() - started
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else str(info["name"])

    def download(self, file_info: dict[str, Any], dest: Path) -> Path:
        """Stream one `/view` file to `dest` (via a temporary name, then an atomic rename)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        params = {
            "filename": file_info["filename"],
            "subfolder": file_info.get("subfolder", ""),
            "type": file_info.get("type", "output"),
        }
        for attempt in range(GET_ATTEMPTS):
            try:
                with self._http.stream("GET", "/view", params=params) as resp:
                    if resp.status_code == 404:
                        raise ComfyOutputMissing(f"/view has no {params}", worker_url=self.base_url)
                    if resp.status_code != 200 and resp.status_code < 500:
                        raise ComfyError(f"/view {params}: HTTP {resp.status_code}", worker_url=self.base_url)
                    resp.raise_for_status()  # 5xx: retried below
                    with tmp.open("wb") as out:
                        for chunk in resp.iter_bytes(CHUNK):
                            out.write(chunk)
                os.replace(tmp, dest)
                return dest
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                tmp.unlink(missing_ok=True)
                if attempt + 1 == GET_ATTEMPTS:
                    raise ComfyUnreachable(f"download of {params} failed: {exc}", worker_url=self.base_url) from exc
                time.sleep(0.5 * 2**attempt)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def submit(self, graph: Graph, prompt_id: str | None = None) -> str:
        """Queue `graph`; raises ComfyValidationError on a 400 and on a 200 that carries `node_errors`.

        When it raises, the prompt is not left behind on the server: after a failure that may have queued it (the
        answer lost, a 5xx from ComfyUI or a proxy, Ctrl-C) it waits up to `request_timeout` for the prompt to
        show up and adopts it, and otherwise cancels its id before raising ComfyUnreachable.
        """
        prompt_id = prompt_id or str(uuid.uuid4())
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        try:
            resp = self._http.post("/prompt", json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached the server: nothing was queued
            raise ComfyUnreachable(f"POST /prompt: {exc}", worker_url=self.base_url) from exc
        except httpx.TransportError as exc:  # sent, but the answer is lost: it may be queued (or be queued soon)
            return self._adopt_or_cancel(graph, prompt_id, f"POST /prompt: {type(exc).__name__}: {exc}", exc)
        except BaseException:  # e.g. Ctrl-C while the request was on its way
            self._cancel_quietly(prompt_id)
            raise
        if resp.status_code >= 500:
            problem = f"POST /prompt: HTTP {resp.status_code} {resp.text[:300]}"
            return self._adopt_or_cancel(graph, prompt_id, problem, None)
        data = _json(resp)
        if resp.status_code == 400 or (resp.status_code == 200 and data.get("node_errors")):
            if resp.status_code == 200:  # the valid outputs were queued anyway: do not let them run
                self._cancel_quietly(prompt_id)
            raise ComfyValidationError(
                data.get("error"), data.get("node_errors") or {}, graph=graph, worker_url=self.base_url
            )
        if resp.status_code != 200:
            raise ComfyError(f"POST /prompt: HTTP {resp.status_code} {resp.text[:300]}", worker_url=self.base_url)
        self._graphs[prompt_id] = graph
        return prompt_id

    def _adopt_or_cancel(self, graph: Graph, prompt_id: str, problem: str, cause: BaseException | None) -> str:
        """After an ambiguous POST /prompt: adopt the prompt if the server shows it within the grace period,
        else cancel its id (a no-op if it never arrives: the id is ours) and raise ComfyUnreachable."""
        grace = self.request_timeout
        try:
            if self._appears(prompt_id, grace):
                self._graphs[prompt_id] = graph
                return prompt_id
        except BaseException:
            self._cancel_quietly(prompt_id)
            raise
        error = ComfyUnreachable(
            f"{problem}; prompt {prompt_id} not seen on the server within {grace:.0f}s, cancelled",
            worker_url=self.base_url,
        )
        if (cancel_problem := self._cancel_quietly(prompt_id)) is not None:
            error.add_note(f"cancelling prompt {prompt_id} failed too, it may still run: {cancel_problem}")
        raise error from cause

    def _appears(self, prompt_id: str, grace: float) -> bool:
        """Poll `_known` until it says yes or `grace` seconds have passed (the server may queue it late)."""
        deadline = time.monotonic() + grace
        while True:
            remaining = deadline - time.monotonic()
            if self._known(prompt_id, timeout=max(remaining, 0.1)):
                return True
            if remaining <= 0:
                return False
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def _known(self, prompt_id: str, timeout: float | None = None) -> bool | None:
        """True: queued, running or finished; False: the server says it has no such prompt; None: no answer."""
        timeout = min(timeout or self.request_timeout, self.request_timeout)
        try:
            running, pending = self.queue(attempts=1, timeout=timeout)
            if prompt_id in running or prompt_id in pending:
                return True
            return self.history(prompt_id, attempts=1, timeout=timeout) is not None
        except ComfyError:
            return None

    def cancel(self, prompt_id: str, *, attempts: int = CANCEL_ATTEMPTS) -> None:
        """Remove `prompt_id` from the queue, and interrupt it if it is running (each is a no-op otherwise).

        Deleting first, then a targeted interrupt, also covers a prompt that starts between the two calls. Both
        are safe to repeat, so an unreachable server is retried with a short backoff before ComfyUnreachable.
        """
        timeout = min(5.0, self.request_timeout)
        for attempt in range(attempts):
            try:
                self._post("/queue", {"delete": [prompt_id]}, timeout=timeout)
                self._post("/interrupt", {"prompt_id": prompt_id}, timeout=timeout)
                return
            except ComfyUnreachable:
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.25 * 2**attempt)

    def _cancel_quietly(self, prompt_id: str) -> ComfyError | None:
        """`cancel`, for use on a failure path: returns its error instead of raising it over the original one."""
        try:
            self.cancel(prompt_id)
        except ComfyError as exc:
            return exc
        return None

    def wait(self, prompt_id: str, on_progress: ProgressCallback | None = None) -> HistoryEntry:
        """Follow `prompt_id` to its end and return its history entry, or raise its typed failure."""
        classes = {nid: node.get("class_type") for nid, node in self._graphs.get(prompt_id, {}).items()}
        emit = on_progress or (lambda _event: None)
        deadline = time.monotonic() + self.render_deadline
        last_sign = time.monotonic()
        next_poll = 0.0
        next_connect = 0.0
        unreachable: ComfyUnreachable | None = None  # the last poll's failure, while the server does not answer
        while True:
            now = time.monotonic()
            if now > deadline:
                raise ComfyTimeout(
                    f"prompt {prompt_id} passed the render deadline of {self.render_deadline:.0f}s",
                    worker_url=self.base_url,
                )
            if now - last_sign > self.silence_timeout:
                if unreachable is not None:
                    raise ComfyUnreachable(
                        f"prompt {prompt_id}: no sign of life for {self.silence_timeout:.0f}s, and the server does"
                        f" not answer: {unreachable}",
                        worker_url=self.base_url,
                    ) from unreachable
                raise ComfyTimeout(
                    f"prompt {prompt_id}: no sign of progress for {self.silence_timeout:.0f}s",
                    worker_url=self.base_url,
                )
            if self._ws is None and now >= next_connect:
                next_connect = now + 5.0
                self._connect_ws()
            message = self._receive(min(self.poll_interval, max(deadline - now, 0.01)))
            if message is not None and message.get("data", {}).get("prompt_id") == prompt_id:
                last_sign = time.monotonic()
                if self._on_message(message, classes, emit):
                    return self._final_history(prompt_id)
                continue
            if time.monotonic() >= next_poll:  # quiet or no socket: ask over HTTP
                next_poll = time.monotonic() + self.poll_interval
                # One attempt each: the loop itself retries, and a server that does not answer is no sign of life
                # (the silence deadline decides), not a failure: a network blip must not orphan a long render.
                timeout = min(self.request_timeout, max(self.silence_timeout - (now - last_sign), 1.0))
                try:
                    # /queue before /history: a prompt finishing in between is not lost
                    running, pending = self.queue(attempts=1, timeout=timeout)
                    entry = self.history(prompt_id, attempts=1, timeout=timeout)
                except ComfyUnreachable as exc:
                    unreachable = exc
                    continue
                unreachable = None
                if entry is not None:
                    return _check_history(prompt_id, entry, self.base_url)
                if prompt_id in pending:
                    last_sign = time.monotonic()  # waiting its turn is not silence
                elif prompt_id not in running:
                    raise ComfyInterrupted(
                        f"prompt {prompt_id} left the queue without a result (deleted, or server restarted)",
                        worker_url=self.base_url,
                    )

    def _on_message(self, message: dict[str, Any], classes: dict[str, Any], emit: ProgressCallback) -> bool:
        """Handle one event of our prompt; True when it has finished successfully."""
        kind, data = message["type"], message["data"]
        if kind == "execution_error":
            raise _execution_error(data, self.base_url)
        if kind == "execution_interrupted":
            raise _interrupted(data, self.base_url)
        if kind == "executing":
            node = data.get("node")
            if node is None:  # sent after ComfyUI wrote the history; `execution_success` comes before it
                return True
            emit(ProgressEvent("executing", str(node), classes.get(str(node))))
        elif kind == "progress":
            node = str(data.get("node"))
            emit(ProgressEvent("progress", node, classes.get(node), data.get("value"), data.get("max")))
        elif kind == "executed":
            node = str(data.get("node"))
            emit(ProgressEvent("executed", node, classes.get(node)))
        elif kind == "execution_cached":
            for node in data.get("nodes", []):
                emit(ProgressEvent("cached", str(node), classes.get(str(node))))
        return False

    def _final_history(self, prompt_id: str) -> HistoryEntry:
        """The history entry of a prompt that has just ended (retried briefly: it may not be written yet)."""
        for _ in range(100):
            entry = self.history(prompt_id)
            if entry is not None:
                return _check_history(prompt_id, entry, self.base_url)
            time.sleep(0.05)
        raise ComfyOutputMissing(f"prompt {prompt_id} finished but has no history", worker_url=self.base_url)

    def _connect_ws(self) -> None:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={self.client_id}", ""))
        try:
            # max_size: latent previews arrive as binary frames; ping: notices a dead peer within ~40 s.
            self._ws = connect(
                url,
                open_timeout=min(10.0, self.request_timeout),
                close_timeout=2.0,
                max_size=64 << 20,
                proxy=None,
                legacy=True,  # a long-lived connection that we close ourselves, not a `with` block
            )
        except (OSError, InvalidHandshake, TimeoutError):
            self._ws = None  # polling carries on; reconnect later

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON event, or None after `timeout` (or when the socket is down: then sleep instead)."""
        if self._ws is None:
            time.sleep(timeout)
            return None
        try:
            raw = self._ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except (ConnectionClosed, OSError):
            self._close_ws()
            return None
        if isinstance(raw, bytes):  # preview images
            return None
        message = json.loads(raw)
        return message if isinstance(message, dict) and isinstance(message.get("data"), dict) else None

    def _close_ws(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None

    def render(
        self, graph: Graph, output_node: str, dest: Path, on_progress: ProgressCallback | None = None
    ) -> RenderResult:
        """Submit, follow and download the file of `output_node`; cancels our prompt on any failure."""
        if self._ws is None:
            self._connect_ws()  # before submitting, so no early event is missed
        upload_seconds, self._pending_upload_seconds = self._pending_upload_seconds, 0.0
        prompt_id = str(uuid.uuid4())
        submitted = False
        t0 = t1 = time.perf_counter()
        try:
            self.submit(graph, prompt_id)
            submitted = True
            t1 = time.perf_counter()
            entry = self.wait(prompt_id, on_progress)
        except (ComfyExecutionError, ComfyInterrupted, ComfyValidationError):
            raise  # already over on the server (submit cancels a 200 that carried node_errors itself)
        except BaseException as exc:
            # submit settles its own ComfyErrors (nothing sent, or adopted-or-cancelled); anything else after the
            # POST went out (a failure in wait, Ctrl-C anywhere) may leave our prompt queued or running.
            problem = self._cancel_quietly(prompt_id) if submitted or not isinstance(exc, ComfyError) else None
            if problem is not None:
                exc.add_note(f"cancelling prompt {prompt_id} failed, it may still run: {problem}")
            raise
        finally:
            self._graphs.pop(prompt_id, None)
        t2 = time.perf_counter()
        path = self.download(output_file(entry, output_node, prompt_id), dest)
        t3 = time.perf_counter()
        return RenderResult(
            prompt_id=prompt_id,
            output_path=path,
            worker_url=self.base_url,
            execution_seconds=execution_seconds(entry),
            upload_seconds=upload_seconds,
            submit_seconds=t1 - t0,
            wait_seconds=t2 - t1,
            download_seconds=t3 - t2,
        )

    def close(self) -> None:
        self._close_ws()
        self._http.close()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def output_file(entry: HistoryEntry, output_node: str, prompt_id: str = "?") -> dict[str, Any]:
    """The file reported by the named output node, never "the first video" of the prompt."""
    outputs = entry.get("outputs", {})
    node_out = outputs.get(output_node)
    if not node_out:
        raise ComfyOutputMissing(
            f"prompt {prompt_id}: output node {output_node} reported nothing (outputs: {sorted(outputs)})"
        )
    for key in OUTPUT_KEYS:
        files = [f for f in node_out.get(key) or [] if isinstance(f, dict) and f.get("filename")]
        if files:
            return files[0]
    raise ComfyOutputMissing(f"prompt {prompt_id}: output node {output_node} reported no file: {node_out}")


def execution_seconds(entry: HistoryEntry) -> float | None:
    """ComfyUI's own execution time, from the start and success timestamps (ms) in the history messages."""
    stamps = {kind: data.get("timestamp") for kind, data in _messages(entry)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return (end - start) / 1000.0 if start is not None and end is not None else None


def _messages(entry: HistoryEntry) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in entry.get("status", {}).get("messages", []):
        if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], dict):
            yield str(item[0]), item[1]


def _check_history(prompt_id: str, entry: HistoryEntry, url: str) -> HistoryEntry:
    """Raise the failure a finished history entry records; return the entry when it succeeded."""
    status = entry.get("status", {})
    if status.get("status_str") == "success" or status.get("completed"):
        return entry
    for kind, data in _messages(entry):
        if kind == "execution_error":
            raise _execution_error(data, url)
        if kind == "execution_interrupted":
            raise _interrupted(data, url)
    raise ComfyError(f"prompt {prompt_id} ended with status {status.get('status_str')!r}", worker_url=url)


def _execution_error(data: dict[str, Any], url: str) -> ComfyExecutionError:
    return ComfyExecutionError(
        _str_or_none(data.get("node_id")),
        data.get("node_type"),
        str(data.get("exception_message", "")),
        exception_type=data.get("exception_type"),
        traceback=list(data.get("traceback") or []),
        worker_url=url,
    )


def _interrupted(data: dict[str, Any], url: str) -> ComfyInterrupted:
    return ComfyInterrupted(
        f"prompt {data.get('prompt_id')} interrupted at node {data.get('node_id')} ({data.get('node_type')})",
        worker_url=url,
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}

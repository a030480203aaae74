"""The prompt lifecycle on one ComfyUI server, built for unattended bulk rendering (HTTP: `comfy.rest`).

Choices, each against a failure seen in the wild:
- the client picks the `prompt_id` (uuid4), so after a lost POST response it can ask the server whether the
  prompt exists instead of submitting it twice: it looks for a grace period, adopts the prompt if it shows up,
  and otherwise cancels that id (harmless if it was never queued) before reporting the failure; the REST layer
  never resends a POST (it retries GETs), and only a cancel, safe to repeat, is retried here;
- progress comes from the websocket, but the socket can stall while HTTP still answers, so a quiet socket
  falls back to polling `/history`, and a *silence* deadline (no sign of life) ends a stuck render, rather
  than a fixed timeout; a server that does not answer is no sign of life either, so a short network blip
  during a long render is ridden out (a timeout may be a frozen server or a partition: the silence deadline
  decides); but a port that refuses connections, a few times over a couple of seconds, means the process is gone
  (a restarted one has lost the prompt too), so the wait ends at once with ComfyWorkerLost;
- outputs are streamed from `/view` to a temporary name and renamed, never held in memory;
- any failure or KeyboardInterrupt while our prompt is queued or running cancels it (retried briefly), so no
  orphan keeps a worker busy;
- uploads never overwrite: names are content hashes, ComfyUI keeps an identical file as it is (a prompt may be
  reading it) and renames a different one, and the name it answers is the one used.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from infinitetalk_pipeline.comfy.errors import (
    ComfyConnectFailed,
    ComfyError,
    ComfyExecutionError,
    ComfyInterrupted,
    ComfyOutputMissing,
    ComfyPromptVanished,
    ComfyRefused,
    ComfyTimeout,
    ComfyUnreachable,
    ComfyValidationError,
    ComfyWorkerLost,
)
from infinitetalk_pipeline.comfy.progress import ProgressEvent
from infinitetalk_pipeline.comfy.rest import GET_ATTEMPTS, ComfyRest, HistoryEntry, with_backoff

Graph = dict[str, Any]
CANCEL_ATTEMPTS = 4  # retried after 0.25, 0.5, 1 s: rides out a blip without holding up a failing render long
# A worker whose port refused this many polls in a row, the first and last at least REFUSED_FOR seconds apart, is
# gone: one refusal could be a listener being replaced, but a port that stays closed means the process died or
# restarted, and either way our prompt is lost (a timeout never counts: a frozen server or a partition gives those).
REFUSALS_TO_LOSE = 3
REFUSED_FOR = 1.5
# Output keys that carry files, in preference order: VHS_VideoCombine reports under "gifs", core SaveVideo
# under "images" (animated), newer core nodes under "video"/"audio".
OUTPUT_KEYS = ("gifs", "video", "images", "audio")


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
    """One client per thread: it holds one websocket and is not thread-safe. `rest` is its HTTP layer."""

    def __init__(
        self,
        base_url: str,
        *,
        request_timeout: float = 30.0,
        silence_timeout: float = 300.0,
        render_deadline: float = 3 * 3600.0,
        client_id: str | None = None,
        poll_interval: float = 1.0,
        dead_after: float | None = None,
    ) -> None:
        self.rest = ComfyRest(base_url, timeout=request_timeout)
        self.base_url = self.rest.base_url
        self.request_timeout = request_timeout
        self.silence_timeout = silence_timeout
        self.render_deadline = render_deadline
        self.client_id = client_id or uuid.uuid4().hex
        self.poll_interval = poll_interval
        # None: only the silence deadline ends a wait on a server that does not answer (a refusing one is lost)
        self.dead_after = dead_after
        self._ws: ClientConnection | None = None
        self._graphs: dict[str, Graph] = {}
        self._pending_upload_seconds = 0.0
        self._worker_info: dict[str, Any] | None = None
        self._worker_info_asked = False

    def system_stats(self) -> dict[str, Any]:
        return self.rest.system_stats()

    def worker_info(self) -> dict[str, Any] | None:
        """What the worker's `infinitetalk_worker` extension reports (attention kernels, node commits, packages);
        None for a ComfyUI without it. Asked once per client."""
        if not self._worker_info_asked:
            self._worker_info = self.rest.worker()
            self._worker_info_asked = True
        return self._worker_info

    def queue(self, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None) -> tuple[list[str], list[str]]:
        """Prompt ids (running, pending)."""
        return self.rest.queue(attempts=attempts, timeout=timeout)

    def history(
        self, prompt_id: str, *, attempts: int = GET_ATTEMPTS, timeout: float | None = None
    ) -> HistoryEntry | None:
        """The finished prompt's history entry; None while it is queued or running."""
        return self.rest.history(prompt_id, attempts=attempts, timeout=timeout)

    def upload(self, path: Path, subfolder: str = "infinitetalk", sha256: str | None = None) -> str:
        """`ComfyRest.upload` (content-hash name, never overwriting), its time counted in the next RenderResult."""
        started = time.perf_counter()
        name = self.rest.upload(path, subfolder, sha256)
        self._pending_upload_seconds += time.perf_counter() - started
        return name

    def download(self, file_info: dict[str, Any], dest: Path) -> Path:
        """Stream one `/view` file to `dest` (via a temporary name, then an atomic rename)."""
        return self.rest.download(file_info, dest)

    def submit(self, graph: Graph, prompt_id: str | None = None) -> str:
        """Queue `graph`; raises ComfyValidationError on a 400 and on a 200 that carries `node_errors`.

        When it raises, the prompt is not left behind on the server: after a failure that may have queued it (the
        answer lost, a 5xx from ComfyUI or a proxy, Ctrl-C) it waits up to `request_timeout` for the prompt to
        show up and adopts it, and otherwise cancels its id before raising ComfyUnreachable.
        """
        prompt_id = prompt_id or str(uuid.uuid4())
        self._send(
            graph, prompt_id, lambda: self.rest.queue_prompt(graph, client_id=self.client_id, prompt_id=prompt_id)
        )
        return prompt_id

    def admit(self, graph: Graph, prompt_id: str, max_depth: int) -> bool:
        """`submit`, but only into a worker that holds fewer than `max_depth` prompts and is not draining (the
        worker decides atomically); False when it refused. Fails like `submit` otherwise."""
        return self._send(
            graph,
            prompt_id,
            lambda: self.rest.admit(graph, client_id=self.client_id, prompt_id=prompt_id, max_depth=max_depth),
        )

    def _send(self, graph: Graph, prompt_id: str, post: Callable[[], dict[str, Any] | None]) -> bool:
        """One POST that queues `graph` as `prompt_id`: True when queued, False when refused for lack of room."""
        try:
            answer = post()
        except ComfyConnectFailed:
            raise  # never reached the server: nothing was queued
        except ComfyUnreachable as exc:  # sent, but the answer is lost or a 5xx: it may be queued (or be queued soon)
            self._adopt_or_cancel(graph, prompt_id, str(exc), exc)
            return True
        except ComfyError:
            raise  # refused (ComfyValidationError on a 400): nothing was queued
        except BaseException:  # e.g. Ctrl-C while the request was on its way
            self.cancel_quietly(prompt_id)
            raise
        if answer is None:
            return False
        if answer.get("node_errors"):
            self.cancel_quietly(prompt_id)  # the valid outputs were queued anyway: do not let them run
            raise ComfyValidationError(
                answer.get("error"), answer["node_errors"], graph=graph, worker_url=self.base_url
            )
        self._graphs[prompt_id] = graph
        return True

    def ensure_events(self) -> None:
        """Open the websocket now if it is not open, so a prompt queued next reports from its first event."""
        if self._ws is None:
            self._connect_ws()

    def take_upload_seconds(self) -> float:
        """Seconds spent uploading through this client since the last call."""
        seconds, self._pending_upload_seconds = self._pending_upload_seconds, 0.0
        return seconds

    def forget(self, prompt_id: str) -> None:
        """Drop what this client keeps of a prompt that moved to another worker."""
        self._graphs.pop(prompt_id, None)

    def _adopt_or_cancel(self, graph: Graph, prompt_id: str, problem: str, cause: BaseException | None) -> str:
        """After an ambiguous POST /prompt: adopt the prompt if the server shows it within the grace period,
        else cancel its id (a no-op if it never arrives: the id is ours) and raise ComfyUnreachable."""
        grace = self.request_timeout
        try:
            if self._appears(prompt_id, grace):
                self._graphs[prompt_id] = graph
                return prompt_id
        except BaseException:
            self.cancel_quietly(prompt_id)
            raise
        error = ComfyUnreachable(
            f"{problem}; prompt {prompt_id} not seen on the server within {grace:.0f}s, cancelled",
            worker_url=self.base_url,
        )
        if (cancel_problem := self.cancel_quietly(prompt_id)) is not None:
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
            running, pending = self.rest.queue(attempts=1, timeout=timeout)
            if prompt_id in running or prompt_id in pending:
                return True
            return self.rest.history(prompt_id, attempts=1, timeout=timeout) is not None
        except ComfyError:
            return None

    def cancel(self, prompt_id: str, *, attempts: int = CANCEL_ATTEMPTS) -> None:
        """Remove `prompt_id` from the queue, and interrupt it if it is running (each is a no-op otherwise).

        Deleting first, then a targeted interrupt, also covers a prompt that starts between the two calls. Both
        are safe to repeat, so an unreachable server is retried with a short backoff before ComfyUnreachable.
        """
        timeout = min(5.0, self.request_timeout)

        def delete_and_interrupt() -> None:
            self.rest.delete_queued([prompt_id], timeout=timeout)
            self.rest.interrupt(prompt_id, timeout=timeout)

        with_backoff(delete_and_interrupt, attempts=attempts, first_delay=0.25)

    def cancel_quietly(self, prompt_id: str) -> ComfyError | None:
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
        outage: _Outage | None = None  # the polls' failures, while the server does not answer
        while True:
            now = time.monotonic()
            if now > deadline:
                raise ComfyTimeout(
                    f"prompt {prompt_id} passed the render deadline of {self.render_deadline:.0f}s",
                    worker_url=self.base_url,
                )
            if now - last_sign > self.silence_timeout:
                if outage is not None:
                    raise ComfyUnreachable(
                        f"prompt {prompt_id}: no sign of life for {self.silence_timeout:.0f}s, and the server does"
                        f" not answer: {outage.last}",
                        worker_url=self.base_url,
                    ) from outage.last
                raise ComfyTimeout(
                    f"prompt {prompt_id}: no sign of progress for {self.silence_timeout:.0f}s",
                    worker_url=self.base_url,
                )
            if self._ws is None and now >= next_connect:
                next_connect = now + 5.0
                self._connect_ws()
            listening = self._ws is not None
            message = self._receive(min(self.poll_interval, max(deadline - now, 0.01)))
            if listening and self._ws is None:
                next_poll = 0.0  # the socket dropped: ask over HTTP at once whether the server is still there
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
                    running, pending = self.rest.queue(attempts=1, timeout=timeout)
                    entry = self.rest.history(prompt_id, attempts=1, timeout=timeout)
                except ComfyUnreachable as exc:
                    outage = outage or _Outage()
                    outage.record(exc)
                    if (lost := outage.lost(self.dead_after)) is not None:
                        raise ComfyWorkerLost(f"prompt {prompt_id}: {lost}: {exc}", worker_url=self.base_url) from exc
                    continue
                outage = None
                if entry is not None:
                    return _check_history(prompt_id, entry, self.base_url)
                if prompt_id in pending:
                    last_sign = time.monotonic()  # waiting its turn is not silence
                elif prompt_id not in running:
                    raise ComfyPromptVanished(
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
            entry = self.rest.history(prompt_id)
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
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):  # e.g. the server died mid-handshake
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
        self.ensure_events()  # before submitting, so no early event is missed
        upload_seconds = self.take_upload_seconds()
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
            problem = self.cancel_quietly(prompt_id) if submitted or not isinstance(exc, ComfyError) else None
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
        self.rest.close()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class _Outage:
    """The polls a server has not answered since its last answer, and how many of the latest were refused."""

    since: float = field(default_factory=time.monotonic)
    last: ComfyUnreachable | None = None
    refusals: int = 0  # the latest polls in a row that were refused
    refused_since: float = 0.0

    def record(self, exc: ComfyUnreachable) -> None:
        self.last = exc
        if not isinstance(exc, ComfyRefused):
            self.refusals = 0  # a timeout or a reset: something may still be there, frozen or cut off
            return
        if self.refusals == 0:
            self.refused_since = time.monotonic()
        self.refusals += 1

    def lost(self, dead_after: float | None) -> str | None:
        """Why the server is presumed gone with our prompt; None while it may still answer with it."""
        refused_for = time.monotonic() - self.refused_since
        if self.refusals >= REFUSALS_TO_LOSE and refused_for >= REFUSED_FOR:
            return f"its port refused {self.refusals} connections in a row over {refused_for:.1f}s: the worker is gone"
        if dead_after is not None and time.monotonic() - self.since > dead_after:
            return f"the server has not answered for {dead_after:.0f}s"
        return None


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

"""Typed ComfyUI failures. Each says whether retrying the same prompt can help (`transient`), so callers (the
Dagster retry policy, the CLI's exit message) decide without parsing messages."""

from __future__ import annotations

from typing import Any

from infinitetalk_pipeline.errors import PipelineError


class ComfyError(PipelineError):
    """Base of every ComfyUI failure; `transient` is True when a retry (maybe elsewhere) may succeed."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None, worker_url: str | None = None) -> None:
        if worker_url and worker_url not in message:
            message = f"{message} (worker {worker_url})"
        super().__init__(message)
        if transient is not None:
            self.transient = transient
        self.worker_url = worker_url


class ComfyUnreachable(ComfyError):
    """The server did not answer usefully (reset, HTTP timeout, a 5xx from it or a proxy): another attempt or worker
    may work. A request that was sent may have taken effect."""

    transient = True


class ComfyWorkerLost(ComfyUnreachable):
    """The worker held our prompt and is presumed dead, so the render may move to another worker: its port refused
    connections for a few seconds (the process is gone; one restarted meanwhile has lost the prompt), or it did
    not answer for longer than the dead-worker deadline."""


class ComfyConnectFailed(ComfyUnreachable):
    """No connection could be made (refused, DNS, connect timeout): the request never reached the server, so even a
    POST is known not to have taken effect."""


class ComfyRefused(ComfyConnectFailed):
    """The connection was refused: the host answered that nothing listens on the port (the server process is gone
    or restarting). Unlike a timeout, which a frozen server or a network partition also gives, it is an answer."""


class ComfyHTTPError(ComfyError):
    """The server refused a request with a status other than 2xx and 5xx: the same request gets the same answer."""

    def __init__(self, message: str, status_code: int, body: str, *, worker_url: str | None = None) -> None:
        super().__init__(message, worker_url=worker_url)
        self.status_code = status_code
        self.body = body


class ComfyValidationError(ComfyError):
    """ComfyUI refused the graph (400), or accepted only part of it (200 with non-empty `node_errors`).

    The same graph fails the same way, so never transient.
    """

    def __init__(
        self,
        error: dict[str, Any] | None,
        node_errors: dict[str, Any],
        *,
        graph: dict[str, Any] | None = None,
        worker_url: str | None = None,
    ) -> None:
        self.error = error or {}
        self.node_errors = node_errors
        super().__init__(_validation_message(self.error, node_errors, graph or {}), worker_url=worker_url)


class ComfyExecutionError(ComfyError):
    """A node raised while running (ComfyUI's `execution_error`): bad media, missing model, out of memory."""

    def __init__(
        self,
        node_id: str | None,
        node_type: str | None,
        exception_message: str,
        *,
        exception_type: str | None = None,
        traceback: list[str] | None = None,
        worker_url: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.exception_message = exception_message
        self.exception_type = exception_type
        self.traceback = traceback or []
        kind = f"{exception_type}: " if exception_type else ""
        super().__init__(
            f"node {node_id} ({node_type}) failed: {kind}{exception_message.strip()}", worker_url=worker_url
        )


class ComfyInterrupted(ComfyError):
    """The prompt was interrupted or removed from the queue (by us, an operator, or a restart)."""

    transient = True


class ComfyPromptVanished(ComfyInterrupted):
    """The prompt left the worker's queue without a result: deleted by someone, or the server restarted."""


class ComfyTimeout(ComfyError):
    """No sign of progress within the silence deadline, or the whole render passed its deadline."""

    transient = True


class ComfyOutputMissing(ComfyError):
    """The prompt succeeded but the named output node reported no file (wrong node, or it saved nothing)."""


def _validation_message(error: dict[str, Any], node_errors: dict[str, Any], graph: dict[str, Any]) -> str:
    """One readable line per failing node: id, class and ComfyUI's own message and details."""
    parts: list[str] = []
    head = error.get("message") or "prompt failed validation"
    details = error.get("details")
    parts.append(f"{head} ({details})" if details and not node_errors else head)
    for node_id, entry in node_errors.items():
        class_type = entry.get("class_type") or graph.get(node_id, {}).get("class_type", "?")
        for err in entry.get("errors", []):
            detail = f": {err['details']}" if err.get("details") else ""
            parts.append(f"node {node_id} ({class_type}): {err.get('message', err.get('type', '?'))}{detail}")
    return "; ".join(parts)

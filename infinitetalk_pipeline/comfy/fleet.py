"""Dispatch over a fleet of ComfyUI workers: every worker kept one prompt deep, and kept healthy.

The GPU is held only while ComfyUI renders: inputs are fetched, conformed and uploaded before a prompt is admitted,
and the output is downloaded, checked and stored after it ends. What keeps a GPU from idling between two renders is
the next prompt already waiting in its ComfyUI queue (`queue_depth` prompts beyond the running one).

Routing is decided by the workers, so any number of runs in any number of processes or pods agree without a
coordinator: the `infinitetalk_worker` extension admits a prompt only while the worker holds fewer than a given
number of prompts and is not draining, atomically under ComfyUI's queue lock. A prompt is offered first to idle
workers (at most 1 held), then to workers with room for a waiting prompt (up to `queue_depth` + 1): two runs can
never both queue behind one busy worker while another sits idle. While a prompt waits, its owner watches the fleet:
when another worker goes idle (or its own starts draining) it withdraws the prompt (atomic too: withdrawn means it
will never run there) and re-admits it on that worker, so the work moves and never runs twice.

Health: after each render the owner asks ComfyUI to free memory (`free_after_job`), reads the worker's jobs since
start, RAM and VRAM, and drains a worker past the policy's limits; a drained worker finishes its running prompt,
receives nothing new, and once idle answers 503 on `/infinitetalk/live`, which its supervisor (`infinitetalk comfyui
start`) or Kubernetes' liveness probe turns into a restart. A worker that does not answer gets no work until it
answers again; a render on a worker that dies moves to another worker.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from infinitetalk_pipeline.comfy.client import (
    REFUSALS_TO_LOSE,
    REFUSED_FOR,
    ComfyClient,
    Graph,
    ProgressCallback,
    RenderResult,
    output_file,
)
from infinitetalk_pipeline.comfy.client import execution_seconds as history_execution_seconds
from infinitetalk_pipeline.comfy.errors import (
    ComfyError,
    ComfyOutputMissing,
    ComfyPromptVanished,
    ComfyRefused,
    ComfyUnreachable,
    ComfyWorkerLost,
)
from infinitetalk_pipeline.comfy.rest import ComfyRest, HistoryEntry
from infinitetalk_pipeline.redact import redact_text, redact_url

FreeMode = Literal["off", "unload", "free"]
STATE_TIMEOUT = 3.0  # a worker that does not answer its state this fast is passed over for this round
MAX_MOVES_AFTER_LOSS = 3  # a render that lost its worker this many times fails (transient: Dagster retries it)
MAX_ATTEMPTS = 50  # prompt ids of a lineage looked at before a render gives up (each failed attempt takes one)
LINEAGE_NAMESPACE = uuid.UUID("5b0c6f0e-9d43-4c1e-a7a4-2f4e8d7c1b90")

# Binds the clip's graph for one worker: uploads the inputs there and fills in what depends on the worker.
GraphFor = Callable[[ComfyClient], Graph]


class _Redacted(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The run's log, with credentials in worker URLs (`https://user:token@gpu-1/`, behind a proxy) masked."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return redact_text(str(msg)), kwargs


def comfyui_urls(text: str) -> list[str]:
    """Worker URLs from a comma-separated setting."""
    return [u.strip().rstrip("/") for u in text.split(",") if u.strip()]


def _prompt_ids(lineage: Lineage | None) -> Iterator[str]:
    """Prompt ids for the attempts of a render: its lineage's (passing over spent ones), else fresh uuid4s."""
    if lineage is None:
        while True:
            yield str(uuid.uuid4())
    for attempt in range(MAX_ATTEMPTS):
        prompt_id = lineage.prompt_id(attempt)
        if prompt_id not in lineage.spent:
            yield prompt_id
    raise ComfyError(f"render {lineage.key}: {MAX_ATTEMPTS} attempts used up")


def in_prompt_folder(graph: Graph, prompt_id: str) -> Graph:
    """The graph with every `filename_prefix` moved into a folder named after the prompt (`a/clip` ->
    `a/<prompt_id>/clip`): the worker extension deletes exactly that folder once the video is stored, and at once
    when the prompt fails or is interrupted (its partial files), without touching another render's files."""
    tagged = {}
    for node_id, node in graph.items():
        prefix = node.get("inputs", {}).get("filename_prefix")
        if isinstance(prefix, str):
            head, _, name = prefix.rpartition("/")
            folder = f"{head}/{prompt_id}" if head else prompt_id
            node = {**node, "inputs": {**node["inputs"], "filename_prefix": f"{folder}/{name}"}}
        tagged[node_id] = node
    return tagged


def _succeeded(entry: HistoryEntry) -> bool:
    status = entry.get("status") or {}
    return status.get("status_str") == "success" or bool(status.get("completed"))


@dataclass(frozen=True)
class HealthPolicy:
    """What a worker gets after each render. Limits of 0 are off."""

    free_after_job: FreeMode = "unload"  # "unload": models leave VRAM; "free": also ComfyUI's caches; "off"
    max_jobs: int = 100  # drain and restart after this many renders since start
    max_ram_fraction: float = 0.9  # ... or when its machine's RAM is this full after a render
    max_vram_fraction: float = 0.0  # ... or its GPU's memory (off by default: a loaded model fills it legitimately)

    def free_request(self) -> dict[str, bool] | None:
        if self.free_after_job == "off":
            return None
        return {"unload_models": True, "free_memory": self.free_after_job == "free"}


@dataclass(frozen=True)
class WorkerState:
    url: str
    boot_id: str
    jobs_done: int
    running: tuple[str, ...]
    pending: tuple[str, ...]
    draining: dict[str, Any] | None
    supervisor: str | None
    admitted_at: dict[str, int | None] = field(default_factory=dict)  # prompt id -> ms, the worker's clock

    @property
    def depth(self) -> int:
        return len(self.running) + len(self.pending)

    @classmethod
    def parse(cls, url: str, body: dict[str, Any]) -> WorkerState:
        return cls(
            url=url,
            boot_id=str(body["boot_id"]),
            jobs_done=int(body["jobs_done"]),
            running=tuple(body["running"]),
            pending=tuple(body["pending"]),
            draining=body.get("draining"),
            supervisor=body.get("supervisor"),
            admitted_at=dict(body.get("admitted_at") or {}),
        )


# How a render came to follow its prompt: "placed" by this attempt; "found" on the fleet (left by an earlier attempt,
# or moved by another one); a "rival" copy that this attempt's own copy gave way to (`Fleet._one_copy`).
Origin = Literal["placed", "found", "rival"]


@dataclass
class _Placement:
    client: ComfyClient
    prompt_id: str
    boot_id: str
    origin: Origin

    @property
    def owned(self) -> bool:
        """Placed by this attempt, so cancelled when it fails; a prompt it adopted is its placer's to cancel (another
        run may be following it)."""
        return self.origin == "placed"


@dataclass
class _Job:
    """One render's own things: its clients (one per worker it touched) and its graph bound per worker process."""

    graph_for: GraphFor
    label: str
    clients: dict[str, ComfyClient] = field(default_factory=dict)
    graphs: dict[tuple[str, str], Graph] = field(default_factory=dict)

    def graph(self, state: WorkerState, client: ComfyClient) -> Graph:
        """Uploads once per worker process (a restarted worker may have lost its input folder)."""
        key = (state.url, state.boot_id)
        if key not in self.graphs:
            self.graphs[key] = self.graph_for(client)
        return self.graphs[key]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@dataclass(frozen=True)
class Lineage:
    """A render's identity beyond its run: prompt ids derived from what is rendered, one per attempt. Any later
    attempt (a Dagster retry, a re-run after the run's process died) finds the render on the fleet by these ids and
    adopts it, queued, running or finished, instead of rendering it again. Ids in `spent` (an output that failed
    its checks) and attempts that ended in an error are passed over."""

    key: str
    spent: frozenset[str] = frozenset()

    def prompt_id(self, attempt: int) -> str:
        return str(uuid.uuid5(LINEAGE_NAMESPACE, f"{self.key}#{attempt}"))


@dataclass(frozen=True)
class _Found:
    """A prompt of a lineage found on a worker: still waiting or running (`entry` None), or finished."""

    url: str
    boot_id: str
    entry: HistoryEntry | None


class Fleet:
    """The workers of one run (thread-safe: the run's lanes share it); `render` places, follows and collects one
    prompt. Clients are per call, since a ComfyClient is not thread-safe."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        queue_depth: int = 1,
        request_timeout: float = 30.0,
        silence_timeout: float = 300.0,
        render_deadline: float = 3 * 3600.0,
        dead_after: float = 60.0,
        poll_interval: float = 0.5,
        refused_grace: float = 60.0,
        policy: HealthPolicy | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if not urls:
            raise ValueError("a fleet needs at least one ComfyUI URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.queue_depth = queue_depth
        self.request_timeout = request_timeout
        self.silence_timeout = silence_timeout
        self.render_deadline = render_deadline
        self.dead_after = dead_after
        self.poll_interval = poll_interval
        # Seconds every port must keep refusing, no worker having answered this fleet yet, before a render fails as
        # "no worker is running" (never sooner than refusals are conclusive). A minute by default, for Dagster runs:
        # each builds its own fleet and may start while every worker restarts (drained) or loads its custom nodes.
        # The CLI, a person waiting, passes 0.
        self.refused_grace = refused_grace
        self.policy = policy or HealthPolicy()
        self.log = _Redacted(log or logging.getLogger(__name__))
        self._rest = {url: ComfyRest(url, timeout=STATE_TIMEOUT) for url in self.urls}
        self._pool = ThreadPoolExecutor(max_workers=min(len(self.urls), 16), thread_name_prefix="fleet-state")
        self._lock = threading.Lock()
        self._states: dict[str, WorkerState | None] = {}
        self._states_at = 0.0
        self._down: set[str] = set()  # workers last seen not answering: said once, and again when they answer
        self._refusing: set[str] = set()  # workers whose port refused the last state request: no process there
        self._answered: set[str] = set()  # workers that have answered this fleet at least once

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for rest in self._rest.values():
            rest.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the fleet's state ---------------------------------------------------------------------------------------

    def state(self, url: str) -> WorkerState | None:
        """One worker's state now; None when it does not answer (it then gets no work). Raises ComfyError for a
        worker without our extension: a configuration error, not an outage."""
        try:
            body = self._rest[url].state(attempts=1)
        except ComfyUnreachable as exc:
            self._mark_down(url, exc)
            with self._lock:
                if isinstance(exc, ComfyRefused):
                    self._refusing.add(url)
                else:
                    self._refusing.discard(url)
            return None
        self._mark_up(url)
        with self._lock:
            self._refusing.discard(url)
            self._answered.add(url)
        return WorkerState.parse(url, body)

    def states(self, max_age: float | None = None) -> dict[str, WorkerState | None]:
        """Every worker's state, asked in parallel; answers younger than `max_age` (default: half a poll) are shared
        between the lanes of this run."""
        max_age = self.poll_interval / 2 if max_age is None else max_age
        with self._lock:
            if time.monotonic() - self._states_at <= max_age and self._states:
                return dict(self._states)
        states = dict(zip(self.urls, self._pool.map(self.state, self.urls), strict=True))
        with self._lock:
            self._states, self._states_at = states, time.monotonic()
        return dict(states)

    def _mark_down(self, url: str, exc: ComfyError) -> None:
        with self._lock:
            if url in self._down:
                return
            self._down.add(url)
        self.log.warning(f"worker {url} does not answer; it gets no work until it does: {exc}")

    def _mark_up(self, url: str) -> None:
        with self._lock:
            if url not in self._down:
                return
            self._down.discard(url)
        self.log.info(f"worker {url} answers again")

    # --- one render ----------------------------------------------------------------------------------------------

    def render(
        self,
        graph_for: GraphFor,
        output_node: str,
        dest: Path,
        *,
        label: str = "render",
        on_progress: ProgressCallback | None = None,
        lineage: Lineage | None = None,
    ) -> RenderResult:
        """Place the prompt on the fleet, follow it (moving it while it waits, if a worker goes idle), download the
        file of `output_node` to `dest`, then apply the health policy to the worker that rendered it. With a
        `lineage`, a render of it already on the fleet is adopted first (its output taken if it has finished)."""
        job = _Job(graph_for, label)
        ids = _prompt_ids(lineage)
        losses = 0
        placement: _Placement | None = None
        resume: tuple[_Placement, HistoryEntry | None] | None = None
        try:
            while True:
                t0 = time.perf_counter()
                if resume is not None:
                    (placement, finished), resume = resume, None
                else:
                    placement, finished = self._start(job, next(ids), adopt=lineage is not None)
                if placement is None:
                    continue  # that attempt failed earlier: the lineage's next id
                t1 = time.perf_counter()
                try:
                    if finished is None:
                        placement, finished = self._until_started(job, placement, adopt=lineage is not None)
                    entry = finished or placement.client.wait(placement.prompt_id, on_progress)
                    t2 = time.perf_counter()
                    path = placement.client.download(output_file(entry, output_node, placement.prompt_id), dest)
                except ComfyOutputMissing as exc:
                    # Ours, or a rival attempt's (running now: its run stored the video, then released the files):
                    # the caller takes what was stored. An earlier attempt's may be long gone: render it again.
                    if finished is None or placement.origin == "rival":
                        raise
                    self.log.warning(f"{label}: the adopted prompt's output is gone ({exc}); rendering again")
                    placement = None
                    continue
                except (ComfyWorkerLost, ComfyPromptVanished) as exc:
                    if isinstance(exc, ComfyPromptVanished) and not self._restarted(placement):
                        # Another attempt of the same render that follows it too may have moved it: follow it
                        # there. Otherwise it was deleted from the queue by someone: their decision to keep.
                        moved = self._find(placement.prompt_id) if lineage is not None else None
                        if moved is None or moved.url == placement.client.base_url:
                            raise
                        resume = self._adopt(job, placement.prompt_id, moved, "moved by another attempt", "found")
                        placement = None
                        continue
                    losses += 1
                    if losses > MAX_MOVES_AFTER_LOSS:
                        raise
                    self.log.warning(f"{label}: {exc}; rendering it on another worker")
                    placement = None
                    continue
                break
            t3 = time.perf_counter()
            if finished is None:
                self._after_job(placement.client.base_url, label)
            return RenderResult(
                prompt_id=placement.prompt_id,
                output_path=path,
                worker_url=placement.client.base_url,
                execution_seconds=history_execution_seconds(entry),
                upload_seconds=sum(c.take_upload_seconds() for c in job.clients.values()),
                submit_seconds=t1 - t0,
                wait_seconds=t2 - t1,
                download_seconds=t3 - t2,
            )
        except BaseException as exc:
            # A failure or Ctrl-C while the prompt we placed is queued or running; one adopted is its placer's.
            if placement is not None and placement.owned:
                problem = placement.client.cancel_quietly(placement.prompt_id)
                if problem is not None:
                    exc.add_note(f"cancelling prompt {placement.prompt_id} failed, it may still run: {problem}")
            raise
        finally:
            job.close()

    def _start(self, job: _Job, prompt_id: str, *, adopt: bool) -> tuple[_Placement | None, HistoryEntry | None]:
        """The prompt placed on the fleet, or (`adopt`) found there already: waiting or running, or finished (its
        history entry comes along). (None, None) for a prompt that ended in an error: not to be adopted."""
        found = self._find(prompt_id) if adopt else None
        if found is None:
            placement = self._place(job, prompt_id)
            if not adopt:
                return placement, None
            try:
                return self._one_copy(job, placement)
            except BaseException:
                # Render learns of our copy only from what this returns: cancel it here, or it runs on unwatched.
                placement.client.cancel_quietly(prompt_id)
                raise
        if found.entry is not None and not _succeeded(found.entry):
            return None, None
        return self._adopt(job, prompt_id, found, "left by an earlier attempt", "found")

    def _adopt(
        self, job: _Job, prompt_id: str, found: _Found, why: str, origin: Origin
    ) -> tuple[_Placement, HistoryEntry | None]:
        state = "finished" if found.entry is not None else "queued or running"
        self.log.info(f"{job.label}: adopting prompt {prompt_id}, {state} on {found.url} ({why})")
        return _Placement(self._client(job, found.url), prompt_id, found.boot_id, origin), found.entry

    def _find(self, prompt_id: str) -> _Found | None:
        """Where `prompt_id` is on the fleet: waiting or running on a worker, else in a worker's history."""
        states = {url: s for url, s in self.states(max_age=0).items() if s is not None}
        for state in states.values():
            if prompt_id in state.running or prompt_id in state.pending:
                return _Found(state.url, state.boot_id, None)
        return self._in_history(prompt_id, states.values())

    def _in_history(self, prompt_id: str, states: Iterable[WorkerState]) -> _Found | None:
        """`prompt_id` in the history of one of these workers: a successful entry before a failed one (an attempt
        that lost a race may have left an interrupted copy); workers that do not answer are passed over."""
        failed: _Found | None = None
        for state in states:
            try:
                entry = self._rest[state.url].history(prompt_id, attempts=1)
            except ComfyUnreachable:
                continue
            if entry is not None:
                if _succeeded(entry):
                    return _Found(state.url, state.boot_id, entry)
                failed = failed or _Found(state.url, state.boot_id, entry)
        return failed

    def _one_copy(self, job: _Job, placement: _Placement) -> tuple[_Placement, HistoryEntry | None]:
        """Two attempts of one render running at once (two runs of a clip) can both find nothing and place it on
        two workers. Right after placing (or moving) its copy, an attempt looks for another. A copy that has already
        succeeded elsewhere wins: ours is withdrawn or interrupted and that output is taken. Of two copies waiting
        or running, the one admitted later (ties: the larger worker URL) acts, and the earlier one's attempt does
        nothing: it withdraws its own copy if still waiting and follows the other; if its own already runs, it
        withdraws the other instead (whose attempt, finding its prompt gone, follows this one); if both run, it
        interrupts its own. The later attempt sees the earlier copy waiting, running or finished; a copy moved
        since is admitted anew, so its attempt looks again (`_until_started`). Withdrawal is atomic on the worker,
        so no step removes both copies; a worker that does not answer midway can leave both running. Workers'
        clocks must agree to well under the time an admission takes."""
        prompt_id, url = placement.prompt_id, placement.client.base_url
        states = {u: s for u, s in self.states(max_age=0).items() if s is not None}
        own = states.get(url)
        own_at = own.admitted_at.get(prompt_id) if own is not None else None
        if own_at is None:  # no longer waiting or running there: nothing left to compare
            return placement, None
        others = [s for u, s in states.items() if u != url]
        earlier = [
            s
            for s in others
            if (prompt_id in s.running or prompt_id in s.pending)
            and ((s.admitted_at.get(prompt_id) or 0), s.url) < (own_at, url)
        ]
        if not earlier:
            # Read after the states: a copy that finished in between was seen there, waiting or running.
            done = self._in_history(prompt_id, others)
            if done is None or done.entry is None or not _succeeded(done.entry):
                return placement, None
            problem = placement.client.cancel_quietly(prompt_id)
            if problem is not None:
                self.log.warning(f"{job.label}: prompt {prompt_id} may still run on {url}, uncollected: {problem}")
            placement.client.forget(prompt_id)
            return self._adopt(job, prompt_id, done, "finished there by another attempt", "rival")
        other = min(earlier, key=lambda s: ((s.admitted_at.get(prompt_id) or 0), s.url))
        if placement.client.rest.withdraw(prompt_id):
            placement.client.forget(prompt_id)
            found = _Found(other.url, other.boot_id, None)
            return self._adopt(job, prompt_id, found, "placed there first by another attempt", "rival")
        try:
            withdrawn = self._rest[other.url].withdraw(prompt_id)
        except ComfyUnreachable as exc:
            # Perhaps withdrawn, its answer lost: interrupting ours too could leave no copy at all.
            self.log.warning(f"{job.label}: prompt {prompt_id} kept; its copy on {other.url} may run too: {exc}")
            return placement, None
        if withdrawn:
            self.log.info(f"{job.label}: prompt {prompt_id} also waited on {other.url}; that copy withdrawn")
            return placement, None
        placement.client.cancel_quietly(prompt_id)  # both copies run: ours, the later one, gives way
        placement.client.forget(prompt_id)
        found = _Found(other.url, other.boot_id, None)
        return self._adopt(job, prompt_id, found, "running there too, admitted first", "rival")

    def _client(self, job: _Job, url: str) -> ComfyClient:
        if url not in job.clients:
            job.clients[url] = ComfyClient(
                url,
                request_timeout=self.request_timeout,
                silence_timeout=self.silence_timeout,
                render_deadline=self.render_deadline,
                dead_after=self.dead_after,
            )
        return job.clients[url]

    def _place(self, job: _Job, prompt_id: str) -> _Placement:
        """Admit the prompt somewhere, idle workers first; wait while every worker is full. ComfyUnreachable when no
        worker has answered for the silence deadline."""
        said_waiting = False
        last_answer = time.monotonic()
        refusals, first_refusal = 0, 0.0
        while True:
            states = self.states()  # shared and at most half a poll old: the worker itself decides admission
            open_ = [s for s in states.values() if s is not None and not s.draining]
            if any(s is not None for s in states.values()):
                last_answer, refusals = time.monotonic(), 0
            elif self._refusing >= set(self.urls) and not self._answered:
                # Every port refuses and none has answered yet: no worker process is running (a fleet that is down,
                # or a wrong URL), or every one is starting (`refused_grace`). Fail then, as transient: Dagster's
                # retries come back once the fleet is up, a person at the CLI sees why. A worker seen before is
                # restarting (drained): that is waited for.
                refusals, first_refusal = refusals + 1, first_refusal if refusals else time.monotonic()
                refused_for = time.monotonic() - first_refusal
                if refusals >= REFUSALS_TO_LOSE and refused_for >= max(self.refused_grace, REFUSED_FOR):
                    raise ComfyUnreachable(
                        f"{job.label}: no ComfyUI worker is running (every port refused connections for "
                        f"{refused_for:.0f}s): " + ", ".join(redact_url(u) for u in self.urls)
                    )
            elif time.monotonic() - last_answer > self.silence_timeout:
                raise ComfyUnreachable(
                    f"{job.label}: no ComfyUI worker answered for {self.silence_timeout:.0f}s: "
                    + ", ".join(redact_url(u) for u in self.urls)
                )
            for limit in range(1, self.queue_depth + 2):
                candidates = [s for s in open_ if s.depth < limit]
                random.shuffle(candidates)  # runs that look at the same moment spread over equal workers
                for state in sorted(candidates, key=lambda s: s.depth):
                    if self._admit(job, state, prompt_id, limit):
                        if said_waiting:
                            self.log.info(f"{job.label}: queued on {state.url}")
                        return _Placement(job.clients[state.url], prompt_id, state.boot_id, "placed")
            if not said_waiting:
                said_waiting = True
                busy = ", ".join(f"{s.url} ({s.depth})" for s in open_) or "none answering"
                self.log.info(f"{job.label}: every worker is full, waiting for a place (queues: {busy})")
            time.sleep(self.poll_interval)

    def _admit(self, job: _Job, state: WorkerState, prompt_id: str, limit: int) -> bool:
        """Upload the inputs to `state`'s worker (before the prompt holds a place there) and admit the prompt if
        the worker holds fewer than `limit` prompts."""
        client = self._client(job, state.url)
        try:
            graph = job.graph(state, client)
            client.ensure_events()  # listening before the prompt can start, so no early event is missed
            return client.admit(in_prompt_folder(graph, prompt_id), prompt_id, limit)
        except ComfyUnreachable as exc:
            self._mark_down(state.url, exc)
            return False

    def _until_started(
        self, job: _Job, placement: _Placement, *, adopt: bool
    ) -> tuple[_Placement, HistoryEntry | None]:
        """While the prompt waits in a queue, move it to a worker that goes idle (or away from one that drains).
        A moved prompt is admitted anew, later than it was: with `adopt` (a lineage, which another attempt may have
        placed too) its copy is compared with the others again (`_one_copy`). Returns the prompt to follow, and its
        history entry when that is a copy already finished."""
        first = placement
        try:
            while True:
                state = self.state(placement.client.base_url)
                if state is None or placement.prompt_id not in state.pending:
                    return placement, None  # running, finished, lost or unreachable: `wait` follows each case
                target = self._move_target(state)
                moved = self._move(job, placement, target) if target is not None else None
                if moved is None:
                    time.sleep(self.poll_interval)
                    continue
                placement = moved
                if adopt:
                    placement, finished = self._one_copy(job, placement)
                    if finished is not None:
                        return placement, finished
        except BaseException:
            if placement is not first and placement.owned:  # moved here: render knows only the copy it placed
                placement.client.cancel_quietly(placement.prompt_id)
            raise

    def _move_target(self, own: WorkerState) -> WorkerState | None:
        """An idle worker, or for a prompt on a draining worker any worker with room; None to stay."""
        limit = self.queue_depth + 1 if own.draining else 1
        room = [
            s
            for s in self.states().values()
            if s is not None and s.url != own.url and not s.draining and s.depth < limit
        ]
        return min(room, key=lambda s: s.depth) if room else None

    def _move(self, job: _Job, placement: _Placement, target: WorkerState) -> _Placement | None:
        """Withdraw the waiting prompt and admit it on `target`; None when it started meanwhile (it stays). If
        `target` filled up meanwhile, the prompt is placed again like a new one."""
        client = self._client(job, target.url)
        source = placement.client
        try:
            job.graph(target, client)  # upload before taking the prompt out of its queue
            client.ensure_events()
            withdrawn = source.rest.withdraw(placement.prompt_id)
        except ComfyUnreachable as exc:
            self._mark_down(exc.worker_url or target.url, exc)
            return None  # not known to be withdrawn: it stays where it is
        if not withdrawn:
            return None
        source.forget(placement.prompt_id)
        if self._admit(job, target, placement.prompt_id, self.queue_depth + 1 if target.depth else 1):
            self.log.info(f"{job.label}: moved from {source.base_url} to {target.url}")
            return _Placement(client, placement.prompt_id, target.boot_id, "placed")
        return self._place(job, placement.prompt_id)

    def _restarted(self, placement: _Placement) -> bool:
        """True when the worker of a vanished prompt is a new process (its queue and history were lost)."""
        state = self.state(placement.client.base_url)
        return state is not None and state.boot_id != placement.boot_id

    def release(self, result: RenderResult) -> None:
        """Delete a render's files on its worker, once its video is stored and recorded: a worker's disk holds only
        what is still to be collected (an adopted prompt's output is downloaded again until then). A failure here is
        logged, never raised: the video is safe."""
        rest = self._rest.get(result.worker_url)
        if rest is None:
            return
        try:
            rest.delete_outputs(result.prompt_id)
        except ComfyError as exc:
            self.log.warning(f"could not delete prompt {result.prompt_id}'s files on {result.worker_url}: {exc}")

    # --- health --------------------------------------------------------------------------------------------------

    def _after_job(self, url: str, label: str) -> None:
        """Free memory, read the worker's health, drain it past the policy's limits. A worker that does not answer
        here costs nothing: the render is already safe."""
        rest = self._rest[url]
        try:
            free = self.policy.free_request()
            if free is not None:
                rest.free(**free)
            health = worker_health(rest)
        except ComfyError as exc:
            self.log.warning(f"{label}: health check of {url} after its render failed: {exc}")
            return
        self.log.info(f"{label}: worker {url}: {health.summary()}")
        reasons = health.over_limits(self.policy)
        if not reasons or health.draining:
            return
        reason = "; ".join(reasons)
        try:
            rest.drain(reason)
        except ComfyError as exc:
            self.log.warning(f"could not drain worker {url} ({reason}): {exc}")
            return
        restarter = (
            f"its supervisor ({health.supervisor}) restarts it"
            if health.supervisor
            else "restart it (its /infinitetalk/live answers 503, which a Kubernetes liveness probe acts on)"
        )
        self.log.warning(f"draining worker {url}: {reason}; it finishes its render, then {restarter}")


@dataclass(frozen=True)
class WorkerHealth:
    url: str
    reachable: bool
    depth: int | None = None
    jobs_done: int | None = None
    ram_fraction: float | None = None
    vram_fraction: float | None = None
    rss_bytes: int | None = None
    draining: str | None = None
    supervisor: str | None = None
    comfyui_version: str | None = None
    problem: str | None = None

    def summary(self) -> str:
        if not self.reachable:
            return f"not answering ({self.problem})"
        parts = [f"{self.jobs_done} jobs since start", f"queue {self.depth}"]
        if self.ram_fraction is not None:
            parts.append(f"RAM {self.ram_fraction:.0%}")
        if self.vram_fraction is not None:
            parts.append(f"VRAM {self.vram_fraction:.0%}")
        if self.draining:
            parts.append(f"draining: {self.draining}")
        return ", ".join(parts)

    def over_limits(self, policy: HealthPolicy) -> list[str]:
        reasons = []
        if policy.max_jobs and (self.jobs_done or 0) >= policy.max_jobs:
            reasons.append(f"{self.jobs_done} jobs since start (limit {policy.max_jobs})")
        if policy.max_ram_fraction and (self.ram_fraction or 0) > policy.max_ram_fraction:
            reasons.append(f"RAM {self.ram_fraction:.0%} (limit {policy.max_ram_fraction:.0%})")
        if policy.max_vram_fraction and (self.vram_fraction or 0) > policy.max_vram_fraction:
            reasons.append(f"VRAM {self.vram_fraction:.0%} (limit {policy.max_vram_fraction:.0%})")
        return reasons

    def row(self) -> dict[str, Any]:
        return {
            "worker": redact_url(self.url),
            "reachable": self.reachable,
            "queue": self.depth,
            "jobs_since_start": self.jobs_done,
            "ram": None if self.ram_fraction is None else round(self.ram_fraction, 3),
            "vram": None if self.vram_fraction is None else round(self.vram_fraction, 3),
            "rss_mb": None if self.rss_bytes is None else round(self.rss_bytes / 2**20),
            "draining": self.draining or "",
            "supervisor": self.supervisor or "",
            "comfyui": self.comfyui_version or "",
            "problem": redact_text(self.problem or ""),  # a ComfyError quotes the worker's URL whole
        }


def worker_health(rest: ComfyRest) -> WorkerHealth:
    """`/system_stats` and the extension's state of one worker; raises ComfyError when it does not answer."""
    stats = rest.system_stats(attempts=1)
    body = rest.state(attempts=1)
    system = stats.get("system", {})
    ram_total, ram_free = system.get("ram_total"), system.get("ram_free")
    devices = [d for d in stats.get("devices", []) if d.get("vram_total")]
    vram = max((1 - d["vram_free"] / d["vram_total"] for d in devices), default=None) if devices else None
    draining = body.get("draining")
    return WorkerHealth(
        url=rest.base_url,
        reachable=True,
        depth=len(body["running"]) + len(body["pending"]),
        jobs_done=int(body["jobs_done"]),
        ram_fraction=1 - ram_free / ram_total if ram_total else None,
        vram_fraction=vram,
        rss_bytes=body.get("rss_bytes"),
        draining=draining.get("reason") if draining else None,
        supervisor=body.get("supervisor"),
        comfyui_version=system.get("comfyui_version"),
    )


def fleet_health(urls: Sequence[str], timeout: float = STATE_TIMEOUT) -> list[WorkerHealth]:
    """Every worker's health, asked in parallel; a worker that does not answer is a row that says so."""

    def one(url: str) -> WorkerHealth:
        with ComfyRest(url, timeout=timeout) as rest:
            try:
                return worker_health(rest)
            except ComfyError as exc:
                return WorkerHealth(url=rest.base_url, reachable=False, problem=str(exc))

    with ThreadPoolExecutor(max_workers=min(len(urls), 16) or 1) as pool:
        return list(pool.map(one, urls))

"""The fleet keeps every worker one prompt deep, routes without races, moves waiting work to idle workers, and keeps
workers healthy: against real local ComfyUI workers whose renders sleep (no CPU), so timings are known."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import httpx
import pytest

from infinitetalk_pipeline.comfy.client import ComfyClient, RenderResult
from infinitetalk_pipeline.comfy.errors import ComfyOutputMissing, ComfyUnreachable
from infinitetalk_pipeline.comfy.fleet import Fleet, HealthPolicy, Lineage, in_prompt_folder
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.comfy.server import LocalComfyUI, free_port, read_state
from infinitetalk_pipeline.defs.fleet import comfyui_workers, comfyui_workers_sensor
from infinitetalk_pipeline.defs.resources import ComfyUIResource
from tests.fixtures.comfy import unresponsive
from tests.fixtures.fleet import finished_prompts, sleep_graph, sleeping_fleet, sleeping_worker, wait_until
from tests.fixtures.synth import make_portrait

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def settle_fast() -> Iterator[None]:
    """Drained workers ask for their restart after 1 s of idleness instead of 10 (read by the worker extension)."""
    os.environ["INFINITETALK_DRAIN_SETTLE_SECONDS"] = "1"
    yield
    del os.environ["INFINITETALK_DRAIN_SETTLE_SECONDS"]


@pytest.fixture(scope="module")
def workers(
    comfy_install: None, settle_fast: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LocalComfyUI]]:
    with sleeping_fleet(tmp_path_factory.mktemp("fleet"), 2) as servers:
        yield servers


@pytest.fixture(scope="module")
def portrait(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_portrait(tmp_path_factory.mktemp("media") / "face.png", size=(32, 32))


@pytest.fixture(autouse=True)
def idle(workers: list[LocalComfyUI]) -> Iterator[None]:
    """Each test starts and ends with empty, undrained queues."""
    yield
    for server in workers:
        with ComfyRest(server.url) as rest:
            rest.drain(None)
            rest.request("POST", "/queue", lambda r: r.read(), json={"clear": True})
            rest.request("POST", "/interrupt", lambda r: r.read(), json={})
        wait_until(lambda u=server.url: not _depth(u), 30)


def _depth(url: str) -> int:
    state = httpx.get(f"{url}/infinitetalk/state", timeout=10).json()
    return len(state["running"]) + len(state["pending"])


def _queue_directly(url: str, portrait: Path, seconds: float) -> str:
    """A prompt from someone else (plain POST /prompt), to make a worker busy."""
    with ComfyClient(url) as client:
        return client.submit(sleep_graph(client.upload(portrait), seconds, prefix="other"))


def _render(fleet: Fleet, portrait: Path, seconds: float | None, dest: Path) -> RenderResult:
    """One render through the fleet: BenchSleep for `seconds`, or (None) a graph of core nodes only."""

    def graph_for(client: ComfyClient) -> dict:
        prefix = f"fleet-{uuid.uuid4().hex[:8]}"
        graph = sleep_graph(client.upload(portrait), seconds or 0, prefix=prefix)
        if seconds is None:
            graph["3"]["inputs"]["images"] = ["1", 0]
            del graph["2"]
        return graph

    return fleet.render(graph_for, "3", dest / f"{uuid.uuid4().hex}.png", label="test")


def test_a_worker_admits_no_more_prompts_than_the_depth_asked(workers: list[LocalComfyUI], portrait: Path) -> None:
    url = workers[0].url
    with ComfyClient(url) as client:
        graph = sleep_graph(client.upload(portrait), 5)
    clients = [ComfyClient(url) for _ in range(8)]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            admitted = list(pool.map(lambda c: c.admit(graph, str(uuid.uuid4()), 2), clients))
    finally:
        for client in clients:
            client.close()
    assert admitted.count(True) == 2
    assert _depth(url) == 2


def test_admitting_the_same_prompt_id_again_queues_it_once(workers: list[LocalComfyUI], portrait: Path) -> None:
    url = workers[0].url
    with ComfyClient(url) as client:
        graph = sleep_graph(client.upload(portrait), 5)
        prompt_id = str(uuid.uuid4())
        assert client.admit(graph, prompt_id, 1)
        assert client.admit(graph, prompt_id, 1)  # a retry after a lost answer: already there, so "admitted"
    assert _depth(url) == 1


def test_a_draining_worker_admits_nothing_and_asks_for_a_restart_once_idle(
    workers: list[LocalComfyUI], portrait: Path
) -> None:
    url = workers[0].url
    with ComfyClient(url) as client:
        graph = sleep_graph(client.upload(portrait), 2)
        assert client.admit(graph, str(uuid.uuid4()), 2)
        client.rest.drain("test")
        assert not client.admit(graph, str(uuid.uuid4()), 2)
        assert client.rest.live() is True  # still rendering: it finishes first
        wait_until(lambda: client.rest.live() is False, 30)


def test_idle_workers_fill_before_any_queue_grows(workers: list[LocalComfyUI], portrait: Path, tmp_path: Path) -> None:
    before = {s.url: set(finished_prompts(s.url)) for s in workers}
    with Fleet([s.url for s in workers], poll_interval=0.2) as fleet, ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _render(fleet, portrait, 3, tmp_path), range(4)))
    per_worker = {s.url: set(finished_prompts(s.url)) - before[s.url] for s in workers}
    assert sorted(len(p) for p in per_worker.values()) == [2, 2]  # two each: one rendering, one waiting
    assert {r.prompt_id for r in results} == set().union(*per_worker.values())  # each rendered exactly once
    for url, prompts in per_worker.items():  # one deep: the waiting prompt started the moment the first ended
        first, second = sorted((_span(finished_prompts(url)[p]) for p in prompts), key=lambda s: s[0])
        assert second[0] - first[1] < 0.5


def _span(entry: dict) -> tuple[float, float]:
    stamps = {kind: data["timestamp"] / 1000 for kind, data in entry["status"]["messages"]}
    return stamps["execution_start"], stamps["execution_success"]


def test_a_waiting_prompt_moves_to_a_worker_that_goes_idle(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slow, quick = workers[0].url, workers[1].url
    _queue_directly(slow, portrait, 12)
    _queue_directly(quick, portrait, 2)
    _queue_directly(quick, portrait, 2)  # quick is full (depth 2): the fleet can only queue behind slow
    with Fleet([slow, quick], poll_interval=0.2) as fleet, caplog.at_level(logging.INFO):
        result = _render(fleet, portrait, 1, tmp_path)
    assert result.worker_url == quick
    assert result.prompt_id not in finished_prompts(slow)  # withdrawn there: it never ran twice
    assert f"moved from {slow} to {quick}" in caplog.text


def test_a_render_on_a_worker_that_dies_moves_to_another(
    comfy_install: None, portrait: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with sleeping_fleet(tmp_path / "workers", 2) as (doomed, survivor):
        _queue_directly(survivor.url, portrait, 4)  # the survivor is full, so the render goes to `doomed`
        _queue_directly(survivor.url, portrait, 4)
        fleet = Fleet([doomed.url, survivor.url], poll_interval=0.2, dead_after=3)
        with fleet, ThreadPoolExecutor(max_workers=1) as pool, caplog.at_level(logging.INFO):
            future = pool.submit(_render, fleet, portrait, 3, tmp_path)
            wait_until(lambda: _depth(doomed.url) == 1, 30)
            assert doomed.pid
            os.killpg(doomed.pid, signal.SIGKILL)
            result = future.result(timeout=120)
        assert result.worker_url == survivor.url
        assert result.prompt_id in finished_prompts(survivor.url)
        assert f"worker {doomed.url} does not answer; it gets no work until it does" in caplog.text


def test_a_supervised_worker_restarted_after_n_jobs_loses_no_render(
    comfy_install: None, settle_fast: None, portrait: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "supervised"
    start = [str(Path(sys.executable).with_name("infinitetalk")), "comfyui", "start", "--workdir", str(workdir)]
    url = subprocess.run(start, check=True, capture_output=True, text=True).stdout.strip()
    try:
        policy = HealthPolicy(max_jobs=2)
        with Fleet([url], poll_interval=0.2, policy=policy) as fleet, ThreadPoolExecutor(max_workers=3) as pool:
            # `comfyui start` loads no test node: core nodes only
            results = list(pool.map(lambda _: _render(fleet, portrait, None, tmp_path), range(5)))
        restarts = (workdir / "supervisor.log").read_text().count("drained and is idle; restarting it")
        # a drained worker still runs the prompt it already admitted, so a restart comes after 2 to 4 jobs
        assert restarts >= 1
        assert all(r.output_path.is_file() for r in results)
        assert len({r.prompt_id for r in results}) == 5
        saved = sorted((workdir / "output").glob("*/fleet-*.png"))  # one folder per prompt (in_prompt_folder)
        assert len(saved) == 5  # every render ran exactly once across the restarts
    finally:
        subprocess.run([*start[:-3], "stop", "--workdir", str(workdir)], check=True, capture_output=True)
    assert read_state(workdir) is None


def test_a_fleet_without_a_refusal_grace_whose_ports_all_refuse_fails_at_once_not_after_the_silence_deadline(
    tmp_path: Path, portrait: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        Fleet([dead], poll_interval=0.1, silence_timeout=600, refused_grace=0) as fleet,  # the CLI's
        pytest.raises(ComfyUnreachable, match="no ComfyUI worker is running"),
    ):
        _render(fleet, portrait, 1, tmp_path)


def test_a_runs_fleet_waits_for_a_worker_whose_port_opens_within_the_refusal_grace(
    comfy_install: None, portrait: Path, tmp_path: Path
) -> None:
    # A run may start while every worker restarts (drained after max_jobs) or loads its custom nodes: port closed.
    late = sleeping_worker(tmp_path / "late", port=free_port())
    with ComfyUIResource(urls=late.url).fleet() as fleet, ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_render, fleet, portrait, 0, tmp_path)
        time.sleep(4)  # refused all along: past what the CLI waits
        assert not future.done()
        with late:
            result = future.result(timeout=120)
    assert result.worker_url == late.url


def test_a_fleet_whose_workers_accept_but_never_answer_fails_after_the_silence_deadline(
    tmp_path: Path, portrait: Path
) -> None:
    with socket.socket() as silent:  # connections complete in the backlog; no request is ever answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with (
            Fleet([url], poll_interval=0.1, silence_timeout=1) as fleet,
            pytest.raises(ComfyUnreachable, match="no ComfyUI worker answered for 1s"),
        ):
            _render(fleet, portrait, 1, tmp_path)


def test_the_workers_asset_has_a_row_per_worker_and_names_the_silent_one(workers: list[LocalComfyUI]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    urls = ",".join([*(s.url for s in workers), dead])
    result = dg.materialize([comfyui_workers], resources={"comfyui": ComfyUIResource(urls=urls)})
    [event] = result.get_asset_materialization_events()
    rows = {r.data["worker"]: r.data for r in event.materialization.metadata["workers"].value.records}
    assert [rows[s.url]["reachable"] for s in workers] == [True, True]
    assert rows[dead]["reachable"] is False
    assert all(rows[s.url]["jobs_since_start"] >= 0 for s in workers)


def test_the_workers_sensor_observes_the_fleet_only_when_a_status_changes(workers: list[LocalComfyUI]) -> None:
    resources = {"comfyui": ComfyUIResource(urls=",".join(s.url for s in workers))}
    with dg.instance_for_test() as instance:
        first = comfyui_workers_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert len(first.asset_events) == 1
        again = comfyui_workers_sensor(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor)
        )
        assert not again.asset_events
        with ComfyRest(workers[1].url) as rest:
            rest.drain("memory")
        changed = comfyui_workers_sensor(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor)
        )
        rows = {r.data["worker"]: r.data for r in changed.asset_events[0].metadata["workers"].value.records}
        assert rows[workers[1].url]["draining"] == "memory"


def _admit_directly(url: str, prompt_id: str, portrait: Path, seconds: float) -> None:
    """A prompt left on a worker by an earlier attempt whose run died."""
    with ComfyClient(url) as client:
        assert client.admit(sleep_graph(client.upload(portrait), seconds, prefix="earlier"), prompt_id, 2)


def test_a_render_adopts_the_prompt_its_lineage_left_running(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    _admit_directly(workers[1].url, lineage.prompt_id(0), portrait, 2)
    before = {s.url: set(finished_prompts(s.url)) for s in workers}
    with Fleet([s.url for s in workers], poll_interval=0.2) as fleet:
        result = fleet.render(_graph_for(portrait, 1), "3", tmp_path / "out.png", lineage=lineage)
    assert (result.prompt_id, result.worker_url) == (lineage.prompt_id(0), workers[1].url)
    new = {s.url: set(finished_prompts(s.url)) - before[s.url] for s in workers}
    assert new == {workers[0].url: set(), workers[1].url: {lineage.prompt_id(0)}}  # rendered once, by the first


def test_a_render_takes_the_output_its_lineage_already_finished(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    _admit_directly(workers[0].url, lineage.prompt_id(0), portrait, 0)
    wait_until(lambda: lineage.prompt_id(0) in finished_prompts(workers[0].url), 30)
    before = sum(len(finished_prompts(s.url)) for s in workers)
    with Fleet([s.url for s in workers], poll_interval=0.2) as fleet:
        result = fleet.render(_graph_for(portrait, 1), "3", tmp_path / "out.png", lineage=lineage)
    assert result.prompt_id == lineage.prompt_id(0) and result.output_path.is_file()
    assert sum(len(finished_prompts(s.url)) for s in workers) == before  # nothing rendered again


def test_an_attempt_that_failed_is_passed_over_for_the_next_id(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    _admit_directly(workers[0].url, lineage.prompt_id(0), portrait, 30)
    wait_until(lambda: _depth(workers[0].url) == 1 and not _pending(workers[0].url), 30)
    with ComfyRest(workers[0].url) as rest:
        rest.interrupt(lineage.prompt_id(0))  # the earlier attempt ends in an error
    wait_until(lambda: lineage.prompt_id(0) in _history_ids(workers[0].url), 30)
    with Fleet([s.url for s in workers], poll_interval=0.2) as fleet:
        result = fleet.render(_graph_for(portrait, 0), "3", tmp_path / "out.png", lineage=lineage)
    assert result.prompt_id == lineage.prompt_id(1)


def _graph_for(portrait: Path, seconds: float) -> Callable[[ComfyClient], dict]:
    return lambda client: sleep_graph(client.upload(portrait), seconds, prefix=f"fleet-{uuid.uuid4().hex[:8]}")


def _pending(url: str) -> list[str]:
    return httpx.get(f"{url}/infinitetalk/state", timeout=10).json()["pending"]


def _history_ids(url: str) -> set[str]:
    return set(httpx.get(f"{url}/history", params={"max_items": 10000}, timeout=30).json())


def _racing_attempts(urls: list[str], lineage: Lineage, portrait: Path, dest: Path) -> list[RenderResult]:
    """Two attempts of one render at once, as two runs of a clip make them: each binds its graph only once both
    have looked the fleet over and found nothing, so both go on to place it."""
    both_looked = threading.Barrier(2)

    def attempt(name: str) -> RenderResult:
        bound: list[str] = []

        def graph_for(client: ComfyClient) -> dict:
            graph = sleep_graph(client.upload(portrait), 2, prefix=f"race-{name}")
            if not bound:  # a later binding (a move to another worker) has nobody left to wait for
                bound.append(client.base_url)
                both_looked.wait(timeout=60)
            return graph

        with Fleet(urls, poll_interval=0.2) as fleet:
            return fleet.render(graph_for, "3", dest / f"{name}.png", lineage=lineage)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(attempt, ["a", "b"]))


def _copies(workers: list[LocalComfyUI], prompt_id: str) -> dict[str, str]:
    """Worker URL -> status of `prompt_id` in its history (success, error), for every worker that has it."""
    found = {}
    for server in workers:
        entry = httpx.get(f"{server.url}/history/{prompt_id}", timeout=10).json().get(prompt_id)
        if entry:
            found[server.url] = (entry.get("status") or {}).get("status_str")
    return found


def test_two_attempts_placing_one_render_on_busy_workers_queue_it_once(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    for server in workers:  # both workers busy: each copy would wait in a queue, where it can be withdrawn
        _queue_directly(server.url, portrait, 3)
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    results = _racing_attempts([s.url for s in workers], lineage, portrait, tmp_path)
    assert {r.prompt_id for r in results} == {lineage.prompt_id(0)}
    assert len({r.worker_url for r in results}) == 1  # both followed the same copy
    assert list(_copies(workers, lineage.prompt_id(0)).values()) == ["success"]  # one prompt ran, no other copy


def test_two_attempts_placing_one_render_on_idle_workers_finish_it_once(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    for _round in range(3):  # idle workers start a copy at once: whichever way the race goes, one copy finishes
        lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
        results = _racing_attempts([s.url for s in workers], lineage, portrait, tmp_path)
        assert {r.prompt_id for r in results} == {lineage.prompt_id(0)}
        assert len({r.worker_url for r in results}) == 1
        assert list(_copies(workers, lineage.prompt_id(0)).values()).count("success") == 1


def _prompt_files(server: LocalComfyUI, prompt_id: str) -> list[Path]:
    return sorted(f for f in (Path(server.workdir) / "output").rglob("*") if prompt_id in f.parts and f.is_file())


def test_a_render_keeps_its_files_in_its_prompts_folder_until_released(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    with Fleet([workers[0].url], poll_interval=0.2) as fleet:
        result = fleet.render(_graph_for(portrait, 0), "3", tmp_path / "out.png")
        kept = _prompt_files(workers[0], result.prompt_id)
        fleet.release(result)  # what the clip renderer does once the video is stored and recorded
    assert [f.parent.name for f in kept] == [result.prompt_id]  # a retry could still have downloaded it
    assert _prompt_files(workers[0], result.prompt_id) == []


def test_an_interrupted_prompt_leaves_no_partial_files_on_its_worker(
    workers: list[LocalComfyUI], portrait: Path
) -> None:
    server, prompt_id = workers[0], str(uuid.uuid4())
    with ComfyClient(server.url) as client:
        graph = sleep_graph(client.upload(portrait), 30, prefix="partial")
        # an output node that is ready at once runs first and writes its file before the long node starts
        graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "partial-early"}}
        assert client.admit(in_prompt_folder(graph, prompt_id), prompt_id, 1)
    wait_until(lambda: _prompt_files(server, prompt_id), 30)  # the partial output is on disk
    with ComfyRest(server.url) as rest:
        rest.interrupt(prompt_id)
    wait_until(lambda: prompt_id in _history_ids(server.url), 30)
    assert _prompt_files(server, prompt_id) == []


def _copy_of(url: str, prompt_id: str, portrait: Path, seconds: float, max_depth: int = 2) -> None:
    """Another attempt's copy of `prompt_id`, admitted on `url` as the fleet admits one (files in its prompt folder)."""
    with ComfyClient(url) as client:
        graph = sleep_graph(client.upload(portrait), seconds, prefix=f"rival-{uuid.uuid4().hex[:8]}")
        assert client.admit(in_prompt_folder(graph, prompt_id), prompt_id, max_depth)


def _other(workers: list[LocalComfyUI], url: str) -> LocalComfyUI:
    return next(s for s in workers if s.url != url)


def _after_looking(act: Callable[[str], None], portrait: Path, seconds: float) -> Callable[[ComfyClient], dict]:
    """A graph binder that, the first time (the attempt has looked the fleet over and chosen a worker, and has not
    admitted its copy yet), runs `act(url of the chosen worker)`."""
    acted: list[str] = []

    def graph_for(client: ComfyClient) -> dict:
        if not acted:
            acted.append(client.base_url)
            act(client.base_url)
        return sleep_graph(client.upload(portrait), seconds, prefix=f"fleet-{uuid.uuid4().hex[:8]}")

    return graph_for


def test_a_copy_placed_after_another_attempts_copy_finished_gives_way_and_takes_that_output(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    prompt_id = lineage.prompt_id(0)
    rival: list[str] = []

    def finish_a_copy_elsewhere(chosen: str) -> None:
        rival.append(_other(workers, chosen).url)
        _copy_of(rival[0], prompt_id, portrait, 0)
        wait_until(lambda: prompt_id in finished_prompts(rival[0]), 30)

    with Fleet([s.url for s in workers], poll_interval=0.2) as fleet:
        result = fleet.render(
            _after_looking(finish_a_copy_elsewhere, portrait, 3), "3", tmp_path / "o.png", lineage=lineage
        )
    assert (result.prompt_id, result.worker_url) == (prompt_id, rival[0])
    wait_until(lambda: not any(_depth(s.url) for s in workers), 30)
    assert list(_copies(workers, prompt_id).values()).count("success") == 1  # ours was interrupted


def test_a_copy_that_gives_way_to_an_output_already_released_leaves_the_clip_to_the_run_that_stored_it(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    prompt_id = lineage.prompt_id(0)

    def finish_store_and_release_a_copy_elsewhere(chosen: str) -> None:
        rival = _other(workers, chosen).url
        _copy_of(rival, prompt_id, portrait, 0)
        wait_until(lambda: prompt_id in finished_prompts(rival), 30)
        with ComfyRest(rival) as rest:
            rest.delete_outputs(prompt_id)  # what that run does once its video is stored

    graph_for = _after_looking(finish_store_and_release_a_copy_elsewhere, portrait, 3)
    with Fleet([s.url for s in workers], poll_interval=0.2) as fleet, pytest.raises(ComfyOutputMissing):
        fleet.render(graph_for, "3", tmp_path / "o.png", lineage=lineage)  # the clip renderer takes the stored video
    wait_until(lambda: not any(_depth(s.url) for s in workers), 30)
    assert list(_copies(workers, prompt_id).values()).count("success") == 1  # not rendered again under another id
    assert not any(lineage.prompt_id(1) in finished_prompts(s.url) for s in workers)


def test_a_copy_moved_after_another_attempt_placed_one_is_compared_with_it_again(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    prompt_id = lineage.prompt_id(0)
    with sleeping_worker(tmp_path / "third") as third:
        busy, freed, rivals = workers[0].url, workers[1].url, third.url
        _queue_directly(busy, portrait, 20)  # room for one waiting prompt: where the render goes
        for url, seconds in ((freed, 3), (freed, 1), (rivals, 6), (rivals, 1)):  # the others full
            _queue_directly(url, portrait, seconds)
        with Fleet([busy, freed, rivals], poll_interval=0.2) as fleet, ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(fleet.render, _graph_for(portrait, 1), "3", tmp_path / "o.png", lineage=lineage)
            wait_until(lambda: prompt_id in _pending(busy), 30)
            # Another attempt places its copy now, after this one looked (it found none) and before it moves its
            # copy to `freed` once idle: moved, ours is admitted later than theirs.
            _copy_of(rivals, prompt_id, portrait, 1, max_depth=3)
            result = future.result(timeout=60)
        assert result.worker_url == freed
        wait_until(lambda: not _depth(rivals), 30)
        assert _copies([*workers, third], prompt_id) == {freed: "success"}  # the other copy was withdrawn


def test_ctrl_c_while_an_attempt_compares_copies_cancels_the_copy_it_just_placed(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    placed: list[str] = []
    with ExitStack() as stack:

        def ctrl_c_while_comparing(chosen: str) -> None:
            placed.append(chosen)
            # The other worker is slow to answer, so looking for another copy takes seconds: Ctrl-C comes then.
            stack.enter_context(unresponsive(_other(workers, chosen), 10))
            timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
            stack.callback(timer.cancel)
            timer.start()

        graph_for = _after_looking(ctrl_c_while_comparing, portrait, 5)
        with Fleet([s.url for s in workers], poll_interval=0.2) as fleet, pytest.raises(KeyboardInterrupt):
            fleet.render(graph_for, "3", tmp_path / "o.png", lineage=lineage)
    wait_until(lambda: not _depth(placed[0]), 30)
    assert lineage.prompt_id(0) not in finished_prompts(placed[0])


def test_a_render_interrupted_while_following_another_runs_prompt_leaves_that_prompt_to_finish(
    workers: list[LocalComfyUI], portrait: Path, tmp_path: Path
) -> None:
    lineage = Lineage(f"clip-{uuid.uuid4().hex}:fingerprint")
    urls = [s.url for s in workers]
    with Fleet(urls, poll_interval=0.2) as placer, ThreadPoolExecutor(max_workers=1) as pool:
        placed = pool.submit(placer.render, _graph_for(portrait, 4), "3", tmp_path / "a.png", lineage=lineage)
        wait_until(lambda: any(lineage.prompt_id(0) in _running(url) for url in urls), 30)
        timer = threading.Timer(1, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C while it follows the prompt
        with Fleet(urls, poll_interval=0.2) as follower, pytest.raises(KeyboardInterrupt):
            timer.start()
            follower.render(_graph_for(portrait, 4), "3", tmp_path / "b.png", lineage=lineage)
        timer.cancel()
        result = placed.result(timeout=60)
    assert result.prompt_id == lineage.prompt_id(0)


def _running(url: str) -> list[str]:
    return httpx.get(f"{url}/infinitetalk/state", timeout=10).json()["running"]

"""`infinitetalk comfyui ...`: install, start, stop and inspect the local CPU ComfyUI."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import click

from infinitetalk_pipeline.comfy import server
from infinitetalk_pipeline.comfy.errors import ComfyError
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.errors import PipelineError

_workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Server base directory (input/, output/, log, PID). Default: $INFINITETALK_HOME/comfyui-server.",
)


@click.group()
def comfyui() -> None:
    """The local ComfyUI render server (CPU; its own pinned venv)."""


_profile_option = click.option(
    "--profile",
    type=click.Choice(["preview", "infinitetalk"]),
    default="preview",
    show_default=True,
    help="infinitetalk: also the custom nodes, Python pins and worker extension of worker/worker.lock.toml.",
)


@comfyui.command()
@_profile_option
@click.option(
    "--node-sources",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Install the custom nodes from offline archives <name>.tar.xz in DIR instead of git.",
)
@click.option(
    "--comfyui-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A GPU worker's own ComfyUI checkout: install the profile into it (and into --python's environment) "
    "instead of building the local venv.",
)
@click.option(
    "--python",
    "python",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --comfyui-dir: the Python that runs that ComfyUI (default: this one).",
)
@click.option("--refreeze", is_flag=True, help="Resolve afresh and rewrite constraints/comfyui.txt.")
def install(
    profile: str, node_sources: Path | None, comfyui_dir: Path | None, python: Path | None, refreeze: bool
) -> None:
    """Build the ComfyUI venv under $INFINITETALK_HOME/comfyui (a no-op when already installed)."""

    def log(line: str) -> None:
        click.echo(line, err=True)

    try:
        if comfyui_dir is not None:
            if profile != "infinitetalk":
                raise click.UsageError("--comfyui-dir installs the infinitetalk profile: add --profile infinitetalk")
            server.install_worker_into(
                comfyui_dir.resolve(), python or Path(sys.executable), node_sources=node_sources, log=log
            )
        else:
            server.install(profile=profile, node_sources=node_sources, refreeze=refreeze, log=log)
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc


@comfyui.command()
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one).")
@_workdir_option
@click.option("--cache", type=click.Choice(["none", "classic"]), default=None, help="ComfyUI cache mode.")
@_profile_option
@click.option(
    "--models-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder with diffusion_models/, vae/, ... to serve as the server's models/.",
)
def start(port: int | None, workdir: Path | None, cache: str | None, profile: str, models_dir: Path | None) -> None:
    """Start ComfyUI in the background under a supervisor, wait until it answers and print its URL.

    The supervisor restarts ComfyUI when it exits, and when the pipeline has drained it (after N renders, or memory
    past its limit; see INFINITETALK_WORKER_*) and it has gone idle.
    """
    workdir = (workdir or server.default_workdir()).resolve()
    running = server.read_state(workdir)
    if running is not None:
        click.echo(running["url"])
        click.echo(f"already running (pid {running['pid']})", err=True)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or server.free_port()  # fixed now: a restarted server must come back at the same URL
    cmd = [sys.executable, "-m", server.SUPERVISOR_MODULE, "--workdir", str(workdir), "--port", str(port)]
    cmd += ["--profile", profile] + (["--cache", cache] if cache else [])
    cmd += ["--models-dir", str(models_dir.resolve())] if models_dir else []
    log_path = workdir / "supervisor.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    with ComfyRest(url, timeout=2.0) as rest:
        while True:
            if proc.poll() is not None:
                raise click.ClickException(
                    f"the supervisor exited with {proc.returncode}:\n{server.log_tail(log_path)}"
                )
            with contextlib.suppress(ComfyError):
                rest.system_stats(attempts=1)
                break
            if time.monotonic() > deadline:
                raise click.ClickException(f"ComfyUI did not answer at {url}:\n{server.log_tail(log_path)}")
            time.sleep(0.3)
    state = server.read_state(workdir) or {}
    click.echo(f"ComfyUI pid {state.get('pid')}, supervisor pid {proc.pid}, log {workdir / 'comfyui.log'}", err=True)
    click.echo(url)


@comfyui.command()
@_workdir_option
def stop(workdir: Path | None) -> None:
    """Stop the server started with the same --workdir (SIGTERM, then SIGKILL)."""
    workdir = (workdir or server.default_workdir()).resolve()
    click.echo("stopped" if server.stop_recorded(workdir) else "not running")


@comfyui.command()
@_workdir_option
def status(workdir: Path | None) -> None:
    """Say whether the server of --workdir runs and answers; exit status 1 when it does not."""
    state = server.read_state((workdir or server.default_workdir()).resolve())
    if state is None:
        click.echo("not running")
        sys.exit(1)
    try:
        with ComfyRest(str(state["url"]), timeout=5.0) as rest:
            version = rest.system_stats(attempts=1)["system"]["comfyui_version"]  # status says how it is now
    except (ComfyError, KeyError) as exc:
        click.echo(f"pid {state['pid']} at {state['url']} is not answering: {exc}")
        sys.exit(1)
    click.echo(f"running: {state['url']} (pid {state['pid']}, ComfyUI {version})")

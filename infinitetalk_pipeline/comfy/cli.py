"""`infinitetalk comfyui ...`: install, start, stop and inspect the local CPU ComfyUI."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import httpx

from infinitetalk_pipeline.comfy import server
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


@comfyui.command()
@click.option("--refreeze", is_flag=True, help="Resolve afresh and rewrite constraints/comfyui.txt.")
def install(refreeze: bool) -> None:
    """Build the ComfyUI venv under $INFINITETALK_HOME/comfyui (a no-op when already installed)."""
    server.install(refreeze=refreeze, log=lambda line: click.echo(line, err=True))


@comfyui.command()
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default: a free one).")
@_workdir_option
@click.option("--cache", type=click.Choice(["none", "classic"]), default=None, help="ComfyUI cache mode.")
def start(port: int | None, workdir: Path | None, cache: str | None) -> None:
    """Start ComfyUI in the background, wait until it answers and print its URL."""
    workdir = (workdir or server.default_workdir()).resolve()
    running = server.read_state(workdir)
    if running is not None:
        click.echo(running["url"])
        click.echo(f"already running (pid {running['pid']})", err=True)
        return
    local = server.LocalComfyUI(workdir, port=port, cache=cache)
    try:
        url = local.start()
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ComfyUI pid {local.pid}, log {local.log_path}", err=True)
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
        stats = httpx.get(f"{state['url']}/system_stats", timeout=5.0).json()
        version = stats["system"]["comfyui_version"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        click.echo(f"pid {state['pid']} at {state['url']} is not answering: {exc}")
        sys.exit(1)
    click.echo(f"running: {state['url']} (pid {state['pid']}, ComfyUI {version})")

"""`infinitetalk worker ...`: give a GPU ComfyUI worker its locked models, and check it against the lock."""

from __future__ import annotations

from pathlib import Path

import click

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.worker.lock import load_lock
from infinitetalk_pipeline.worker.models import fetch_models
from infinitetalk_pipeline.worker.verify import format_table, verify_worker

_lock_option = click.option(
    "--lock",
    "lock_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The worker lock. Default: $INFINITETALK_WORKER_LOCK, else worker/worker.lock.toml.",
)


@click.group(name="worker")
def worker() -> None:
    """A GPU ComfyUI worker: fetch its models, verify it against worker/worker.lock.toml."""


@worker.command(name="fetch-models")
@click.option(
    "--models-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="ComfyUI's models folder: files go to <models-dir>/<folder>/<file>.",
)
@_lock_option
@click.option("--only", multiple=True, metavar="NAME", help="Only this model (file name or folder/file); repeatable.")
def fetch_models_command(models_dir: Path, lock_path: Path | None, only: tuple[str, ...]) -> None:
    """Download the locked model files that are missing or differ (resuming partial downloads) and verify each
    against its size and sha256. Prints one line per model; progress goes to stderr."""
    try:
        results = fetch_models(
            load_lock(lock_path),
            models_dir,
            only=set(only) or None,
            log=lambda line: click.echo(line, err=True),
        )
    except PipelineError as exc:  # ModelFetchError, LockError: a message, not a traceback
        raise click.ClickException(str(exc)) from exc
    for r in results:
        detail = "" if r.action == "present" else f" ({r.bytes_downloaded / 1e6:.1f} MB, {r.mb_per_s:.1f} MB/s)"
        if r.unpinned:
            detail += f' unpinned: record size = {r.size}, sha256 = "{r.sha256}" in the lock'
        click.echo(f"{r.action:<10} {r.path}{detail}")


@worker.command(name="verify")
@click.option("--comfyui-url", required=True, help="The running worker, e.g. http://gpu-1:8188.")
@click.option(
    "--models-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The worker's models folder, to check each locked file's size and sha256 (reads every byte).",
)
@_lock_option
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per request to the worker.")
def verify_command(comfyui_url: str, models_dir: Path | None, lock_path: Path | None, timeout: float) -> None:
    """Check a running worker against the lock: ComfyUI version, custom-node commits, node classes the graphs use,
    Python pins, model files (listed by the worker; with --models-dir, size and sha256) and the attention kernel the
    render will bind. Prints a table; exits 1 on any mismatch, naming it."""
    try:
        checks = verify_worker(comfyui_url, load_lock(lock_path), models_dir, timeout=timeout)
    except PipelineError as exc:  # unreachable worker, bad lock: a message, not a traceback
        raise click.ClickException(str(exc)) from exc
    click.echo(format_table(checks))
    if any(c.status == "FAIL" for c in checks):
        raise SystemExit(1)

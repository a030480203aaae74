"""`infinitetalk render REQUEST.json`: one clip with the original template's request and response shapes."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from infinitetalk_pipeline.clip_renderer import ClipFailure, ClipRenderer
from infinitetalk_pipeline.comfy.fleet import Fleet, comfyui_urls
from infinitetalk_pipeline.comfy.progress import ProgressLines
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.redact import redact_text
from infinitetalk_pipeline.registry import ClipSpec
from infinitetalk_pipeline.render import DEFAULT_RENDER_DEADLINE
from infinitetalk_pipeline.scratch import scratch_dir, sweep
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.storage import LocalOutputStore

_CHUNK = 3 * 256 * 1024  # a multiple of 3, so chunks encode to base64 without padding in between


def write_inline_video(path: Path, out: IO[str], fields: dict[str, Any]) -> None:
    """`{...fields, "video": "data:video/mp4;base64,..."}` streamed in chunks: the video is never whole in memory."""
    head = json.dumps(fields)[:-1]  # the fields' object, still open
    out.write(f'{head}{", " if fields else ""}"video": "data:video/mp4;base64,')
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(base64.b64encode(chunk).decode("ascii"))
    out.write('"}\n')


class _StderrLog(logging.Handler):
    """The renderer's log lines on stderr: `warning: ...` for warnings, progress and info as they are."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(f"{prefix}{record.getMessage()}", err=True)


@click.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--comfyui-url",
    default=lambda: os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188"),
    show_default="$COMFYUI_URL or http://127.0.0.1:8188",
    help="A ComfyUI worker, or several, comma-separated (the render goes to the first with room).",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="An output root, laid out as the pipeline's: videos/<clip_id>.mp4 and the clip's catalog row.",
)
@click.option("--profile", type=click.Choice(["preview", "infinitetalk"]), default="preview", show_default=True)
@click.option(
    "--allow-root",
    "allow_roots",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Directories local *_path inputs may come from (default: the request's directory and the cwd).",
)
@click.option("--allow-private-urls", is_flag=True, help="Let *_url inputs reach private and loopback addresses.")
@click.option(
    "--render-deadline", type=float, default=DEFAULT_RENDER_DEADLINE, show_default=True, help="Seconds for a render."
)
@click.option(
    "--segment-seconds",
    type=click.IntRange(min=0),
    default=60,
    show_default=True,
    help="Speech longer than this renders as segments cut at pauses, on the workers at once (0: never split).",
)
@click.option(
    "--crossfade-frames",
    type=click.IntRange(0, 25),
    default=5,
    show_default=True,
    help="Frames of picture cross-fade across each segment join (0: a hard cut).",
)
@click.option("--force", is_flag=True, help="Render even when the same request was rendered into --output-dir.")
def render(
    request_file: Path,
    comfyui_url: str,
    output_dir: Path,
    profile: str,
    allow_roots: tuple[Path, ...],
    allow_private_urls: bool,
    render_deadline: float,
    segment_seconds: int,
    crossfade_frames: int,
    force: bool,
) -> None:
    """Render one request (`{"input": {...}}` as in the original RunPod template), through the same core as the
    Dagster assets: the output is checked, and an unchanged request already rendered into --output-dir is not
    rendered again.

    Prints `{"video_path": ..., "checks": [...], ...}` (or `"video": "data:..."` in place of the path when the
    request says `"network_volume": false`) and exits 0, or exits 1 when a check failed; prints `{"error": ...}` and
    exits 1 when the clip could not be rendered.
    """
    clip_id = request_file.stem
    try:
        segmenting = Segmenting(max_seconds=segment_seconds, crossfade_frames=crossfade_frames)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--segment-seconds") from None
    log = logging.Logger("infinitetalk.render", logging.INFO)  # outside the logging tree: only our handler
    log.addHandler(_StderrLog())
    try:
        payload = json.loads(request_file.read_text())
        request = parse_request(payload, clip_id=clip_id)
        clip_id = request.clip_id or clip_id
        spec = ClipSpec(clip_id, str(request_file.resolve()), 1, request)
        roots = list(allow_roots) or [request_file.resolve().parent, Path.cwd()]
        policy = SourcePolicy(allowed_roots=tuple(roots), allow_private_hosts=allow_private_urls)
        output_dir.mkdir(parents=True, exist_ok=True)
        # The CLI's own downloads and scratch, under a per-user root (a shared /tmp): a killed CLI leaves a folder
        # whose lock is free, removed by the next `infinitetalk render`.
        work_root = Path(tempfile.gettempdir()) / f"infinitetalk-work-{os.getuid()}"
        sweep(work_root, log)
        with (
            scratch_dir(work_root, f"render-{clip_id}") as tmp,
            # A person waits: ports that all refuse mean no worker runs, said at once rather than after a grace.
            Fleet(comfyui_urls(comfyui_url), render_deadline=render_deadline, refused_grace=0, log=log) as fleet,
        ):
            renderer = ClipRenderer(
                LocalOutputStore(output_dir),
                MediaFetcher(policy, cache_dir=tmp / "cache"),
                fleet,
                profile,
                log=log,
                segmenting=segmenting,
            )
            progress = ProgressLines(lambda line: click.echo(line, err=True))
            record = renderer.render(spec, renderer.measure_timing(spec), force=force, on_progress=progress)
    except json.JSONDecodeError as exc:
        _fail(f"{request_file}: not valid JSON: {exc}")
    except Exception as exc:  # whatever it is, one JSON line naming the clip (and the field), never a traceback
        _fail(ClipFailure.of(clip_id, exc).message)
    fields: dict[str, Any] = {
        "clip_id": clip_id,
        "skipped": record.skipped,
        "checks": [dataclasses.asdict(c) for c in record.checks],
        "worker": record.row.worker,
        "prompt_id": record.row.comfy_prompt_id,
        **({"segments": json.loads(record.row.segments)} if record.row.segments else {}),
    }
    if request.network_volume is False:
        write_inline_video(Path(record.row.output_uri), sys.stdout, fields)
    else:
        click.echo(json.dumps({"video_path": record.row.output_uri, **fields}))
    if not record.passed:
        sys.exit(1)


def _fail(message: str) -> NoReturn:
    click.echo(json.dumps({"error": redact_text(message)}))  # CLI output is kept in job logs: no credentials
    sys.exit(1)

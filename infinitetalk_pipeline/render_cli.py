"""`infinitetalk render REQUEST.json`: one clip with the original template's request and response shapes."""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO

import click

from infinitetalk_pipeline.comfy.client import ComfyClient, ProgressEvent
from infinitetalk_pipeline.errors import ClipInputError, PipelineError
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.render import prepare_clip, render_prepared
from infinitetalk_pipeline.spec import parse_request

_CHUNK = 3 * 256 * 1024  # a multiple of 3, so chunks encode to base64 without padding in between


def write_inline_video(path: Path, out: IO[str]) -> None:
    """`{"video": "data:video/mp4;base64,..."}` streamed in chunks: the video is never whole in memory."""
    out.write('{"video": "data:video/mp4;base64,')
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(base64.b64encode(chunk).decode("ascii"))
    out.write('"}\n')


def _progress(event: ProgressEvent) -> None:
    if event.kind == "progress" and event.max:
        node = f"{event.node_id} ({event.node_class})" if event.node_class else str(event.node_id)
        click.echo(f"{100 * event.value / event.max:5.1f}% node {node}", err=True)


@click.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--comfyui-url",
    default=lambda: os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188"),
    show_default="$COMFYUI_URL or http://127.0.0.1:8188",
)
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--profile", type=click.Choice(["preview", "infinitetalk"]), default="preview", show_default=True)
@click.option(
    "--allow-root",
    "allow_roots",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Directories local *_path inputs may come from (default: the request's directory and the cwd).",
)
@click.option("--allow-private-urls", is_flag=True, help="Let *_url inputs reach private and loopback addresses.")
@click.option("--render-deadline", type=float, default=3600.0, show_default=True, help="Seconds for the whole render.")
def render(
    request_file: Path,
    comfyui_url: str,
    output_dir: Path,
    profile: str,
    allow_roots: tuple[Path, ...],
    allow_private_urls: bool,
    render_deadline: float,
) -> None:
    """Render one request (`{"input": {...}}` as in the original RunPod template).

    Prints `{"video_path": ...}` (or `{"video": "data:..."}` when the request says `"network_volume": false`)
    and exits 0, or prints `{"error": ...}` and exits 1.
    """
    clip_id = request_file.stem
    try:
        payload = json.loads(request_file.read_text())
        request = parse_request(payload, clip_id=clip_id)
        clip_id = request.clip_id or clip_id
        roots = list(allow_roots) or [request_file.resolve().parent, Path.cwd()]
        policy = SourcePolicy(allowed_roots=tuple(roots), allow_private_hosts=allow_private_urls)
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="infinitetalk-") as tmp:
            fetcher = MediaFetcher(policy, cache_dir=Path(tmp) / "cache")
            prepared = prepare_clip(request, fetcher, Path(tmp) / "work", profile=profile, clip_id=clip_id)  # type: ignore[arg-type]
            for warning in prepared.warnings:
                click.echo(f"warning: {warning}", err=True)
            with ComfyClient(comfyui_url, render_deadline=render_deadline) as client:
                result = render_prepared(prepared, client, output_dir / f"{clip_id}.mp4", on_progress=_progress)
    except json.JSONDecodeError as exc:
        _fail(f"{request_file}: not valid JSON: {exc}")
    except ClipInputError as exc:
        _fail(str(exc))
    except PipelineError as exc:
        _fail(f"clip {clip_id!r}: {exc}")
    except (OSError, ValueError) as exc:  # unwritable output dir, a request file that is not UTF-8...
        _fail(f"clip {clip_id!r}: {type(exc).__name__}: {exc}")
    if request.network_volume is False:
        write_inline_video(result.output_path, sys.stdout)
    else:
        click.echo(json.dumps({"video_path": str(result.output_path)}))


def _fail(message: str) -> None:
    click.echo(json.dumps({"error": message}))
    sys.exit(1)

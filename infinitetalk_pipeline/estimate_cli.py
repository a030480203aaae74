"""`infinitetalk estimate MANIFEST`: what a manifest will cost before it is launched (estimate.py does the work)."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import click

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.estimate import Estimate, estimate_manifest
from infinitetalk_pipeline.gpu_costs import (
    GPU_COSTS_ENV,
    EstimateError,
    GpuTable,
    Rate,
    gpu_table_path,
    load_gpu_table,
    rate_for,
)
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.redact import redact_text
from infinitetalk_pipeline.scratch import scratch_dir, sweep
from infinitetalk_pipeline.segments import Segmenting
from infinitetalk_pipeline.storage import output_store_for

OUTPUT_ROOT_ENV = "INFINITETALK_OUTPUT_ROOT"
ALLOWED_ROOTS_ENV = "INFINITETALK_ALLOWED_ROOTS"
SEGMENT_SECONDS_ENV = "INFINITETALK_SEGMENT_SECONDS"
CROSSFADE_FRAMES_ENV = "INFINITETALK_CROSSFADE_FRAMES"
_COLUMNS = ("row", "clip", "speech s", "frames", "windows", "segments", "size", "GPU min")


@click.command()
@click.argument("manifest")
@click.option("--gpu", help="A GPU class of the GPU table (default: the table's `default` entry).")
@click.option(
    "--gpu-costs",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: str(gpu_table_path()),
    show_default=f"${GPU_COSTS_ENV} or the table shipped with the package",
    help="The GPU table: seconds per InfiniteTalk window per GPU class (format: its comments).",
)
@click.option(
    "--catalog",
    "catalog_root",
    default=lambda: os.environ.get(OUTPUT_ROOT_ENV, ""),
    show_default=f"${OUTPUT_ROOT_ENV}",
    help="An output root (a directory or s3://bucket/prefix/) whose catalog's measured renders replace the table's "
    "figure; '' for none.",
)
@click.option("--no-catalog", is_flag=True, help="Use the GPU table's figure even when the catalog has measurements.")
@click.option(
    "--segment-seconds",
    type=float,
    default=60.0,
    envvar=SEGMENT_SECONDS_ENV,
    show_default=True,
    show_envvar=True,
    help="Speech longer than this renders as segments, cut at pauses (0: never split): the pipeline's setting.",
)
@click.option(
    "--crossfade-frames",
    type=int,
    default=5,
    envvar=CROSSFADE_FRAMES_ENV,
    show_default=True,
    show_envvar=True,
    help="Frames of cross-fade across each segment join, rendered as overlap (0: a hard cut): the pipeline's setting.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Also write every clip's figures, the rows not measured and the totals as JSON to this file ('-': stdout).",
)
@click.option("--per-clip/--totals-only", default=True, show_default=True, help="Print the per-clip table.")
@click.option(
    "--max-rows", type=click.IntRange(min=0), default=50, show_default=True, help="Clips printed at most (0: all)."
)
@click.option(
    "--allow-root",
    "allow_roots",
    multiple=True,
    type=click.Path(path_type=Path),
    help=f"Directories local *_path inputs may come from (default: ${ALLOWED_ROOTS_ENV}, the manifest's directory "
    "and the cwd).",
)
@click.option("--allow-private-urls", is_flag=True, help="Let *_url inputs reach private and loopback addresses.")
def estimate(
    manifest: str,
    gpu: str | None,
    gpu_costs: Path,
    catalog_root: str,
    no_catalog: bool,
    segment_seconds: float,
    crossfade_frames: int,
    json_path: Path | None,
    per_clip: bool,
    max_rows: int,
    allow_roots: tuple[Path, ...],
    allow_private_urls: bool,
) -> None:
    """Estimate what rendering MANIFEST (a CSV or JSONL file, local or s3://) costs: per clip and in total, speech
    seconds, frames, InfiniteTalk windows, segments and GPU-minutes.

    Each clip's speech is fetched and measured as the `clip_timing` asset measures it. Seconds per window come from
    the --catalog's measured renders (profile `infinitetalk`) when it has any, else from the GPU table; either is
    scaled by each clip's pixel count relative to the figure's reference size (an assumption). Rows that cannot be
    measured are listed and left out of the totals.
    """
    try:
        segmenting = Segmenting(max_seconds=segment_seconds, crossfade_frames=crossfade_frames)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--segment-seconds/--crossfade-frames") from None
    try:
        table = load_gpu_table(gpu_costs)
    except EstimateError as exc:
        _fail(str(exc))
    try:
        cost = table.get(gpu)
    except EstimateError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpu") from None
    s3 = _LazyS3()
    try:
        rate = Rate.of_table(cost)
        if catalog_root and not no_catalog:
            rate = rate_for(cost, output_store_for(catalog_root, s3_client=s3.client_for(catalog_root)))
        work_root = Path(tempfile.gettempdir()) / f"infinitetalk-work-{os.getuid()}"
        sweep(work_root, logging.getLogger(__name__))
        with scratch_dir(work_root, "estimate") as tmp:
            policy = SourcePolicy(
                allowed_roots=_allowed_roots(manifest, allow_roots), allow_private_hosts=allow_private_urls
            )
            fetcher = MediaFetcher(policy, cache_dir=tmp / "cache", s3_client=s3)
            result = estimate_manifest(
                manifest, fetcher, cost, rate, s3_client=s3.client_for(manifest), segmenting=segmenting
            )
    except PipelineError as exc:  # an unreadable manifest: its message, not a stack trace
        _fail(str(exc))
    except Exception as exc:  # whatever else it is (no S3 client, a full disk), one line: never a traceback
        _fail(f"{type(exc).__name__}: {exc}")
    if json_path is not None:
        _write_json(result, json_path)
    if json_path != Path("-"):
        click.echo(report(result, table, per_clip=per_clip, max_rows=max_rows, catalog_root=catalog_root))


def report(
    result: Estimate, table: GpuTable, *, per_clip: bool = True, max_rows: int = 50, catalog_root: str = ""
) -> str:
    """The estimate as text: the per-clip table (at most `max_rows`, 0: all), the rows not measured, the totals and
    where the seconds per window came from."""
    lines: list[str] = []
    if per_clip and result.clips:
        shown = result.clips if max_rows == 0 else result.clips[:max_rows]
        cells = [
            (
                str(c.row_number),
                c.clip_id,
                f"{c.speech_seconds:.2f}",
                str(c.frames),
                str(c.windows),
                str(c.segments),
                f"{c.width}x{c.height}",
                f"{c.gpu_minutes:.2f}",
            )
            for c in shown
        ]
        widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(_COLUMNS)]
        for row in [_COLUMNS, *cells]:
            lines.append(
                "  ".join(
                    cell.ljust(w) if i == 1 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        if len(shown) < len(result.clips):
            lines.append(
                f"(the first {len(shown)} of {len(result.clips):,} clips; --max-rows 0 prints all, --json PATH writes "
                "them)"
            )
        lines.append("")
    if result.unmeasured:
        lines.append(f"not measured, left out of the totals ({len(result.unmeasured):,}):")
        listed = result.unmeasured if max_rows == 0 else result.unmeasured[:max_rows]
        for u in listed:
            where = ", ".join(
                w
                for w in (
                    f"row {u.row_number}" if u.row_number is not None else "",
                    f"clip {u.clip_id!r}" if u.clip_id else "",
                    f"field {u.field!r}" if u.field else "",
                )
                if w
            )
            lines.append(f"  {where}: {u.reason}")
        if len(listed) < len(result.unmeasured):
            lines.append(f"  ... and {len(result.unmeasured) - len(listed):,} more (--json PATH writes them all)")
        lines.append("")
    totals = result.totals
    lines += [
        f"clips:        {totals.clips:,}",
        f"speech:       {totals.speech_hours:,.2f} hours ({totals.speech_seconds:,.1f} s)",
        f"frames:       {totals.frames:,}",
        f"windows:      {totals.windows:,}",
        f"segments:     {totals.segments:,}",
        f"GPU:          {totals.gpu_hours:,.2f} GPU-hours ({totals.gpu_minutes:,.1f} GPU-minutes)",
        f"GPU class:    {result.gpu.name} (table {table.source})",
        f"per window:   {result.rate.describe()}",
        f"assumption:   {result.assumption}",
    ]
    if result.rate.workers:
        gpu = result.gpu
        lines.append(
            f"table figure: {gpu.name} {gpu.seconds_per_window:g} s per window at {gpu.width}x{gpu.height}, not used: "
            "the catalog has measured renders (--no-catalog uses the table)"
        )
    elif catalog_root and not result.rate.note:
        lines.append(f"catalog:      no measured infinitetalk renders in {redact_text(catalog_root)}")
    return "\n".join(lines)


def _write_json(result: Estimate, path: Path) -> None:
    text = json.dumps(result.to_dict(), indent=1)
    if path == Path("-"):
        click.echo(text)
        return
    try:
        path.write_text(text + "\n")
    except OSError as exc:
        _fail(f"--json {path}: cannot write it: {exc.strerror or exc}")


def _allowed_roots(manifest: str, given: tuple[Path, ...]) -> tuple[Path, ...]:
    if given:
        return given
    roots = [Path(p) for p in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p]
    if not manifest.startswith("s3://"):
        roots.append(Path(manifest).expanduser().resolve().parent)
    return (*roots, Path.cwd())


class _LazyS3:
    """The pipeline's S3 client (its INFINITETALK_S3_* settings), made on first use: most estimates never need it,
    and building it loads Dagster."""

    def __init__(self) -> None:
        self._client: Any = None

    def client_for(self, uri: str) -> Any:
        return self if uri.startswith("s3://") else None

    def __getattr__(self, name: str) -> Any:  # the fetcher and the stores call boto3 methods on it
        if self._client is None:
            import dagster as dg

            from infinitetalk_pipeline.defs.resources import build_resources

            with dg.build_resources({"s3": build_resources()["s3"]}) as resolved:
                client = resolved.s3
            self._client = client.get_client() if hasattr(client, "get_client") else client
        return getattr(self._client, name)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {redact_text(message)}", err=True)
    sys.exit(1)

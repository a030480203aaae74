"""The `infinitetalk` command: a thin face over the library (subcommands live beside what they drive)."""

from __future__ import annotations

import click

from infinitetalk_pipeline.comfy.cli import comfyui
from infinitetalk_pipeline.estimate_cli import estimate
from infinitetalk_pipeline.media.cli import probe
from infinitetalk_pipeline.render_cli import render
from infinitetalk_pipeline.worker.cli import worker
from infinitetalk_pipeline.workflows.cli import workflows


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Lip-synced dubbing with InfiniteTalk on ComfyUI: render one request, probe media, manage workflows, the
    local ComfyUI and GPU workers. The bulk path is the Dagster code location (`dagster dev`)."""


main.add_command(comfyui)
main.add_command(workflows)
main.add_command(probe)
main.add_command(render)
main.add_command(estimate)
main.add_command(worker)

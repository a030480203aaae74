"""`infinitetalk workflows list|validate`: inspect the templates and check them against a node schema."""

from __future__ import annotations

from pathlib import Path

import click

from infinitetalk_pipeline.errors import PipelineError
from infinitetalk_pipeline.workflows.templates import PROFILES, Template, list_templates, templates_dir
from infinitetalk_pipeline.workflows.validate import (
    fetch_object_info,
    load_object_info,
    validate_template,
)

_PROFILE = click.Choice([*PROFILES, "all"])


@click.group()
def workflows() -> None:
    """The workflow templates in workflows/<profile>/<Name>.json."""


@workflows.command("list")
@click.option("--profile", type=_PROFILE, default="all", show_default=True)
def list_command(profile: str) -> None:
    """One line per template: its bindings (optional ones in brackets) and what it does."""
    for template in _templates(profile, ()):
        names = [n if n in template.required_bindings else f"[{n}]" for n in template.bindings]
        click.echo(f"{template.key}  {template.fps} fps  output node {template.output_node}")
        click.echo(f"    bindings: {' '.join(names)}")
        for name, patches in template.variants.items():
            click.echo(f"    variants of {name}: {', '.join(patches)}")
        click.echo(f"    {template.description}")


@workflows.command()
@click.option(
    "--object-info",
    "object_info_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A saved /object_info response (.json or .json.gz).",
)
@click.option("--comfyui-url", help="A running ComfyUI whose /object_info to check against.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds for GET /object_info.")
@click.option("--profile", type=_PROFILE, default="all", show_default=True)
@click.argument("names", nargs=-1)
def validate(
    object_info_path: Path | None,
    comfyui_url: str | None,
    timeout: float,
    profile: str,
    names: tuple[str, ...],
) -> None:
    """Check templates (all, or NAMES such as I2V_single or preview/I2V_single) against a node schema.

    Exits non-zero when any template has a problem; model files the schema does not list are reported apart.
    """
    if (object_info_path is None) == (comfyui_url is None):
        raise click.UsageError("give exactly one of --object-info FILE or --comfyui-url URL")
    try:
        object_info = (
            load_object_info(object_info_path)
            if object_info_path is not None
            else fetch_object_info(comfyui_url or "", timeout=timeout)
        )
        templates = _templates(profile, names)
        if not templates:
            raise PipelineError(f"no workflow templates found (profile {profile}) under {templates_dir()}")
        reports = [validate_template(t, object_info) for t in templates]
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc

    total = 0
    files: set[str] = set()
    for report in reports:
        total += len(report.problems)
        files |= report.model_files
        count = len(report.problems)
        click.echo(f"{report.template.key}: {count} problem{'' if count == 1 else 's'}")
        for problem in report.problems:
            click.echo(f"  {problem}")
    needed = f" (model files needed: {', '.join(sorted(files))})" if files else ""
    click.echo(f"{total} problem{'' if total == 1 else 's'} in {len(reports)} templates{needed}")
    if total:
        raise SystemExit(1)


def _templates(profile: str, names: tuple[str, ...]) -> list[Template]:
    templates = list_templates(None if profile == "all" else profile)
    if not names:
        return templates
    chosen = [t for t in templates if t.name in names or t.key in names]
    unknown = sorted(set(names) - {t.name for t in chosen} - {t.key for t in chosen})
    if unknown:
        raise click.UsageError(f"no template named {', '.join(unknown)} (see `infinitetalk workflows list`)")
    return chosen

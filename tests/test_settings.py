"""Settings come in one way: `defs/settings.py`, whose list of variables the README's table must match."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from infinitetalk_pipeline.defs import settings

REPO = Path(__file__).resolve().parents[1]


def readme_variables() -> list[str]:
    text = (REPO / "README.md").read_text()
    table = text.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.M)


def test_the_readme_table_lists_every_variable_the_code_location_reads() -> None:
    documented = readme_variables()
    assert documented == [s.name for s in settings.ENV_VARS]


def test_every_variable_read_in_the_definitions_is_listed() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "infinitetalk_pipeline" / "defs").glob("*.py"))
    read = {name for pair in re.findall(r'env_or\("([A-Z0-9_]+)"|_get\("([A-Z0-9_]+)"', source) for name in pair}
    read |= {name for fields in settings.RESOURCE_FIELDS.values() for name in fields.values()}  # the resources'
    assert read - {""} == {s.name for s in settings.ENV_VARS}


def test_only_the_settings_module_reads_the_environment() -> None:
    found = subprocess.run(
        ["grep", "-rln", "os.environ", "infinitetalk_pipeline/defs"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert found == ["infinitetalk_pipeline/defs/settings.py"]


def test_the_instance_run_limit_leaves_room_for_a_render_run() -> None:
    """The render job's max runtime derives from the one render deadline; dagster.yaml's cap must not cut it."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_monitoring"]["max_runtime_seconds"] >= settings.RENDER_RUN_MAX_RUNTIME_SECONDS
    assert settings.RENDER_RUN_MAX_RUNTIME_SECONDS > settings.CLIPS_PER_RUN * settings.RENDER_DEADLINE_SECONDS

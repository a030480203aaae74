"""The code location: everything under `defs/`, loaded by `dg`/`dagster dev` and `workspace.yaml`."""

from pathlib import Path

import dagster as dg

from infinitetalk_pipeline import defs as defs_package


@dg.definitions
def defs() -> dg.Definitions:
    # Loaded by module, not by looking for the project's pyproject.toml: an installed wheel has none above it.
    return dg.components.load_defs(
        defs_root=defs_package, project_root=Path(__file__).parent, terminate_autoloading_on_keyword_files=False
    )

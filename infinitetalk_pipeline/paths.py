"""Where the package reads its data files and, unless told otherwise, keeps its state.

Data: the workflow templates, the worker lock and the local ComfyUI's constraints live at the repository's top level
(`workflows/`, `worker/worker.lock.toml`, `constraints/comfyui.txt`). The wheel carries copies of them under
`infinitetalk_pipeline/_data/` in the same layout (pyproject.toml's hatch force-include): an installed package reads
those, a source checkout or editable install (no `_data`) reads the top-level folders.

State: relative to the current working directory, since an installed package has no repository to anchor to;
run from a checkout's root, that is where it always lived. `.infinitetalk/` (or `$INFINITETALK_HOME`) holds the
local ComfyUI and caches, `var/` the pipeline's outputs; the working directory is also where the example manifest
is looked for and the root local inputs may come from.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

HOME_ENV = "INFINITETALK_HOME"


def data_dir() -> Path:
    """The folder holding `workflows/`, `worker/worker.lock.toml` and `constraints/comfyui.txt`."""
    package = Path(str(files("infinitetalk_pipeline")))  # an installed wheel is plain files, never a zip
    packaged = package / "_data"
    return packaged if packaged.is_dir() else package.parent


def project_dir() -> Path:
    """The directory the defaults below are relative to: the current working directory."""
    return Path.cwd()


def infinitetalk_home() -> Path:
    """`$INFINITETALK_HOME`, else `./.infinitetalk`."""
    return Path(os.environ.get(HOME_ENV) or project_dir() / ".infinitetalk")


def var_dir() -> Path:
    """`./var`: the pipeline's local outputs and caches."""
    return project_dir() / "var"

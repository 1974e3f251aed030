"""Where the project's folders are, found from the working directory (no hard-coded paths).

The project root is the nearest folder above the working directory that holds ``dvc.yaml``;
``XRLIB_ROOT`` overrides it (papermill runs notebooks from notebooks/, so this matters).
"""

from __future__ import annotations

import os
from pathlib import Path

from xrlib.errors import ConfigError


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The compendium's root folder (``XRLIB_ROOT`` if set, else the first parent with dvc.yaml)."""
    override = os.environ.get("XRLIB_ROOT")
    if override:
        return Path(override).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise ConfigError(
        f"no dvc.yaml found in {here} or above; run from inside the compendium or set XRLIB_ROOT"
    )

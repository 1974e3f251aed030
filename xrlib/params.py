"""Stage parameters from params.yaml.

Every notebook's first cell (tagged ``parameters``) names its section, set to ``None``::

    drr = None

``papermill -f params.yaml`` injects each top-level section of the file as a variable of the same
name; run interactively, :func:`stage_params` reads the section from the project's params.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from xrlib.errors import ConfigError
from xrlib.paths import project_root


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read a params file (default: the project's params.yaml) as a dict of sections."""
    params_path = Path(path) if path else project_root() / "params.yaml"
    try:
        loaded = yaml.safe_load(params_path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{params_path}: parameter file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{params_path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{params_path}: expected a mapping of sections at top level")
    return loaded


def stage_params(section: str, injected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of one stage: ``injected`` (from papermill) if given, else params.yaml's."""
    if injected is not None:
        if not isinstance(injected, Mapping):
            raise ConfigError(f"parameters for '{section}' must be a mapping, got {type(injected).__name__}")
        return dict(injected)
    params = load_params()
    if section not in params:
        raise ConfigError(f"params.yaml has no section '{section}'; add it (see README, Profiles)")
    return dict(params[section])


def require(params: Mapping[str, Any], *keys: str, section: str = "") -> None:
    """Raise a ConfigError naming every key of ``keys`` missing from ``params``."""
    missing = [key for key in keys if key not in params]
    if missing:
        where = f"section '{section}' of " if section else ""
        raise ConfigError(f"{where}params.yaml lacks {', '.join(missing)}; add them")

"""Profiles: named sets of overrides of params.yaml (smoke is params.yaml itself).

``profiles/<name>.yaml`` holds only what differs from the smoke profile. A profile runs either as a
DVC experiment (:func:`dvc_set_args` turns it into ``dvc exp run -S key=value`` overrides, so
``dvc exp show`` and ``dvc metrics diff`` compare runs) or as a papermill batch outside DVC
(:func:`profile_params` gives the merged sections that papermill injects).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from xrlib.errors import ConfigError
from xrlib.notebooks import execute, select, source_path, stage_notebook_names
from xrlib.params import deep_merge, load_params
from xrlib.paths import project_root

SMOKE = "smoke"


def profile_path(name: str, root: Path | None = None) -> Path:
    """The overrides file of profile ``name`` (a name under profiles/ or a path to a YAML file)."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = (root or project_root()) / "profiles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(f"no profile '{name}' ({path} missing); known: {', '.join([SMOKE, *known])}")
    return path


def load_overrides(name: str, root: Path | None = None) -> dict[str, Any]:
    """The overrides a profile makes (empty for smoke)."""
    if name == SMOKE:
        return {}
    path = profile_path(name, root)
    overrides = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: a profile must map params sections to overrides")
    return overrides


def profile_params(name: str, root: Path | None = None) -> dict[str, Any]:
    """All params sections as the profile sets them."""
    root = root or project_root()
    base, overrides = load_params(root / "params.yaml"), load_overrides(name, root)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(f"profile '{name}' overrides section{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}, "
                          "which params.yaml does not have; check the name")
    return deep_merge(base, overrides)


def _flow(value: Any) -> str:
    """A value in YAML flow style on one line, as DVC's ``-S`` parses it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def dvc_set_args(overrides: Mapping[str, Any], base: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``-S`` arguments for ``dvc exp run``: ``key.path=value`` for keys params.yaml has,
    ``+key.path=value`` (DVC's append syntax) for keys a profile adds."""
    args: list[str] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        present = isinstance(base, Mapping) and key in base
        if isinstance(value, Mapping) and value and present and isinstance(base[key], Mapping):
            args.extend(dvc_set_args(value, base[key], f"{dotted}."))
        else:
            args.extend(["-S", f"{'' if present else '+'}{dotted}={_flow(value)}"])
    return args


def notebook_paths(names: list[str] | None = None, root: Path | None = None) -> list[Path]:
    """The stage notebooks' sources in order, or those whose names start with one of ``names`` (e.g. "04")."""
    root = root or project_root()
    chosen = [select(name, root) for name in names] if names else stage_notebook_names(root)
    return [source_path(name, root) for name in chosen]


def run_notebooks(profile: str, out_dir: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Execute stage notebooks with papermill outside DVC, with a profile's parameters.

    Notebooks run in order (later ones read what earlier ones wrote under outputs/), each with its
    own params sections, as in the pipeline; executed copies are written to ``out_dir``.
    """
    root = project_root()
    parameters = profile_params(profile, root)
    out = Path(out_dir)
    return [execute(path.stem, out / f"{path.stem}.ipynb", parameters, root) for path in notebook_paths(names, root)]

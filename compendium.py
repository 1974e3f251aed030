#!/usr/bin/env python3
"""Set up and run the compendium with nothing but Python >= 3.10 and pip.

    python3 compendium.py repro     # the main job: dvc repro on the embedded default data
    python3 compendium.py test      # the test suite (extra arguments go to pytest)
    python3 compendium.py lab       # JupyterLab with the project's environment as kernel

Each command creates or reuses the virtual environment ``.venv`` (or ``$XRLIB_VENV``), installs the
exact pins of requirements.lock when they changed, installs xrlib, fetches and verifies the default
data, then runs (``XRLIB_NO_SETUP=1`` skips the install and the fetch: the environment is used as it
is). ``lab`` first pairs each stage notebook's text form (notebooks/NN_name.py, what git keeps and
DVC depends on) with the .ipynb the Lab opens (``xrlib notebooks --sync``); its extra arguments go
to ``jupyter lab`` (e.g. ``--no-browser --port 8899 --IdentityProvider.token=SECRET``; the
deprecated ``--ServerApp.token`` / ``--NotebookApp.token`` are passed on under that new name).
Nothing here needs conda; environment.yml is the conda route to the same pins.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("XRLIB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".xrlib-installed"


def _run(*command: str, **kwargs) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def _environment() -> dict[str, str]:
    env = dict(os.environ, VIRTUAL_ENV=str(VENV), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONHOME", None)
    return env


def setup() -> dict[str, str]:
    """Create/refresh the environment and fetch the default data; return the environment to run in."""
    if sys.version_info < (3, 10):
        sys.exit("Python >= 3.10 is needed")
    if not (BIN / "python").exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "requirements.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    env = _environment()
    python = str(BIN / "python")
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        _run(python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", "requirements.lock", env=env)
        _run(python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "-e", ".", env=env)
        STAMP.write_text(wanted)
    _run(str(BIN / "xrlib"), "fetch", env=env)
    return env


DEPRECATED_LAB_OPTIONS = {"--ServerApp.token": "--IdentityProvider.token", "--NotebookApp.token": "--IdentityProvider.token"}


def lab_arguments(rest: list[str]) -> list[str]:
    """``jupyter lab`` arguments, with deprecated token options under their current name."""
    renamed = []
    for argument in rest:
        option, equals, value = argument.partition("=")
        renamed.append(DEPRECATED_LAB_OPTIONS.get(option, option) + equals + value)
    return ["lab", *renamed]


def main(argv: list[str]) -> int:
    """Dispatch ``repro``, ``test`` or ``lab``."""
    if not argv or argv[0] not in ("repro", "test", "lab"):
        print(__doc__)
        return 2
    env = _environment() if os.environ.get("XRLIB_NO_SETUP") == "1" else setup()
    command, rest = argv[0], argv[1:]
    try:
        if command == "repro":
            _run(str(BIN / "dvc"), "repro", *rest, env=env)
            _run(str(BIN / "dvc"), "status", env=env)
        elif command == "test":
            _run(str(BIN / "python"), "-m", "pytest", *rest, env=env)
        else:
            _run(str(BIN / "xrlib"), "notebooks", "--sync", env=env)
            _run(str(BIN / "jupyter"), *lab_arguments(rest), env=env)
    except subprocess.CalledProcessError as error:
        return error.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

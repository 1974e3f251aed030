"""Stage notebooks: a text source for git and DVC, a paired .ipynb for the Lab, and the stage runner.

Each stage's notebook is kept as a jupytext "percent" script, ``notebooks/<stage>.py``: cells as
``# %%`` blocks, no outputs, no notebook metadata, only the ``parameters`` tag. That file is what
git keeps and what the stage depends on. ``notebooks/<stage>.ipynb`` is its paired copy for
JupyterLab (git-ignored): ``notebooks/jupytext.toml`` pairs the two, so JupyterLab (with jupytext's
contents manager) writes code and markdown edits through to the .py on save, while outputs, kernel
and cell metadata stay in the .ipynb. Running, exploring and saving in the Lab therefore leave the
stage's dependency byte for byte as it was; changing a cell changes it, as it should.

:func:`sync` makes the pairs agree (``xrlib notebooks --sync``; also run by ``compendium.py lab``):
a .py without an .ipynb gets one, an .ipynb without a .py gets one (how notebooks are converted),
and where both exist the newer one's cells win, outputs kept.

:func:`run_stage` is what dvc.yaml runs (``python -m xrlib.notebooks STAGE``): it reads the text
source, injects only the stage's own params sections (those xrlib/stages.py names, read from
params.yaml at run time, so ``dvc exp run -S`` works), runs it with papermill from notebooks/ and
writes the executed notebook. Progress bars in it are plain text lines (``XRLIB_PROGRESS=text``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from xrlib.errors import ConfigError, XRLibError
from xrlib.paths import project_root

TEXT_SUFFIX = ".py"
LAB_SUFFIX = ".ipynb"
KERNEL = "python3"
KERNELSPEC = {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"}


def stage_notebook_names(root: Path | None = None) -> list[str]:
    """Names (``NN_name``) of the stage notebooks under notebooks/, text or .ipynb, in order."""
    folder = (root or project_root()) / "notebooks"
    return sorted({p.stem for suffix in (TEXT_SUFFIX, LAB_SUFFIX) for p in folder.glob(f"[0-9][0-9]_*{suffix}")})


def source_path(name: str, root: Path | None = None) -> Path:
    """The notebook a stage runs: ``notebooks/<name>.py``, or the .ipynb where no text form exists yet."""
    folder = (root or project_root()) / "notebooks"
    text = folder / f"{name}{TEXT_SUFFIX}"
    return text if text.is_file() or not (folder / f"{name}{LAB_SUFFIX}").is_file() else folder / f"{name}{LAB_SUFFIX}"


def read_notebook(path: str | os.PathLike):
    """A notebook (NotebookNode) from its text form or an .ipynb."""
    import jupytext

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such notebook (run `xrlib notebooks --sync` to pair .ipynb and .py)")
    return jupytext.read(path)


def sync(names: Sequence[str] | None = None, root: Path | None = None, quiet: bool = True) -> list[Path]:
    """Pair each stage notebook's .py and .ipynb (jupytext ``--sync`` with notebooks/jupytext.toml).

    Returns the text sources. A new .ipynb gets the python3 kernel, so the Lab opens it without asking.
    """
    import jupytext
    from jupytext.cli import jupytext as jupytext_cli

    root = root or project_root()
    chosen = stage_notebook_names(root) if not names else [select(name, root) for name in names]
    sources = []
    for name in chosen:
        folder = root / "notebooks"
        text, lab = folder / f"{name}{TEXT_SUFFIX}", folder / f"{name}{LAB_SUFFIX}"
        new_lab = not lab.exists()
        jupytext_cli(["--sync", *(["--quiet"] if quiet else []), str(text if text.exists() else lab)])
        if new_lab:
            notebook = jupytext.read(lab)
            notebook.metadata.setdefault("kernelspec", dict(KERNELSPEC))
            jupytext.write(notebook, lab)
            os.utime(text)  # the text stays the newer of the two: its cells are the source
        sources.append(text)
    return sources


def select(name: str, root: Path | None = None) -> str:
    """A stage notebook by its name or number ("07" -> "07_readers")."""
    every = stage_notebook_names(root)
    chosen = [n for n in every if n == name or n.startswith(f"{name}_")]
    if len(chosen) != 1:
        raise ConfigError(f"no notebook {name}; choose from {', '.join(every)}")
    return chosen[0]


def stage_sections(name: str) -> list[str]:
    """The params sections a stage's notebook receives: the top-level sections of its params in xrlib/stages.py."""
    from xrlib.stages import stage

    return list(dict.fromkeys(entry.split(".")[0] for entry in stage(name).params))


def stage_parameters(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters papermill injects into stage ``name``: only its own sections of ``params``."""
    missing = [section for section in stage_sections(name) if section not in params]
    if missing:
        raise ConfigError(f"params.yaml lacks section{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                          f"that stage {name} reads")
    return {section: params[section] for section in stage_sections(name)}


def execute(name: str, output: str | os.PathLike, params: Mapping[str, Any] | None = None,
            root: Path | None = None) -> Path:
    """Run stage notebook ``name`` with papermill from notebooks/, its own sections of ``params``
    (default: params.yaml) injected; write the executed notebook to ``output``."""
    import papermill

    from xrlib.params import load_params

    root = root or project_root()
    params = load_params(root / "params.yaml") if params is None else params
    notebook = read_notebook(source_path(name, root))
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XRLIB_PROGRESS", "text")  # papermill's kernel inherits it: a few lines, not a widget
    papermill.execute_notebook(notebook, str(output), parameters=stage_parameters(name, params),
                               cwd=str(root / "notebooks"), kernel_name=KERNEL, progress_bar=False)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xrlib.notebooks STAGE [OUTPUT]``: the command of each stage in dvc.yaml."""
    from xrlib.stages import stage

    parser = argparse.ArgumentParser(prog="python -m xrlib.notebooks", description="run one stage's notebook")
    parser.add_argument("stage", help="stage name, e.g. 07_readers")
    parser.add_argument("output", nargs="?", help="executed notebook (default: the stage's, under outputs/notebooks)")
    args = parser.parse_args(argv)
    try:
        item, root = stage(args.stage), project_root()
        execute(item.name, args.output or root / item.executed_notebook, root=root)
    except XRLibError as error:
        sys.exit(f"xrlib: {error}")  # exit status 1, the message on standard error
    return 0


if __name__ == "__main__":
    sys.exit(main())

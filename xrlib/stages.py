"""The pipeline's stages, each with what it reads and writes, named once.

:data:`STAGES` is the table: a stage's notebook, its params sections, the paths it reads (its
inputs: other stages' files, data/ folders, reference tables) and the paths it writes. Every
path is relative to the project root and may hold ``{fields}`` (``{drr_id}``, ``{config}``...).
Notebooks and the library take paths from here, through :func:`path`::

    path("01_drr.nodules")                               # outputs/01_drr/nodules.csv
    path("05_restore.restored_drr", config="diffusionxray_munit", drr_id="case-aug00-pa")

``dvc.yaml`` is written from this table by ``xrlib stages --write``: each stage's deps are its
notebook's text form (``notebooks/<stage>.py``, see :mod:`xrlib.notebooks`: the Lab's .ipynb is
not a dependency, so running and saving it there changes nothing), the xrlib modules the notebook
imports (transitively, found by :func:`xrlib_modules`) and the folders or files of the paths it
reads; its outs are its output folders. Its command runs the notebook with only the stage's own
params sections.
tests/test_stages.py fails when dvc.yaml and this table (or the notebooks' imports) disagree.
"""

from __future__ import annotations

import ast
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xrlib.errors import ConfigError
from xrlib.paths import project_root

NOTEBOOK_COMMAND = "python -m xrlib.notebooks"
"""How dvc.yaml runs a stage's notebook: papermill, with only the stage's params sections (:mod:`xrlib.notebooks`)."""

INPUTS = {
    "data": "data",                                   # the DVC-tracked input folder (data.dvc)
    "data.ct": "data/ct",                             # CT volumes (+ label maps), one folder per patient
    "data.xray": "data/xray",                         # real chest X-rays, one folder per dataset
    "ratings": "ratings",                             # human reader-study ratings (key.csv + one CSV per reader), in git
    "reference": "tests/data/reference",              # published agreement and MRMC data with their results
    "models": "models",                               # released weights a training may start from (train.init_weights)
}
"""Paths no stage writes: the inputs of the pipeline. Ratings sit outside data/ (00_data's input),
so a new rating reruns 07_readers only; ratings/ always exists (its README), so DVC can depend on it."""


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: notebook ``notebooks/<name>.py`` (paired with an .ipynb for the Lab), run with its params sections."""

    name: str
    params: tuple[str, ...]
    reads: tuple[str, ...]
    """Keys of :data:`INPUTS` or of other stages' ``writes`` ("01_drr.nodules")."""
    writes: dict[str, str]
    """Named paths this stage writes (under its ``outs``)."""
    outs: tuple[str, ...]
    """Output folders or files DVC tracks (the executed notebook is added to them)."""
    persist: tuple[str, ...] = ()
    """Outs kept across reruns (checkpoints: an interrupted run resumes)."""
    metrics: tuple[str, ...] = ()
    """Metrics files (in git, not in DVC's cache)."""
    notes: dict[str, str] = field(default_factory=dict)
    """Why a read is as wide as it is, for dvc.yaml's readers."""

    @property
    def notebook(self) -> str:
        """The notebook's text form (jupytext percent script): what git keeps and the stage depends on."""
        return f"notebooks/{self.name}.py"

    @property
    def executed_notebook(self) -> str:
        return f"outputs/notebooks/{self.name}.ipynb"


STAGES: tuple[Stage, ...] = (
    Stage("00_data", ("data",),
          reads=("data", "data.ct", "data.xray"),
          writes={"xray_manifest": "outputs/00_data/xray_manifest.csv", "xray": "outputs/00_data/xray", "folder": "outputs/00_data",
                  "ct_manifest": "outputs/00_data/ct_manifest.csv"},
          outs=("outputs/00_data",)),
    Stage("01_drr", ("drr",),
          reads=("00_data.ct_manifest", "data"),   # the CTs the manifest lists, and drr.nodule_library under data/
          writes={"drrs": "outputs/01_drr/drrs.csv", "nodules": "outputs/01_drr/nodules.csv",
                  "drr": "outputs/01_drr/drr/{drr_id}.png",
                  "drr_nodule_free": "outputs/01_drr/drr_nodule_free/{drr_id}.png",
                  "folder": "outputs/01_drr"},
          outs=("outputs/01_drr",)),
    Stage("02_lq_ddpm", ("lq_ddpm", "pairs.hq_px", "pairs.low_pass_sigma_px", "pairs.drr_crop"),
          reads=("00_data.xray_manifest", "00_data.xray", "01_drr.drrs", "01_drr.drr", "models"),
          writes={"run": "outputs/02_lq_ddpm/ddpm", "weights": "outputs/02_lq_ddpm/ddpm/ddpm_lq.safetensors",
                  "strength_checks": "outputs/02_lq_ddpm/strength_checks.csv",
                  "setting": "outputs/02_lq_ddpm/chosen_setting.json",
                  "strength_sweep": "outputs/02_lq_ddpm/strength_sweep.png"},
          outs=("outputs/02_lq_ddpm",), persist=("outputs/02_lq_ddpm",)),
    Stage("03_lq_munit", ("lq_munit", "lq_ddpm", "pairs"),
          reads=("00_data.xray_manifest", "00_data.xray", "01_drr.drrs", "01_drr.drr", "02_lq_ddpm.weights",
                 "02_lq_ddpm.setting", "models"),
          writes={"run": "outputs/03_lq_munit/munit", "folder": "outputs/03_lq_munit",
                  "pairs_folder": "outputs/pairs", "pairs": "outputs/pairs/pairs.csv",
                  "pair_image": "outputs/pairs/{generator}/{tile_id}.png",
                  "translation_checks": "outputs/metrics/03_translation_checks.json"},
          outs=("outputs/03_lq_munit", "outputs/pairs"), persist=("outputs/03_lq_munit",),
          metrics=("outputs/metrics/03_translation_checks.json",)),
    Stage("04_restorer", ("restorer", "pairs.hq_px", "pairs.lq_px"),
          reads=("03_lq_munit.pairs", "03_lq_munit.pairs_folder", "models"),
          writes={"run": "outputs/04_restorer/{config}",
                  "weights": "outputs/04_restorer/{config}/restorer_ema.safetensors",
                  "curves": "outputs/04_restorer/{config}/dvclive/plots/metrics"},
          outs=("outputs/04_restorer",), persist=("outputs/04_restorer",)),
    Stage("05_restore", ("restore", "pairs.hq_px", "pairs.lq_px", "drr.size_px"),
          reads=("04_restorer.weights", "03_lq_munit.pairs", "03_lq_munit.pairs_folder", "01_drr.drrs",
                 "01_drr.drr", "01_drr.drr_nodule_free", "01_drr.nodules"),
          writes={"folder": "outputs/05_restore",
                  "restored_drr": "outputs/05_restore/{config}/{drr_id}.png",
                  "restored_drr_nodule_free": "outputs/05_restore/{config}/nodule_free/{drr_id}.png",
                  "restored_test": "outputs/05_restore/{config}/test/{pair_id}.png",
                  "restored_test_table": "outputs/05_restore/{config}/test/restored.csv",
                  "steps_sweep": "outputs/05_restore/steps_sweep.csv",
                  "chosen_steps": "outputs/05_restore/chosen_steps.json"},
          outs=("outputs/05_restore",)),
    Stage("06_metrics", ("metrics",),
          reads=("03_lq_munit.pairs", "03_lq_munit.pairs_folder", "05_restore.restored_test",
                 "05_restore.restored_drr", "05_restore.restored_drr_nodule_free", "00_data.xray_manifest",
                 "00_data.xray", "01_drr.nodules", "01_drr.drr", "01_drr.drr_nodule_free"),
          writes={"folder": "outputs/06_metrics", "metrics": "outputs/metrics/06_metrics.json"},
          outs=("outputs/06_metrics",), metrics=("outputs/metrics/06_metrics.json",)),
    Stage("07_readers", ("readers",),
          reads=("reference", "ratings", "01_drr.nodules", "01_drr.drr", "01_drr.drr_nodule_free",
                 "05_restore.restored_drr", "05_restore.restored_drr_nodule_free"),
          writes={"folder": "outputs/07_readers"},
          outs=("outputs/07_readers",)),
    Stage("08_figures", ("figures", "metrics"),
          reads=("06_metrics.folder", "06_metrics.metrics", "07_readers.folder", "03_lq_munit.pairs",
                 "03_lq_munit.translation_checks",
                 "03_lq_munit.pairs_folder", "01_drr.drr", "01_drr.drr_nodule_free", "05_restore.restored_drr",
                 "05_restore.restored_drr_nodule_free", "05_restore.restored_test", "05_restore.steps_sweep",
                 "05_restore.chosen_steps"),
          writes={"figures": "paper/figures", "tables": "paper/tables",
                  "method_checks": "outputs/metrics/08_method_checks.json",
                  "claims": "paper/claims.md", "claims_metrics": "outputs/metrics/08_claims.json"},
          outs=("paper/figures", "paper/tables", "paper/claims.md"),
          metrics=("outputs/metrics/08_method_checks.json", "outputs/metrics/08_claims.json")),
)

BY_NAME = {stage.name: stage for stage in STAGES}


def stage(name: str) -> Stage:
    """The stage called ``name`` (e.g. "05_restore")."""
    if name not in BY_NAME:
        raise ConfigError(f"no stage '{name}'; stages: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def relative_path(key: str) -> str:
    """The path template of ``key`` ("01_drr.nodules" or an :data:`INPUTS` key), relative to the root."""
    if key in INPUTS:
        return INPUTS[key]
    name, _, item = key.partition(".")
    writes = stage(name).writes
    if item not in writes:
        raise ConfigError(f"stage {name} writes no '{item}'; it writes {', '.join(writes)} (see xrlib/stages.py)")
    return writes[item]


def fields(key: str) -> set[str]:
    """The ``{fields}`` a path template holds."""
    return {name for _, name, _, _ in string.Formatter().parse(relative_path(key)) if name}


def path(key: str, root: Path | None = None, **values: Any) -> Path:
    """The path of ``key`` under the project root, its fields filled from ``values``.

    Fields left out stay in the result as ``{field}`` (a pattern for the caller to fill).
    """
    template = relative_path(key)
    unknown = set(values) - fields(key)
    if unknown:
        raise ConfigError(f"{key} ({template}) has no field {sorted(unknown)}")
    filled = re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)
    return (root or project_root()) / filled


def dvc_path(key: str) -> str:
    """What DVC tracks for ``key``: the path itself, or the folder above its first ``{field}``."""
    template = relative_path(key)
    if "{" not in template:
        return template
    prefix = template[: template.index("{")]
    return prefix.rstrip("/") if prefix.endswith("/") else prefix.rsplit("/", 1)[0]


# ----------------------------------------------------------------------------------------------
# Code dependencies: the xrlib modules a notebook imports, transitively


def notebook_code(notebook: Path) -> str:
    """The code cells of a notebook (its text form or an .ipynb), joined (IPython magics dropped).

    A stage's ``notebooks/<stage>.py`` not yet written from its .ipynb (``xrlib notebooks --sync``)
    is read from the .ipynb.
    """
    notebook = Path(notebook)
    if notebook.suffix == ".py" and not notebook.is_file() and notebook.with_suffix(".ipynb").is_file():
        notebook = notebook.with_suffix(".ipynb")
    if notebook.suffix == ".ipynb":
        cells = json.loads(notebook.read_text())["cells"]
    else:
        import jupytext

        cells = jupytext.read(notebook)["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


def _module_file(module: str, root: Path) -> Path | None:
    base = root / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(source: str) -> set[str]:
    """Modules ``source`` imports (absolute imports; ``from a import b`` gives a and a.b, which may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def xrlib_modules(source: str, root: Path | None = None) -> set[str]:
    """Every file of xrlib (relative to the root) that code ``source`` imports, directly or through other modules.

    A package counts with its ``__init__.py``; ``import xrlib.a.b`` brings xrlib, xrlib.a and xrlib.a.b.
    """
    root = root or project_root()
    seen: set[str] = set()
    pending = list(_imported_modules(source))
    while pending:
        parts = pending.pop().split(".")
        if parts[0] != "xrlib":
            continue
        for depth in range(1, len(parts) + 1):
            file = _module_file(".".join(parts[:depth]), root)
            if file is None or str(file.relative_to(root)) in seen:
                continue
            seen.add(str(file.relative_to(root)))
            pending.extend(_imported_modules(file.read_text()))
    return seen


# ----------------------------------------------------------------------------------------------
# dvc.yaml


def stage_deps(item: Stage, root: Path | None = None) -> list[str]:
    """A stage's DVC deps: its notebook, the xrlib files it imports, and what it reads."""
    root = root or project_root()
    modules = sorted(xrlib_modules(notebook_code(root / item.notebook), root))
    reads = list(dict.fromkeys(dvc_path(key) for key in item.reads))
    reads = [read for read in reads if not any(covers(other, read) for other in reads if other != read)]
    return [item.notebook, *modules, *reads]


def covers(dep: str, path: str) -> bool:
    """Whether DVC dependency ``dep`` (a file or folder) holds ``path``."""
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def dvc_stages(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The ``stages`` mapping of dvc.yaml, from :data:`STAGES`."""
    stages = {}
    for item in STAGES:
        outs: list[Any] = [{out: {"persist": True}} if out in item.persist else out for out in item.outs]
        entry: dict[str, Any] = {
            "cmd": f"${{nb}} {item.name} {item.executed_notebook}",
            "deps": stage_deps(item, root),
            "params": list(item.params),
            "outs": [*outs, item.executed_notebook],
        }
        if item.metrics:
            entry["metrics"] = [{metric: {"cache": False}} for metric in item.metrics]
        stages[item.name] = entry
    return stages


def dvc_plots(restorer_configs: list[str]) -> list[dict[str, Any]]:
    """dvc.yaml's ``plots``: the restorers' training curves and 06_metrics' nodule and spectrum tables."""
    metrics_dir = relative_path("06_metrics.folder")
    curves = [{relative_path("04_restorer.curves").format(config=name): {"x": "step"}} for name in restorer_configs]
    return [*curves,
            {f"{metrics_dir}/nodules.csv": {"x": "dprime_drr", "y": "dprime_restored", "template": "scatter",
                                            "title": "NPW d' per nodule, DRR (x) vs restored DRR (y)"}},
            {f"{metrics_dir}/spectra_log10_wide.csv": {
                "x": "frequency_cycles_per_px", "y": ["real_xray", "drr", "restored_drr"],
                "x_label": "spatial frequency (cycles/px)", "y_label": "log10 power (intensity^2 px^2)",
                "title": "Radial power spectra, real X-rays vs raw and restored DRRs (06_metrics)"}}]


DVC_YAML_HEADER = """\
# Written by `xrlib stages --write` from xrlib/stages.py (the stage table) and the notebooks' imports:
# edit those, not this file (tests/test_stages.py fails when the two disagree). Each stage runs one
# notebook (its text form notebooks/<stage>.py; the Lab's paired .ipynb is no dependency) with
# papermill (`python -m xrlib.notebooks STAGE`), injecting only the stage's own params sections,
# which the notebook checks (xrlib.params). Executed notebooks are outputs. `dvc dag` draws it;
# `xrlib exp PROFILE` reruns it with a profile's overrides.
"""


def dvc_yaml(restorer_configs: list[str], root: Path | None = None) -> str:
    """The text of dvc.yaml."""
    document = {"vars": [{"nb": NOTEBOOK_COMMAND}], "stages": dvc_stages(root), "plots": dvc_plots(restorer_configs)}
    return DVC_YAML_HEADER + yaml.safe_dump(document, sort_keys=False, width=120)

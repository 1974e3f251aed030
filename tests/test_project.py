"""Promises of the compendium itself: pinned environments agree, notebooks are clean and papermill-ready."""

import ast
import re

import nbformat
import yaml

from xrlib import notebooks


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.strip().lstrip("- ").strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_environment_yml_lists_the_lock_exactly(project_root):
    lock = _pins((project_root / "requirements.lock").read_text().splitlines())
    env = yaml.safe_load((project_root / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == lock
    assert lock["torch"] == "2.13.0"
    unpinned = [l for l in (project_root / "requirements.lock").read_text().splitlines()
                if l.strip() and not l.startswith("#") and "==" not in l]
    assert unpinned == []


def test_notebooks_are_output_free_and_parameterised(project_root):
    """Each stage notebook's source (notebooks/NN_name.py) has no outputs or notebook metadata, its first
    code cell is tagged ``parameters`` and names exactly the params sections its stage receives."""
    names = notebooks.stage_notebook_names(project_root)
    assert names, "no notebooks found"
    for name in names:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", name), f"{name}: name as NN_name"
        source = notebooks.source_path(name, project_root)
        notebook = notebooks.read_notebook(source)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{name} has outputs"
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell not tagged parameters"
        nbformat.validate(notebook)  # cells carry their ids (nbformat 4.5)
        if source.suffix == ".py":
            assert not source.read_text().startswith("# ---"), f"{source.name}: notebook metadata in the text form"
        assigned = {target.id for node in ast.parse(code[0].source).body if isinstance(node, ast.Assign)
                    for target in node.targets}
        assert assigned == set(notebooks.stage_sections(name)), \
            f"{name}: the parameters cell names {sorted(assigned)}, the stage passes {notebooks.stage_sections(name)}"


def test_every_stage_runs_its_notebook_with_the_params_file(project_root):
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    names = set(notebooks.stage_notebook_names(project_root))
    for name, stage in stages.items():
        assert name in names, f"stage {name} has no notebook"
        assert f"notebooks/{name}.py" in stage["deps"]
        assert f"outputs/notebooks/{name}.ipynb" in stage["outs"]
        assert stage["cmd"].startswith("${nb} ")
        for dotted in stage.get("params", []):
            node = params
            for key in dotted.split("."):
                assert key in node, f"stage {name} names missing parameter {dotted}"
                node = node[key]

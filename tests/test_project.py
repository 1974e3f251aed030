"""Promises of the compendium itself: pinned environments agree, notebooks are clean and papermill-ready."""

import json
import re

import nbformat
import yaml


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
    notebooks = sorted((project_root / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        notebook = json.loads(path.read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name} has outputs"
        assert "parameters" in code[0]["metadata"].get("tags", []), f"{path.name}: first code cell not tagged parameters"
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: name as NN_name.ipynb"
        assert notebook["metadata"]["kernelspec"]["name"] == "python3"
        assert all("id" in cell for cell in notebook["cells"]), f"{path.name}: a cell lacks its id (nbformat 4.5)"
        nbformat.validate(nbformat.reads(path.read_text(), as_version=nbformat.NO_CONVERT))


def test_every_stage_runs_its_notebook_with_the_params_file(project_root):
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    notebooks = {p.stem for p in (project_root / "notebooks").glob("*.ipynb")}
    for name, stage in stages.items():
        assert name in notebooks, f"stage {name} has no notebook"
        assert f"notebooks/{name}.ipynb" in stage["deps"]
        assert f"outputs/notebooks/{name}.ipynb" in stage["outs"]
        assert stage["cmd"].startswith("${nb}") or "-f params.yaml" in stage["cmd"]
        for dotted in stage.get("params", []):
            node = params
            for key in dotted.split("."):
                assert key in node, f"stage {name} names missing parameter {dotted}"
                node = node[key]

"""Stage notebooks as a user meets them in JupyterLab: the text form is the stage's dependency, the
paired .ipynb is the Lab's, and opening, running and saving there leaves the dependency unchanged."""

import hashlib
import json
import shutil
import time

import pytest

from xrlib import notebooks
from xrlib.stages import STAGES

jupytext = pytest.importorskip("jupytext")


@pytest.fixture()
def lab_project(project_root, tmp_path):
    """notebooks/ of a project copy holding 07_readers' text form and the pairing config."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy2(project_root / "notebooks" / "jupytext.toml", folder)
    source = notebooks.source_path("07_readers", project_root)
    shutil.copy2(source, folder / source.name)
    notebooks.sync(["07"], tmp_path)
    return tmp_path


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()  # DVC's hash of a file dependency


def test_sync_pairs_text_and_lab_notebooks_both_ways(lab_project):
    text, lab = lab_project / "notebooks" / "07_readers.py", lab_project / "notebooks" / "07_readers.ipynb"
    assert text.is_file() and lab.is_file()
    assert json.loads(lab.read_text())["metadata"]["kernelspec"]["name"] == "python3"  # the Lab opens it without asking
    text.unlink()
    notebooks.sync(["07_readers"], lab_project)  # an .ipynb alone gets its text form (how notebooks were converted)
    assert text.read_text().startswith("# %% [markdown]")
    assert '# %% tags=["parameters"]' in text.read_text()


def test_opening_running_and_saving_in_the_lab_leaves_the_dependency_unchanged(lab_project):
    """What JupyterLab does on open, run and autosave, through jupytext's contents manager (the Lab's)."""
    from jupytext import TextFileContentsManager

    text = lab_project / "notebooks" / "07_readers.py"
    before = _md5(text)
    manager = TextFileContentsManager(root_dir=str(lab_project))
    model = manager.get("notebooks/07_readers.ipynb")
    notebook = model["content"]
    notebook.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for count, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [{"output_type": "stream", "name": "stdout", "text": "ran\n"},
                        {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo="}}]
        cell.metadata.update({"scrolled": True, "execution": {"iopub.status.idle": "2026-11-30T05:00:00Z"},
                              "jupyter": {"outputs_hidden": False}})
    time.sleep(0.05)
    manager.save(model, "notebooks/07_readers.ipynb")
    assert _md5(text) == before, "saving in the Lab changed the stage's dependency"
    saved = json.loads((lab_project / "notebooks" / "07_readers.ipynb").read_text())
    assert any(c.get("outputs") for c in saved["cells"])  # the outputs stay in the Lab's copy

    # a change a user means to keep reaches the dependency, and so the pipeline
    model = manager.get("notebooks/07_readers.ipynb")
    model["content"].cells.append(jupytext.reads("x = 1", fmt="py:percent").cells[0])
    manager.save(model, "notebooks/07_readers.ipynb")
    assert _md5(text) != before and text.read_text().rstrip().endswith("x = 1")


def test_each_stage_receives_only_its_own_params_sections(project_root):
    from xrlib.params import load_params

    params = load_params(project_root / "params.yaml")
    for stage in STAGES:
        passed = notebooks.stage_parameters(stage.name, params)
        assert set(passed) == {entry.split(".")[0] for entry in stage.params}
        assert all(passed[section] == params[section] for section in passed)


def test_lab_passes_the_token_under_its_current_name(project_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compendium", project_root / "compendium.py")
    compendium = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compendium)
    assert compendium.lab_arguments(["--no-browser", "--ServerApp.token=abc", "--NotebookApp.token", "--port=1"]) == \
        ["lab", "--no-browser", "--IdentityProvider.token=abc", "--IdentityProvider.token", "--port=1"]

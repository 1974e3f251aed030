"""Profiles: overrides merge onto params.yaml, become `dvc exp run -S` arguments, and drive papermill."""

import json

import pytest
import yaml

from xrlib.errors import ConfigError
from xrlib.params import deep_merge
from xrlib.profiles import dvc_set_args, load_overrides, notebook_paths, profile_params, run_notebooks


def test_deep_merge_overrides_key_by_key_without_touching_the_base():
    base = {"a": {"x": 1, "y": {"z": 2}}, "b": 3}
    assert deep_merge(base, {"a": {"y": {"z": 5}}}) == {"a": {"x": 1, "y": {"z": 5}}, "b": 3}
    assert base["a"]["y"]["z"] == 2
    assert deep_merge(base, {"a": {"w": 1}})["a"] == {"x": 1, "y": {"z": 2}, "w": 1}
    assert deep_merge(base, {"a": [1, 2]})["a"] == [1, 2]  # anything but a mapping replaces


def test_profile_refuses_a_section_params_yaml_lacks(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("a: {x: 1}\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "typo.yaml").write_text("c: {w: 1}\n")
    monkeypatch.setenv("XRLIB_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="overrides section c"):
        profile_params("typo")


def test_dvc_set_args_round_trip_through_yaml():
    base = {"restorer": {"steps": 10, "sizes": [64], "name": "smoke", "flag": True, "schedule": {"kind": "cosine"}}}
    overrides = {"restorer": {"steps": 1000, "sizes": [512, 1024], "name": "paper run", "flag": None,
                              "schedule": {"kind": "linear", "beta_start": 1e-4}, "extra": {"a": 1}}}
    args = dvc_set_args(overrides, base)
    assert args[::2] == ["-S"] * 7
    parsed = {}
    for item in args[1::2]:
        key, value = item.split("=", 1)
        parsed[key] = yaml.safe_load(value)
    assert parsed == {"restorer.steps": 1000, "restorer.sizes": [512, 1024], "restorer.name": "paper run",
                      "restorer.flag": None, "restorer.schedule.kind": "linear",
                      "+restorer.schedule.beta_start": 1e-4, "+restorer.extra": {"a": 1}}


def test_every_shipped_profile_merges_onto_params(project_root):
    for path in sorted((project_root / "profiles").glob("*.yaml")):
        merged = profile_params(path.stem, project_root)
        assert set(merged) == set(yaml.safe_load((project_root / "params.yaml").read_text()))
    assert load_overrides("smoke", project_root) == {}
    with pytest.raises(ConfigError, match="no profile"):
        load_overrides("nonexistent", project_root)


def test_notebook_selection(project_root):
    assert [p.stem for p in notebook_paths(["00"], project_root)] == ["00_data"]
    with pytest.raises(ConfigError, match="no notebook 99"):
        notebook_paths(["99"], project_root)


@pytest.mark.slow
def test_papermill_batch_run_writes_executed_copies(project_root, tmp_path):
    if not (project_root / "data").is_dir():
        pytest.skip("data/ is absent: run `xrlib fetch` first")
    executed = run_notebooks("smoke", tmp_path, ["00"])
    notebook = json.loads(executed[0].read_text())
    assert executed[0].parent == tmp_path
    assert any(c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code")
    injected = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "split_fractions" in "".join(injected[0]["source"])
    # only 00_data's own section is injected: no "Passed unknown parameter" for the other eight
    assert [line.split(" = ")[0] for line in "".join(injected[0]["source"]).splitlines()[1:]] == ["data"]


def test_cli_writes_merged_params(project_root, tmp_path):
    from xrlib.cli import main

    assert main(["params", "paper", "--out", str(tmp_path / "paper.yaml")]) == 0
    merged = yaml.safe_load((tmp_path / "paper.yaml").read_text())
    assert merged == profile_params("paper", project_root)
    assert main(["params", "nonexistent", "--out", str(tmp_path / "x.yaml")]) == 2

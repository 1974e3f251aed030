"""The stage table (xrlib.stages) is complete: dvc.yaml is written from it, and every xrlib module a
stage's notebook imports (transitively) and every path it reads is a dependency of that stage."""

import ast

import pytest
import yaml

from xrlib import stages
from xrlib.errors import ConfigError
from xrlib.params import load_params

PATH_FUNCTIONS = {"path", "relative_path", "dvc_path"}


def _dvc(project_root):
    return yaml.safe_load((project_root / "dvc.yaml").read_text())


def _covered(deps, path):
    return any(stages.covers(dep, path) for dep in deps)


def _path_keys(source, skip_functions=("main",)):
    """String keys passed to stages.path / relative_path in ``source``, outside functions named in ``skip_functions``
    (entry points such as torchrun's main name their own run folder)."""
    keys = set()
    skipped = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in skip_functions:
            skipped.update(id(inner) for inner in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in PATH_FUNCTIONS and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            keys.add(node.args[0].value)
    return keys


def test_dvc_yaml_is_written_from_the_stage_table(project_root):
    expected = stages.dvc_yaml(load_params(project_root / "params.yaml")["restorer"]["train_configs"], project_root)
    assert (project_root / "dvc.yaml").read_text() == expected, "dvc.yaml is stale: run `xrlib stages --write`"


def test_every_module_a_notebook_imports_is_a_dependency(project_root):
    dvc = _dvc(project_root)["stages"]
    assert list(dvc) == [stage.name for stage in stages.STAGES]
    for stage in stages.STAGES:
        deps = dvc[stage.name]["deps"]
        modules = stages.xrlib_modules(stages.notebook_code(project_root / stage.notebook), project_root)
        assert "xrlib/params.py" in modules and "xrlib/stages.py" in modules, stage.name
        missing = sorted(m for m in modules if not _covered(deps, m))
        assert not missing, f"{stage.name} imports {missing} but dvc.yaml does not list them as deps"


def test_every_path_a_stage_reads_is_declared_and_a_dependency(project_root):
    dvc = _dvc(project_root)["stages"]
    for stage in stages.STAGES:
        deps = dvc[stage.name]["deps"]
        own = {f"{stage.name}.{item}" for item in stage.writes}
        code = [stages.notebook_code(project_root / stage.notebook)]
        code += [(project_root / module).read_text()
                 for module in stages.xrlib_modules(code[0], project_root) if module != "xrlib/stages.py"]
        used = set().union(*(_path_keys(source) for source in code))
        undeclared = sorted(used - set(stage.reads) - own)
        assert not undeclared, f"{stage.name} reads {undeclared} without declaring them in xrlib/stages.py"
        for key in stage.reads:
            assert _covered(deps, stages.dvc_path(key)), f"{stage.name} reads {key} but does not depend on it"
            assert stages.covers(stages.dvc_path(key), str(stages.relative_path(key)).split("{")[0].rstrip("/"))
        for out in stage.outs:
            assert out in [o if isinstance(o, str) else next(iter(o)) for o in dvc[stage.name]["outs"]]


def test_params_paths_are_inside_dependencies(project_root):
    """Paths a params section names (e.g. drr.nodule_library, under data/) are dependencies of the stage."""
    params = load_params(project_root / "params.yaml")
    dvc = _dvc(project_root)["stages"]
    for stage in stages.STAGES:
        for section in stage.params:
            values = params[section.split(".")[0]]
            strings = [v for v in _leaves(values) if isinstance(v, str) and "/" in v]
            for value in strings:
                assert not value.startswith("outputs/"), f"{section}: stage outputs are named in xrlib/stages.py, not params"
                assert _covered(dvc[stage.name]["deps"], value), f"{stage.name}: {section} names {value}, not a dependency"


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def test_each_stage_reads_only_what_earlier_stages_write():
    written = set(stages.INPUTS)
    for stage in stages.STAGES:
        for key in stage.reads:
            assert key in written, f"{stage.name} reads {key} before any stage writes it"
        written |= {f"{stage.name}.{item}" for item in stage.writes}


def test_no_stage_output_path_is_written_outside_the_stage_table(project_root):
    notebooks = [project_root / stage.notebook for stage in stages.STAGES]
    for file in sorted((project_root / "xrlib").rglob("*.py")) + notebooks:
        if file.name == "stages.py":
            continue
        text = stages.notebook_code(file) if file in notebooks else file.read_text()
        for literal in ('"outputs/', "'outputs/", '"paper/figures', "outputs_dir(", "/ \"outputs\""):
            assert literal not in text, f"{file.relative_to(project_root)} names a stage output path ({literal}...)"


def test_paths_fill_fields_and_keep_the_rest(tmp_path):
    assert stages.path("01_drr.nodules", tmp_path) == tmp_path / "outputs/01_drr/nodules.csv"
    assert stages.path("05_restore.restored_drr", tmp_path, config="a", drr_id="d1") == \
        tmp_path / "outputs/05_restore/a/d1.png"
    pattern = stages.path("05_restore.restored_test", tmp_path, config="x_{generator}")
    assert str(pattern).endswith("outputs/05_restore/x_{generator}/test/{pair_id}.png")
    assert stages.dvc_path("05_restore.restored_test") == "outputs/05_restore"
    assert stages.dvc_path("01_drr.drr") == "outputs/01_drr/drr"
    assert stages.dvc_path("ratings") == "ratings"
    with pytest.raises(ConfigError, match="writes no 'nodule'"):
        stages.path("01_drr.nodule")
    with pytest.raises(ConfigError, match="no field"):
        stages.path("01_drr.nodules", tmp_path, drr_id="d1")
    with pytest.raises(ConfigError, match="no stage '09_x'"):
        stages.stage("09_x")


def test_module_discovery_follows_imports_transitively(tmp_path):
    (tmp_path / "xrlib" / "sub").mkdir(parents=True)
    (tmp_path / "xrlib" / "__init__.py").write_text("")
    (tmp_path / "xrlib" / "sub" / "__init__.py").write_text("")
    (tmp_path / "xrlib" / "a.py").write_text("import numpy\nfrom xrlib.sub import b\n")
    (tmp_path / "xrlib" / "sub" / "b.py").write_text("def f():\n    from xrlib import c\n")
    (tmp_path / "xrlib" / "c.py").write_text("")
    (tmp_path / "xrlib" / "unused.py").write_text("")
    found = stages.xrlib_modules("import pandas\nfrom xrlib.a import thing\n", tmp_path)
    assert found == {"xrlib/__init__.py", "xrlib/a.py", "xrlib/sub/__init__.py", "xrlib/sub/b.py", "xrlib/c.py"}


def test_ratings_are_an_input_of_the_readers_stage_alone(project_root):
    """A new rating reruns 07_readers, never 00_data (whose input is data/) and what follows it."""
    dvc = _dvc(project_root)["stages"]
    assert (project_root / "ratings").is_dir()
    for name, stage in dvc.items():
        reads_ratings = any(stages.covers(dep, "ratings/alice.csv") for dep in stage["deps"])
        assert reads_ratings == (name == "07_readers"), name
    assert not stages.covers(stages.INPUTS["data"], stages.INPUTS["ratings"])


def test_stages_depend_on_the_notebooks_text_form_not_the_labs_copy(project_root):
    for name, stage in _dvc(project_root)["stages"].items():
        notebooks = [dep for dep in stage["deps"] if dep.startswith("notebooks/")]
        assert notebooks == [f"notebooks/{name}.py"], (name, notebooks)
        assert stage["cmd"] == f"${{nb}} {name} outputs/notebooks/{name}.ipynb"

"""DVC: the committed data.dvc matches the fetched data, push/pull round trip, and the full `dvc repro`.

Each test works in a throw-away copy of the working tree (tracked and untracked-not-ignored files
plus data/), so the developer's own outputs and cache are never touched.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xrlib.data.fetch import sha256_file

BIN = Path(sys.executable).parent


def run(args, cwd, **kwargs):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(cwd),
               XRLIB_ROOT=str(cwd), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def project_copy(project_root, tmp_path_factory):
    """A git repository holding a copy of the working tree and of data/."""
    copy = tmp_path_factory.mktemp("compendium")
    files = run(["git", "ls-files", "-co", "--exclude-standard"], project_root).split("\n")
    for name in filter(None, files):
        source = project_root / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    if (project_root / ".cache" / "wheels").is_dir():  # spare the package index a second download
        shutil.copytree(project_root / ".cache" / "wheels", copy / ".cache" / "wheels")
    run(["git", "init", "-q"], copy)
    run(["git", "add", "-A"], copy)
    run(["git", "commit", "-qm", "copy"], copy)
    run([BIN / "xrlib", "fetch"], copy)
    return copy


def test_fetch_on_fresh_clone_leaves_data_dvc_unchanged(project_copy):
    out = run([BIN / "dvc", "status", "data.dvc"], project_copy)
    assert "up to date" in out, out
    run(["git", "diff", "--exit-code", "data.dvc"], project_copy)


def test_push_pull_round_trip_to_local_remote(project_copy, tmp_path):
    remote = tmp_path / "remote"
    digests = {p.relative_to(project_copy): sha256_file(p) for p in (project_copy / "data").rglob("*") if p.is_file()}
    run([BIN / "dvc", "remote", "add", "--local", "roundtrip", str(remote)], project_copy)
    run([BIN / "dvc", "push", "-r", "roundtrip", "data.dvc"], project_copy)
    assert any(remote.rglob("*")), "nothing was pushed"
    shutil.rmtree(project_copy / "data")
    shutil.rmtree(project_copy / ".dvc" / "cache", ignore_errors=True)
    run([BIN / "dvc", "pull", "-r", "roundtrip", "data.dvc"], project_copy)
    assert {p.relative_to(project_copy): sha256_file(p) for p in (project_copy / "data").rglob("*") if p.is_file()} == digests
    assert "up to date" in run([BIN / "dvc", "status", "data.dvc"], project_copy)


@pytest.mark.slow
def test_full_pipeline_reproduces_and_is_clean(project_copy):
    run([BIN / "dvc", "repro"], project_copy, timeout=3600)
    assert "up to date" in run([BIN / "dvc", "status"], project_copy)
    dag = run([BIN / "dvc", "dag"], project_copy)
    assert "00_data" in dag
    executed = project_copy / "outputs" / "notebooks" / "00_data.ipynb"
    assert executed.is_file() and '"output_type"' in executed.read_text()
    assert (project_copy / "outputs" / "00_data" / "xray_manifest.csv").is_file()


def test_repro_refuses_altered_default_data_and_fetch_restores_it(project_copy, tmp_path):
    copy = tmp_path / "altered"
    shutil.copytree(project_copy, copy, symlinks=True)
    cr = next((copy / "data" / "xray").rglob("*.dcm"))
    damaged = bytearray(cr.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    cr.write_bytes(bytes(damaged))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(copy), XRLIB_ROOT=str(copy))
    result = subprocess.run([BIN / "dvc", "repro", "00_data"], cwd=copy, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode != 0
    assert f"{cr.name}: SHA-256" in result.stdout + result.stderr and "xrlib fetch" in result.stdout + result.stderr
    assert not (copy / "outputs" / "00_data" / "xray_manifest.csv").exists()
    # DVC itself re-records data.dvc before any stage runs; `xrlib fetch` puts bytes and record back
    run([BIN / "xrlib", "fetch"], copy)
    run(["git", "diff", "--exit-code", "data.dvc"], copy)
    assert "up to date" in run([BIN / "dvc", "status", "data.dvc"], copy)

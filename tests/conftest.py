"""Shared fixtures: the project root and the development data beside it (../shared)."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (development data); tests that use it skip where it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is absent: development data not available here")
    return SHARED


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (small models run faster so on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run in miniature (tests/tiny_run.py): (project root, its params); shared by the release and restore tests."""
    from tests.tiny_run import make_tiny_run

    root = tmp_path_factory.mktemp("tiny-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        params = make_tiny_run(root)
    finally:
        torch.set_num_threads(threads)
    return root, params

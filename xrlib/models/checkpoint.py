"""Checkpoints that lose nothing and run no code.

A checkpoint is a folder ``step-00000100/`` holding one ``<name>.safetensors`` per module (its
architecture config in the safetensors metadata) and ``training_state.pt`` (optimizers, LR
schedulers, RNG states, step, extra), which is read back with ``torch.load(weights_only=True)``.
The folder is written under a temporary name and renamed when complete, so a run killed at any
moment leaves either the whole checkpoint or none; :func:`latest_checkpoint` sees only whole ones,
and the next save removes the staging folders such a kill leaves behind. ``checksums.json``
holds every file's SHA-256: a damaged checkpoint is refused before anything is read from it, and
:func:`load_latest_checkpoint` then falls back to the previous good one and says so.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, safe_open, save_model

from xrlib.errors import CheckpointError
from xrlib.io import sha256_file, umask_mode

STEP_FOLDER = re.compile(r"^step-(\d{8})$")
STAGING_FOLDER = re.compile(r"^\.step-\d{8}\.")
TRAINING_STATE = "training_state.pt"
CHECKSUMS = "checksums.json"
DAMAGED_PREFIX = "damaged-"


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [int(v) if isinstance(v, (int, np.integer)) else v for v in _numpy_state()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``directory/step-<step>`` atomically and keep only the last ``keep_last``.

    ``modules`` maps names to plain modules (unwrap DDP with ``.module``); ``config`` is the
    architecture (JSON-able) checked on load; ``extra`` holds JSON-able training bookkeeping.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    remove_staging(root)
    final = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    os.chmod(staging, umask_mode(directory=True))
    try:
        metadata = {"config": json.dumps(dict(config or {}), sort_keys=True), "step": str(step)}
        for name, module in modules.items():
            save_model(module, str(staging / f"{name}.safetensors"), metadata=metadata)
        state = {
            "step": int(step),
            "optimizers": {k: v.state_dict() for k, v in (optimizers or {}).items()},
            "schedulers": {k: v.state_dict() for k, v in (schedulers or {}).items()},
            "rng": _rng_state(),
            "extra_json": json.dumps(dict(extra or {}), sort_keys=True),
        }
        torch.save(state, staging / TRAINING_STATE)
        digests = {f.name: sha256_file(f) for f in sorted(staging.iterdir())}
        (staging / CHECKSUMS).write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
        for written in staging.iterdir():
            os.chmod(written, umask_mode())  # some writers create files 0600
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_staging(directory: str | os.PathLike) -> list[Path]:
    """Delete the staging folders (``.step-*.*``) a kill during a save left under ``directory``."""
    root = Path(directory)
    stale = [p for p in root.iterdir() if p.is_dir() and STAGING_FOLDER.match(p.name)] if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def verify_checkpoint(checkpoint: str | os.PathLike) -> None:
    """Check every file of a checkpoint against its ``checksums.json``; CheckpointError if one differs.

    Checkpoints written before checksums were stored are let through with a warning.
    """
    folder = Path(checkpoint)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        warnings.warn(f"{folder}: no {CHECKSUMS} (written by an older xrlib); its content cannot be verified",
                      stacklevel=2)
        return
    try:
        expected = json.loads(listing.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{listing}: unreadable ({error}); the checkpoint is damaged or tampered with") from error
    for name, digest in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint is incomplete, damaged or tampered with")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: SHA-256 differs from {CHECKSUMS}; the checkpoint is damaged or tampered with")


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_FOLDER.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_FOLDER.match(p.name).group(1)))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_config(weights_path: str | os.PathLike) -> dict[str, Any]:
    """The architecture config stored in a safetensors file's metadata."""
    path = Path(weights_path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); it is truncated or tampered with") from error
    try:
        return json.loads(metadata.get("config", "{}"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its config metadata is not JSON; the file was altered") from error


def load_weights(
    weights_path: str | os.PathLike,
    module: torch.nn.Module,
    expected_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load one safetensors file into ``module`` (strict); return the stored config.

    A config differing from ``expected_config``, missing or surplus tensors, or a wrong shape
    raise a CheckpointError naming the file; nothing in the file is ever executed.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file; train the model first or fix the path")
    stored = read_config(path)
    if expected_config is not None and stored != json.loads(json.dumps(dict(expected_config), sort_keys=True)):
        differing = sorted(k for k in set(stored) | set(expected_config) if stored.get(k) != expected_config.get(k))
        raise CheckpointError(f"{path}: made for another architecture (differs in {', '.join(differing)}); "
                              "load it with its own config or retrain")
    differences = state_differences(path, module)
    if differences:
        raise CheckpointError(f"{path}: does not match {type(module).__name__} ({'; '.join(differences)}); "
                              "wrong architecture")
    try:
        load_model(module, str(path), strict=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: does not match {type(module).__name__} ({error}); wrong architecture") from error
    return stored


def state_differences(weights_path: str | os.PathLike, module: torch.nn.Module, shown: int = 3) -> list[str]:
    """What keeps a safetensors file from loading into ``module``: tensors missing from the file, surplus
    tensors, and tensors of another shape (each with up to ``shown`` names and the count); empty if it fits."""
    path = Path(weights_path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); it is truncated or tampered with") from error
    state = module.state_dict()
    expected = {key: tuple(value.shape) for key, value in state.items()}
    # safetensors stores a tensor shared by several names (tied weights) once: such a name is not missing
    storage = {key: (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
               for key, value in state.items()}
    stored_storage = {storage[key] for key in stored if key in storage}
    missing = sorted(key for key in expected if key not in stored and storage[key] not in stored_storage)
    unexpected = sorted(set(stored) - set(expected))
    reshaped = [f"{key} {list(stored[key])} in the file, {list(expected[key])} in the model"
                for key in sorted(set(stored) & set(expected)) if stored[key] != expected[key]]

    def listed(what: str, items: list[str]) -> str:
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        return f"{len(items)} {what}: {', '.join(items[:shown])}{more}"

    return [listed(what, items) for what, items in (("missing", missing), ("unexpected", unexpected),
                                                    ("of another shape", reshaped)) if items]


def load_checkpoint(
    checkpoint: str | os.PathLike,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    expected_config: Mapping[str, Any] | None = None,
    restore_rng: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint folder into the given objects; return ``{"step", "extra"}``.

    Unless ``verify`` is False (the caller just did it), the folder's checksums are verified
    first (:func:`verify_checkpoint`), so a damaged file is refused before any object changes.
    """
    folder = Path(checkpoint)
    if verify:
        verify_checkpoint(folder)
    for name, module in modules.items():
        load_weights(folder / f"{name}.safetensors", module, expected_config)
    state_path = folder / TRAINING_STATE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"{state_path}: missing; the checkpoint is incomplete") from error
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{state_path}: refused or unreadable ({type(error).__name__}: {error}); "
                              "it may be tampered with; delete this checkpoint") from error
    for name, optimizer in (optimizers or {}).items():
        optimizer.load_state_dict(state["optimizers"][name])
    for name, scheduler in (schedulers or {}).items():
        scheduler.load_state_dict(state["schedulers"][name])
    if restore_rng:
        _set_rng_state(state["rng"])
    return {"step": int(state["step"]), "extra": json.loads(state["extra_json"])}


def load_latest_checkpoint(
    directory: str | os.PathLike,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    expected_config: Mapping[str, Any] | None = None,
    move_damaged: bool = True,
) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest good checkpoint under ``directory``; None when there is none.

    A checkpoint whose files differ from its checksums is skipped, with a warning naming it, and
    the previous one is tried; with ``move_damaged`` (one process only, e.g. rank 0) it is renamed
    ``damaged-step-...``, kept for inspection and never loaded again.
    Raises CheckpointError when checkpoints exist but none is intact, or the newest intact one
    does not fit (another architecture). Returns (the folder restored, ``{"step", "extra"}``).
    """
    found = list_checkpoints(directory)
    damaged = []
    for folder in reversed(found):
        try:
            verify_checkpoint(folder)
        except CheckpointError as error:
            aside = folder.with_name(DAMAGED_PREFIX + folder.name)
            if move_damaged:
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(folder, aside)
            damaged.append(aside)
            warnings.warn(f"{error}. {'Moved it to ' + aside.name if move_damaged else 'Skipped it'}; "
                          "trying the previous checkpoint", stacklevel=2)
            continue
        restored = load_checkpoint(folder, modules, optimizers, schedulers, expected_config, verify=False)
        if damaged:
            warnings.warn(f"resumed from {folder.name}, the newest good checkpoint (damaged: "
                          f"{', '.join(p.name for p in damaged)})", stacklevel=2)
        return folder, restored
    if damaged:
        raise CheckpointError(f"{directory}: every checkpoint is damaged ({', '.join(p.name for p in damaged)}); "
                              "start afresh by moving the folder aside, or restore it from a copy")
    return None

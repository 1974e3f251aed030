"""Checkpoints that lose nothing and run no code.

A checkpoint is a folder ``step-00000100/`` holding one ``<name>.safetensors`` per module (its
architecture config in the safetensors metadata) and ``training_state.pt`` (optimizers, LR
schedulers, RNG states, step, extra), which is read back with ``torch.load(weights_only=True)``.
The folder is written under a temporary name and renamed when complete, so a run killed at any
moment leaves either the whole checkpoint or none; :func:`latest_checkpoint` sees only whole ones.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, safe_open, save_model

from xrlib.errors import CheckpointError

STEP_FOLDER = re.compile(r"^step-(\d{8})$")
TRAINING_STATE = "training_state.pt"


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
    final = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except (SafetensorError, RuntimeError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: does not match {type(module).__name__} ({error}); wrong architecture") from error
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match {type(module).__name__} "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); wrong architecture")
    return stored


def load_checkpoint(
    checkpoint: str | os.PathLike,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    expected_config: Mapping[str, Any] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint folder into the given objects; return ``{"step", "extra"}``."""
    folder = Path(checkpoint)
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

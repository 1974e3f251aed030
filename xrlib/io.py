"""Atomic file writes and lossless image I/O shared by every stage.

Every writer goes through :func:`atomic_path`: the file appears under its final name only once
it is complete, so an interrupted stage never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from xrlib.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (numpy scalars converted)."""

    def default(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot write {type(value).__name__} to JSON")

    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n")


def write_csv_atomic(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to CSV atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_png16(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Save a 2-D display image with values in [0, 1] as a lossless 16-bit greyscale PNG."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise DataError(f"{path}: a PNG image must be 2-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: image holds NaN or infinite values; clip or fix the input first")
    quantised = np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(quantised).save(tmp, format="PNG")
    return Path(path)


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Load an 8- or 16-bit greyscale PNG as float32 in [0, 1] (colour images are averaged)."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not a readable PNG ({error}); replace the file") from error
    if array.ndim == 3:
        array = array[..., :3].mean(axis=-1)
    if mode in ("I;16", "I;16B", "I;16L", "I") or array.dtype == np.uint16 or array.max() > 255:
        scale = 65535.0
    else:
        scale = 255.0
    return (array.astype(np.float32) / scale).clip(0.0, 1.0)

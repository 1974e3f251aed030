"""Atomic file writes and lossless image I/O shared by every stage.

Every writer goes through :func:`atomic_path`: the file appears under its final name only once
it is complete, so an interrupted stage never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, PngImagePlugin

from xrlib.errors import DataError


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def arrays_sha256(*arrays: Any) -> str:
    """SHA-256 of arrays' values (float32, C order) and shapes, e.g. a training set held in memory (CPU tensors too)."""
    digest = hashlib.sha256()
    for array in arrays:
        values = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        digest.update(repr(values.shape).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The file gets the umask's mode, as a plain ``open`` would give it (not mkstemp's 0600).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
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
    """Save a 2-D display image with values in [0, 1] as a lossless 16-bit greyscale PNG.

    The file states its 16 significant bits (an sBIT chunk), so :func:`load_png` never takes a
    dark image for 12-bit data.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2:
        raise DataError(f"{path}: a PNG image must be 2-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: image holds NaN or infinite values; clip or fix the input first")
    quantised = np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([16]))
    with atomic_path(path) as tmp:
        Image.fromarray(quantised).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


#: Detector depths a 16-bit PNG without an sBIT chunk may hold in its low bits.
STORED_DEPTHS_BITS = (10, 12, 14, 16)


def png_significant_bits(path: str | os.PathLike) -> int | None:
    """The first channel's significant bits from a PNG's sBIT chunk, or None where it has none."""
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    position = 8  # after the signature
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind == b"sBIT" and length >= 1 and position + 9 <= len(data):
            return int(data[position + 8])
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Load a PNG radiograph as float32 greyscale in [0, 1], by the image's mode.

    - ``L`` (8-bit grey): value / 255; ``1`` (bilevel): 0 or 1.
    - ``LA``: the alpha channel is dropped (it is not part of the radiograph).
    - ``P``/``PA`` (palette): converted through the palette to RGB, then as RGB.
    - ``RGB``/``RGBA``: alpha dropped, the three channels averaged.
    - 16-bit grey (``I;16``): value / (2^bits - 1), where bits is the sBIT chunk's significant
      bits, or without sBIT the smallest of :data:`STORED_DEPTHS_BITS` holding the maximum value
      (12-bit detector data are commonly stored in the low bits of a 16-bit PNG without saying
      so). Values above 2^sBIT - 1 mean the encoder scaled them to 16 bits: value / 65535.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("P", "PA"):
                image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not a readable PNG ({error}); replace the file") from error
    if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):
        if mode == "1":
            return array.astype(np.float32)
        if array.ndim == 3:
            array = array[..., :1] if mode == "LA" else array[..., :3]
            array = array.astype(np.float32).mean(axis=-1)
        return array.astype(np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        maximum = int(array.max()) if array.size else 0
        bits = png_significant_bits(path)
        if bits is None:
            bits = next((b for b in STORED_DEPTHS_BITS if maximum < 2 ** b), 16)
        scale = 65535.0 if maximum > 2 ** bits - 1 else float(2 ** bits - 1)
        return (array.astype(np.float32) / scale).clip(0.0, 1.0)
    raise DataError(f"{path}: PNG mode '{mode}' is not a greyscale radiograph; save it as 8- or 16-bit greyscale")

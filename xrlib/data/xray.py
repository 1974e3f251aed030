"""Chest X-ray reading (DICOM or PNG) into one display convention, with nothing identifying kept.

A display X-ray is a float32 array in [0, 1] with bright = attenuating (bone white), i.e. the
MONOCHROME2 convention: DICOM MONOCHROME1 images are inverted. For DICOM the modality LUT (rescale)
and the VOI (window or VOI LUT) are applied as the standard prescribes; without a VOI the 0.5-99.5
percentile range is used. The returned record holds pixels and geometry only: no patient name, ID
or date can reach an output through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from xrlib.errors import DataError
from xrlib.io import load_png

XRAY_SUFFIXES = (".dcm", ".dicom", ".png")


@dataclass(frozen=True)
class XRayImage:
    """One radiograph as display intensity in [0, 1] plus the geometry needed downstream."""

    display: np.ndarray  # (H, W) float32, 1 = most attenuating
    pixel_spacing_mm: tuple[float, float] | None  # (row, column); None where the file states none
    view_position: str | None  # "PA", "AP", ... as stated by the file
    modality: str | None  # "CR", "DX", ... or None for PNG
    source_format: str  # "dicom" or "png"


def _positive_spacing(value) -> tuple[float, float] | None:
    if value is None:
        return None
    spacing = tuple(float(v) for v in value)
    return spacing if len(spacing) == 2 and min(spacing) > 0 else None


def _apply_voi(values: np.ndarray, dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Apply the VOI (window or VOI LUT, pydicom's implementation) scaled to [0, 1].

    The scale is the VOI's own saturation levels, found by passing extreme inputs through it, so
    it holds for linear, sigmoid and LUT transforms and for any rescale.
    """
    output = apply_voi_lut(values, dataset, prefer_lut=True)
    low, high = apply_voi_lut(np.array([-1e12, 1e12]), dataset, prefer_lut=True)
    if high == low:
        raise DataError(f"{path}: its VOI window maps every value to one level; fix WindowWidth")
    return (output - low) / (high - low)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        raise DataError("image is constant: no contrast to display")
    return (values - low) / (high - low)


def read_dicom_xray(path: str | os.PathLike) -> XRayImage:
    """Read a single-frame greyscale DICOM radiograph (MONOCHROME1/2) as a display image."""
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as error:
        raise DataError(f"{path}: not a readable DICOM file ({error}); replace it") from error
    if "PixelData" not in dataset:
        raise DataError(f"{path}: DICOM file has no pixel data (a report or structured file?); remove it from data/xray")
    photometric = str(getattr(dataset, "PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: photometric interpretation '{photometric}' is not greyscale; convert it to MONOCHROME2")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises several types for truncated or undecodable data
        raise DataError(f"{path}: pixel data cannot be decoded ({type(error).__name__}: {error}); "
                        "the file is truncated or its compression unsupported") from error
    if stored.ndim != 2:
        raise DataError(f"{path}: expected one 2-D frame, got pixel array of shape {stored.shape}")
    values = apply_modality_lut(stored, dataset).astype(np.float64)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        display = _apply_voi(values, dataset, path)
    else:
        display = _percentile_window(values)
    display = np.clip(display, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    spacing = _positive_spacing(dataset.get("PixelSpacing")) or _positive_spacing(dataset.get("ImagerPixelSpacing"))
    view = str(dataset.get("ViewPosition", "")).strip().upper() or None
    modality = str(dataset.get("Modality", "")).strip() or None
    return XRayImage(display.astype(np.float32), spacing, view, modality, "dicom")


def read_png_xray(path: str | os.PathLike) -> XRayImage:
    """Read an 8- or 16-bit PNG radiograph (assumed already bright = attenuating)."""
    display = load_png(path)
    if display.ndim != 2 or min(display.shape) < 16:
        raise DataError(f"{path}: image of shape {display.shape} is not a radiograph; replace it")
    if float(display.max() - display.min()) == 0.0:
        raise DataError(f"{path}: image is constant; replace it")
    return XRayImage(display, None, None, None, "png")


def read_xray(path: str | os.PathLike) -> XRayImage:
    """Read a DICOM or PNG radiograph by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return read_png_xray(path)
    if suffix in (".dcm", ".dicom", ""):
        return read_dicom_xray(path)
    raise DataError(f"{path}: unknown X-ray format '{suffix}'; use DICOM (.dcm) or PNG")

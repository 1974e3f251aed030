"""Batches of display images for the metrics: float tensors ``(B, 1, H, W)`` in [0, 1], bright = attenuating."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xrlib.errors import ConfigError, DataError
from xrlib.io import load_png

DATA_RANGE = 1.0
"""Intensity range of every display image the metrics see ([0, 1]); PSNR's peak value."""


def check_batch(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Return ``images`` as float32 (B, 1, H, W), raising DataError for any other shape."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataError(f"{name} must be a (B, 1, H, W) tensor, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataError(f"{name} is an empty batch")
    return images.float()


def as_numpy(images: torch.Tensor, name: str = "images") -> np.ndarray:
    """(B, 1, H, W) tensor -> (B, H, W) float64 array."""
    return check_batch(images, name)[:, 0].detach().cpu().double().numpy()


def load_image_batch(paths: Sequence[str | os.PathLike], size_px: int | None = None) -> torch.Tensor:
    """Load greyscale PNGs as one (B, 1, H, W) batch in [0, 1].

    With ``size_px`` each image is centre-cropped to a square (its shorter side) and resized to
    ``size_px`` x ``size_px`` (no anisotropic stretching, which would distort spectra); without
    it every image must have the same shape (a DataError names the odd one).
    """
    if len(paths) == 0:
        raise DataError("load_image_batch got no paths; check the manifest it was built from")
    images = []
    for path in paths:
        image = torch.from_numpy(load_png(path))[None, None]
        if size_px is not None:
            side = min(image.shape[-2:])
            top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
            image = resize_images(image[..., top : top + side, left : left + side], (size_px, size_px))
        elif images and image.shape != images[0].shape:
            raise DataError(
                f"{path}: shape {tuple(image.shape[-2:])} differs from {tuple(images[0].shape[-2:])}; "
                "pass size_px to bring the batch to one square grid"
            )
        images.append(image)
    return torch.cat(images)


def resize_images(images: torch.Tensor, size_hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a (B, 1, H, W) batch to ``size_hw`` (antialiased ``bilinear`` or ``bicubic``), clipped to [0, 1]."""
    images = check_batch(images)
    if tuple(images.shape[-2:]) == tuple(size_hw):
        return images
    if mode not in ("bilinear", "bicubic"):
        raise ConfigError(f"resize mode '{mode}' is not one of bilinear, bicubic")
    resized = torch.nn.functional.interpolate(
        images, size=tuple(size_hw), mode=mode, align_corners=False, antialias=True
    )
    return resized.clamp(0.0, DATA_RANGE)


def missing_files(paths: Sequence[Path], what: str) -> None:
    """Raise a DataError naming how many of ``paths`` are absent, and the first few."""
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(paths)} {what} are missing, e.g. {missing[:3]}; run the stage that makes them"
        )


def batch_of(image: np.ndarray) -> torch.Tensor:
    """One 2-D image as a (1, 1, H, W) float tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]

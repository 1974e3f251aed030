"""Checks of an LQ generator: does it do what the paper needs?

:func:`translation_report`: the twin's radially averaged power spectrum and sharpness move from
the HQ value toward the DRR value (reported as the fraction of the HQ -> DRR distance covered),
while the low-pass SSIM to the HQ image stays high (anatomy kept). Resampling is
:func:`xrlib.data.pairs.resize_bicubic`, spectra :func:`xrlib.eval.realism.radial_power_spectrum`,
Gaussian low-passes scipy's ``gaussian_filter``; sharpness here is only this check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter
from torchmetrics.functional.image import structural_similarity_index_measure

from xrlib.data.pairs import resize_bicubic
from xrlib.errors import DataError
from xrlib.eval.realism import radial_power_spectrum
from xrlib.io import load_png
from xrlib.lq.pairs import load_display_stack


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass of each (B, C, H, W) image (scipy ``gaussian_filter``, reflect edges, radius 4 sigma)."""
    if sigma_px <= 0:
        return images
    blurred = gaussian_filter(images.detach().cpu().numpy(), sigma=(0, 0, sigma_px, sigma_px), mode="reflect")
    return torch.from_numpy(blurred).to(images)


def spectrum_shape(images: torch.Tensor) -> torch.Tensor:
    """Mean over images of log10 of the radial power spectrum normalised to unit total power (its shape, not its contrast).

    Spectra are :func:`xrlib.metrics.radial_power_spectrum` of square (B, 1, N, N) images, N/2 bins.
    """
    if images.shape[-2] != images.shape[-1]:
        raise DataError(f"spectrum_shape needs square images, got {tuple(images.shape[-2:])}")
    _, power = radial_power_spectrum(images, n_bins=images.shape[-1] // 2)
    unit_power = power / np.clip(power.sum(axis=1, keepdims=True), 1e-20, None)
    return torch.from_numpy(np.log10(np.clip(unit_power, 1e-12, None)).mean(axis=0))


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude over the image's standard deviation (per pixel; contrast-free), one value per image."""
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    gradient = torch.sqrt(dx ** 2 + dy ** 2).mean(dim=(1, 2, 3))
    return gradient / images.std(dim=(1, 2, 3)).clamp_min(1e-8)


def low_pass_ssim(a: torch.Tensor, b: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """SSIM (torchmetrics, data range 1) between Gaussian low-passed versions of ``a`` and ``b``, one value per pair."""
    if a.shape != b.shape:
        raise DataError(f"low_pass_ssim needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return structural_similarity_index_measure(gaussian_blur(a, sigma_px), gaussian_blur(b, sigma_px), data_range=1.0, reduction="none")


def fraction_moved(start: torch.Tensor, end: torch.Tensor, moved: torch.Tensor) -> float:
    """Where ``moved`` lies on the way from ``start`` to ``end``: projection of (moved - start) on (end - start) over |end - start|^2.

    0 = still at the start (the HQ value), 1 = at the end (the DRR value); works for scalars and vectors.
    """
    direction = (end - start).flatten()
    length2 = float(direction @ direction)
    if length2 == 0:
        raise DataError("HQ and DRR values coincide; the direction of movement is undefined")
    return float((moved - start).flatten() @ direction) / length2


def translation_report(hq_display: torch.Tensor, lq_display: torch.Tensor, drr_display: torch.Tensor, low_pass_sigma_px: float) -> dict[str, float]:
    """How far LQ twins moved from their HQ images toward the DRR domain, and how much anatomy they kept.

    All are measured at the HQ size: LQ twins (same count as HQ, any size) and DRRs (any count) are
    bicubic-resampled to it. Spectrum: :func:`spectrum_shape` of each set;
    sharpness: mean of :func:`sharpness`. ``*_fraction`` = :func:`fraction_moved` (0 HQ, 1 DRR).
    ``low_pass_ssim`` = mean SSIM of the Gaussian low-passes (sigma ``low_pass_sigma_px``) of twin and HQ.
    """
    size = hq_display.shape[-1]
    if lq_display.shape[0] != hq_display.shape[0]:
        raise DataError(f"{lq_display.shape[0]} LQ twins for {hq_display.shape[0]} HQ images; they must pair up")
    lq = resize_bicubic(lq_display, (size, size))
    drr = resize_bicubic(drr_display, (size, size))
    spectra = {name: spectrum_shape(x) for name, x in (("hq", hq_display), ("lq", lq), ("drr", drr))}
    sharp = {name: sharpness(x).mean() for name, x in (("hq", hq_display), ("lq", lq), ("drr", drr))}
    return {
        "spectrum_fraction": fraction_moved(spectra["hq"], spectra["drr"], spectra["lq"]),
        "sharpness_fraction": fraction_moved(sharp["hq"], sharp["drr"], sharp["lq"]),
        "sharpness_hq": float(sharp["hq"]),
        "sharpness_lq": float(sharp["lq"]),
        "sharpness_drr": float(sharp["drr"]),
        "low_pass_ssim": float(low_pass_ssim(lq, hq_display, low_pass_sigma_px).mean()),
    }


def manifest_translation_checks(manifest: pd.DataFrame, root: Path, drr_display: torch.Tensor, hq_px: int,
                                low_pass_sigma_px: float, split: str | None = None) -> pd.DataFrame:
    """:func:`translation_report` for each generator of a pair manifest (optionally one split), one row per generator."""
    rows = []
    chosen = manifest if split is None else manifest[manifest.split == split]
    for generator, group in chosen.groupby("generator", sort=True):
        hq = load_display_stack([root / p for p in group.hq_path], hq_px)
        lq = torch.cat([torch.from_numpy(load_png(root / p))[None, None] for p in group.lq_path])
        rows.append({"generator": generator, "n_images": len(group), **translation_report(hq, lq, drr_display, low_pass_sigma_px)})
    return pd.DataFrame(rows)

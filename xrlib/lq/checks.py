"""Checks of an LQ generator: does it do what the paper needs?

:func:`translation_report`: the twin's radially averaged power spectrum and sharpness move from
the HQ value toward the DRR value (reported as the fraction of the HQ -> DRR distance covered),
while the low-pass SSIM to the HQ image stays high (anatomy kept). Resampling is
:func:`xrlib.data.pairs.resize_bicubic`, spectra :func:`xrlib.eval.realism.radial_power_spectrum`,
Gaussian low-passes scipy's ``gaussian_filter``; sharpness here is only this check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

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
from xrlib.lq.twins import ddpm_translate
from xrlib.progress import progress


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass of each (B, C, H, W) image (scipy ``gaussian_filter``, reflect edges, radius 4 sigma)."""
    if sigma_px <= 0:
        return images
    blurred = gaussian_filter(images.detach().cpu().numpy(), sigma=(0, 0, sigma_px, sigma_px), mode="reflect")
    return torch.from_numpy(blurred).to(images)


def spectrum_shape(images: torch.Tensor) -> torch.Tensor:
    """Mean over images of log10 of the radial power spectrum normalised to unit total power (its shape, not its contrast).

    Spectra are :func:`xrlib.eval.realism.radial_power_spectrum` of square (B, 1, N, N) images, N/2 bins.
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


def spectrum_shape_distance(shape_a: torch.Tensor, shape_b: torch.Tensor) -> float:
    """RMS over frequency bins of the difference of two :func:`spectrum_shape` curves, in decades."""
    return float(torch.sqrt(torch.mean((shape_a - shape_b) ** 2)))


SPECTRUM_BANDS_CYCLES_PER_PX = {"mid": (0.1, 0.35), "finest": (0.35, 0.5)}
"""Bands of :func:`band_offsets` at the twins' size: structures of 3-10 px (blur shows here) and the top of the band (noise, artefacts)."""


def band_offsets(shape_a: torch.Tensor, shape_b: torch.Tensor) -> dict[str, float]:
    """Mean of ``shape_a - shape_b`` (two :func:`spectrum_shape` curves on the same bins) over each band of
    :data:`SPECTRUM_BANDS_CYCLES_PER_PX`, in decades, signed: negative = ``a`` has less relative power there
    (blurrier), positive = more. Unlike :func:`spectrum_shape_distance` it tells overshoot from shortfall.
    """
    frequency = (torch.arange(len(shape_a)) + 1) * 0.5 / len(shape_a)
    difference = (shape_a - shape_b).to(torch.float64)
    return {name: float(difference[(frequency >= low) & (frequency <= high)].mean())
            for name, (low, high) in SPECTRUM_BANDS_CYCLES_PER_PX.items()}


def translation_report(hq_display: torch.Tensor, lq_display: torch.Tensor, drr_display: torch.Tensor, low_pass_sigma_px: float) -> dict[str, float]:
    """How far LQ twins moved from their HQ images toward the DRR domain, and how much anatomy they kept.

    Domain (spectrum and sharpness) is measured at the twins' own size, where the restorer meets
    them: HQ images and DRRs (any count) are resampled to it (bicubic, antialiased), the twins are
    not. Measured at the HQ size instead, an upsampled twin lacks the top octave by construction,
    which no generator can change, and artefacts there would count as "DRR-like" (a bicubic twin
    is exactly the downsampled HQ image, so at its own size it has not moved at all). Anatomy is
    measured at the HQ size: ``low_pass_ssim`` = mean SSIM of the Gaussian low-passes (sigma
    ``low_pass_sigma_px`` HQ pixels) of the upsampled twin and the HQ image.
    Spectrum: :func:`spectrum_shape` of each set; sharpness: mean of :func:`sharpness`.
    ``*_fraction`` = :func:`fraction_moved` (0 HQ, 1 DRR). ``spectrum_distance_{hq,lq}_to_drr``:
    :func:`spectrum_shape_distance` of the HQ images and of the twins to the DRRs;
    ``spectrum_distance_ratio`` the second over the first (below 1: the twins are nearer the DRR
    domain than their HQ images). ``{mid,finest}_band_offset_to_drr``: :func:`band_offsets` of the twins'
    spectrum shape from the DRRs' (negative mid: the twins are blurrier than the DRRs; positive finest:
    they carry noise or artefacts the DRRs do not), which the ratio, an average over bins, cannot tell apart.
    """
    size = hq_display.shape[-1]
    if lq_display.shape[0] != hq_display.shape[0]:
        raise DataError(f"{lq_display.shape[0]} LQ twins for {hq_display.shape[0]} HQ images; they must pair up")
    lq_size = tuple(lq_display.shape[-2:])
    at_lq_size = {"hq": resize_bicubic(hq_display, lq_size), "lq": lq_display, "drr": resize_bicubic(drr_display, lq_size)}
    spectra = {name: spectrum_shape(x) for name, x in at_lq_size.items()}
    sharp = {name: sharpness(x).mean() for name, x in at_lq_size.items()}
    distance_hq = spectrum_shape_distance(spectra["hq"], spectra["drr"])
    distance_lq = spectrum_shape_distance(spectra["lq"], spectra["drr"])
    lq = resize_bicubic(lq_display, (size, size))
    return {
        "spectrum_fraction": fraction_moved(spectra["hq"], spectra["drr"], spectra["lq"]),
        "spectrum_distance_hq_to_drr": distance_hq,
        "spectrum_distance_lq_to_drr": distance_lq,
        "spectrum_distance_ratio": distance_lq / distance_hq if distance_hq > 0 else float("inf"),
        "sharpness_fraction": fraction_moved(sharp["hq"], sharp["drr"], sharp["lq"]),
        "sharpness_hq": float(sharp["hq"]),
        "sharpness_lq": float(sharp["lq"]),
        "sharpness_drr": float(sharp["drr"]),
        "low_pass_ssim": float(low_pass_ssim(lq, hq_display, low_pass_sigma_px).mean()),
        **{f"{band}_band_offset_to_drr": offset for band, offset in band_offsets(spectra["lq"], spectra["drr"]).items()},
    }


@dataclass(frozen=True)
class TwinCriteria:
    """What an LQ twin must do, checked on held-out images: keep the HQ anatomy and reach the DRR domain."""

    min_low_pass_ssim: float = 0.85
    """Anatomy kept: SSIM of the Gaussian low-passes of twin and HQ at least this."""
    max_spectrum_distance_ratio: float = 0.5
    """DRR domain reached: the twins' spectrum distance to DRRs at most this fraction of the HQ images'."""

    def verdict(self, report: Mapping[str, float]) -> dict[str, bool]:
        """anatomy_kept, reached_drr_domain and passed for one :func:`translation_report`."""
        anatomy = report["low_pass_ssim"] >= self.min_low_pass_ssim
        domain = report["spectrum_distance_ratio"] <= self.max_spectrum_distance_ratio
        return {"anatomy_kept": bool(anatomy), "reached_drr_domain": bool(domain), "passed": bool(anatomy and domain)}


def choose_translation_setting(sweep: pd.DataFrame, criteria: TwinCriteria = TwinCriteria()) -> pd.Series:
    """The row of a sweep of translation settings (one :func:`translation_report` per row) that the checks pick.

    Among the rows that keep the anatomy (low-pass SSIM >= the bar), the one nearest the DRR
    domain (lowest ``spectrum_distance_ratio``); if none keeps it, the one that keeps it best.
    The chosen row gains the :meth:`TwinCriteria.verdict` columns, so a failed bar is visible.
    """
    needed = {"low_pass_ssim", "spectrum_distance_ratio"}
    if sweep.empty or needed - set(sweep.columns):
        raise DataError(f"the sweep needs rows with columns {sorted(needed)}; got {list(sweep.columns)}")
    keeping = sweep[sweep.low_pass_ssim >= criteria.min_low_pass_ssim]
    chosen = keeping.loc[keeping.spectrum_distance_ratio.idxmin()] if len(keeping) else sweep.loc[sweep.low_pass_ssim.idxmax()]
    return pd.concat([chosen, pd.Series(criteria.verdict(chosen))])


def sdedit_sweep(unet: torch.nn.Module, scheduler: Any, hq_display: torch.Tensor, drr_display: torch.Tensor,
                 strengths: Sequence[float], ilvr_factors: Sequence[int], num_inference_steps: int,
                 low_pass_sigma_px: float, seed: int = 0) -> pd.DataFrame:
    """:func:`translation_report` of DDPM-LQ twins for every (strength, ilvr_factor), one row each.

    ``hq_display`` (B, 1, N, N) is translated at the DDPM's size ``unet.config.sample_size`` (bicubic)
    and measured at N against ``drr_display`` (any count, resampled to N). Feed the table to
    :func:`choose_translation_setting` to pick the setting by the checks, not by eye.
    """
    size = int(unet.config.sample_size)
    small = resize_bicubic(hq_display, (size, size))
    rows = []
    settings = [(strength, factor) for strength in strengths for factor in ilvr_factors]
    for strength, factor in progress(settings, "SDEdit sweep", len(settings), unit="setting"):
        twins = ddpm_translate(unet, scheduler, small, float(strength), num_inference_steps, int(factor), seed)
        rows.append({"strength": float(strength), "ilvr_factor": int(factor),
                     **translation_report(hq_display, twins, drr_display, low_pass_sigma_px)})
    return pd.DataFrame(rows)


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

"""Realism against real X-rays (no downloaded network): radially averaged power spectrum and its
log-RMS distance between image sets, noise power spectrum from detrended flat ROIs, the 10-90 %
edge rise distance at strong edges, and the Wasserstein distance of intensity histograms.

Frequencies are in cycles per pixel and noise power in (intensity^2 * px^2): the real X-rays
(PNG) carry no pixel spacing, so every comparison is made on the pixel grid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats

from xrlib.errors import ConfigError, DataError
from xrlib.eval.images import DATA_RANGE, as_numpy, check_batch


def _radial_bins(shape_hw: tuple[int, int], n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (0..n_bins-1, or -1 outside) of every FFT frequency and the bins' centres.

    Bin k is centred on (k + 1) * 0.5 / n_bins cycles/px with width 0.5 / n_bins, so DC and the
    corners beyond Nyquist are left out and every bin holds frequencies when n_bins <= min(H, W) / 2.
    """
    height, width = shape_hw
    if n_bins < 2 or n_bins > min(height, width) // 2:
        raise ConfigError(
            f"n_bins = {n_bins} for {height}x{width} px images; use 2..{min(height, width) // 2} "
            "(a bin must be at least one frequency step wide)"
        )
    step = 0.5 / n_bins
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    index = np.floor(radius / step + 0.5).astype(np.int64) - 1
    index[(index < 0) | (index >= n_bins)] = -1
    return index, step * np.arange(1, n_bins + 1)


def _radial_average(power_2d: np.ndarray, index: np.ndarray, n_bins: int) -> np.ndarray:
    inside = index >= 0
    counts = np.bincount(index[inside], minlength=n_bins)
    return np.stack([np.bincount(index[inside], weights=p[inside], minlength=n_bins) / counts for p in power_2d])


def radial_power_spectrum(images: torch.Tensor, n_bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of each image: (frequency_cycles_per_px, power (B, n_bins)).

    Each image has its mean removed and a 2-D Hann window applied; power is |FFT|^2 divided by the
    window's energy, so white noise of variance s^2 has a flat spectrum at s^2 (the lowest bin,
    within the window's main lobe around DC, is lowered by the mean removal). Bins span
    0..0.5 cycles/px whatever the image size, so sets of different sizes are comparable.
    """
    array = as_numpy(images)
    height, width = array.shape[-2:]
    index, frequency = _radial_bins((height, width), n_bins)
    window = np.outer(np.hanning(height), np.hanning(width))
    centred = array - array.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred * window)) ** 2 / np.sum(window**2)
    return frequency, _radial_average(power, index, n_bins)


def log_spectrum_distance(power_a: np.ndarray, power_b: np.ndarray) -> float:
    """RMS over frequency bins of log10(mean spectrum a) - log10(mean spectrum b), in decades.

    ``power_a``/``power_b``: (B, n_bins) or (n_bins,) spectra on the same bins. Scaling every
    image of one set by a factor ``g`` moves the distance by ``2 * |log10 g|``.
    """
    mean_a = np.atleast_2d(power_a).mean(axis=0)
    mean_b = np.atleast_2d(power_b).mean(axis=0)
    if mean_a.shape != mean_b.shape:
        raise DataError(f"spectra on different bins ({mean_a.shape} vs {mean_b.shape}); use one n_bins")
    if np.any(mean_a <= 0) or np.any(mean_b <= 0):
        raise DataError("a spectrum holds zero power in some bin (a constant image?); its log distance is undefined")
    return float(np.sqrt(np.mean((np.log10(mean_a) - np.log10(mean_b)) ** 2)))


def high_frequency_power_fraction(images: torch.Tensor, cutoff_cycles_per_px: float = 0.25) -> np.ndarray:
    """Fraction of each image's spectral power above ``cutoff_cycles_per_px`` (radial), one value per image.

    Power as in :func:`radial_power_spectrum` (mean removed, 2-D Hann window), summed over the 2-D
    frequency plane without DC. Blur lowers it by orders of magnitude (a DRR is far below a real
    radiograph on the same grid), texture and noise raise it: it says whether a restoration added
    fine detail of about the right amount. Compare sets on one pixel grid.
    """
    array = as_numpy(images)
    if not 0 < cutoff_cycles_per_px < 0.5 * math.sqrt(2):
        raise ConfigError(f"cutoff_cycles_per_px = {cutoff_cycles_per_px}; use a frequency in (0, 0.707) cycles/px")
    height, width = array.shape[-2:]
    window = np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.fft2((array - array.mean(axis=(1, 2), keepdims=True)) * window)) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    total = power[:, radius > 0].sum(axis=1)
    if np.any(total <= 0):
        raise DataError("an image is constant: its high-frequency power fraction is undefined")
    return power[:, radius > cutoff_cycles_per_px].sum(axis=1) / total


def spectrum_distance_to_reference(images: torch.Tensor, references: torch.Tensor, n_bins: int = 32) -> np.ndarray:
    """Per pair: :func:`log_spectrum_distance` of each image's radial spectrum to its reference's, in decades.

    0 = the same power at every scale; blur shows as missing power at high frequencies, sampled
    texture that is too strong as excess. ``n_bins`` shrinks to half the side for small images.
    """
    a, b = as_numpy(images), as_numpy(references, "references")
    if a.shape != b.shape:
        raise DataError(f"spectrum_distance_to_reference needs images of one shape, got {a.shape} and {b.shape}")
    n_bins = min(n_bins, min(a.shape[-2:]) // 2)
    _, power_a = radial_power_spectrum(images, n_bins)
    _, power_b = radial_power_spectrum(references, n_bins)
    return np.array([log_spectrum_distance(pa, pb) for pa, pb in zip(power_a, power_b)])


def low_pass_correlation(images: torch.Tensor, references: torch.Tensor, sigma_px: float = 4.0) -> np.ndarray:
    """Pearson correlation of the Gaussian low-passes (sigma ``sigma_px``, scipy, reflect edges) of image pairs.

    1 = the same anatomy at the scale of ``sigma_px``, whatever detail was added above it: the
    restorer's "anatomy kept" check against its (upsampled) input.
    """
    a, b = as_numpy(images), as_numpy(references, "references")
    if a.shape != b.shape:
        raise DataError(f"low_pass_correlation needs images of one shape, got {a.shape} and {b.shape}")
    a = ndimage.gaussian_filter(a, (0, sigma_px, sigma_px), mode="reflect")
    b = ndimage.gaussian_filter(b, (0, sigma_px, sigma_px), mode="reflect")
    a = (a - a.mean(axis=(1, 2), keepdims=True)).reshape(len(a), -1)
    b = (b - b.mean(axis=(1, 2), keepdims=True)).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if np.any(norms == 0):
        raise DataError("a low-passed image is constant: its correlation is undefined")
    return (a * b).sum(axis=1) / norms


@dataclass(frozen=True)
class NoiseSpectrum:
    """Noise power spectrum (NPS) of a set of images from detrended flat ROIs."""

    frequency_cycles_per_px: np.ndarray
    nps_px2: np.ndarray
    """Radially averaged NPS, intensity^2 * px^2; its integral over the 2-D frequency plane is the noise variance."""
    noise_variance: float
    """Variance of the detrended ROIs (the NPS integral)."""
    mean_frequency_cycles_per_px: float
    """NPS-weighted mean radial frequency of the 2-D NPS: about 0.383 for white noise, lower for coarser texture."""
    n_rois: int


def _polynomial_design(size: int, order: int) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    terms = [rows**i * cols**j for i in range(order + 1) for j in range(order + 1 - i)]
    return np.stack([t.ravel() for t in terms], axis=1)


def noise_power_spectrum(
    images: torch.Tensor,
    roi_size_px: int = 32,
    keep_fraction: float = 0.5,
    detrend_order: int = 2,
    n_bins: int | None = None,
) -> NoiseSpectrum:
    """NPS from square ROIs tiling each image (IEC 62220-1 style, on the pixel grid).

    Each ROI has a 2-D polynomial of ``detrend_order`` removed (anatomy's slow trends); per image
    only the ``keep_fraction`` of ROIs with the smallest residual variance are kept ("flat" ROIs,
    where anatomical structure is least). NPS = mean |FFT(ROI)|^2 / roi_size_px^2.
    """
    array = as_numpy(images)
    height, width = array.shape[-2:]
    if roi_size_px < 8 or roi_size_px > min(height, width):
        raise ConfigError(f"roi_size_px = {roi_size_px} must lie in 8..{min(height, width)} for {height}x{width} px images")
    if not 0.0 < keep_fraction <= 1.0:
        raise ConfigError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    n_bins = n_bins or roi_size_px // 2
    design = _polynomial_design(roi_size_px, detrend_order)
    fit = np.linalg.pinv(design)  # (terms, pixels): least-squares coefficients of each ROI
    rows, cols = height // roi_size_px, width // roi_size_px
    tiles = array[:, : rows * roi_size_px, : cols * roi_size_px].reshape(len(array), rows, roi_size_px, cols, roi_size_px)
    tiles = tiles.transpose(0, 1, 3, 2, 4).reshape(len(array), rows * cols, roi_size_px**2)
    residuals = tiles - (tiles @ fit.T) @ design.T
    n_keep = max(1, int(round(keep_fraction * rows * cols)))
    order = np.argsort(residuals.var(axis=2), axis=1)[:, :n_keep]
    kept = np.take_along_axis(residuals, order[..., None], axis=1).reshape(-1, roi_size_px, roi_size_px)
    nps_2d = np.mean(np.abs(np.fft.fft2(kept)) ** 2, axis=0) / roi_size_px**2
    index, frequency = _radial_bins((roi_size_px, roi_size_px), n_bins)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(roi_size_px), np.fft.fftfreq(roi_size_px), indexing="ij"))
    return NoiseSpectrum(
        frequency_cycles_per_px=frequency,
        nps_px2=_radial_average(nps_2d[None], index, n_bins)[0],
        noise_variance=float(nps_2d.sum() / roi_size_px**2),
        mean_frequency_cycles_per_px=float((radius * nps_2d).sum() / nps_2d.sum()),
        n_rois=int(kept.shape[0]),
    )


GAUSSIAN_10_90_RISE_PER_SIGMA = 2.0 * stats.norm.ppf(0.9)
"""10-90 % rise distance of a Gaussian-blurred step, in units of the blur's sigma (2.563)."""


def _rise_distance(profile: np.ndarray, offsets: np.ndarray, end_samples: int) -> float:
    """10-90 % rise distance of one increasing edge profile sampled at ``offsets`` (NaN if none)."""
    low, high = profile[:end_samples].mean(), profile[-end_samples:].mean()
    if high - low <= 0:
        return math.nan
    normalised = (profile - low) / (high - low)
    centre = len(profile) // 2
    crossings = []
    for level, step in ((0.1, -1), (0.9, 1)):
        i = centre
        while 0 < i < len(profile) - 1 and (normalised[i] - level) * step < 0:
            i += step
        j = i - step
        if not (0 <= j < len(profile)) or normalised[i] == normalised[j] or (normalised[i] - level) * step < 0:
            return math.nan
        fraction = (level - normalised[j]) / (normalised[i] - normalised[j])
        crossings.append(offsets[j] + fraction * (offsets[i] - offsets[j]))
    return float(crossings[1] - crossings[0])


def edge_rise_distance_px(
    images: torch.Tensor,
    edge_quantile: float = 0.99,
    half_width_px: float = 8.0,
    max_edges: int = 200,
    sample_step_px: float = 0.25,
) -> np.ndarray:
    """Median 10-90 % edge rise distance (px) at each image's strongest edges: lower is sharper.

    Edge points are local maxima of the Sobel gradient magnitude along the gradient, above the
    ``edge_quantile`` of the magnitude (the ``max_edges`` strongest). At each, a profile across the
    edge (cubic-spline samples along the gradient, +- ``half_width_px``) is normalised to its two
    ends and the distance from 10 % to 90 % measured. A step blurred by a Gaussian of sigma s
    gives 2.563 s (:data:`GAUSSIAN_10_90_RISE_PER_SIGMA`).
    """
    array = as_numpy(images)
    offsets = np.arange(-half_width_px, half_width_px + sample_step_px / 2, sample_step_px)
    end_samples = max(1, int(round(1.0 / sample_step_px)))
    margin = int(math.ceil(half_width_px)) + 2
    medians = []
    for image in array:
        grad_row, grad_col = ndimage.sobel(image, axis=0), ndimage.sobel(image, axis=1)
        magnitude = np.hypot(grad_row, grad_col)
        interior = np.zeros_like(magnitude, dtype=bool)
        interior[margin:-margin, margin:-margin] = True
        if not interior.any() or magnitude[interior].max() == 0:
            medians.append(math.nan)
            continue
        threshold = np.quantile(magnitude[interior], edge_quantile)
        rows, cols = np.nonzero(interior & (magnitude >= threshold) & (magnitude > 0))
        unit_row = grad_row[rows, cols] / magnitude[rows, cols]
        unit_col = grad_col[rows, cols] / magnitude[rows, cols]
        ahead = ndimage.map_coordinates(magnitude, [rows + unit_row, cols + unit_col], order=1)
        behind = ndimage.map_coordinates(magnitude, [rows - unit_row, cols - unit_col], order=1)
        is_ridge = (magnitude[rows, cols] >= ahead) & (magnitude[rows, cols] >= behind)
        strongest = np.argsort(-magnitude[rows, cols] * is_ridge)[: min(max_edges, int(is_ridge.sum()))]
        sample_rows = rows[strongest, None] + offsets[None] * unit_row[strongest, None]
        sample_cols = cols[strongest, None] + offsets[None] * unit_col[strongest, None]
        profiles = ndimage.map_coordinates(image, [sample_rows, sample_cols], order=3, mode="nearest")
        distances = [_rise_distance(profile, offsets, end_samples) for profile in profiles]
        medians.append(float(np.nanmedian(distances)) if np.isfinite(distances).any() else math.nan)
    return np.asarray(medians)


def _intensity_histogram(array: np.ndarray, n_bins: int) -> np.ndarray:
    return np.histogram(array.clip(0.0, DATA_RANGE), bins=n_bins, range=(0.0, DATA_RANGE))[0].astype(np.float64)


def intensity_wasserstein(
    images: torch.Tensor, reference_images: torch.Tensor, per_image: bool = False, n_bins: int = 1024
) -> float | np.ndarray:
    """Wasserstein-1 distance between intensity histograms ([0, 1], ``n_bins`` bins).

    Pooled pixels of ``images`` against pooled pixels of ``reference_images``; with ``per_image``,
    one distance per image of ``images`` against the pooled reference. Shifting every intensity
    by ``c`` (no clipping) gives ``c``, to within one bin width.
    """
    array, reference = as_numpy(images), as_numpy(reference_images, "reference_images")
    centres = (np.arange(n_bins) + 0.5) * DATA_RANGE / n_bins
    reference_hist = _intensity_histogram(reference, n_bins)
    if not per_image:
        return float(stats.wasserstein_distance(centres, centres, _intensity_histogram(array, n_bins), reference_hist))
    return np.asarray(
        [stats.wasserstein_distance(centres, centres, _intensity_histogram(a, n_bins), reference_hist) for a in array]
    )


def realism_table(
    image_sets: Mapping[str, torch.Tensor],
    reference_set: str,
    n_bins: int = 32,
    roi_size_px: int = 32,
    nps_keep_fraction: float = 0.5,
    edge_quantile: float = 0.99,
) -> pd.DataFrame:
    """Per-image realism of each set against ``reference_set`` (the real X-rays).

    Columns: set, image_index, spectrum_distance (log10-RMS of the image's spectrum against the
    reference set's mean spectrum), intensity_wasserstein (against the pooled reference
    histogram), edge_rise_distance_px, noise_std and nps_mean_frequency_cycles_per_px (from
    the image's own flat ROIs).
    """
    if reference_set not in image_sets:
        raise ConfigError(f"reference set '{reference_set}' is not among {sorted(image_sets)}")
    reference = image_sets[reference_set]
    _, reference_power = radial_power_spectrum(reference, n_bins)
    frames = []
    for name, images in image_sets.items():
        _, power = radial_power_spectrum(images, n_bins)
        noise = [noise_power_spectrum(image[None], roi_size_px, nps_keep_fraction) for image in check_batch(images)]
        frames.append(
            pd.DataFrame(
                {
                    "set": name,
                    "image_index": np.arange(len(power)),
                    "spectrum_distance": [log_spectrum_distance(p, reference_power) for p in power],
                    "intensity_wasserstein": intensity_wasserstein(images, reference, per_image=True),
                    "edge_rise_distance_px": edge_rise_distance_px(images, edge_quantile),
                    "noise_std": [math.sqrt(n.noise_variance) for n in noise],
                    "nps_mean_frequency_cycles_per_px": [n.mean_frequency_cycles_per_px for n in noise],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def summarise_realism(realism: pd.DataFrame, image_sets: Mapping[str, torch.Tensor], reference_set: str, n_bins: int = 32) -> pd.DataFrame:
    """Per set: the median of each per-image column of :func:`realism_table` and the set-level spectrum distance."""
    medians = realism.drop(columns="image_index").groupby("set", sort=False).median().reset_index()
    set_level = set_spectrum_distances(image_sets, reference_set, n_bins).rename(columns={"spectrum_distance": "set_spectrum_distance"})
    return medians.merge(set_level, on="set")


def set_spectrum_distances(image_sets: Mapping[str, torch.Tensor], reference_set: str, n_bins: int = 32) -> pd.DataFrame:
    """Set-level log10-RMS distance of each set's mean spectrum to the reference set's."""
    _, reference_power = radial_power_spectrum(image_sets[reference_set], n_bins)
    return pd.DataFrame(
        [
            {"set": name, "spectrum_distance": log_spectrum_distance(radial_power_spectrum(images, n_bins)[1], reference_power)}
            for name, images in image_sets.items()
        ]
    )


def spectra_table(image_sets: Mapping[str, torch.Tensor], n_bins: int = 32) -> pd.DataFrame:
    """Long table of each set's radial spectrum: set, frequency_cycles_per_px, power_mean, power_p10,
    power_p90 and log10_power_mean (for plots without a log axis, e.g. ``dvc plots``)."""
    frames = []
    for name, images in image_sets.items():
        frequency, power = radial_power_spectrum(images, n_bins)
        low, high = np.quantile(power, [0.1, 0.9], axis=0)
        frames.append(pd.DataFrame({"set": name, "frequency_cycles_per_px": frequency, "power_mean": power.mean(axis=0),
                                    "power_p10": low, "power_p90": high, "log10_power_mean": np.log10(power.mean(axis=0))}))
    return pd.concat(frames, ignore_index=True)


def sample_paths(paths: Sequence[str | os.PathLike], max_count: int | None, seed: int) -> list[Path]:
    """At most ``max_count`` of ``paths``, drawn without replacement from ``seed``, in their original order."""
    paths = [Path(p) for p in paths]
    if max_count is None or len(paths) <= max_count:
        return paths
    chosen = np.sort(np.random.default_rng(seed).choice(len(paths), size=max_count, replace=False))
    return [paths[i] for i in chosen]

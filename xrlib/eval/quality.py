"""Image-quality, realism and nodule-preservation metrics, with patient-level statistics.

Three families, all on display images: float tensors ``(B, 1, H, W)`` with values in [0, 1],
bright = attenuating.

* **Paired image quality** (the paper's table): PSNR, SSIM and MS-SSIM from torchmetrics with
  ``data_range = 1.0`` (:data:`DATA_RANGE`); 95 % bootstrap intervals that resample *patients*;
  paired Wilcoxon signed-rank and t-tests on per-patient means; the paper's published values.
* **Realism against real X-rays** (no downloaded network): radially averaged power spectrum and
  its log-RMS distance between image sets, noise power spectrum from detrended flat ROIs, the
  10-90 % edge rise distance at strong edges, and the Wasserstein distance of intensity
  histograms. FID/KID are optional and need a feature extractor whose weights the user supplies.
* **Nodule preservation**: contrast and CNR of an inserted nodule, the shift of its peak, the
  detectability index d' of a non-prewhitening (NPW) matched filter, and a documented rule that
  flags nodules lost by restoration.

Frequencies are in cycles per pixel and noise power in (intensity^2 * px^2): the real X-rays
(PNG) carry no pixel spacing, so every comparison is made on the pixel grid.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats
from statsmodels.stats.multitest import multipletests
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from xrlib.errors import ConfigError, DataError, GeometryError
from xrlib.io import load_png

DATA_RANGE = 1.0
"""Intensity range of every display image the metrics see ([0, 1]); PSNR's peak value."""

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang, Simoncelli and Bovik (2003) scale weights, finest scale first."""

SSIM_KERNEL_SIZE = 11
"""Gaussian window (11 px, sigma 1.5 px) of SSIM and MS-SSIM, as in Wang et al. (2004)."""

# ----------------------------------------------------------------------------------------------
# Image batches
# ----------------------------------------------------------------------------------------------


def _check_batch(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Return ``images`` as float32 (B, 1, H, W), raising DataError for any other shape."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataError(f"{name} must be a (B, 1, H, W) tensor, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataError(f"{name} is an empty batch")
    return images.float()


def _as_numpy(images: torch.Tensor, name: str = "images") -> np.ndarray:
    """(B, 1, H, W) tensor -> (B, H, W) float64 array."""
    return _check_batch(images, name)[:, 0].detach().cpu().double().numpy()


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
    images = _check_batch(images)
    if tuple(images.shape[-2:]) == tuple(size_hw):
        return images
    if mode not in ("bilinear", "bicubic"):
        raise ConfigError(f"resize mode '{mode}' is not one of bilinear, bicubic")
    resized = torch.nn.functional.interpolate(
        images, size=tuple(size_hw), mode=mode, align_corners=False, antialias=True
    )
    return resized.clamp(0.0, DATA_RANGE)


def _missing_files(paths: Sequence[Path], what: str) -> None:
    """Raise a DataError naming how many of ``paths`` are absent, and the first few."""
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(paths)} {what} are missing, e.g. {missing[:3]}; run the stage that makes them"
        )


# ----------------------------------------------------------------------------------------------
# Paired image quality
# ----------------------------------------------------------------------------------------------


def _check_pair(restored: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    restored = _check_batch(restored, "restored")
    reference = _check_batch(reference, "reference")
    if restored.shape != reference.shape:
        raise DataError(
            f"restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ in shape; "
            "resize them to one grid first (resize_images)"
        )
    return restored.double(), reference.double()  # float32 moments bias SSIM by ~2e-4


def psnr_db(restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB with peak value :data:`DATA_RANGE` (identical images give +inf)."""
    restored, reference = _check_pair(restored, reference)
    return peak_signal_noise_ratio(
        restored, reference, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)
    )


def ssim(restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian 11 px window, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1)."""
    restored, reference = _check_pair(restored, reference)
    return structural_similarity_index_measure(
        restored, reference, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL_SIZE, reduction="none"
    )


def ms_ssim_scales(height_px: int, width_px: int) -> int:
    """How many MS-SSIM scales (at most 5) torchmetrics accepts for an image of this size."""
    for n_scales in range(len(MS_SSIM_BETAS), 1, -1):
        divisor = max(1, n_scales - 1) ** 2
        side = min(height_px, width_px)
        coarsest = side // 2 ** (n_scales - 1)  # must exceed the window's half-width (reflect padding)
        fits = side >= 2**n_scales and side // divisor > SSIM_KERNEL_SIZE - 1 and coarsest > SSIM_KERNEL_SIZE // 2
        if fits:
            return n_scales
    raise ConfigError(
        f"images of {height_px}x{width_px} px are too small for MS-SSIM (needs at least 2 scales, "
        f"i.e. a side of {2 * (SSIM_KERNEL_SIZE // 2 + 1)} px or more); evaluate on larger images or report SSIM only"
    )


def ms_ssim(restored: torch.Tensor, reference: torch.Tensor, n_scales: int | None = None) -> torch.Tensor:
    """Per-image MS-SSIM (Wang et al. 2003) with data range 1.

    Five scales need a side of 176 px or more; smaller images use as many scales as fit (see
    :func:`ms_ssim_scales`), with the first ``n_scales`` weights renormalised to sum to 1.
    torchmetrics' ``normalize="relu"`` keeps negative contrast terms from producing NaN.
    """
    restored, reference = _check_pair(restored, reference)
    available = ms_ssim_scales(*restored.shape[-2:])
    n_scales = available if n_scales is None else n_scales
    if not 2 <= n_scales <= available:
        raise ConfigError(
            f"MS-SSIM with {n_scales} scales is impossible on {tuple(restored.shape[-2:])} px images; "
            f"use 2..{available}"
        )
    betas = np.asarray(MS_SSIM_BETAS[:n_scales])
    betas = tuple(float(b) for b in betas / betas.sum())
    return multiscale_structural_similarity_index_measure(
        restored, reference, data_range=DATA_RANGE, kernel_size=SSIM_KERNEL_SIZE, betas=betas, reduction="none"
    )


def image_quality_table(
    restored: torch.Tensor,
    reference: torch.Tensor,
    image_ids: Sequence[str],
    patient_ids: Sequence[str],
    **labels: str,
) -> pd.DataFrame:
    """One row per image: ids, ``labels`` (e.g. method, degradation), psnr_db, ssim, ms_ssim."""
    restored, reference = _check_pair(restored, reference)
    if not len(image_ids) == len(patient_ids) == restored.shape[0]:
        raise DataError(
            f"{restored.shape[0]} images but {len(image_ids)} image ids and {len(patient_ids)} patient ids"
        )
    table = pd.DataFrame({"image_id": list(image_ids), "patient_id": list(patient_ids)})
    for column, value in labels.items():
        table[column] = value
    table["psnr_db"] = psnr_db(restored, reference).numpy()
    table["ssim"] = ssim(restored, reference).numpy()
    table["ms_ssim"] = ms_ssim(restored, reference).numpy()
    return table


def quality_table_from_pairs(
    pairs: pd.DataFrame,
    restored_patterns: Mapping[str, str],
    root: Path,
    split: str = "test",
    degradations: Sequence[str] = ("munit", "ddpm"),
) -> pd.DataFrame:
    """Per-image PSNR/SSIM/MS-SSIM of every method on the held-out pairs (the paper's table).

    ``pairs`` is the pairs manifest (pair_id, patient_id, split, generator, lq_path, hq_path;
    paths relative to ``root``). The rows of ``split`` whose generator is in ``degradations``
    are scored against their HQ image: ``lq_input`` is the LQ image brought to the HQ grid by
    bicubic interpolation; each method in ``restored_patterns`` reads ``pattern.format(pair_id=...,
    generator=...)`` (relative to ``root``), which must already be on the HQ grid. The manifest's
    ``unit_id`` and ``split_unit`` (the unit held out: patient or image tile) are carried along.
    """
    required = {"pair_id", "patient_id", "split", "generator", "lq_path", "hq_path"}
    if not required <= set(pairs.columns):
        raise DataError(f"pairs manifest lacks columns {sorted(required - set(pairs.columns))}")
    chosen = pairs[(pairs["split"] == split) & pairs["generator"].isin(list(degradations))]
    if chosen.empty:
        raise DataError(f"the pairs manifest has no '{split}' rows made by {list(degradations)}")
    restored_paths = {
        method: [root / pattern.format(pair_id=row.pair_id, generator=row.generator) for row in chosen.itertuples()]
        for method, pattern in restored_patterns.items()
    }
    for method, paths in restored_paths.items():
        _missing_files(paths, f"restored test images of '{method}'")
    _missing_files([root / p for p in chosen["hq_path"]] + [root / p for p in chosen["lq_path"]], "pair images")
    tables = []
    for index, row in enumerate(chosen.itertuples()):
        hq = load_image_batch([root / row.hq_path])
        candidates = {"lq_input": resize_images(load_image_batch([root / row.lq_path]), tuple(hq.shape[-2:]), "bicubic")}
        candidates.update({method: load_image_batch([paths[index]]) for method, paths in restored_paths.items()})
        for method, image in candidates.items():
            tables.append(
                image_quality_table(
                    image, hq, [row.pair_id], [row.patient_id], method=method, degradation=row.generator
                )
            )
    table = pd.concat(tables, ignore_index=True)
    for column in ("unit_id", "split_unit"):
        if column in chosen.columns:
            table[column] = table["image_id"].map(chosen.set_index("pair_id")[column])
    return table


# ----------------------------------------------------------------------------------------------
# Statistics over the held-out units (patients, or image tiles when too few patients)
# ----------------------------------------------------------------------------------------------


def statistical_unit(table: pd.DataFrame) -> tuple[str, str]:
    """(column, name) of the unit that was held out and that statistics resample and average over.

    ``unit_id`` with the table's ``split_unit`` (patient or tile) when the table has them (pair
    manifests do), else ``patient_id`` ("patient").
    """
    if "unit_id" in table.columns:
        kinds = set(table["split_unit"]) if "split_unit" in table.columns else {"unit"}
        if len(kinds) != 1:
            raise DataError(f"the table mixes split units {sorted(kinds)}; score one pair manifest at a time")
        return "unit_id", kinds.pop()
    return "patient_id", "patient"


@dataclass(frozen=True)
class BootstrapInterval:
    """Mean over images with a percentile bootstrap interval from resampled units (patients or tiles)."""

    mean: float
    ci_low: float
    ci_high: float
    n_images: int
    n_units: int


def unit_bootstrap_ci(
    values: Sequence[float],
    unit_ids: Sequence[str],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Mean of ``values`` and its percentile interval, resampling units (patients) with replacement.

    A drawn unit brings all of its images, so images of one patient are never treated as
    independent. The statistic of each resample is the mean over the images it holds.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or values.size != len(unit_ids):
        raise DataError(f"{values.size} values for {len(unit_ids)} unit ids; need one per image, at least one")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ConfigError(f"n_resamples = {n_resamples} is too few for a percentile interval; use 1000 or more")
    codes, uniques = pd.factorize(pd.Series(list(unit_ids)))
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    n_units = len(uniques)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples)
    resampled_means = (draws @ sums) / (draws @ counts)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [alpha, 1.0 - alpha])
    return BootstrapInterval(float(values.mean()), float(low), float(high), int(values.size), n_units)


def summarise_metrics(
    table: pd.DataFrame,
    metrics: Sequence[str],
    by: Sequence[str],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Long table: the ``by`` columns, metric, mean, ci_low, ci_high, n_images, n_units, split_unit.

    Intervals resample the :func:`statistical_unit` (patients, or tiles when those were held out).
    """
    unit_column, split_unit = statistical_unit(table)
    rows = []
    for keys, group in table.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            interval = unit_bootstrap_ci(group[metric], group[unit_column], n_resamples, confidence, seed)
            rows.append({**dict(zip(by, keys)), "metric": metric, **interval.__dict__, "split_unit": split_unit})
    return pd.DataFrame(rows)


def paired_method_test(
    table: pd.DataFrame, metric: str, method_a: str, method_b: str, method_column: str = "method"
) -> dict[str, float]:
    """Compare two methods on the images both scored, with the :func:`statistical_unit` (patient or tile) as the unit.

    Per-unit means of each method are paired; returns n_units, split_unit, the mean difference
    (a - b), the Wilcoxon signed-rank test (two-sided; zero differences dropped) and the paired t-test.
    """
    unit_column, split_unit = statistical_unit(table)
    per_image = table.pivot_table(index=[unit_column, "image_id"], columns=method_column, values=metric)
    for method in (method_a, method_b):
        if method not in per_image.columns:
            raise DataError(f"no rows with {method_column} == '{method}' for metric '{metric}'")
    both = per_image[[method_a, method_b]].dropna()
    per_patient = both.groupby(level=unit_column).mean()
    differences = (per_patient[method_a] - per_patient[method_b]).to_numpy()
    result = {"n_units": int(differences.size), "split_unit": split_unit, "mean_difference": float(np.mean(differences)) if differences.size else math.nan}
    if differences.size < 2 or not np.isfinite(differences).all():
        return {**result, "wilcoxon_statistic": math.nan, "wilcoxon_p": math.nan, "t_statistic": math.nan, "t_p": math.nan}
    if np.all(differences == 0):
        return {**result, "wilcoxon_statistic": math.nan, "wilcoxon_p": 1.0, "t_statistic": 0.0, "t_p": 1.0}
    wilcoxon = stats.wilcoxon(per_patient[method_a], per_patient[method_b])
    t_test = stats.ttest_rel(per_patient[method_a], per_patient[method_b])
    return {
        **result,
        "wilcoxon_statistic": float(wilcoxon.statistic),
        "wilcoxon_p": float(wilcoxon.pvalue),
        "t_statistic": float(t_test.statistic),
        "t_p": float(t_test.pvalue),
    }


def paired_method_tests(
    table: pd.DataFrame,
    metrics: Sequence[str],
    comparisons: Sequence[tuple[str, str]],
    by: Sequence[str] = ("degradation",),
    method_column: str = "method",
) -> pd.DataFrame:
    """:func:`paired_method_test` for every group, metric and comparison, with Holm-adjusted p-values."""
    rows = []
    for keys, group in table.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            for method_a, method_b in comparisons:
                result = paired_method_test(group, metric, method_a, method_b, method_column)
                rows.append({**dict(zip(by, keys)), "metric": metric, "method_a": method_a, "method_b": method_b, **result})
    tests = pd.DataFrame(rows)
    for column in ("wilcoxon_p", "t_p"):
        valid = tests[column].notna()
        tests[f"{column}_holm"] = math.nan
        if valid.any():
            tests.loc[valid, f"{column}_holm"] = multipletests(tests.loc[valid, column], method="holm")[1]
    return tests


# ----------------------------------------------------------------------------------------------
# The paper's published values
# ----------------------------------------------------------------------------------------------

PUBLISHED_CITATION = (
    "Goyal A, Mittal A, Rao P, Tadepalli M, Putha P. DiffusionXRay: A Diffusion and GAN-Based "
    "Approach for Enhancing Digitally Reconstructed Chest Radiographs. Data Engineering in Medical "
    "Imaging (DEMI 2025, MICCAI workshop), LNCS, doi:10.1007/978-3-032-08009-7_4; arXiv:2603.01686."
)

DEGRADATION_LABELS = {"munit": "MUNIT-LQ", "ddpm": "DDPM-LQ"}
METHOD_LABELS = {"diffusionxray": "DiffusionXRay", "bicubic_baseline": "Bicubic-trained DDPM", "lq_input": "LQ input"}


def published_table() -> pd.DataFrame:
    """The paper's PSNR (dB) / SSIM on held-out HQ X-rays degraded by each LQ generator.

    DiffusionXRay against the same conditional DDPM trained on bicubic pairs (source:
    :data:`PUBLISHED_CITATION`); the paper reports neither MS-SSIM nor the LQ input's scores.
    """
    return pd.DataFrame(
        [
            ("munit", "diffusionxray", 27.50, 0.92),
            ("munit", "bicubic_baseline", 20.08, 0.83),
            ("ddpm", "diffusionxray", 22.21, 0.78),
            ("ddpm", "bicubic_baseline", 19.85, 0.78),
        ],
        columns=["degradation", "method", "psnr_db", "ssim"],
    )


def beside_published(summary: pd.DataFrame) -> pd.DataFrame:
    """Our summary (from :func:`summarise_metrics` by degradation and method) beside the paper's.

    One row per degradation and method; for each metric the columns ``<metric>_published``
    (NaN where the paper gives none), ``<metric>_ours``, ``<metric>_ours_ci_low`` and
    ``<metric>_ours_ci_high``.
    """
    ours = summary.pivot_table(index=["degradation", "method"], columns="metric", values=["mean", "ci_low", "ci_high"])
    wide = pd.DataFrame(index=ours.index)
    published = published_table().set_index(["degradation", "method"])
    for metric in summary["metric"].unique():
        wide[f"{metric}_published"] = published[metric] if metric in published else math.nan
        wide[f"{metric}_ours"] = ours[("mean", metric)]
        wide[f"{metric}_ours_ci_low"] = ours[("ci_low", metric)]
        wide[f"{metric}_ours_ci_high"] = ours[("ci_high", metric)]
    return wide.reset_index()


# ----------------------------------------------------------------------------------------------
# Realism: spectra, noise, edges, histograms
# ----------------------------------------------------------------------------------------------


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
    array = _as_numpy(images)
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
    array = _as_numpy(images)
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
    array = _as_numpy(images)
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
    array, reference = _as_numpy(images), _as_numpy(reference_images, "reference_images")
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
        noise = [noise_power_spectrum(image[None], roi_size_px, nps_keep_fraction) for image in _check_batch(images)]
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


# ----------------------------------------------------------------------------------------------
# Optional FID / KID with a user-supplied feature extractor
# ----------------------------------------------------------------------------------------------


class _InceptionOnGreyscale(torch.nn.Module):
    """torch-fidelity's FID Inception-v3 (pool3, 2048 features) on (B, 1, H, W) images in [0, 1]."""

    num_features = 2048

    def __init__(self, weights_path: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights_path)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        as_bytes = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).expand(-1, 3, -1, -1)
        return self.inception(as_bytes).reshape(images.shape[0], -1)


def inception_feature_extractor(weights_path: str | os.PathLike | None) -> torch.nn.Module:
    """The FID Inception-v3 network loaded from weights the user supplies (nothing is downloaded).

    ``weights_path`` is torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth``; it needs the
    ``torch-fidelity`` package. Raises ConfigError, saying what to do, when either is missing.
    """
    if not weights_path:
        raise ConfigError(
            "FID/KID need Inception-v3 FID weights that you supply: download "
            "pt_inception-2015-12-05-6726825d.pth (torch-fidelity release) and set metrics.fid_weights_path "
            "in params.yaml; leave it null to skip FID/KID"
        )
    path = Path(weights_path)
    if not path.is_file():
        raise ConfigError(f"metrics.fid_weights_path = {path}: no such file; point it at the Inception-v3 FID weights")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as error:
        raise ConfigError("FID/KID with Inception-v3 need torch-fidelity: pip install torch-fidelity==0.3.0") from error
    return _InceptionOnGreyscale(path)


def frechet_and_kernel_distance(
    real: torch.Tensor,
    generated: torch.Tensor,
    feature_extractor: torch.nn.Module,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID (torchmetrics) between two sets in the features of ``feature_extractor``.

    ``feature_extractor`` maps a (B, 1, H, W) batch in [0, 1] to (B, F) features and has an int
    attribute ``num_features`` (see :func:`inception_feature_extractor`). KID uses random subsets
    of ``kid_subset_size`` (default: the smaller set's size), drawn reproducibly from ``seed``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, generated = _check_batch(real, "real"), _check_batch(generated, "generated")
    if not isinstance(getattr(feature_extractor, "num_features", None), int):
        raise ConfigError("the feature extractor needs an int attribute num_features (its output width)")
    if min(len(real), len(generated)) < 2:
        raise DataError("FID/KID need at least 2 images in each set")
    subset_size = kid_subset_size or min(len(real), len(generated))
    fid = FrechetInceptionDistance(feature=feature_extractor)
    with warnings.catch_warnings():  # torchmetrics warns that KID keeps all features: intended here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=feature_extractor, subsets=kid_subsets, subset_size=subset_size)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for metric in (fid, kid):
            metric.update(real, real=True)
            metric.update(generated, real=False)
        kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


# ----------------------------------------------------------------------------------------------
# Nodule preservation
# ----------------------------------------------------------------------------------------------


def _distance_map(shape_hw: tuple[int, int], centre_row_px: float, centre_col_px: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape_hw[0], : shape_hw[1]]
    return np.hypot(rows - centre_row_px, cols - centre_col_px)


def _as_image_2d(image: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(array).astype(np.float64)
    if array.ndim != 2:
        raise DataError(f"{name} must be one 2-D image, got shape {np.shape(image)}")
    return array


def nodule_radius_px(bbox_row0: float, bbox_col0: float, bbox_row1: float, bbox_col1: float) -> float:
    """Radius of a nodule from its bounding box (end-exclusive pixel bounds): a quarter of height + width."""
    return 0.25 * ((bbox_row1 - bbox_row0) + (bbox_col1 - bbox_col0))


def nodule_contrast(
    image: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    core_fraction: float = 0.75,
    annulus_radii: tuple[float, float] = (1.5, 2.5),
) -> dict[str, float]:
    """Local contrast and contrast-to-noise ratio of a nodule.

    contrast = mean in the core disc (``core_fraction`` * radius) - mean in the background annulus
    (``annulus_radii`` * radius); background_std = standard deviation in the annulus;
    cnr = contrast / background_std. Positive for a nodule brighter (more attenuating) than around it.
    """
    array = _as_image_2d(image, "image")
    distance = _distance_map(array.shape, centre_row_px, centre_col_px)
    core = distance <= core_fraction * radius_px
    ring = (distance >= annulus_radii[0] * radius_px) & (distance <= annulus_radii[1] * radius_px)
    if core.sum() < 1 or ring.sum() < 8:
        raise _outside_error(centre_row_px, centre_col_px, radius_px, array.shape)
    contrast = float(array[core].mean() - array[ring].mean())
    background_std = float(array[ring].std(ddof=1))
    cnr = contrast / background_std if background_std > 0 else math.copysign(math.inf, contrast) if contrast else 0.0
    return {"contrast": contrast, "background_std": background_std, "cnr": cnr}


def _outside_error(centre_row_px: float, centre_col_px: float, radius_px: float, shape_hw: tuple[int, ...]) -> GeometryError:
    """The error for a nodule whose measuring regions fall outside the image."""
    return GeometryError(
        f"nodule at (row {centre_row_px:.1f}, col {centre_col_px:.1f}) px with radius {radius_px:.1f} px "
        f"leaves too few pixels of its core, background or search region inside the {shape_hw} image; "
        "check nodules.csv against the image size"
    )


def nodule_peak_px(
    image: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    search_radius_factor: float = 2.0,
) -> tuple[float, float]:
    """Sub-pixel (row, col) of a nodule's peak near its expected centre.

    The image is band-passed for blobs of this size (difference of Gaussians, sigma radius/2
    minus sigma 2 * radius), the maximum taken within ``search_radius_factor`` * radius of the
    centre, and refined by a parabola through it and its neighbours along each axis.
    """
    array = _as_image_2d(image, "image")
    sigma = max(radius_px / 2.0, 0.5)
    blob = ndimage.gaussian_filter(array, sigma) - ndimage.gaussian_filter(array, 4.0 * sigma)
    distance = _distance_map(array.shape, centre_row_px, centre_col_px)
    search = distance <= search_radius_factor * radius_px
    if not search.any():
        raise _outside_error(centre_row_px, centre_col_px, radius_px, array.shape)
    masked = np.where(search, blob, -np.inf)
    row, col = np.unravel_index(np.argmax(masked), masked.shape)
    refined = []
    for axis, index in ((0, row), (1, col)):
        if 0 < index < array.shape[axis] - 1:
            take = (lambda k: blob[k, col]) if axis == 0 else (lambda k: blob[row, k])
            left, middle, right = take(index - 1), take(index), take(index + 1)
            curvature = left - 2.0 * middle + right
            offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            refined.append(index + float(np.clip(offset, -0.5, 0.5)))
        else:
            refined.append(float(index))
    return refined[0], refined[1]


def nodule_signal_template(
    drr: np.ndarray | torch.Tensor,
    nodule_free_drr: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    half_size_factor: float = 2.0,
) -> np.ndarray:
    """The nodule's own signal (DRR minus nodule-free DRR) in a square patch around its centre.

    The patch has half-size ceil(``half_size_factor`` * radius) px; it is the NPW observer's template.
    """
    signal = _as_image_2d(drr, "drr") - _as_image_2d(nodule_free_drr, "nodule_free_drr")
    return _patch(signal, int(round(centre_row_px)), int(round(centre_col_px)), int(math.ceil(half_size_factor * radius_px)))


def _patch(array: np.ndarray, row: int, col: int, half: int) -> np.ndarray:
    if row - half < 0 or col - half < 0 or row + half + 1 > array.shape[0] or col + half + 1 > array.shape[1]:
        raise _outside_error(row, col, half, array.shape)
    return array[row - half : row + half + 1, col - half : col + half + 1]


def npw_dprime_white_noise(signal: np.ndarray, noise_std: float) -> float:
    """Closed-form NPW (matched filter) detectability for a known signal in white noise: ||s|| / sigma."""
    if noise_std <= 0:
        raise ConfigError(f"noise_std must be positive, got {noise_std}")
    return float(np.sqrt(np.sum(np.square(signal))) / noise_std)


def npw_dprime(
    image: np.ndarray | torch.Tensor,
    template: np.ndarray,
    centre_row_px: float,
    centre_col_px: float,
    n_background: int = 64,
    max_distance_px: float | None = None,
    subtract_patch_mean: bool = True,
    seed: int = 0,
) -> float:
    """Empirical detectability d' of a non-prewhitening matched filter in one image.

    The filter's response is <w, g> with w the (odd-sized, square) ``template`` and g the patch
    under it. d' = (response at the nodule - mean response at ``n_background`` nodule-free spots)
    / their standard deviation; the spots are drawn (``seed``) at distances between one template
    width and ``max_distance_px`` (default four template widths) from the nodule, so the
    background statistics are the image's own (anatomy and noise). ``subtract_patch_mean``
    makes w zero-mean, so the filter ignores the local grey level. In white noise of standard
    deviation sigma without mean subtraction this tends to :func:`npw_dprime_white_noise`.
    """
    array = _as_image_2d(image, "image")
    template = np.asarray(template, dtype=np.float64)
    if template.ndim != 2 or template.shape[0] != template.shape[1] or template.shape[0] % 2 == 0:
        raise DataError(f"template must be a square patch of odd size, got shape {template.shape}")
    if not np.any(template):
        raise DataError("the nodule's template is zero (DRR and nodule-free DRR agree there); check the nodule's position")
    half = template.shape[0] // 2
    weights = template - template.mean() if subtract_patch_mean else template
    inner = float(template.shape[0])
    outer = max_distance_px or 4.0 * inner
    row_c, col_c = int(round(centre_row_px)), int(round(centre_col_px))
    rows, cols = np.mgrid[half : array.shape[0] - half, half : array.shape[1] - half]
    distance = np.hypot(rows - row_c, cols - col_c)
    allowed = (distance >= inner) & (distance <= outer)
    if allowed.sum() < n_background:
        raise _outside_error(centre_row_px, centre_col_px, outer, array.shape)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(int(allowed.sum()), size=n_background, replace=False)
    spots = np.stack([rows[allowed][chosen], cols[allowed][chosen]], axis=1)
    background = np.array([np.sum(weights * _patch(array, r, c, half)) for r, c in spots])
    signal = float(np.sum(weights * _patch(array, row_c, col_c, half)))
    spread = background.std(ddof=1)
    if spread == 0:
        raise DataError("the background responses do not vary (a constant image?); d' is undefined")
    return float((signal - background.mean()) / spread)


@dataclass(frozen=True)
class LostRule:
    """When is a nodule lost by restoration (both parameters in params.yaml ``metrics:``).

    Lost if the restored image keeps less than ``min_contrast_ratio`` of the DRR's local contrast,
    or its peak moved by more than ``max_peak_shift_radii`` nodule radii. Where the DRR's own
    local contrast is not positive (a nodule over a rib edge or a steep background), only the
    peak criterion applies: a ratio of non-positive contrasts says nothing.
    """

    min_contrast_ratio: float = 0.5
    max_peak_shift_radii: float = 1.0

    def is_lost(self, contrast_drr: float, contrast_restored: float, peak_shift_px: float, radius_px: float) -> bool:
        faded = contrast_drr > 0 and contrast_restored < self.min_contrast_ratio * contrast_drr
        return bool(faded or peak_shift_px > self.max_peak_shift_radii * radius_px)


def nodule_preservation(
    drr: np.ndarray | torch.Tensor,
    nodule_free_drr: np.ndarray | torch.Tensor,
    restored: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    rule: LostRule = LostRule(),
    n_background: int = 64,
    seed: int = 0,
) -> dict[str, float | bool]:
    """Contrast, CNR, peak and NPW d' of one nodule in the DRR and in its restored image, and ``lost``."""
    drr_2d, restored_2d = _as_image_2d(drr, "drr"), _as_image_2d(restored, "restored")
    if drr_2d.shape != restored_2d.shape:
        raise DataError(
            f"DRR {drr_2d.shape} and restored image {restored_2d.shape} differ in shape; "
            "resize the restored image to the DRR grid (resize_images) so nodule coordinates apply"
        )
    template = nodule_signal_template(drr_2d, nodule_free_drr, centre_row_px, centre_col_px, radius_px)
    result: dict[str, float | bool] = {"radius_px": radius_px}
    peaks = {}
    for name, image in (("drr", drr_2d), ("restored", restored_2d)):
        measured = nodule_contrast(image, centre_row_px, centre_col_px, radius_px)
        result[f"contrast_{name}"] = measured["contrast"]
        result[f"cnr_{name}"] = measured["cnr"]
        result[f"dprime_{name}"] = npw_dprime(image, template, centre_row_px, centre_col_px, n_background, seed=seed)
        peaks[name] = nodule_peak_px(image, centre_row_px, centre_col_px, radius_px)
    result["peak_shift_px"] = float(np.hypot(peaks["restored"][0] - peaks["drr"][0], peaks["restored"][1] - peaks["drr"][1]))
    result["lost"] = rule.is_lost(result["contrast_drr"], result["contrast_restored"], result["peak_shift_px"], radius_px)
    return result


NODULE_COLUMNS = ("drr_id", "nodule_id", "centre_row_px", "centre_col_px", "bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1")


def scale_nodule_coordinates(nodules: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """Nodule centres and boxes on a grid ``ratio`` times finer (pixel centres at integers, boxes end-exclusive)."""
    scaled = nodules.copy()
    for column in ("centre_row_px", "centre_col_px"):
        scaled[column] = (nodules[column] + 0.5) * ratio - 0.5
    for column in ("bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"):
        scaled[column] = nodules[column] * ratio
    return scaled


def nodule_bbox(nodule: Mapping[str, float], grid_scale: float = 1.0) -> tuple[float, float, float, float]:
    """(row0, col0, row1, col1) of one nodule row, on a grid ``grid_scale`` times finer than the DRR's."""
    return tuple(float(nodule[k]) * grid_scale for k in ("bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"))


def nodule_image_loader(
    root: Path, drr_pattern: str, nodule_free_pattern: str, restored_pattern: str
) -> Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``load_images(drr_id)`` for :func:`nodule_preservation_table`; patterns take ``{drr_id}``, relative to ``root``."""

    def load_images(drr_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        paths = [root / pattern.format(drr_id=drr_id) for pattern in (drr_pattern, nodule_free_pattern, restored_pattern)]
        _missing_files(paths, f"images of DRR '{drr_id}' (DRR, nodule-free DRR, restored)")
        return tuple(load_png(path) for path in paths)

    return load_images


def nodule_preservation_table(
    nodules: pd.DataFrame,
    load_images: Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]],
    rule: LostRule = LostRule(),
    n_background: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`nodule_preservation` for every row of ``nodules`` (the columns of 01_drr's nodules.csv).

    ``load_images(drr_id)`` returns (DRR, nodule-free DRR, restored image); each DRR is loaded
    once. Where the restorer enlarged the image (restored = k x the DRR's size), both DRRs are
    brought to the restored grid by bicubic interpolation and the nodule coordinates scaled by k
    (column ``grid_scale``), so the restoration's detail is measured at its own resolution.
    Extra columns of ``nodules`` (e.g. diameter_mm) are kept, in DRR pixels.
    """
    missing = [column for column in NODULE_COLUMNS if column not in nodules.columns]
    if missing:
        raise DataError(f"nodule table lacks columns {missing}; it must follow 01_drr's nodules.csv")
    rows = []
    for drr_id, group in nodules.groupby("drr_id", sort=False):
        drr, nodule_free, restored = (_as_image_2d(image, name) for image, name in zip(load_images(str(drr_id)), ("drr", "nodule_free_drr", "restored")))
        ratio = restored.shape[0] / drr.shape[0]
        if not math.isclose(ratio, restored.shape[1] / drr.shape[1], rel_tol=1e-6):
            raise DataError(f"DRR '{drr_id}' {drr.shape} and its restored image {restored.shape} differ in aspect ratio")
        on_grid = scale_nodule_coordinates(group, ratio) if ratio != 1 else group
        if ratio != 1:
            drr, nodule_free = (resize_images(batch_of(image), restored.shape, "bicubic")[0, 0].double().numpy() for image in (drr, nodule_free))
        for original, nodule in zip(group.itertuples(index=False), on_grid.itertuples(index=False)):
            radius = nodule_radius_px(nodule.bbox_row0, nodule.bbox_col0, nodule.bbox_row1, nodule.bbox_col1)
            measured = nodule_preservation(
                drr, nodule_free, restored, nodule.centre_row_px, nodule.centre_col_px, radius, rule, n_background, seed
            )
            rows.append({**original._asdict(), "grid_scale": ratio, **measured})
    return pd.DataFrame(rows)


def summarise_nodules(preserved: pd.DataFrame) -> dict[str, float]:
    """Counts and medians of a :func:`nodule_preservation_table`: how many nodules, how many lost, d' and contrast kept."""
    if preserved.empty:
        raise DataError("no nodules to summarise; 01_drr's nodules.csv is empty")
    positive = preserved[preserved["contrast_drr"] > 0]
    return {
        "n_nodules": int(len(preserved)),
        "n_lost": int(preserved["lost"].sum()),
        "median_contrast_ratio": float((positive["contrast_restored"] / positive["contrast_drr"]).median()) if len(positive) else math.nan,
        "median_cnr_drr": float(preserved["cnr_drr"].median()),
        "median_cnr_restored": float(preserved["cnr_restored"].median()),
        "median_dprime_drr": float(preserved["dprime_drr"].median()),
        "median_dprime_restored": float(preserved["dprime_restored"].median()),
        "median_peak_shift_px": float(preserved["peak_shift_px"].median()),
        "max_peak_shift_px": float(preserved["peak_shift_px"].max()),
    }


def batch_of(image: np.ndarray) -> torch.Tensor:
    """One 2-D image as a (1, 1, H, W) float tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]

"""Paired image quality, the paper's table: PSNR, SSIM and MS-SSIM (torchmetrics, ``data_range`` 1.0).

On display images (B, 1, H, W) in [0, 1] (:mod:`xrlib.eval.images`); statistics over the held-out
units are :mod:`xrlib.stats.units`, the published values :mod:`xrlib.paper`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from xrlib.errors import ConfigError, DataError
from xrlib.eval.images import DATA_RANGE, check_batch, load_image_batch, missing_files, resize_images
from xrlib.progress import progress

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang, Simoncelli and Bovik (2003) scale weights, finest scale first."""

SSIM_KERNEL_SIZE = 11
"""Gaussian window (11 px, sigma 1.5 px) of SSIM and MS-SSIM, as in Wang et al. (2004)."""


def _check_pair(restored: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    restored = check_batch(restored, "restored")
    reference = check_batch(reference, "reference")
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
        missing_files(paths, f"restored test images of '{method}'")
    missing_files([root / p for p in chosen["hq_path"]] + [root / p for p in chosen["lq_path"]], "pair images")
    tables = []
    for index, row in enumerate(progress(chosen.itertuples(), "image quality", len(chosen), unit="pair")):
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

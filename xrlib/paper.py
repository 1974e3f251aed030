"""The paper's published values and the labels its tables and figures use (Goyal et al., DiffusionXRay)."""

from __future__ import annotations

import math

import pandas as pd


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

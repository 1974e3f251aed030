"""Checks 1 and 3a against each other, on a run's outputs (no model is run).

    XRLIB_ROOT=RUN PYTHONPATH=RUN python check_conflict.py RUN

1. The floor of check 3a for a restoration that keeps the DRR's grey levels at the coarsest scales: the
   set spectrum distance (06's way: 128 px, 32 films, 32 bins) that the raw DRRs' first K bins alone give,
   against the bar (half the raw DRRs' distance).
2. Check 1's anatomy measure (03: SSIM of sigma-4 px low-passes at 256 px) between each test film and the
   same film given the DRRs' grey levels (quantile-mapped to the pooled body squares of 01's nodule-free DRRs):
   what a twin that carried the DRRs' display, and nothing else, would score.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.eval.images import load_image_batch
from xrlib.eval.realism import log_spectrum_distance, radial_power_spectrum, sample_paths
from xrlib.io import load_png
from xrlib.lq.checks import low_pass_ssim
from xrlib.lq.pairs import body_square
from xrlib.stages import path

run = Path(sys.argv[1])
films = pd.read_csv(path("00_data.xray_manifest", run))
real = load_image_batch(sample_paths([run / p for p in films.path], 32, 0), 128)
drr_paths = sorted((run / "outputs/01_drr/drr").glob("*.png"))
frequency, real_power = radial_power_spectrum(real, 32)
drr_power = radial_power_spectrum(load_image_batch(drr_paths, 128), 32)[1]
raw_distance = log_spectrum_distance(drr_power, real_power)
offsets = np.log10(drr_power.mean(0)) - np.log10(real_power.mean(0))
print(f"raw DRRs: set spectrum distance {raw_distance:.3f}; check 3a's bar {raw_distance / 2:.3f}")
for k in (1, 2, 4):
    floor = np.sqrt(np.sum(offsets[:k] ** 2) / len(offsets))
    print(f"  kept at the {k} coarsest bin(s) (<= {frequency[k - 1]:.3f} cycles/px, offsets "
          f"{', '.join(f'{o:+.2f}' for o in offsets[:k])} decades): floor {floor:.3f}")

pairs = pd.read_csv(path("03_lq_munit.pairs", run))
hq = load_image_batch([run / p for p in sorted(set(pairs[pairs.split == "test"].hq_path))], 256)
quantiles = np.linspace(0, 1, 1001)
bodies = []
for drr_path in sorted((run / "outputs/01_drr/drr_nodule_free").glob("*.png")):
    drr = load_png(drr_path)
    top, left, side = body_square(torch.from_numpy(drr))
    bodies.append(drr[top:top + side, left:left + side].ravel())
drr_levels = np.quantile(np.concatenate(bodies), quantiles)
toned = []
for film in hq.numpy():
    levels = np.maximum.accumulate(np.quantile(film, quantiles) + np.arange(len(quantiles)) * 1e-9)
    toned.append(np.interp(film, levels, drr_levels))
toned = torch.from_numpy(np.stack(toned)).float()
ssim = low_pass_ssim(toned, hq, 4.0)
print(f"{len(hq)} test films given the DRRs' grey levels: low-pass SSIM to the film median {ssim.median():.3f} "
      f"(range {ssim.min():.3f}-{ssim.max():.3f}), {(ssim >= 0.85).float().mean():.0%} at or above check 1's 0.85; "
      f"grey-level SD {hq.std(dim=(1, 2, 3)).median():.3f} -> {toned.std(dim=(1, 2, 3)).median():.3f}")

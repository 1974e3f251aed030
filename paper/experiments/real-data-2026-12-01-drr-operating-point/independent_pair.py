"""An independent-style DRR pair: a noise-free line-integral DRR with and without an analytic 14 mm nodule.

    python .../independent_pair.py LINE_INTEGRALS.npy PIXEL_MM ROW COL OUT_DIR

The nodule is a uniform sphere (diameter 14 mm, attenuation 0.02/mm above the lung's, about soft tissue
in air-filled lung at 60 keV) added to the line integrals as its chord lengths, centred at (ROW, COL).
Both images are windowed with the window of the nodule-free one (as 01 displays DRRs) and written as
16-bit PNGs, OUT_DIR/<stem>_with.png and _without.png, the form issue 12's acceptance pair takes. Then:

    xrlib restore OUT_DIR/*_with.png OUT_DIR/*_without.png --out RESTORED --seed 0 --check-pair
"""
import sys
from pathlib import Path

import numpy as np
import torch

from xrlib.drr.display import display_window, to_display
from xrlib.io import save_png16

DIAMETER_MM, EXCESS_ATTENUATION_PER_MM = 14.0, 0.02

source, pixel_mm, row, col, out = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
without = np.load(source).astype(np.float64)
rows, cols = np.mgrid[: without.shape[0], : without.shape[1]]
rho_mm = np.hypot(rows - row, cols - col) * pixel_mm
chord_mm = 2 * np.sqrt(np.clip((DIAMETER_MM / 2) ** 2 - rho_mm**2, 0, None))
with_nodule = without + EXCESS_ATTENUATION_PER_MM * chord_mm
window = display_window(torch.from_numpy(without))
for name, image in (("with", with_nodule), ("without", without)):
    save_png16(out / f"{source.stem}_{name}.png", to_display(torch.from_numpy(image), window).numpy())
print(f"nodule peak line integral {EXCESS_ATTENUATION_PER_MM * DIAMETER_MM:.3f}, {int((chord_mm > 0).sum())} px")

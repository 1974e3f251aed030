"""Where the restored-DRR spectrum goes wrong, measured on a finished real-data run (the released one).

    PYTHONPATH=. python paper/experiments/real-data-2026-11-30-restorer-diagnosis/diagnose.py RUN_FOLDER

RUN_FOLDER is a clone after `xrlib exp real-data` (outputs/ and models/ of that run). Writes, beside
this script: the released MUNIT-LQ restorer's perception-distortion sweep on its validation pairs
(1-16 InDI steps), the spectra of test twins and DRRs on the restorer's input grid, and one DRR
restored at each step count.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib import figures
from xrlib.data.pairs import read_pairs
from xrlib.eval.realism import spectra_table
from xrlib.io import load_png, write_csv_atomic
from xrlib.lq.checks import spectrum_shape
from xrlib.lq.pairs import load_display_stack, read_drr_paths
from xrlib.models.restorer import perception_distortion, steps_sweep
from xrlib.restore import load_restorer, restore_paths
from xrlib.stages import path

STEPS = (1, 2, 4, 8, 16)
run, here = Path(sys.argv[1]), Path(__file__).parent
torch.set_num_threads(2)
figures.apply_style()
restorer = load_restorer("released", root=run)
pairs = read_pairs(path("03_lq_munit.pairs", run))

sweep_csv = here / "steps_sweep.csv"  # the slow part (3 min): kept, so the figures can be redrawn
if not sweep_csv.is_file():
    write_csv_atomic(sweep_csv, steps_sweep(restorer.model, restorer.config, pairs[(pairs.generator == "munit") & (pairs.split == "val")], run, STEPS))
sweep = pd.read_csv(sweep_csv)
trade_off = perception_distortion(sweep.assign(config="diffusionxray_munit"))
write_csv_atomic(here / "perception_distortion.csv", trade_off)
figures.save_figure(figures.perception_distortion_plot(trade_off, {"diffusionxray_munit": "DiffusionXRay, MUNIT-LQ pairs (released)"}), "perception_distortion", here)
print(trade_off.round(4).to_string())

test = pairs[pairs.split == "test"]
lq_px = int(load_png(run / test.lq_path.iloc[0]).shape[0])
grid_sets = {"HQ at the LQ size" if g == "bicubic" else g: load_display_stack([run / p for p in test.lq_path[test.generator == g]], lq_px)
             for g in ("bicubic", "ddpm", "munit")}
drr_paths = read_drr_paths(path("01_drr.drrs", run), path("01_drr.drr", run))
grid_sets["drr"] = load_display_stack(drr_paths, lq_px)
spectra = spectra_table(grid_sets, n_bins=16)
bands = spectra.pivot(index="frequency_cycles_per_px", columns="set", values="log10_power_mean")
bands = bands.sub(bands["HQ at the LQ size"], axis=0).round(2)
write_csv_atomic(here / "twin_spectra_vs_hq_log10.csv", bands.reset_index())
# the same as 03's twin check sees it: each set's spectrum shape (unit total power), so a display gain cancels
grid_sets["drr body square"] = load_display_stack(drr_paths, lq_px, "body")
shapes = pd.DataFrame({name: spectrum_shape(images).numpy() for name, images in grid_sets.items()})
shapes = shapes.sub(shapes["HQ at the LQ size"], axis=0).round(2)
shapes.insert(0, "frequency_cycles_per_px", (np.arange(len(shapes)) + 1) * 0.5 / len(shapes))
write_csv_atomic(here / "twin_spectrum_shapes_vs_hq_log10.csv", shapes)
print(shapes.iloc[1::4].to_string(index=False))
figures.save_figure(figures.spectra_plot(spectra, labels={"ddpm": "DDPM-LQ twins", "munit": "MUNIT-LQ twins", "drr": "DRRs"}), "twin_spectra_lq_grid", here)
print(bands.to_string())

drr_path = next(p for p in drr_paths if p.stem == "pyradiomics-lung2-aug02-pa")
row = [load_png(drr_path)]
with tempfile.TemporaryDirectory() as scratch:
    for steps in STEPS:  # as `xrlib restore DRR --steps N` restores it
        out_dir = Path(scratch) / f"steps{steps}"
        restore_paths([drr_path], out_dir, steps=steps, progress=False, root=run)
        row.append(load_png(out_dir / f"{drr_path.stem}.png"))
fig = figures.image_grid([row], column_titles=["DRR", *(f"{s} step{'s' * (s > 1)}" for s in STEPS)])
figures.save_figure(fig, "drr_by_steps", here)

"""Film-toned DRRs: each of 01's DRRs (and its nodule-free render, same map) quantile-mapped over its whole frame
to the pooled grey levels of 64 training films at 256 px, written as 16-bit PNGs (a display trial, not part of the pipeline).

    XRLIB_ROOT=RUN PYTHONPATH=RUN python film_tone_whole_frame.py RUN OUT
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.eval.images import load_image_batch
from xrlib.eval.realism import sample_paths
from xrlib.io import load_png, save_png16
from xrlib.stages import path

run, out = Path(sys.argv[1]), Path(sys.argv[2])
films = pd.read_csv(path("00_data.xray_manifest", run))
films = films[films.split == "train"]
real = load_image_batch(sample_paths([run / p for p in films.path], 64, 0), 256)
quantiles = np.linspace(0, 1, 1001)
film_levels = np.quantile(real.numpy(), quantiles)
for sub in ("drr", "drr_nodule_free"):
    (out / sub).mkdir(parents=True, exist_ok=True)
    for drr_path in sorted((run / "outputs/01_drr" / sub).glob("*.png")):
        nodule_free = load_png(run / "outputs/01_drr/drr_nodule_free" / drr_path.name)  # one map per DRR
        levels = np.maximum.accumulate(np.quantile(nodule_free, quantiles) + np.arange(len(quantiles)) * 1e-9)
        save_png16(out / sub / drr_path.name, np.interp(load_png(drr_path), levels, film_levels).astype(np.float32))

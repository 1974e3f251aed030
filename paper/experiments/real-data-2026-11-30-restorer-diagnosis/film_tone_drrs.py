"""DRRs shown with the films' grey levels: each DRR (and its nodule-free render, with the same map) quantile-mapped
over its body square to the pooled histogram of 64 training films, written as 16-bit PNGs.

    PYTHONPATH=. python .../film_tone_drrs.py RUN_FOLDER OUT_FOLDER

A trial of a film-like DRR display (a console's gradation curve), not part of the pipeline.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.io import load_png, save_png16
from xrlib.lq.pairs import body_square, load_display_stack
from xrlib.stages import path

run, out = Path(sys.argv[1]), Path(sys.argv[2])
films = pd.read_csv(path("00_data.xray_manifest", run))
films = films[films.split == "train"]
quantiles = np.linspace(0, 1, 1001)
film_levels = np.quantile(load_display_stack([run / p for p in films.path[:64]], 256, "centre").numpy(), quantiles)
for drr_id in dict.fromkeys(pd.read_csv(path("01_drr.nodules", run)).drr_id.astype(str)):
    nodule_free = load_png(path("01_drr.drr_nodule_free", run, drr_id=drr_id))
    top, left, side = body_square(torch.from_numpy(nodule_free))
    drr_levels = np.quantile(nodule_free[top:top + side, left:left + side], quantiles)
    drr_levels = np.maximum.accumulate(drr_levels + np.arange(len(quantiles)) * 1e-9)  # strictly increasing for interp
    for key, folder in (("01_drr.drr", "drr"), ("01_drr.drr_nodule_free", "drr_nodule_free")):
        (out / folder).mkdir(parents=True, exist_ok=True)
        image = load_png(path(key, run, drr_id=drr_id))
        save_png16(out / folder / f"{drr_id}.png", np.interp(image, drr_levels, film_levels).astype(np.float32))

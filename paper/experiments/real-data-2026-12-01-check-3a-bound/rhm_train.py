"""Trial: continue the released MUNIT-LQ restorer with randomized histogram matching (Yaras et al. 2022) of its LQ input
to a random DRR's body-square grey levels (probability P), the HQ target unchanged.

    XRLIB_ROOT=RUN PYTHONPATH=RUN python rhm_train.py RUN EXTRA_STEPS OUT P
"""
import sys
from pathlib import Path

import numpy as np
import torch

import xrlib.models.restorer as restorer_module
from xrlib.data.pairs import PairDataset, read_pairs
from xrlib.io import load_png, write_csv_atomic
from xrlib.lq.pairs import body_square
from xrlib.models.restorer import perception_distortion, steps_sweep, train_restorer
from xrlib.models.unet import load_model
from xrlib.params import check_params, load_params
from xrlib.stages import path

run, extra_steps, out, p_match = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(2)
q = np.linspace(0, 1, 257)
drr_levels = []
for f in sorted((run / "outputs/01_drr/drr_nodule_free").glob("*.png")):
    d = load_png(f); t, l, s = body_square(torch.from_numpy(d)); drr_levels.append(np.quantile(d[t:t+s, l:l+s], q))

class MatchedPairs(PairDataset):
    """PairDataset whose LQ condition is, with probability ``p_match`` per drawn sample, histogram-matched
    (whole image, before the crop) to a random DRR's body-square grey levels."""

    matched = None

    def _pair(self, index):
        return self.matched if self.matched is not None else super()._pair(index)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([int(seed), 7])
        if rng.random() >= p_match:
            return super().__getitem__(key)
        hq, condition = super()._pair(int(index))
        lq = condition[0].numpy() * 0.5 + 0.5
        levels = np.maximum.accumulate(np.quantile(lq, q) + np.arange(len(q)) * 1e-9)
        target = drr_levels[int(rng.integers(len(drr_levels)))]
        self.matched = (hq, torch.from_numpy(np.interp(lq, levels, target) * 2 - 1).float()[None])
        try:
            return super().__getitem__(key)
        finally:
            self.matched = None


restorer_module.PairDataset = MatchedPairs
raw = load_params(run / "params.yaml")
raw["restorer"]["base"]["train"].update(steps=extra_steps, init_weights=str(run / "models/diffusionxray_munit.safetensors"))
params = check_params(raw)
train_restorer(params["restorer"], "diffusionxray_munit", params["pairs"].scale, run, out)
model, model_config = load_model(out / "restorer_ema.safetensors")
pairs = read_pairs(path("03_lq_munit.pairs", run))
val_pairs = pairs[(pairs.generator == "munit") & (pairs.split == "val")]
sweep = steps_sweep(model.eval(), model_config, val_pairs, run, (1, 2, 3, 4))
write_csv_atomic(out / "steps_sweep.csv", sweep)
print(perception_distortion(sweep.assign(config="rhm")).round(4).to_string())

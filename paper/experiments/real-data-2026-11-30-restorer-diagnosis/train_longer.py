"""Does more training make the restorer's sampled texture film-like? Continue the released MUNIT-LQ restorer.

    XRLIB_ROOT=RUN_FOLDER PYTHONPATH=. python .../train_longer.py RUN_FOLDER EXTRA_STEPS OUT_FOLDER

Trains `diffusionxray_munit` of RUN_FOLDER's params.yaml (the real-data settings the release used) for
EXTRA_STEPS more steps, starting from the released weights, on the same train pairs; writes the EMA
weights and dvclive logs to OUT_FOLDER, then its perception-distortion sweep on the validation pairs
(1-16 InDI steps) to OUT_FOLDER/perception_distortion.csv beside this script's `perception_distortion.csv`.
"""
import sys
from pathlib import Path

import torch

from xrlib.data.pairs import read_pairs
from xrlib.io import write_csv_atomic
from xrlib.models.restorer import perception_distortion, steps_sweep, train_restorer
from xrlib.models.unet import load_model
from xrlib.params import check_params, load_params
from xrlib.stages import path

run, extra_steps, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(2)
raw = load_params(run / "params.yaml")
raw["restorer"]["base"]["train"].update(steps=extra_steps, init_weights=str(run / "models/diffusionxray_munit.safetensors"))
params = check_params(raw)
section = params["restorer"]
train_restorer(section, "diffusionxray_munit", params["pairs"].scale, run, out)
model, model_config = load_model(out / "restorer_ema.safetensors")
pairs = read_pairs(path("03_lq_munit.pairs", run))
sweep = steps_sweep(model.eval(), model_config, pairs[(pairs.generator == "munit") & (pairs.split == "val")], run, (1, 2, 4, 8, 16))
write_csv_atomic(out / "steps_sweep.csv", sweep)
trade_off = perception_distortion(sweep.assign(config=f"diffusionxray_munit +{extra_steps} steps"))
write_csv_atomic(out / "perception_distortion.csv", trade_off)
print(trade_off.round(4).to_string())

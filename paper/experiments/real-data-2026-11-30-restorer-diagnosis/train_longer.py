"""Does more training make the restorer's sampled texture film-like? Continue a released restorer.

    XRLIB_ROOT=RUN_FOLDER PYTHONPATH=. python .../train_longer.py RUN_FOLDER EXTRA_STEPS OUT_FOLDER [CONFIG]

Trains CONFIG (default `diffusionxray_munit`) of RUN_FOLDER's params.yaml (the real-data settings the
release used) for EXTRA_STEPS more steps, starting from its released weights, on the same train pairs;
writes the EMA weights and dvclive logs to OUT_FOLDER, then, for an InDI restorer, its
perception-distortion sweep on its validation pairs (1-16 steps) to OUT_FOLDER/perception_distortion.csv.
"""
import sys
from pathlib import Path

import torch

from xrlib.data.pairs import read_pairs
from xrlib.io import write_csv_atomic
from xrlib.models.restorer import perception_distortion, steps_sweep, train_restorer
from xrlib.models.sampling import diffusion_process
from xrlib.models.unet import load_model
from xrlib.params import check_params, load_params
from xrlib.stages import path

run, extra_steps, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
config = sys.argv[4] if len(sys.argv) > 4 else "diffusionxray_munit"
torch.set_num_threads(2)
raw = load_params(run / "params.yaml")
raw["restorer"]["base"]["train"].update(steps=extra_steps, init_weights=str(run / f"models/{config}.safetensors"))
params = check_params(raw)
section = params["restorer"]
train_restorer(section, config, params["pairs"].scale, run, out)
model, model_config = load_model(out / "restorer_ema.safetensors")
if diffusion_process(model_config["schedule"]) != "indi":
    sys.exit(0)
pairs = read_pairs(path("03_lq_munit.pairs", run))
val_pairs = pairs[(pairs.generator == model_config["data"]["generator"]) & (pairs.split == "val")]
sweep = steps_sweep(model.eval(), model_config, val_pairs, run, (1, 2, 4, 8, 16))
write_csv_atomic(out / "steps_sweep.csv", sweep)
trade_off = perception_distortion(sweep.assign(config=f"{config} +{extra_steps} steps"))
write_csv_atomic(out / "perception_distortion.csv", trade_off)
print(trade_off.round(4).to_string())

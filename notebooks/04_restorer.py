# %% [markdown]
# # 04 · Conditional DDPM restorer
#
# The restorer of DiffusionXRay is an SR3/Palette-style conditional DDPM: the LQ radiograph, upsampled
# with bicubic interpolation to the output size, is concatenated to the noisy HQ image at every denoising
# step (`xrlib.diffusion`). Every configuration in `restorer.configs` is the same code on other pairs:
# `diffusionxray_ddpm` and `diffusionxray_munit` learn from the DDPM-LQ and MUNIT-LQ pairs (the paper
# trains one DiffusionXRay per LQ generator), and the paper's baseline, `bicubic_baseline`, from the
# bicubic twins of the same HQ tiles, all in 03_lq_munit's manifest `outputs/pairs/pairs.csv`. This stage trains the
# configurations listed in `restorer.train_configs` on random aligned crops (`crop_px`) and restores whole
# images at inference. Checkpoints (every `checkpoint_every` steps) let an interrupted run resume exactly;
# dvclive logs loss, learning rate and sample images (`dvc plots show`).
#
# Two formulations of the same conditional model, each named in the tables. **InDI on the residual** (`schedule.process: indi`, `target: residual`; Delbracio and Milanfar 2023, with SRDiff's residual, Li et al. 2022): a bridge x_t = (1 - t) HQ + t LQ from the upsampled LQ image to the HQ image, the network predicting the HQ residual over its input; restoration starts at the input and takes a few steps (05 picks how many on validation patients), so even a briefly trained model keeps the input's anatomy: the CPU profiles' DiffusionXRay. **The paper's formulation** (`process: diffusion`, `target: image`, noise prediction, cosine schedule, T = 2000, L1 loss; `diffusionxray_munit_paper`, and every restorer in the paper profile): the HQ image generated from pure noise, as SR3 and Palette do.

# %% tags=["parameters"]
restorer = None
pairs = None

# %%
import matplotlib.pyplot as plt
import torch

from xrlib.models.restorer import restore, train_restorer
from xrlib.models.unet import load_model
from xrlib.io import load_png
from xrlib.data.pairs import read_pairs
from xrlib.models.logs import read_curves
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings("restorer", restorer)
scale = stage_settings("pairs", pairs).scale
root = project_root()

# %% [markdown]
# ## Pairs
#
# The training split of each generator's pairs; `split_unit` says whether patients or (with too few patients) image tiles were held out.

# %%
pairs_table = read_pairs(path("03_lq_munit.pairs"))
print("held-out unit:", *pairs_table.split_unit.unique())
pairs_table.groupby(["generator", "split"]).size().unstack()

# %% [markdown]
# ## Training
#
# Each configuration resumes from its last checkpoint if one exists and exports its EMA weights to `restorer_ema.safetensors`.

# %%
results = {name: train_restorer(cfg, name, scale, root, path("04_restorer.run", config=name)) for name in cfg.train_configs}
{name: str(result["weights"].relative_to(root)) for name, result in results.items()}

# %% [markdown]
# ## Curves
#
# Read back from the dvclive logs (the same files `dvc plots show` renders); the loss is the mean over each `log_every` steps.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name in cfg.train_configs:
    curves = read_curves(path("04_restorer.run", config=name) / "dvclive")
    for ax, metric in zip(axes, ["loss", "learning_rate"]):
        curve = curves[curves["metric"] == f"train/{metric}"]
        ax.plot(curve["step"], curve["value"], label=name)
        ax.set(xlabel="step", ylabel=metric.replace("_", " "))
axes[0].set_yscale("log")
axes[0].legend();

# %% [markdown]
# ## Samples logged during training
#
# Left to right: LQ crops (upsampled), their restorations by the EMA model (20 InDI steps, or DDIM-20 for the paper's formulation), the HQ crops.

# %%
for name in cfg.train_configs:
    last = sorted((path("04_restorer.run", config=name) / "dvclive" / "plots" / "images" / "samples").glob("*.png"))[-1]
    plt.figure(figsize=(10, 2))
    plt.imshow(plt.imread(last), cmap="gray", vmin=0, vmax=1)
    plt.title(f"{name}, step {int(last.stem)}")
    plt.axis("off")

# %% [markdown]
# ## Whole-image restoration
#
# Trained on crops, the fully convolutional UNet restores a whole held-out LQ tile of its own generator (DPM-Solver, 20 steps).

# %%
fig, axes = plt.subplots(len(results), 3, figsize=(10, 3.5 * len(results)), squeeze=False)
for row, (name, result) in zip(axes, results.items()):
    model, model_config = load_model(result["weights"])
    pair = read_pairs(path("03_lq_munit.pairs"), model_config["data"]["generator"], "test").iloc[0]
    lq_image = torch.from_numpy(load_png(root / pair.lq_path))[None, None]
    restored = restore(model, model_config, lq_image, "ddim", 20, torch.Generator().manual_seed(cfg.seed))
    for ax, image, title in zip(row, [lq_image[0, 0], restored[0, 0], load_png(root / pair.hq_path)],
                                [f"LQ input ({pair.generator})", f"restored: {name}", "HQ (target)"]):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")

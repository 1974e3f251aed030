# %% [markdown]
# # 05 · Restore the DRRs
#
# Each trained restorer (`restore.configs`) turns the DRRs with inserted nodules (from 01_drr) into
# realistic radiographs, written as 16-bit PNGs to `outputs/05_restore/<config>/<drr_id>.png`; their nodule-free renders, restored with the same per-image seeds, go to `<config>/nodule_free/` (the signal-absent images of 07's virtual readers). DRRs are
# resized so their longer side is `input_px` (null: their own size) and restored at `scale` times that
# size with `sampler` in `steps` steps, each image with its own seed. The held-out test LQ tiles of the
# generators in `restore.test_inputs[<config>]` are restored too, at their own size, into
# `outputs/05_restore/<config>/test/<pair_id>.png` with `restored.csv` (the pair manifest plus
# `restored_path`) for the metrics stage: each DiffusionXRay on its own generator's inputs, the
# bicubic-trained baseline on both.

# %% tags=["parameters"]
restore = None
pairs = None  # pairs.hq_px / pairs.lq_px: the restorers' scale
drr = None    # drr.size_px: the DRR grid the restored DRRs must land on

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xrlib.models.accel import for_sampling
from xrlib.models.restorer import perception_distortion, restore_files, restore_test_pairs, validated_steps
from xrlib.models.unet import load_model
from xrlib.io import load_png, write_csv_atomic, write_json_atomic
from xrlib.lq.pairs import read_drr_paths
from xrlib.data.pairs import read_pairs
from xrlib.params import check_drr_grid, stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings("restore", restore)
check_drr_grid(cfg, stage_settings("pairs", pairs), stage_settings("drr", drr))
root = project_root()
models = {name: load_model(path("04_restorer.weights", config=name)) for name in cfg.configs}
# restore.accel: the device and how the UNet runs there (default: the CPU, eager, float32)
models = {name: (for_sampling(model, cfg.accel), model_config) for name, (model, model_config) in models.items()}

# %% [markdown]
# ## DRRs and their nodules

# %%
drr_paths = {file.stem: file for file in read_drr_paths(path("01_drr.drrs"), path("01_drr.drr"))}
nodule_free_paths = {file.stem: file for file in read_drr_paths(path("01_drr.drrs"), path("01_drr.drr_nodule_free"))}
nodules = pd.read_csv(path("01_drr.nodules"), dtype={"drr_id": str})
len(drr_paths), len(nodules)

# %% [markdown]
# ## Steps, chosen on validation patients
#
# An InDI restorer (`schedule.process: indi`) starts from its input and takes `steps` steps to the
# restored image: one step is its estimate of the mean HQ image given the input (the highest PSNR),
# more steps add detail and cost fidelity (Blau and Michaeli, CVPR 2018). Each InDI restorer is run
# with every count in `restore.indi_steps_sweep` on the validation pairs of its own generator, and
# restores the held-out test pairs (the paper's quality table) with the fidelity end: of the counts whose
# restorations beat their LQ inputs in mean PSNR, the one with the highest mean SSIM, which penalises
# sampled texture that does not match. A DRR has no HQ image to be faithful to and should look like a
# radiograph, which the mean image does not (smooth lung fields): DRRs are restored with the most steps
# whose validation PSNR stays within `drr_psnr_budget_db` of that count's, a stated fidelity cost for
# fine scale (`outputs/05_restore/steps_sweep.csv`, `chosen_steps.json`). Diffusion restorers use `steps`.

# %%
steps_by_config, sweeps = {}, []
for name, (model, model_config) in models.items():
    steps_by_config[name], sweep = validated_steps(model, model_config, root, cfg.indi_steps_sweep, cfg.steps, cfg.seed,
                                                   cfg.drr_psnr_budget_db)
    sweeps.append(sweep.assign(config=name))
sweep_table = pd.concat(sweeps, ignore_index=True)
write_csv_atomic(path("05_restore.steps_sweep"), sweep_table)
write_json_atomic(path("05_restore.chosen_steps"), steps_by_config)
pd.DataFrame(steps_by_config).T

# %% [markdown]
# The trade-off each count makes on the validation pairs: fidelity (mean PSNR, SSIM) against the fine
# scale (median spectrum distance of each restoration to its HQ image, in decades, and its high-frequency
# power over the HQ image's; step 0 is the LQ input). The test pairs' count sits at the fidelity end; more
# steps, as the DRRs' count, bring the films' fine-scale power closer at a cost in PSNR and SSIM (also
# paper figure 10).

# %%
if len(sweep_table):
    trade_off = perception_distortion(sweep_table)
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, curve in trade_off.groupby("config"):
        ax.plot(curve.spectrum_distance, curve.ssim, "o-", label=name)
    ax.set(xlabel="spectrum distance to HQ (decades)", ylabel="SSIM"); ax.legend(fontsize=7)
    display(trade_off.round(4))

# %% [markdown]
# ## Restoration

# %%
restored, test_tables = {}, {}
for name, (model, model_config) in models.items():
    drr_steps = steps_by_config[name]["drrs"]
    restored[name] = restore_files(model, model_config, drr_paths, path("05_restore.restored_drr", config=name).parent, cfg.sampler, drr_steps,
                                   cfg.batch_size, cfg.seed, cfg.input_px, cfg.strength, keep_air=True)
    # the same DRRs without their nodules, with the same per-image seeds: signal-absent images for 07's readers
    restore_files(model, model_config, nodule_free_paths, path("05_restore.restored_drr_nodule_free", config=name).parent,
                 cfg.sampler, drr_steps, cfg.batch_size, cfg.seed, cfg.input_px, cfg.strength, keep_air=True)
    test_pairs = read_pairs(root / model_config["data"]["pairs"], split="test")
    test_pairs = test_pairs[test_pairs.generator.isin(cfg.test_inputs[name])]
    test_tables[name] = restore_test_pairs(model, model_config, test_pairs, root, path("05_restore.restored_test", config=name).parent,
                                           sampler=cfg.sampler, steps=steps_by_config[name]["test_pairs"], batch_size=cfg.batch_size,
                                           seed=cfg.seed, strength=cfg.strength)
    write_csv_atomic(path("05_restore.restored_test_table", config=name), test_tables[name])
pd.Series({name: len(table) for name, table in test_tables.items()}, name="restored test pairs")

# %% [markdown]
# ## Before and after
#
# Top: whole images; bottom: zoom on the first nodule of each DRR (`zoom_px` DRR pixels around its centre).

# %%
shown = list(drr_paths)[: cfg.gallery_images]
columns = ["DRR", *models]
fig, axes = plt.subplots(2 * len(shown), len(columns), figsize=(3.2 * len(columns), 6.4 * len(shown)), squeeze=False)
for i, drr_id in enumerate(shown):
    images = [load_png(drr_paths[drr_id]), *(load_png(restored[name][drr_id]) for name in models)]
    nodule = nodules[nodules["drr_id"] == drr_id].head(1)
    for j, (title, image) in enumerate(zip(columns, images)):
        ratio = image.shape[0] / images[0].shape[0]  # restored images are larger than the DRR
        for ax in axes[2 * i: 2 * i + 2, j]:
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        axes[2 * i, j].set_title(f"{drr_id}: {title}")
        for row in nodule.itertuples():
            axes[2 * i + 1, j].set_xlim(ratio * (row.centre_col_px + np.array([-1, 1]) * cfg.zoom_px))
            axes[2 * i + 1, j].set_ylim(ratio * (row.centre_row_px + np.array([1, -1]) * cfg.zoom_px))

# %% [markdown]
# ## Your own DRRs: `xrlib restore`
#
# The same restoration for any DRR, as one call: PNG (8- or 16-bit, any size), `.npy` line integrals
# or DICOM in, a 16-bit PNG and a JSON record (weights SHA-256, steps, seeds, sizes) out. On the
# command line, with the released weights (`models/`): `xrlib restore my_drr.png --out restored/`.
# Here with this run's own restorer, on the first DRR, so the cell needs nothing but the pipeline.

# %%
from xrlib.restore import restore_paths

name, first = cfg.configs[0], next(iter(drr_paths))
record = restore_paths([drr_paths[first]], path("05_restore.folder") / "cli_example", weights=str(path("04_restorer.weights", config=name)),
                       steps=steps_by_config[name]["drrs"], sampler=cfg.sampler, input_px=cfg.input_px, progress=False)[0]
{key: record[key] for key in ("output", "weights_sha256", "steps", "seed") if key in record}

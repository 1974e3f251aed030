# %% [markdown]
# # 03 MUNIT-LQ and the paired training set
#
# MUNIT (Huang et al. 2018, `xrlib.munit`) learns from unpaired HQ X-rays (domain a) and DRRs (domain b) a shared content code and per-domain style codes. An HQ X-ray's content decoded with a DRR style is its MUNIT-LQ twin. A low-frequency consistency term (`model.low_frequency_weight`, Cai et al. ICCV 2021; off in the paper profile) keeps each translation's low-pass equal to its source's, so the twin changes texture and sharpness, not the anatomy. Then every HQ X-ray gets three twins, bicubic (the baseline), DDPM-LQ (stage 02) and MUNIT-LQ, each made of the whole centre square and cut into `pairs.tiles_per_side`$^2$ tiles of `hq_px` with it (a generator trained on whole DRRs translates a whole chest), written with a manifest (`outputs/pairs/pairs.csv`) for the restorer (DDPM-LQ with the strength and ILVR factor that 02 chose), and each generator is checked on the held-out (test) images: does the twin move toward the DRR domain while keeping the anatomy?

# %% tags=["parameters"]
lq_munit = None
lq_ddpm = None
pairs = None

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from dvclive import Live

from xrlib.models.accel import for_sampling
from xrlib.models.sampling import make_scheduler
from xrlib.models.unet import load_model
from xrlib.io import write_csv_atomic, write_json_atomic
from xrlib.lq.checks import TwinCriteria, manifest_translation_checks
from xrlib.lq.pairs import build_pairs, load_display_stack, read_drr_paths, read_hq_manifest
from xrlib.lq.twins import pair_generators
from xrlib.models.logs import read_curves
from xrlib.models.munit import MunitConfig, MunitTraining, style_interpolation, train_munit
from xrlib.data.pairs import resize_bicubic
from xrlib.eval.realism import spectra_table
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings("lq_munit", lq_munit)
ddpm_cfg = stage_settings("lq_ddpm", lq_ddpm)
pairs_cfg = stage_settings("pairs", pairs)
root = project_root()
out = path("03_lq_munit.folder")
torch.manual_seed(cfg.seed)

# %% [markdown]
# ## Train MUNIT on unpaired HQ X-rays (training split) and DRRs
#
# DRRs cut by `pairs.drr_crop` as in 02; the twin checks below compare with the same DRRs.

# %%
hq_table = read_hq_manifest(path("00_data.xray_manifest"))
hq_train = load_display_stack([root / p for p in hq_table[hq_table.split == "train"].path], cfg.image_px)
drr_paths = read_drr_paths(path("01_drr.drrs"), path("01_drr.drr"))
drrs = load_display_stack(drr_paths, cfg.image_px, pairs_cfg.drr_crop)
config, training = MunitConfig(**cfg.model), MunitTraining(**cfg.train, seed=cfg.seed)
run = path("03_lq_munit.run")
with Live(str(run / "dvclive"), resume=any((run / "checkpoints").glob("*/step-*")), save_dvc_exp=False, dvcyaml=False) as live:
    model = train_munit(hq_train, drrs, config, training, run / "checkpoints", live=live)
print(f"{len(hq_train)} HQ X-rays, {len(drrs)} DRRs, {training.steps} steps")

# %%
curves = read_curves(run / "dvclive")
fig, ax = plt.subplots(figsize=(6, 3.5))
for metric, curve in curves.groupby("metric"):
    ax.plot(curve.step, curve.value, label=metric.removeprefix("train/"))
ax.set_xlabel("step"); ax.set_yscale("log"); ax.legend(fontsize=7); fig.savefig(out / "training_curves.png", dpi=120, bbox_inches="tight")

# %% [markdown]
# ## Pairs: bicubic, DDPM-LQ and MUNIT-LQ twins of every HQ tile
#
# When the HQ manifest holds out no patient (one patient: the embedded default), tiles are split into train/val/test instead (`split_unit` = tile, a hold-out of image regions, not of patients); otherwise tiles inherit their patient's split.

# %%
unet = for_sampling(load_model(path("02_lq_ddpm.weights"))[0], ddpm_cfg.accel)
scheduler = make_scheduler(ddpm_cfg.sampler, ddpm_cfg.schedule)
ddpm_choice = json.loads(path("02_lq_ddpm.setting").read_text())
generators = pair_generators(unet, scheduler, ddpm_cfg, ddpm_choice, model, {"steps": training.steps, **cfg.model},
                             cfg.low_frequency_anchor_factor)
manifest = build_pairs(hq_table, generators, root, path("03_lq_munit.pairs_folder"), pairs_cfg.hq_px, pairs_cfg.lq_px, pairs_cfg.seed,
                       pairs_cfg.tiles_per_side, pairs_cfg.split_fractions)
print("held-out unit:", *manifest.split_unit.unique())
manifest.groupby(["generator", "split"]).size().unstack()

# %% [markdown]
# ## Does each translation do what the paper needs?
#
# On the held-out (test) images. `spectrum_distance_ratio`: the twins' spectrum distance to the DRRs over the HQ images' (below 0.5: the twins reached the DRR domain); `spectrum_fraction` and `sharpness_fraction`: how far the twin moved from the HQ value toward the DRR value (0 = unchanged, 1 = as a DRR), measured at the HQ size. `low_pass_ssim`: SSIM of the Gaussian low-passes of twin and HQ (1 = anatomy fully kept; the bar is 0.85). `mid_band_offset_to_drr` and `finest_band_offset_to_drr` (decades, signed; 0.1-0.35 and 0.35-0.5 cycles/px at the twin size): the twins' spectrum shape minus the DRRs' (negative: blurrier than the DRRs; positive: noise or artefacts the DRRs lack), which the ratio, an average over bins, cannot tell apart. The bicubic baseline is listed for reference.

# %%
# the DRRs the twins are compared with, read at the HQ size from their own grid (not MUNIT's training stack upsampled: that loses their top octave)
drrs_hq_px = load_display_stack(drr_paths, pairs_cfg.hq_px, pairs_cfg.drr_crop)
checks = manifest_translation_checks(manifest, root, drrs_hq_px, pairs_cfg.hq_px, pairs_cfg.low_pass_sigma_px, split="test")
checks = pd.concat([checks, pd.DataFrame([TwinCriteria().verdict(r) for _, r in checks.iterrows()])], axis=1)
write_csv_atomic(out / "translation_checks.csv", checks)
write_json_atomic(path("03_lq_munit.translation_checks"), {r.generator: {k: v for k, v in r._asdict().items() if k != "generator"} for r in checks.itertuples(index=False)})
checks

# %% [markdown]
# ### Twins and DRRs on the restorer's input grid
#
# The restorer learns to undo what separates each twin from its HQ image, and meets the DRRs at the LQ size. Mean radial spectra at `pairs.lq_px` of the test HQ images brought to that size (the bicubic twins), each generator's test twins, and the DRRs brought whole to the same size: where the twins carry less power than the DRRs, the restorer learns more sharpening than a DRR needs. The DRRs' lowest bins carry their black surround and display contrast, not blur.

# %%
test_pairs = manifest[manifest.split == "test"]
grid_sets = {"HQ at the LQ size" if name == "bicubic" else f"{name} twins":
             load_display_stack([root / p for p in test_pairs.lq_path[test_pairs.generator == name]], pairs_cfg.lq_px)
             for name in ("bicubic", "ddpm", "munit")}
grid_sets["DRRs"] = load_display_stack(drr_paths, pairs_cfg.lq_px)
ax = spectra_table(grid_sets).pivot(index="frequency_cycles_per_px", columns="set", values="power_mean").plot(logy=True, figsize=(5, 3))
ax.set(xlabel="spatial frequency (cycles/px)", ylabel="power (intensity$^2$ px$^2$)");

# %% [markdown]
# ## Gallery

# %%
shown = list(manifest.pair_id[manifest.generator == "bicubic"].str.removeprefix("bicubic-")[: pairs_cfg.gallery_count])
columns = ["hq", "bicubic", "ddpm", "munit"]
fig, axes = plt.subplots(len(shown), 5, figsize=(8, 1.7 * len(shown)), squeeze=False)
for row, image_id in enumerate(shown):
    panels = [load_display_stack([path("03_lq_munit.pair_image", generator=name, tile_id=image_id)], pairs_cfg.hq_px)[0, 0] for name in columns]
    for ax, title, image in zip(axes[row], columns + ["a DRR"], panels + [drrs_hq_px[row % len(drrs), 0]]):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1); ax.set_title(title, fontsize=8); ax.axis("off")
fig.savefig(out / "gallery.png", dpi=120, bbox_inches="tight")

# %% [markdown]
# ## MUNIT style interpolation
#
# One HQ X-ray's content rendered with styles on the line from a DRR's style code (0) to a style drawn from the prior N(0, I) (1).

# %%
hq_small = load_display_stack([path("03_lq_munit.pair_image", generator="hq", tile_id=shown[0])], pairs_cfg.lq_px)
with torch.no_grad():
    drr_style = model.gen_b.style_encoder(resize_bicubic(drrs[:1], (pairs_cfg.lq_px,) * 2) * 2 - 1)[0]
sampled_style = torch.randn(config.style_dim, generator=torch.Generator().manual_seed(cfg.seed))
interpolated = style_interpolation(model, hq_small, drr_style, sampled_style, cfg.style_interpolation_steps)
fig, axes = plt.subplots(1, len(interpolated), figsize=(1.6 * len(interpolated), 1.8))
for ax, image, w in zip(axes, interpolated, torch.linspace(0, 1, len(interpolated))):
    ax.imshow(image[0], cmap="gray", vmin=0, vmax=1); ax.set_title(f"{w:.1f}", fontsize=8); ax.axis("off")
fig.savefig(out / "style_interpolation.png", dpi=120, bbox_inches="tight")

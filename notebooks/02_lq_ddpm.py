# %% [markdown]
# # 02 DDPM-LQ: what a DRR-like X-ray looks like, learned by a DDPM
#
# An unconditional DDPM is trained on the DRRs of stage 01 (the low-quality domain). An HQ X-ray becomes its LQ twin by SDEdit: noised part-way and denoised by this model, with optional ILVR guidance that keeps the HQ image's low frequencies (its anatomy). `strength` is the fraction of the sampling steps re-run (about $t_0/T$). The strength and the ILVR factor are not set by eye: every pair of `strength_sweep` and `ilvr_sweep` is tried on validation patients and the twin checks pick one (`xrlib.lq.checks.choose_translation_setting`: among the settings that keep the anatomy, low-pass SSIM >= 0.85, the one nearest the DRR domain), which 03 uses. The DDPM predicts the clean image (x0, `schedule.prediction_type: sample`): a briefly trained x0-model denoises towards smooth DRR-like images, where a noise-predicting one leaves noise. `xrlib.lq.twins.ddpm_translate` does it with `xrlib.models.sampling.sdedit` and `ilvr_guidance`; `xrlib.models.unet.train_diffusion` trains the model (resumable, EMA, dvclive).

# %% tags=["parameters"]
lq_ddpm = None
pairs = None  # pairs.hq_px and pairs.low_pass_sigma_px: twins are checked as 03 checks them

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from xrlib.models.accel import for_sampling
from xrlib.models.sampling import make_scheduler
from xrlib.models.unet import load_model, train_diffusion
from xrlib.data.pairs import resize_bicubic
from xrlib.io import write_csv_atomic, write_json_atomic
from xrlib.lq.checks import choose_translation_setting, sdedit_sweep
from xrlib.lq.pairs import load_display_stack, read_drr_paths, read_hq_manifest
from xrlib.lq.twins import DisplayImageDataset, ddpm_translate
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings("lq_ddpm", lq_ddpm)
pairs_cfg = stage_settings("pairs", pairs)
root = project_root()
torch.manual_seed(cfg.seed)

# %% [markdown]
# ## Train the DDPM on DRRs
#
# Each DRR is cut to a square by `pairs.drr_crop`: `body` (the square on the body) keeps out the CT's black surround and the edge where the CT's field of view ends, which a DDPM trained on centre squares learns as anatomy and paints onto every twin as a bright band.

# %%
drr_paths = read_drr_paths(path("01_drr.drrs"), path("01_drr.drr"))
drrs = load_display_stack(drr_paths, cfg.image_px, pairs_cfg.drr_crop)
model_config = {"unet": cfg.unet, "schedule": cfg.schedule}
result = train_diffusion(model_config, {**cfg.train, "seed": cfg.seed}, DisplayImageDataset(drrs), path("02_lq_ddpm.run"),
                         path("02_lq_ddpm.weights").name)
print(f"{len(drrs)} DRRs at {cfg.image_px} px; trained to step {result['step']}")

# %%
if result["history"]:
    steps, losses = zip(*result["history"])
    plt.figure(figsize=(5, 3)); plt.plot(steps, losses); plt.xlabel("step"); plt.ylabel("denoising loss"); plt.yscale("log"); plt.show()

# %% [markdown]
# ## Strength ($\approx t_0/T$) and ILVR factor, chosen by the twin checks
#
# A small strength keeps the HQ image; a large one forgets it unless ILVR keeps its low frequencies. For every setting, on validation patients (all HQ images when there is no validation patient, as with the one embedded X-ray): how far the twins moved toward the DRRs (`spectrum_distance_ratio`: the twins' spectrum distance to DRRs over the HQ images'; `*_fraction`: 0 = HQ, 1 = DRR) and the SSIM of low-passed twin and HQ (anatomy kept). The chosen row is written to `chosen_setting.json`.

# %%
unet = for_sampling(load_model(path("02_lq_ddpm.weights"))[0], cfg.accel)  # lq_ddpm.accel: how twins are sampled
scheduler = make_scheduler(cfg.sampler, cfg.schedule)
hq_table = read_hq_manifest(path("00_data.xray_manifest"))
validation = hq_table[hq_table.split == "val"]
checked = validation if len(validation) else hq_table
hq = load_display_stack([root / p for p in checked.path], pairs_cfg.hq_px)
# the DRRs the twins are compared with, read at the HQ size from their own grid (not the training stack upsampled: that loses their top octave)
drrs_hq_px = load_display_stack(drr_paths, pairs_cfg.hq_px, pairs_cfg.drr_crop)
sweep = sdedit_sweep(unet, scheduler, hq, drrs_hq_px, cfg.strength_sweep, cfg.ilvr_sweep, cfg.num_inference_steps,
                     pairs_cfg.low_pass_sigma_px, cfg.seed)
chosen = choose_translation_setting(sweep)
write_csv_atomic(path("02_lq_ddpm.strength_checks"), sweep)
write_json_atomic(path("02_lq_ddpm.setting"), {
    "strength": float(chosen.strength), "ilvr_factor": int(chosen.ilvr_factor),
    "checked_on": f"{len(checked)} {'validation' if len(validation) else 'HQ (no validation patient)'} images",
    **{key: float(chosen[key]) for key in ("low_pass_ssim", "spectrum_distance_ratio")},
    **{key: bool(chosen[key]) for key in ("anatomy_kept", "reached_drr_domain", "passed")}})
print(f"chosen: strength {chosen.strength}, ILVR factor {chosen.ilvr_factor} (checks passed: {bool(chosen.passed)})")
sweep

# %%
shown = resize_bicubic(hq[: cfg.gallery_count], (cfg.image_px,) * 2)
settings = list(zip(sweep.strength, sweep.ilvr_factor))
twins = {s: ddpm_translate(unet, scheduler, shown, s[0], cfg.num_inference_steps, s[1], seed=cfg.seed) for s in settings}
fig, axes = plt.subplots(len(shown), len(settings) + 2, figsize=(1.6 * (len(settings) + 2), 1.7 * len(shown)), squeeze=False)
for row in range(len(shown)):
    panels = [("HQ", shown[row]), *((f"s {s:g}, N {n}" + (" *" if (s, n) == (chosen.strength, chosen.ilvr_factor) else ""), twins[(s, n)][row])
                                    for s, n in settings), ("a DRR", drrs[row % len(drrs)])]
    for ax, (title, image) in zip(axes[row], panels):
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1); ax.set_title(title, fontsize=7); ax.axis("off")
fig.savefig(path("02_lq_ddpm.strength_sweep"), dpi=120, bbox_inches="tight")

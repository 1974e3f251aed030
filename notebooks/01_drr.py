# %% [markdown]
# # 01 DRR: CT -> lungs -> nodules -> PA cone-beam DRR
#
# Conventions (see `xrlib.drr.geometry`): world RAS mm; PA = source posterior, detector anterior, SID 1800 mm, detector 430 mm; image row 0 superior; **radiological convention**: image left shows the patient's right. Display: bright = attenuating (log-domain window, `xrlib.drr.display`).

# %% tags=["parameters"]
drr = None

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path
from xrlib.io import load_png
from xrlib.drr.synthesis import build_drr_set

cfg = stage_settings('drr', drr)
root = project_root()
out_dir = path('01_drr.folder')

# %% [markdown]
# ## CTs
# The CTs the data stage checked (`outputs/00_data/ct_manifest.csv`: one row per patient, with its lung check).

# %%
ct_table = pd.read_csv(path('00_data.ct_manifest'), keep_default_na=False)
ct_table

# %% [markdown]
# ## Render the DRR set
# Each CT becomes `augmentations_per_ct` patients (seeded torchio affine/elastic), each with nodules placed inside lung parenchyma, rendered with and without nodules.

# %%
drrs, nodules = build_drr_set(ct_table, cfg, out_dir, root)
nodules

# %% [markdown]
# ## One patient in detail: CT, lung mask and nodule placement

# %%
from xrlib.data.ct import load_ct
from xrlib.data.augment import resample_ct
from xrlib.drr.synthesis import render_patient
row = ct_table.iloc[0]
ct = resample_ct(load_ct(root / row.image_path, (root / row.label_path) if row.label_path else None), cfg.ct_spacing_mm)
case = render_patient(ct, row.patient_id, cfg, np.random.default_rng(cfg.seed))
fig, axes = plt.subplots(1, len(case['nodules']), figsize=(5 * len(case['nodules']), 5), squeeze=False)
for ax, nodule in zip(axes[0], case['nodules']):
    k = nodule['centre_index'][2]
    ax.imshow(case['ct_with_nodules'].hu[:, :, k].T.numpy()[::-1, ::-1], cmap='gray', vmin=-1200, vmax=300)
    ax.contour(case['lungs'][:, :, k].T.numpy()[::-1, ::-1], levels=[0.5], colors='c', linewidths=0.8)
    ax.set_title(f"axial slice {k}: {nodule['type']} {nodule['diameter_mm']:.0f} mm")

# %% [markdown]
# ## DRR with and without nodules, their difference, and the ground truth

# %%
fig, axes = plt.subplots(1, 4, figsize=(20, 5))
axes[0].imshow(case['display'], cmap='gray', vmin=0, vmax=1); axes[0].set_title('with nodules')
axes[1].imshow(case['display_nodule_free'], cmap='gray', vmin=0, vmax=1); axes[1].set_title('nodule-free')
axes[2].imshow(case['difference'], cmap='magma'); axes[2].set_title('line-integral difference')
axes[3].imshow(case['display'], cmap='gray', vmin=0, vmax=1); axes[3].set_title('ground truth')
for nodule in case['nodules']:
    axes[3].add_patch(plt.Rectangle((nodule['bbox_col0'] - 0.5, nodule['bbox_row0'] - 0.5), nodule['bbox_col1'] - nodule['bbox_col0'], nodule['bbox_row1'] - nodule['bbox_row0'], fill=False, color='r'))
    axes[3].contour(nodule['mask'], levels=[0.5], colors='y', linewidths=0.6)
for ax in axes: ax.axis('off')

# %% [markdown]
# ## Gallery of the written set (ground-truth boxes in red)

# %%
shown = drrs.head(int(cfg.gallery_size))
fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 5), squeeze=False)
for ax, item in zip(axes[0], shown.itertuples()):
    ax.imshow(load_png(out_dir / item.drr_path), cmap='gray', vmin=0, vmax=1); ax.set_title(item.drr_id); ax.axis('off')
    for n in nodules[nodules.drr_id == item.drr_id].itertuples():
        ax.add_patch(plt.Rectangle((n.bbox_col0 - 0.5, n.bbox_row0 - 0.5), n.bbox_col1 - n.bbox_col0, n.bbox_row1 - n.bbox_row0, fill=False, color='r'))

# %% [markdown]
# # 00 · The inputs: quality control and patient-level manifests
#
# This stage reads everything under `data/` through `xrlib`, checks it, and writes the manifests every
# later stage uses. X-rays become de-identified 16-bit display PNGs (bright = attenuating, DICOM
# MONOCHROME1 inverted, modality and VOI LUTs applied); splits are drawn over **patients**, never
# images. Bring your own data by adding folders under `data/xray/` and `data/ct/`, then `dvc add data`.

# %% tags=["parameters"]
data = None  # papermill -f params.yaml injects the 'data' section; None reads params.yaml

# %%
import matplotlib.pyplot as plt

from xrlib.data.fetch import check_default
from xrlib.data.ct import load_ct, lung_mask, mid_lung_slices
from xrlib.data.manifest import build_ct_manifest, build_xray_manifest
from xrlib.io import load_png, write_csv_atomic
from xrlib.params import stage_settings
from xrlib.paths import project_root
from xrlib.stages import path

cfg = stage_settings("data", data)
root = project_root()
check_default(path("data"))
cfg

# %% [markdown]
# ## Chest X-rays
# Each image is read, windowed, written as a 16-bit PNG and listed with its geometry and split. Every image is checked before the stage fails: unreadable ones are listed in `outputs/00_data/bad_xrays.csv` and stop the stage once, at the end (`build_xray_manifest(..., skip_bad=True)` leaves them out instead, still listed).
# A dataset's `data.csv` is read as literal text; rows whose `patient_id` or `image_id` is empty or NA-like are refused by line, since they would pool unrelated images into one patient.

# %%
xray_manifest = build_xray_manifest(path("data.xray"), path("00_data.folder"), root, cfg.split_fractions, cfg.seed,
                                    cfg.max_side_px, cfg.xray_views)
write_csv_atomic(path("00_data.xray_manifest"), xray_manifest)
xray_manifest.groupby(["dataset", "split"]).agg(images=("image_id", "size"), patients=("patient_id", "nunique"))

# %% [markdown]
# ## Chest CTs
# Each CT is loaded through torchio, reoriented to RAS and checked for lungs in view (from its TotalSegmentator lobes when it has them, else segmented from HU). Every CT is checked; unreadable CTs and CTs without lungs stop the stage with one error naming them all.

# %%
ct_manifest = build_ct_manifest(path("data.ct"), root)
write_csv_atomic(path("00_data.ct_manifest"), ct_manifest)
ct_manifest

# %%
first = ct_manifest.iloc[0]
ct = load_ct(root / first.image_path, root / first.label_path if first.label_path else None)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, (view, (hu, lungs, aspect)) in zip(axes, mid_lung_slices(ct, lung_mask(ct)).items()):
    ax.imshow(hu, cmap="gray", vmin=-1000, vmax=400, aspect=aspect)
    ax.contour(lungs, levels=[0.5], colors="tab:orange", linewidths=0.8)
    ax.set_title(f"{first.patient_id}: {view} through the lungs (patient's right on the left)", fontsize=8)
    ax.axis("off")
fig.tight_layout()

# %%
xray_manifest.drop(columns=["path"]).head(12)

# %%
shown = xray_manifest.head(6)
fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False)
for ax, record in zip(axes[0], shown.itertuples()):
    ax.imshow(load_png(root / record.path), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{record.image_id}\n{record.view or 'view n/a'} · {record.split}", fontsize=8)
    ax.axis("off")
fig.tight_layout()

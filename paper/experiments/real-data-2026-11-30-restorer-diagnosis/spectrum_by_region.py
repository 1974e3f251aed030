"""The restored-DRR realism check (06) on whole frames and on the body square, for any folder of restored DRRs.

    PYTHONPATH=. python .../spectrum_by_region.py RUN_FOLDER DRR_FOLDER RESTORED_FOLDER [GRID_PX=128]

Set-level log-spectrum distance to 32 of the run's real X-rays (06's sample) of the DRRs and of their
restorations, both as 06 reads them (centre square of the whole frame) and cut to the DRR's body square
(`xrlib.lq.pairs.body_square`, no black surround), the median high-frequency fraction of each set, the
restored/raw ratios and the per-band log10 offsets from the films.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.eval.images import load_image_batch, resize_images
from xrlib.eval.realism import high_frequency_power_fraction, log_spectrum_distance, radial_power_spectrum, sample_paths
from xrlib.io import load_png
from xrlib.lq.pairs import body_square
from xrlib.stages import path

run, drr_dir, restored_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
grid_px = int(sys.argv[4]) if len(sys.argv) > 4 else 128
films = pd.read_csv(path("00_data.xray_manifest", run))
real = load_image_batch(sample_paths([run / p for p in films.path], 32, 0), grid_px)
drr_ids = list(dict.fromkeys(pd.read_csv(path("01_drr.nodules", run)).drr_id.astype(str)))


def body_squares(drr_paths, image_paths):
    """Each image cut to its DRR's body square (scaled to the image's size), on the grid."""
    out = []
    for drr_path, image_path in zip(drr_paths, image_paths):
        drr, image = torch.from_numpy(load_png(drr_path)), torch.from_numpy(load_png(image_path))
        top, left, side = body_square(drr)
        scale = image.shape[-1] / drr.shape[-1]
        square = image[int(top * scale):int((top + side) * scale), int(left * scale):int((left + side) * scale)]
        out.append(resize_images(square[None, None], (grid_px, grid_px)))
    return torch.cat(out)


drrs = [drr_dir / f"{i}.png" for i in drr_ids]
restored = [restored_dir / f"{i}.png" for i in drr_ids]
sets = {"drr_whole": load_image_batch(drrs, grid_px), "restored_whole": load_image_batch(restored, grid_px),
        "drr_body": body_squares(drrs, drrs), "restored_body": body_squares(drrs, restored)}
frequency, real_power = radial_power_spectrum(real, 32)
distance, offsets = {}, {}
for name, images in sets.items():
    power = radial_power_spectrum(images, 32)[1]
    distance[name] = log_spectrum_distance(power, real_power)
    offsets[name] = np.log10(power.mean(0)) - np.log10(real_power.mean(0))
    print(f"{name}: spectrum distance {distance[name]:.3f}, high-frequency fraction (median) {np.median(high_frequency_power_fraction(images)):.2e}")
print(f"real X-rays: high-frequency fraction (median) {np.median(high_frequency_power_fraction(real)):.2e}")
for region in ("whole", "body"):
    print(f"restored / raw, {region}: {distance[f'restored_{region}'] / distance[f'drr_{region}']:.3f}")
print(pd.DataFrame(offsets, index=np.round(frequency, 3)).round(2).to_string())

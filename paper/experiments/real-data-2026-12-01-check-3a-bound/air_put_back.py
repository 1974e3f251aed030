"""How much of a restorer's check-3a gain is the air around the chest? Each restoration kept inside the DRR's
body (a feathered mask: the DRR, Gaussian-smoothed by 2 px, above LEVEL of the display range, eroded by 2 px)
and the raw DRR outside it, scored as 06 does (set spectrum distance to 32 films at 128 px).

    XRLIB_ROOT=RUN PYTHONPATH=RUN python air_put_back.py RUN RESTORED_FOLDER
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from xrlib.eval.images import load_image_batch
from xrlib.eval.realism import log_spectrum_distance, radial_power_spectrum, sample_paths
from xrlib.stages import path

run, restored_dir = Path(sys.argv[1]), Path(sys.argv[2])
films = pd.read_csv(path("00_data.xray_manifest", run))
real_power = radial_power_spectrum(load_image_batch(sample_paths([run / p for p in films.path], 32, 0), 128), 32)[1]
ids = [p.stem for p in sorted((run / "outputs/01_drr/drr").glob("*.png"))]
drr = load_image_batch([run / "outputs/01_drr/drr" / f"{i}.png" for i in ids], 128)
restored = load_image_batch([restored_dir / f"{i}.png" for i in ids], 128)
smooth = ndimage.gaussian_filter(drr.numpy(), (0, 0, 2, 2))
print(f"{restored_dir}: as restored {log_spectrum_distance(radial_power_spectrum(restored, 32)[1], real_power):.3f}")
for level in (0.02, 0.05, 0.10):
    body = ndimage.binary_erosion(smooth > level, np.ones((1, 1, 3, 3)), iterations=2)
    mask = torch.from_numpy(ndimage.gaussian_filter(body.astype(np.float32), (0, 0, 1, 1)))
    mixed = mask * restored + (1 - mask) * drr
    print(f"  air put back (body: DRR > {level:.2f}, {body.mean():.0%} of the frame): "
          f"{log_spectrum_distance(radial_power_spectrum(mixed, 32)[1], real_power):.3f}")

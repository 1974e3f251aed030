"""Noise-free DRR pairs (with and without their LIDC nodules) of a finished run's CTs, as 16-bit PNGs.

    XRLIB_ROOT=RUN python .../noise_free_pairs.py RUN OUT

01_drr's renderer with the run's own settings, seeds and poses (augmentation 0 of each CT), but no
quantum noise and no detector blur (photons_per_pixel null, blur_sigma_mm 0): the smooth kind of DRR
another renderer makes (raw high-frequency power fraction of order 1e-6). Writes OUT/<drr_id>_with.png,
OUT/<drr_id>_without.png and OUT/<drr_id>.csv (its nodules, pixel centres and diameters). For
`xrlib restore OUT/X_with.png OUT/X_without.png --out DIR --seed 0 --check-pair`.
"""
import dataclasses
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.data.augment import augment_ct, resample_ct
from xrlib.data.ct import load_ct
from xrlib.drr.synthesis import render_patient
from xrlib.io import save_png16
from xrlib.params import load_params, stage_settings
from xrlib.stages import path

run, out = Path(sys.argv[1]), Path(sys.argv[2])
settings = stage_settings("drr", load_params(run / "params.yaml")["drr"])
settings = dataclasses.replace(settings, photons_per_pixel=None, blur_sigma_mm=0.0)
ct_table = pd.read_csv(path("00_data.ct_manifest", run), keep_default_na=False)
for row in ct_table.itertuples():
    label = str(run / row.label_path) if isinstance(row.label_path, str) and row.label_path else None
    base = resample_ct(load_ct(run / row.image_path, label), settings.ct_spacing_mm)
    index, patient_id = 0, f"{row.patient_id}-aug00"
    rng = np.random.default_rng([int(settings.seed), index, zlib.crc32(row.patient_id.encode())])
    ct = augment_ct(base, index, int(settings.seed), float(settings.augment_rotation_deg),
                    float(settings.augment_scale), float(settings.elastic_displacement_mm))
    result = render_patient(ct, patient_id, settings, rng)
    drr_id = f"{patient_id}-{result['geometry'].view.lower()}"
    save_png16(out / f"{drr_id}_with.png", result["display"].numpy())
    save_png16(out / f"{drr_id}_without.png", result["display_nodule_free"].numpy())
    pd.DataFrame(result["nodules"])[["diameter_mm", "centre_row_px", "centre_col_px"]].to_csv(out / f"{drr_id}.csv", index=False)
    print(drr_id, [round(n["diameter_mm"], 1) for n in result["nodules"]])

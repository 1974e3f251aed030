"""Check 3a's measure for folders of restored (or raw) DRRs: set spectrum distance to 32 films (06's way: 128 px,
32 bins), the median high-frequency fraction at 256 px and the log10 offsets from the films at every third bin.
VIEW: the films' view (PA, AP) or all (06's sample).

    XRLIB_ROOT=RUN PYTHONPATH=RUN python distances.py RUN VIEW FOLDER [FOLDER ...]
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.eval.images import load_image_batch
from xrlib.eval.realism import high_frequency_power_fraction, log_spectrum_distance, radial_power_spectrum, sample_paths
from xrlib.stages import path

run = Path(sys.argv[1])
view = sys.argv[2]
films = pd.read_csv(path("00_data.xray_manifest", run))
films = films if view == "all" else films[films.view == view]
real = load_image_batch(sample_paths([run / p for p in films.path], 32, 0), 128)
ids = [p.stem for p in sorted((run / "outputs/01_drr/drr").glob("*.png"))]
frequency, real_power = radial_power_spectrum(real, 32)
print("cycles/px", np.round(frequency[::3], 3))
for folder in map(Path, sys.argv[3:]):
    files = [folder / f"{i}.png" for i in ids]
    power = radial_power_spectrum(load_image_batch(files, 128), 32)[1]
    hf = np.median(high_frequency_power_fraction(load_image_batch(files, 256)))
    print(f"{folder}: distance {log_spectrum_distance(power, real_power):.3f}, HF fraction (256 px) {hf:.2e}, offsets",
          np.round(np.log10(power.mean(0)) - np.log10(real_power.mean(0)), 2)[::3])

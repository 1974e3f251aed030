"""06's nodule rule on DRRs restored outside the pipeline (e.g. by `xrlib restore --weights W --steps N`).

    PYTHONPATH=. python .../nodules_of_restorations.py RUN_FOLDER RESTORED_FOLDER RESTORED_NODULE_FREE_FOLDER

RUN_FOLDER's 01 DRRs and nodules.csv; both restored folders hold <drr_id>.png. Prints how many nodules
(and how many >= 8 mm) are lost by the signal rule, and the median signal kept.
"""
import sys
from pathlib import Path

import pandas as pd

from xrlib.eval.nodules import LostRule, nodule_image_loader, nodule_preservation_table
from xrlib.stages import path

run, restored, restored_free = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
nodules = pd.read_csv(path("01_drr.nodules", run), dtype={"drr_id": str})
loader = nodule_image_loader(run, str(path("01_drr.drr", run)), str(path("01_drr.drr_nodule_free", run)),
                             str(restored / "{drr_id}.png"), str(restored_free / "{drr_id}.png"))
table = nodule_preservation_table(nodules, loader, LostRule(0.5, 1.0), 64, 0)
large = table[table.diameter_mm >= 8]
print(f"lost {int(table.lost.sum())} of {len(table)}; >= 8 mm lost {int(large.lost.sum())} of {len(large)}; "
      f"median signal kept {table.signal_kept.median():.2f}")

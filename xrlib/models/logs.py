"""Training curves as dvclive logs them: one TSV per scalar under ``<live_dir>/plots/metrics``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.errors import DataError


def read_curves(live_dir: str | Path) -> pd.DataFrame:
    """Every scalar dvclive logged under ``live_dir`` as one long table: metric, step, value.

    ``metric`` is the TSV's path under ``plots/metrics`` without its suffix ("train/loss"); dvclive
    writes the columns timestamp, step and the scalar's name. Sorted by metric, then step.
    """
    metrics_dir = Path(live_dir) / "plots" / "metrics"
    files = sorted(metrics_dir.rglob("*.tsv"))
    if not files:
        raise DataError(f"{metrics_dir}: no dvclive curves; train first (the stage logs through dvclive)")
    curves = []
    for tsv in files:
        table = pd.read_csv(tsv, sep="\t")
        name = tsv.relative_to(metrics_dir).with_suffix("").as_posix()
        if "step" not in table.columns or tsv.stem not in table.columns:
            raise DataError(f"{tsv}: expected dvclive's columns step and {tsv.stem}, found {list(table.columns)}")
        curves.append(pd.DataFrame({"metric": name, "step": table["step"], "value": table[tsv.stem]}))
    return pd.concat(curves, ignore_index=True).sort_values(["metric", "step"], kind="stable").reset_index(drop=True)

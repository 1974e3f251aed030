"""Reproduce the published agreement and MRMC results from the vendored reference tables.

:func:`reproduce_published` recomputes every value of ``expected_values.json`` that comes from
Fleiss (1971), Shrout and Fleiss (1979), Krippendorff (2011) and the Iowa OR-DBM analysis of the
Van Dyke data, and reports ours next to the published number with whether it rounds to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.stats.agreement import fleiss_kappa, icc, krippendorff_alpha
from xrlib.stats.mrmc import dbm_analysis, or_analysis


def printed_tolerance(value: float) -> float:
    """Half a unit in the last decimal place a number was printed with."""
    text = repr(float(value))
    places = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    return 0.5 * 10.0 ** (-places) + 1e-12


def reproduce_published(reference_dir: str | Path) -> pd.DataFrame:
    """One row per published value: source, quantity, published, ours, agrees (to printed precision)."""
    folder = Path(reference_dir)
    expected = json.loads((folder / "expected_values.json").read_text())
    rows = []

    def add(source, quantity, published, ours):
        rows.append({"source": source, "quantity": quantity, "published": float(published), "ours": float(ours)})

    fleiss = fleiss_kappa(pd.read_csv(folder / "fleiss1971_diagnoses_30x6.csv").drop(columns="subject").to_numpy())
    add("Fleiss 1971", "kappa", expected["fleiss1971_diagnoses_30x6"]["fleiss_kappa"], fleiss.kappa)
    add("Fleiss 1971", "z", expected["fleiss1971_diagnoses_30x6"]["z"], fleiss.z)

    shrout = expected["shrout_fleiss1979_6x4"]
    table = icc(pd.read_csv(folder / "shrout_fleiss1979_6x4.csv").drop(columns="S").to_numpy())
    for i, form in enumerate(table["form"]):
        add("Shrout & Fleiss 1979", f"{form}", shrout["ICC"][form], table["icc"][i])
        add("Shrout & Fleiss 1979", f"{form} F", shrout["F"][i], table["F"][i])
        add("Shrout & Fleiss 1979", f"{form} CI low", shrout["ci95_lower"][i], table["ci_low"][i])
        add("Shrout & Fleiss 1979", f"{form} CI high", shrout["ci95_upper"][i], table["ci_high"][i])

    for name, key in (("krippendorff2011_4coders_x_12units.csv", "krippendorff2011_4x12"),
                      ("krippendorff_3coders_x_15units.csv", "krippendorff_3x15")):
        data = pd.read_csv(folder / name).set_index("coder").to_numpy(float)
        for level in ("nominal", "ordinal", "interval", "ratio"):
            if level in expected[key]:
                add(f"Krippendorff ({key})", f"alpha {level}", expected[key][level], krippendorff_alpha(data, level))

    vandyke = expected["vandyke_dataset02"]
    readings = pd.read_csv(folder / "vandyke_dataset02_long.csv")
    result = or_analysis(readings)
    source = "Iowa OR-DBM 2.51, Van Dyke"
    for i, trt in enumerate(("trt1", "trt2")):
        for j, value in enumerate(vandyke["auc"][trt]):
            add(source, f"AUC modality {i} reader {j + 1}", value, result.auc.iloc[i, j])
    for key, ours in (("MS_T", result.ms_t), ("MS_R", result.ms_r), ("MS_TR", result.ms_tr),
                      ("Var", result.covariances.var), ("Cov1", result.covariances.cov1),
                      ("Cov2", result.covariances.cov2), ("Cov3", result.covariances.cov3)):
        add(source, key, vandyke[key], ours)
    for label, test in (("RRRC", result.rrrc), ("FRRC", result.frrc), ("RRFC", result.rrfc)):
        published = vandyke[label]
        difference = test.differences.iloc[0]
        statistic_key = "X2" if label == "FRRC" else "F"
        add(source, f"{label} {statistic_key}", published[statistic_key], _as_printed(test.statistic, published[statistic_key]))
        add(source, f"{label} p", published["p"], _as_printed(test.p, published["p"]))
        if label == "RRRC":
            add(source, f"{label} ddf", published["ddf"], _as_printed(test.df_den, published["ddf"]))
        add(source, f"{label} SE of difference", published["se_diff"], difference["se"])
        add(source, f"{label} CI low", published["ci"][0], difference["ci_low"])
        add(source, f"{label} CI high", published["ci"][1], difference["ci_high"])
    for i, trt in enumerate(("trt1", "trt2")):
        single = vandyke["RRRC_single_trt"][trt]
        row = result.rrrc.modality_cis.iloc[i]
        add(source, f"RRRC modality {i} SE", single["se"], row["se"])
        add(source, f"RRRC modality {i} df", single["df"], _as_printed(row["df"], single["df"]))
        add(source, f"RRRC modality {i} CI low", single["ci"][0], row["ci_low"])
        add(source, f"RRRC modality {i} CI high", single["ci"][1], row["ci_high"])
    dbm = dbm_analysis(readings)
    for key, value in vandyke["DBM_MS"].items():
        add(source, f"DBM MS({key})", value, dbm.ms[key])

    frame = pd.DataFrame(rows)
    frame["agrees"] = [abs(o - p) <= printed_tolerance(p) for o, p in zip(frame["ours"], frame["published"])]
    return frame


def _as_printed(value: float, published: float) -> float:
    """``value`` rounded to as many decimals as ``published`` was printed with (F 4.46, p 0.0517)."""
    text = repr(float(published))
    places = len(text.split(".")[1]) if "." in text else 0
    return float(np.round(value, places))

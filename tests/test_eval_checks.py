"""The method's checks on constructed metric tables: each must pass and fail where its bar says."""

import pandas as pd
import pytest

from xrlib.eval import checks
from xrlib.errors import DataError


def test_twin_checks_pass_and_fail_per_generator():
    table = pd.DataFrame({"generator": ["ddpm", "munit"], "low_pass_ssim": [0.9, 0.6],
                          "spectrum_distance_ratio": [0.4, 0.45]})
    rows = checks.checks_table(checks.twin_checks(table, ["ddpm", "munit"]))
    assert rows.passed.tolist() == [True, True, False, True]
    assert rows.subject.tolist() == ["ddpm", "ddpm", "munit", "munit"]
    with pytest.raises(DataError, match="bicubic"):
        checks.twin_checks(table, ["bicubic"])


def paired(mean_difference, p):
    return pd.DataFrame([{"degradation": "munit", "metric": metric, "method_a": "diffusionxray", "method_b": other,
                          "mean_difference": mean_difference, "wilcoxon_p_holm": p}
                         for metric in ("psnr_db", "ssim") for other in ("lq_input", "bicubic_baseline")])


def test_beats_checks_need_a_positive_difference_and_a_small_adjusted_p():
    assert all(row["passed"] for row in checks.beats_checks(paired(1.5, 0.001), ["munit"]))
    assert not any(row["passed"] for row in checks.beats_checks(paired(1.5, 0.2), ["munit"]))
    assert not any(row["passed"] for row in checks.beats_checks(paired(-1.5, 0.001), ["munit"]))
    assert not any(row["passed"] for row in checks.beats_checks(paired(1.5, float("nan")), ["munit"]))
    with pytest.raises(DataError, match="ddpm"):
        checks.beats_checks(paired(1.5, 0.001), ["ddpm"])


def test_realism_nodule_reader_and_anatomy_checks_both_ways():
    realism = pd.DataFrame({"set": ["real_xray", "drr", "restored_drr"], "set_spectrum_distance": [0.0, 0.6, 0.2]})
    assert checks.realism_check(realism)[0]["passed"] and checks.realism_check(realism)[0]["value"] == pytest.approx(1 / 3)
    assert not checks.realism_check(realism.assign(set_spectrum_distance=[0.0, 0.6, 0.4]))[0]["passed"]

    nodules = pd.DataFrame({"diameter_mm": [6, 9, 12, 20, 30], "lost": [True, False, False, False, False]})
    kept = checks.nodules_kept_check(nodules)[0]
    assert kept["passed"] and kept["value"] == 1.0  # the 6 mm nodule is below the bar's size
    lost_one = checks.nodules_kept_check(nodules.assign(lost=[False, True, False, False, False]))[0]
    assert not lost_one["passed"] and lost_one["value"] == 0.75
    with pytest.raises(DataError, match="8 mm"):
        checks.nodules_kept_check(nodules[nodules.diameter_mm < 8])

    assert checks.reader_auc_check({"drr": 0.70, "diffusionxray": 0.66})[0]["passed"]
    assert not checks.reader_auc_check({"drr": 0.70, "diffusionxray": 0.64})[0]["passed"]
    with pytest.raises(DataError, match="diffusionxray"):
        checks.reader_auc_check({"drr": 0.7})

    assert checks.anatomy_check([0.95, 0.99])[0]["passed"]
    assert not checks.anatomy_check([0.95, 0.85])[0]["passed"]
    with pytest.raises(DataError, match="finite"):
        checks.anatomy_check([])

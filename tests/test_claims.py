"""The claims report: each verdict follows from constructed metric tables, in both directions and when unmeasurable."""

import json

import numpy as np
import pandas as pd
import pytest

from xrlib.errors import DataError
from xrlib.eval import claims as c
from xrlib.stats.units import paired_method_tests


def quality_table(n_units: int, shift: float, split_unit: str = "patient", noise: float = 0.3, seed: int = 0) -> pd.DataFrame:
    """Per-image scores of DiffusionXRay and the baseline on both test sets; DiffusionXRay higher by ``shift`` (SSIM by shift / 10)."""
    rng = np.random.default_rng(seed)
    rows = []
    for degradation in ("munit", "ddpm"):
        for unit in range(n_units):
            for image in range(2):
                base = {"psnr_db": 22 + rng.normal(0, 1), "ssim": 0.6 + rng.normal(0, 0.05)}
                for method, offset in (("bicubic_baseline", 0.0), ("diffusionxray", shift)):
                    rows.append({"degradation": degradation, "unit_id": f"u{unit}", "split_unit": split_unit,
                                 "image_id": f"u{unit}-{image}", "method": method,
                                 "psnr_db": base["psnr_db"] + offset + rng.normal(0, noise),
                                 "ssim": base["ssim"] + offset / 10 + rng.normal(0, noise / 10)})
    return pd.DataFrame(rows)


def quality_verdicts(quality: pd.DataFrame) -> list[str]:
    tests = paired_method_tests(quality, ["psnr_db", "ssim"], [("diffusionxray", "bicubic_baseline")])
    return [row["verdict"] for row in c.quality_claims(tests, quality)]


def test_beating_the_baseline_is_supported_or_not_by_the_paired_tests():
    assert quality_verdicts(quality_table(12, 1.0)) == [c.SUPPORTED] * 4
    worse = c.quality_claims(paired_method_tests(quality_table(12, -1.0), ["psnr_db", "ssim"],
                                                 [("diffusionxray", "bicubic_baseline")]), quality_table(12, -1.0))
    assert [row["verdict"] for row in worse] == [c.NOT_SUPPORTED] * 4
    assert worse[0]["why"].startswith("the baseline scores higher") and worse[0]["value"] == pytest.approx(-1.0, abs=0.15)
    assert worse[0]["ci_low"] < worse[0]["value"] < worse[0]["ci_high"] < 0
    same = quality_table(12, 0.0, noise=0.5, seed=3)
    rows = c.quality_claims(paired_method_tests(same, ["psnr_db", "ssim"], [("diffusionxray", "bicubic_baseline")]), same)
    assert [row["verdict"] for row in rows] == [c.NOT_SUPPORTED] * 3 + [c.SUPPORTED]  # the paper's DDPM-LQ SSIM is a tie
    assert all(row["why"].startswith("no significant difference") for row in rows[:3])
    assert rows[3]["why"].endswith("a tie, as the paper reports") and "matches or beats" in rows[3]["claim"]
    assert [row["verdict"] for row in worse][3] == c.NOT_SUPPORTED  # a tie claim fails when the baseline is significantly better
    first = c.quality_claims(paired_method_tests(quality_table(12, 1.0), ["psnr_db", "ssim"],
                                                 [("diffusionxray", "bicubic_baseline")]), quality_table(12, 1.0))[0]
    assert first["claim_id"] == "beats_bicubic_munit_psnr_db" and "(paper: 27.5 vs 20.08)" in first["claim"]
    assert first["n"] == 12 and 0 < first["ci_low"] < first["value"] < first["ci_high"]
    assert first["test"] == "paired Wilcoxon over 12 held-out patients, Holm-adjusted over 4 tests"


def test_too_few_units_tiles_or_no_comparison_are_not_measurable():
    few = c.quality_claims(paired_method_tests(quality_table(4, 3.0), ["psnr_db", "ssim"],
                                               [("diffusionxray", "bicubic_baseline")]))
    assert all(row["verdict"] == c.NOT_MEASURABLE for row in few)
    assert "with 4 units the smallest reachable Holm-adjusted p is 0.5" in few[0]["why"]
    tiles = quality_table(12, 1.0, split_unit="tile")
    assert quality_verdicts(tiles) == [c.NOT_MEASURABLE] * 4
    assert "image tiles of the training patients" in c.quality_claims(
        paired_method_tests(tiles, ["psnr_db"], [("diffusionxray", "bicubic_baseline")]))[0]["why"]
    assert c.quality_claims(paired_method_tests(tiles, ["psnr_db"], [("diffusionxray", "bicubic_baseline")]),
                            criteria=c.ClaimCriteria(patients_required=False))[0]["verdict"] == c.SUPPORTED
    only_munit = paired_method_tests(quality_table(12, 1.0).query("degradation == 'munit'"), ["psnr_db", "ssim"],
                                     [("diffusionxray", "bicubic_baseline")])
    rows = c.quality_claims(only_munit)
    assert [row["verdict"] for row in rows] == [c.SUPPORTED, c.SUPPORTED, c.NOT_MEASURABLE, c.NOT_MEASURABLE]
    assert "no paired test of diffusionxray vs bicubic_baseline on DDPM-LQ, PSNR" in rows[2]["why"]
    assert c.smallest_wilcoxon_p(6) == pytest.approx(1 / 32) and c.smallest_wilcoxon_p(14, 30) == pytest.approx(30 / 8192)
    with pytest.raises(DataError, match="lack columns"):
        c.quality_claims(pd.DataFrame({"degradation": []}))


def nodules(n: int, lost: int, diameter: float = 10.0) -> pd.DataFrame:
    return pd.DataFrame({"diameter_mm": [diameter] * n + [5.0], "lost": [True] * lost + [False] * (n - lost) + [True]})


def test_nodules_kept_both_ways_and_too_few():
    kept = c.nodule_claim(nodules(10, 1))[0]
    assert kept["verdict"] == c.SUPPORTED and kept["value"] == pytest.approx(0.9) and kept["n"] == 10  # the 5 mm one is not counted
    assert kept["ci_low"] == pytest.approx(0.5958, abs=1e-3) and kept["ci_high"] == pytest.approx(0.9821, abs=1e-3)
    lost = c.nodule_claim(nodules(10, 3))[0]
    assert lost["verdict"] == c.NOT_SUPPORTED and lost["why"] == "7 of 10 kept, below the bar of 0.9"
    few = c.nodule_claim(nodules(3, 0))[0]
    assert few["verdict"] == c.NOT_MEASURABLE and few["why"] == "3 nodules of at least 8 mm; at least 5 are needed"


def realism(n: int, distance_ratio: float, noise_ratio: float) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    raw_distance, raw_noise = rng.uniform(0.4, 0.6, n), rng.uniform(0.05, 0.08, n)
    jitter = rng.uniform(0.97, 1.03, (2, n))
    return pd.concat([
        pd.DataFrame({"set": "real_xray", "image_index": range(n), "spectrum_distance": 0.1, "noise_std": 0.03}),
        pd.DataFrame({"set": "drr", "image_index": range(n), "spectrum_distance": raw_distance, "noise_std": raw_noise}),
        pd.DataFrame({"set": "restored_drr", "image_index": range(n), "spectrum_distance": raw_distance * distance_ratio * jitter[0],
                      "noise_std": raw_noise * noise_ratio * jitter[1]})])


def test_lung_fields_and_noise_both_ways_and_too_few_images():
    table = realism(9, 0.5, 1.2)
    clearer, noise = c.lung_field_claim(table)[0], c.noise_claim(table)[0]
    assert clearer["verdict"] == c.SUPPORTED and clearer["value"] == pytest.approx(0.5, abs=0.02)
    assert clearer["p"] == pytest.approx(2 / 512) and clearer["ci_low"] <= clearer["value"] <= clearer["ci_high"]
    assert noise["verdict"] == c.SUPPORTED and noise["value"] == pytest.approx(1.2, abs=0.04)
    worse = realism(9, 1.3, 2.0)
    assert c.lung_field_claim(worse)[0]["verdict"] == c.NOT_SUPPORTED and "rises to 1.3" in c.lung_field_claim(worse)[0]["why"]
    assert c.noise_claim(worse)[0]["verdict"] == c.NOT_SUPPORTED and "more than mild" in c.noise_claim(worse)[0]["why"]
    quieter = c.noise_claim(realism(9, 1.0, 0.8))[0]
    assert quieter["verdict"] == c.NOT_SUPPORTED and quieter["why"].startswith("no significant noise increase")
    few = c.lung_field_claim(realism(5, 0.5, 1.2))[0]
    assert few["verdict"] == c.NOT_MEASURABLE and few["why"] == "5 paired images (drr, restored_drr); a Wilcoxon test needs at least 6 to reach p < 0.05"
    with pytest.raises(DataError, match=r"realism table lacks columns \['noise_std'\]"):
        c.noise_claim(table.drop(columns="noise_std"))


def test_report_and_metrics_from_the_stage_tables(tmp_path):
    quality = quality_table(12, 1.0)
    tests = paired_method_tests(quality, ["psnr_db", "ssim"], [("diffusionxray", "bicubic_baseline")])
    for name, frame in {"image_quality": quality, "paired_tests": tests, "nodules": nodules(10, 3), "realism": realism(9, 0.5, 1.2)}.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    table = c.claims_from_tables(tmp_path)
    assert table.claim_id.tolist() == ["beats_bicubic_munit_psnr_db", "beats_bicubic_munit_ssim", "beats_bicubic_ddpm_psnr_db",
                                       "beats_bicubic_ddpm_ssim", "nodules_kept", "lung_fields_clearer", "mild_noise_increase"]
    assert table.verdict.tolist() == [c.SUPPORTED] * 4 + [c.NOT_SUPPORTED] + [c.SUPPORTED] * 2
    written = c.write_claims(table, tmp_path / "paper" / "claims.md", tmp_path / "metrics" / "claims.json", sources=" (test)")
    text = written["markdown"].read_text()
    assert "**6 supported; 1 not supported; 0 not measurable at this scale**" in text
    assert "| Inserted nodules stay visible after restoration |" in text and "**not supported**: 7 of 10 kept" in text
    metrics = json.loads(written["metrics"].read_text())
    assert (metrics["supported"], metrics["not_supported"], metrics["not_measurable"]) == (6, 1, 0)
    assert metrics["claims"]["nodules_kept"]["value"] == pytest.approx(0.7) and metrics["criteria"]["alpha"] == 0.05
    (tmp_path / "realism.csv").unlink()
    with pytest.raises(DataError, match=r"realism.csv: missing; run 06_metrics first"):
        c.claims_from_tables(tmp_path)

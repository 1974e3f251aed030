"""Model observers against closed forms: NPW and CHO d' for a known Gaussian signal in white noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrlib.errors import DataError
from xrlib.io import save_png16
from xrlib.eval.observers import (
    CHOObserver,
    NPWObserver,
    detectability_index,
    extract_rois,
    gaussian_signal,
    laguerre_gauss_channels,
    lumpy_background,
    observer_detectability,
    condition_table_from_outputs,
    reader_images,
    synthetic_condition_table,
    rois_from_condition_table,
    virtual_readings,
)
from xrlib.stats import or_analysis

SIZE_PX, SIGMA, N = 16, 1.0, 4000


@pytest.fixture(scope="module")
def white_noise_rois():
    rng = np.random.default_rng(0)
    signal = gaussian_signal(SIZE_PX, 2.0, 0.5)
    present = rng.normal(size=(N, SIZE_PX, SIZE_PX)) * SIGMA + signal
    absent = rng.normal(size=(N, SIZE_PX, SIZE_PX)) * SIGMA
    return signal, present, absent


def test_npw_d_prime_matches_closed_form_in_white_noise(white_noise_rois):
    signal, present, absent = white_noise_rois
    expected = np.sqrt((signal ** 2).sum()) / SIGMA  # 1.772
    known = NPWObserver(signal)
    # sampling SE of d' with 4000 per class is about 0.03
    assert detectability_index(known.rate(present), known.rate(absent)) == pytest.approx(expected, abs=0.1)
    # a template estimated from n pairs carries white noise of variance 2 sigma^2 / n per pixel,
    # which lowers d' by sqrt(1 + n_pixels 2 sigma^2 / (n |s|^2))
    half = N // 2
    trained = NPWObserver().fit(present[:half], absent[:half])
    shrink = np.sqrt(1 + SIZE_PX ** 2 * 2 * SIGMA ** 2 / (half * (signal ** 2).sum()))
    assert detectability_index(trained.rate(present[half:]), trained.rate(absent[half:])) == pytest.approx(expected / shrink, abs=0.1)


def test_cho_matches_closed_form_and_internal_noise_lowers_it(white_noise_rois):
    signal, present, absent = white_noise_rois
    channels = laguerre_gauss_channels(SIZE_PX, 6, 6.0)
    delta = channels @ signal.ravel()
    expected = np.sqrt(delta @ np.linalg.solve(SIGMA ** 2 * channels @ channels.T, delta))
    # LG channels hold a centred Gaussian signal exactly: the CHO reaches the ideal observer
    assert expected == pytest.approx(np.sqrt((signal ** 2).sum()) / SIGMA, rel=1e-6)
    half = N // 2
    cho = CHOObserver(SIZE_PX, 6, 6.0).fit(present[:half], absent[:half])
    assert detectability_index(cho.rate(present[half:]), cho.rate(absent[half:])) == pytest.approx(expected, abs=0.12)
    # internal noise of alpha x channel variance: d' falls by sqrt(1 + alpha) (orthogonal channels, white noise)
    noisy = CHOObserver(SIZE_PX, 6, 6.0, internal_noise=1.0, rng=np.random.default_rng(1)).fit(present[:half], absent[:half])
    assert detectability_index(noisy.rate(present[half:]), noisy.rate(absent[half:])) == pytest.approx(expected / np.sqrt(2.0), abs=0.12)


def test_cho_beats_npw_in_lumpy_background():
    rng = np.random.default_rng(2)
    signal = gaussian_signal(SIZE_PX, 1.5, 0.6)
    backgrounds = np.stack([lumpy_background(SIZE_PX, 20, 3.0, 0.5, rng) for _ in range(1200)])
    noise = rng.normal(size=backgrounds.shape) * 0.2
    present, absent = backgrounds[:600] + noise[:600] + signal, backgrounds[600:] + noise[600:]
    npw = NPWObserver(signal)
    cho = CHOObserver(SIZE_PX, 6, 5.0).fit(present[:300], absent[:300])
    d_npw = detectability_index(npw.rate(present[300:]), npw.rate(absent[300:]))
    d_cho = detectability_index(cho.rate(present[300:]), cho.rate(absent[300:]))
    assert d_cho > 1.3 * d_npw  # the CHO partly prewhitens the lumpy background; the NPW cannot


def test_extract_rois_and_bounds():
    image = np.arange(100.0).reshape(10, 10)
    rois = extract_rois(image, [(5, 5), (2, 7)], 4)
    assert rois.shape == (2, 4, 4)
    assert rois[0, 0, 0] == image[3, 3] and rois[1, 0, 0] == image[0, 5]
    with pytest.raises(DataError, match="leaves"):
        extract_rois(image, [(1, 1)], 4)


def test_virtual_readers_feed_an_mrmc_analysis(tmp_path):
    table = synthetic_condition_table(tmp_path, 60, {"faint": 0.04, "strong": 0.15}, seed=3)
    roi_sets = rois_from_condition_table(table, 16)
    assert roi_sets["faint"].rois.shape == (60, 16, 16)
    readings = virtual_readings(roi_sets, n_readers=3, seed=0, internal_noise=0.2)
    assert readings["reader"].str.startswith("virtual reader").all()
    assert readings.groupby(["reader", "modality"]).size().eq(30).all()
    result = or_analysis(readings)
    means = result.auc.mean(axis=1)
    assert means["strong"] > means["faint"]
    assert means["strong"] > 0.9
    d_prime = observer_detectability(roi_sets, seed=0).set_index(["observer", "condition"])["d_prime"]
    assert d_prime[("virtual reader CHO", "strong")] > d_prime[("virtual reader CHO", "faint")]


def test_condition_table_from_outputs_keeps_only_complete_conditions(tmp_path):
    nodules = pd.DataFrame({"drr_id": ["d1", "d2"], "nodule_id": [0, 0], "centre_row_px": [10, 12],
                            "centre_col_px": [11, 9]})
    drr, restore = tmp_path / "01_drr", tmp_path / "05_restore"
    for drr_id in ("d1", "d2"):
        save_png16(drr / f"{drr_id}.png", np.full((24, 24), 0.5))
        save_png16(drr / f"{drr_id}_nodule_free.png", np.full((24, 24), 0.4))
        save_png16(restore / f"{drr_id}_restored.png", np.full((24, 24), 0.6))  # no nodule-free restored
    images = {"drr": (f"{drr}/{{drr_id}}.png", f"{drr}/{{drr_id}}_nodule_free.png"),
              "restored": (f"{restore}/{{drr_id}}_restored.png", f"{restore}/{{drr_id}}_restored_nodule_free.png")}
    table = condition_table_from_outputs(nodules, images)
    assert set(table["condition"]) == {"drr"}
    assert list(table["truth"]) == [1, 0, 1, 0]
    rois = rois_from_condition_table(table, 8)["drr"]
    np.testing.assert_allclose(rois.rois[rois.truth == 0], 0.4, atol=1e-4)


def test_readers_fall_back_to_phantoms_only_when_pipeline_images_are_too_few(tmp_path):
    nodules = pd.DataFrame({"drr_id": [f"d{i}" for i in range(3)], "nodule_id": [0, 0, 0],
                            "centre_row_px": [10, 12, 11], "centre_col_px": [11, 9, 10]})
    nodules.to_csv(tmp_path / "nodules.csv", index=False)
    for drr_id in nodules["drr_id"]:
        for name, value in (("a", 0.5), ("a_free", 0.4), ("b", 0.6), ("b_free", 0.45)):
            save_png16(tmp_path / f"{drr_id}_{name}.png", np.full((24, 24), value))
    images = {"a": (f"{tmp_path}/{{drr_id}}_a.png", f"{tmp_path}/{{drr_id}}_a_free.png"),
              "b": (f"{tmp_path}/{{drr_id}}_b.png", f"{tmp_path}/{{drr_id}}_b_free.png")}
    amplitudes = {"a": 0.03, "b": 0.06}
    # 3 nodules x (present, absent) = 6 cases per condition
    table, source = reader_images(tmp_path / "nodules.csv", images, 6, tmp_path / "phantoms", 10, amplitudes, 0)
    assert source.startswith("pipeline images") and sorted(table["condition"].unique()) == ["a", "b"]
    assert len(table) == 12 and not (tmp_path / "phantoms").exists()
    table, source = reader_images(tmp_path / "nodules.csv", images, 7, tmp_path / "phantoms", 10, amplitudes, 0)
    assert source.startswith("synthetic") and len(table) == 20
    assert table.groupby("condition")["truth"].sum().to_dict() == {"a": 5, "b": 5}
    assert all(Path(p).is_file() for p in table["image_path"])
    one_condition = {"a": images["a"]}  # one condition cannot be compared
    _, source = reader_images(tmp_path / "nodules.csv", one_condition, 2, tmp_path / "p2", 10, amplitudes, 0)
    assert source.startswith("synthetic")
    _, source = reader_images(tmp_path / "missing.csv", images, 2, tmp_path / "p3", 10, amplitudes, 0)
    assert source.startswith("synthetic")

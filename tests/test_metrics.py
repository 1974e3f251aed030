"""Metrics against cases with a known answer: identical images, known noise, known blur, known discs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage, stats

from xrlib.drr.truth import NODULE_COLUMNS, NODULE_LOCATION_COLUMNS
from xrlib.eval.fid import frechet_and_kernel_distance, inception_feature_extractor
from xrlib.eval.images import DATA_RANGE, batch_of, load_image_batch, resize_images
from xrlib.eval.nodules import LostRule, nodule_bbox, nodule_contrast, nodule_peak_px, nodule_preservation, nodule_preservation_table, nodule_signal_template, npw_dprime, npw_dprime_white_noise, scale_nodule_coordinates, summarise_nodules
from xrlib.eval.quality import MS_SSIM_BETAS, image_quality_table, ms_ssim, ms_ssim_scales, psnr_db, quality_table_from_pairs, ssim
from xrlib.eval.realism import GAUSSIAN_10_90_RISE_PER_SIGMA, edge_rise_distance_px, high_frequency_power_fraction, low_pass_correlation, intensity_wasserstein, log_spectrum_distance, noise_power_spectrum, radial_power_spectrum, realism_table, sample_paths, set_spectrum_distances, spectra_table, spectrum_distance_to_reference, summarise_realism
from xrlib.paper import PUBLISHED_CITATION, beside_published, published_table
from xrlib.stats.units import paired_method_test, paired_method_tests, statistical_unit, summarise_metrics, unit_bootstrap_ci
from xrlib.errors import ConfigError, DataError, GeometryError
from xrlib.paths import project_root

torch.set_num_threads(1)

C1 = (0.01 * DATA_RANGE) ** 2


def batch(array: np.ndarray) -> torch.Tensor:
    """(H, W) or (B, H, W) array -> (B, 1, H, W) float tensor."""
    array = np.asarray(array, dtype=np.float32)
    return torch.from_numpy(array.reshape(-1, 1, *array.shape[-2:]).copy())


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float, supersample: int = 8) -> np.ndarray:
    """Anti-aliased disc (area fraction per pixel) of value 1 on 0."""
    fine = np.arange(shape[0] * supersample) / supersample + 0.5 / supersample - 0.5
    fine_cols = np.arange(shape[1] * supersample) / supersample + 0.5 / supersample - 0.5
    inside = np.hypot(fine[:, None] - centre[0], fine_cols[None, :] - centre[1]) <= radius
    return inside.reshape(shape[0], supersample, shape[1], supersample).mean(axis=(1, 3))


# ---------------------------------------------------------------------------------- image quality


def test_psnr_known_answers():
    rng = np.random.default_rng(0)
    reference = np.full((2, 64, 64), 0.5)
    assert torch.isinf(psnr_db(batch(reference), batch(reference))).all()
    assert psnr_db(batch(reference + 0.1), batch(reference)).numpy() == pytest.approx([20.0, 20.0], abs=1e-4)
    noisy = reference + rng.normal(0.0, 0.01, reference.shape)  # MSE = sigma^2 -> PSNR = 40 dB
    assert psnr_db(batch(noisy), batch(reference)).numpy() == pytest.approx([40.0, 40.0], abs=0.1)


def test_ssim_identical_and_constant_images():
    rng = np.random.default_rng(1)
    texture = batch(rng.uniform(0.2, 0.8, (2, 48, 48)))
    assert ssim(texture, texture).numpy() == pytest.approx([1.0, 1.0], abs=1e-6)
    # Two constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.6
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    value = ssim(batch(np.full((48, 48), a)), batch(np.full((48, 48), b)))
    assert value.item() == pytest.approx(expected, abs=1e-5)
    # Noise lowers SSIM, more noise lowers it more.
    low = ssim(texture + 0.02 * torch.randn_like(texture), texture).mean()
    high = ssim(texture + 0.2 * torch.randn_like(texture), texture).mean()
    assert 1.0 > low > high


def test_ms_ssim_scales_and_known_answers():
    assert ms_ssim_scales(256, 256) == 5
    assert ms_ssim_scales(64, 64) == 3
    assert ms_ssim_scales(12, 40) == 2
    with pytest.raises(ConfigError, match="too small for MS-SSIM"):
        ms_ssim_scales(11, 11)
    rng = np.random.default_rng(2)
    for size in (176, 64):
        image = batch(rng.uniform(0.1, 0.9, (size, size)))
        assert ms_ssim(image, image).item() == pytest.approx(1.0, abs=1e-5)
    # Constant images: every contrast-structure term is 1, so MS-SSIM = luminance ** beta_coarsest.
    a, b = 0.3, 0.6
    luminance = (2 * a * b + C1) / (a * a + b * b + C1)
    value = ms_ssim(batch(np.full((176, 176), a)), batch(np.full((176, 176), b)))
    assert value.item() == pytest.approx(luminance ** MS_SSIM_BETAS[-1], abs=1e-5)
    betas_3 = np.asarray(MS_SSIM_BETAS[:3])
    value_3 = ms_ssim(batch(np.full((64, 64), a)), batch(np.full((64, 64), b)))
    assert value_3.item() == pytest.approx(luminance ** (betas_3[-1] / betas_3.sum()), abs=1e-5)
    with pytest.raises(ConfigError, match="impossible"):
        ms_ssim(image, image, n_scales=5)


def test_image_quality_table_rows_and_shape_checks():
    reference = np.full((3, 64, 64), 0.5)
    table = image_quality_table(
        batch(reference + 0.1), batch(reference), ["a", "b", "c"], ["p1", "p1", "p2"], method="lq_input", degradation="munit"
    )
    assert list(table.columns) == ["image_id", "patient_id", "method", "degradation", "psnr_db", "ssim", "ms_ssim"]
    assert table["psnr_db"].to_numpy() == pytest.approx([20.0] * 3, abs=1e-4)
    with pytest.raises(DataError, match="differ in shape"):
        psnr_db(batch(reference), batch(np.zeros((3, 32, 32))))
    with pytest.raises(DataError, match="image ids"):
        image_quality_table(batch(reference), batch(reference), ["a"], ["p"])


# ---------------------------------------------------------------------------------- statistics


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(3)
    patient_values = rng.normal(0.0, 1.0, 30)
    one_each = unit_bootstrap_ci(patient_values, [f"p{i}" for i in range(30)], seed=7)
    # Twenty identical images per patient carry no more information: the same interval.
    twenty_each = unit_bootstrap_ci(
        np.repeat(patient_values, 20), np.repeat([f"p{i}" for i in range(30)], 20), seed=7
    )
    assert (twenty_each.ci_low, twenty_each.ci_high) == pytest.approx((one_each.ci_low, one_each.ci_high))
    assert twenty_each.n_images == 600 and twenty_each.n_units == 30
    # Equal values: a degenerate interval at that value.
    flat = unit_bootstrap_ci(np.full(10, 2.5), list("abcdefghij"))
    assert (flat.mean, flat.ci_low, flat.ci_high) == pytest.approx((2.5, 2.5, 2.5))


def test_bootstrap_interval_matches_normal_theory():
    rng = np.random.default_rng(4)
    values = rng.normal(10.0, 2.0, 400)
    interval = unit_bootstrap_ci(values, np.arange(400).astype(str), n_resamples=4000, seed=0)
    half_width = 1.959964 * values.std(ddof=1) / math.sqrt(400)
    assert interval.mean == pytest.approx(values.mean())
    assert interval.ci_low == pytest.approx(values.mean() - half_width, abs=0.1 * half_width)
    assert interval.ci_high == pytest.approx(values.mean() + half_width, abs=0.1 * half_width)
    with pytest.raises(ConfigError):
        unit_bootstrap_ci(values, np.arange(400).astype(str), confidence=1.5)


def paired_table() -> pd.DataFrame:
    """10 patients x 2 images; method a beats b by a distinct positive amount per patient."""
    rows = []
    for patient in range(10):
        for image in range(2):
            base = 20.0 + image
            rows.append(("ours", f"p{patient}", f"p{patient}_{image}", base + 0.1 * (patient + 1), "munit"))
            rows.append(("baseline", f"p{patient}", f"p{patient}_{image}", base, "munit"))
    return pd.DataFrame(rows, columns=["method", "patient_id", "image_id", "psnr_db", "degradation"])


def test_paired_test_known_answers():
    table = paired_table()
    result = paired_method_test(table, "psnr_db", "ours", "baseline")
    differences = 0.1 * np.arange(1, 11)
    assert result["n_units"] == 10 and result["split_unit"] == "patient"
    assert result["mean_difference"] == pytest.approx(differences.mean())
    # All 10 differences positive: exact two-sided signed-rank p = 2 / 2^10.
    assert result["wilcoxon_p"] == pytest.approx(2.0 / 1024.0)
    assert result["t_statistic"] == pytest.approx(differences.mean() / (differences.std(ddof=1) / math.sqrt(10)))
    with_copy = pd.concat([table, table.query("method == 'baseline'").assign(method="copy")])
    same = paired_method_test(with_copy, "psnr_db", "baseline", "copy")
    assert same["wilcoxon_p"] == 1.0 and same["mean_difference"] == 0.0


def test_paired_method_tests_holm():
    table = pd.concat([paired_table(), paired_table().query("method == 'baseline'").assign(method="lq_input", psnr_db=lambda t: t.psnr_db - 1)])
    tests = paired_method_tests(table, ["psnr_db"], [("ours", "baseline"), ("ours", "lq_input")])
    assert len(tests) == 2 and set(tests["degradation"]) == {"munit"}
    p = tests["t_p"].to_numpy()
    order = np.argsort(p)  # Holm by hand: sorted p times (m, m-1, ...), kept monotone, capped at 1
    holm = np.maximum.accumulate(np.minimum(1.0, p[order] * np.array([2, 1])))
    assert tests["t_p_holm"].to_numpy()[order] == pytest.approx(holm)


def test_published_table_and_beside_published():
    published = published_table()
    munit = published.set_index(["degradation", "method"]).loc[("munit", "diffusionxray")]
    assert (munit["psnr_db"], munit["ssim"]) == (27.50, 0.92)
    assert "2603.01686" in PUBLISHED_CITATION
    summary = pd.DataFrame(
        [
            ("munit", "diffusionxray", "psnr_db", 25.0, 24.0, 26.0),
            ("munit", "diffusionxray", "ms_ssim", 0.9, 0.88, 0.92),
            ("munit", "lq_input", "psnr_db", 18.0, 17.0, 19.0),
            ("munit", "lq_input", "ms_ssim", 0.7, 0.6, 0.8),
        ],
        columns=["degradation", "method", "metric", "mean", "ci_low", "ci_high"],
    )
    wide = beside_published(summary).set_index(["degradation", "method"])
    assert wide.loc[("munit", "diffusionxray"), "psnr_db_published"] == 27.50
    assert wide.loc[("munit", "diffusionxray"), "psnr_db_ours"] == 25.0
    assert wide.loc[("munit", "diffusionxray"), "psnr_db_ours_ci_high"] == 26.0
    assert np.isnan(wide.loc[("munit", "lq_input"), "psnr_db_published"])
    assert np.isnan(wide.loc[("munit", "diffusionxray"), "ms_ssim_published"])


# ---------------------------------------------------------------------------------- realism


def test_power_spectrum_of_white_and_blurred_noise():
    rng = np.random.default_rng(5)
    sigma = 0.05
    noise = rng.normal(0.5, sigma, (8, 128, 128))
    frequency, power = radial_power_spectrum(batch(noise), n_bins=32)
    assert frequency[0] == pytest.approx(0.5 / 32) and frequency[-1] == pytest.approx(0.5)
    mean_power = power.mean(axis=0)
    # Flat at the variance; the lowest bin, inside the window's main lobe around DC, loses the mean.
    assert mean_power[1:].mean() == pytest.approx(sigma**2, rel=0.03)
    assert np.all(np.abs(mean_power[1:] / sigma**2 - 1.0) < 0.2)
    # A Gaussian blur of sigma s multiplies the power by the squared MTF exp(-4 pi^2 s^2 f^2).
    blur_px = 1.5
    blurred = np.stack([ndimage.gaussian_filter(n, blur_px, mode="wrap") for n in noise])
    _, blurred_power = radial_power_spectrum(batch(blurred), n_bins=32)
    ratio = blurred_power.mean(axis=0) / mean_power
    expected = np.exp(-4 * math.pi**2 * blur_px**2 * frequency**2)
    usable = expected > 1e-2
    assert ratio[usable] == pytest.approx(expected[usable], rel=0.15)
    with pytest.raises(ConfigError, match="n_bins"):
        radial_power_spectrum(batch(noise), n_bins=100)


def test_log_spectrum_distance_known_scaling():
    rng = np.random.default_rng(6)
    images = rng.uniform(0.0, 0.5, (4, 64, 64))
    _, power = radial_power_spectrum(batch(images))
    _, doubled = radial_power_spectrum(batch(2.0 * images))
    assert log_spectrum_distance(power, power) == 0.0
    assert log_spectrum_distance(doubled, power) == pytest.approx(2 * math.log10(2.0), rel=1e-6)


def test_high_frequency_power_fraction_of_white_noise_and_blur():
    noise = torch.from_numpy(np.random.default_rng(0).normal(0.5, 0.1, (4, 1, 128, 128)))
    # white noise: the fraction is the share of the frequency plane beyond the cutoff, 1 - pi r^2 for r = 0.25
    fraction = high_frequency_power_fraction(noise, 0.25)
    assert fraction.mean() == pytest.approx(1 - math.pi * 0.25**2, abs=0.01)
    np.testing.assert_allclose(fraction, 1 - math.pi * 0.25**2, atol=0.03)
    blurred = torch.from_numpy(ndimage.gaussian_filter(noise.numpy(), (0, 0, 3, 3)))
    assert (high_frequency_power_fraction(blurred, 0.25) < 1e-6).all()  # exp(-4 pi^2 9 0.25^2) ~ 1e-10
    with pytest.raises(ConfigError, match="cutoff"):
        high_frequency_power_fraction(noise, 0.9)
    with pytest.raises(DataError, match="constant"):
        high_frequency_power_fraction(torch.ones(1, 1, 16, 16), 0.25)


def test_spectrum_distance_to_reference_is_zero_for_the_reference_and_counts_gain_and_blur():
    rng = np.random.default_rng(3)
    films = torch.from_numpy(rng.normal(0.5, 0.1, (3, 1, 64, 64)))
    np.testing.assert_allclose(spectrum_distance_to_reference(films, films), 0.0, atol=1e-12)
    # twice the contrast: 4x the power at every frequency, 2 log10(2) decades
    np.testing.assert_allclose(spectrum_distance_to_reference(0.5 + 2 * (films - 0.5), films), 2 * math.log10(2), atol=1e-9)
    blurred = torch.from_numpy(ndimage.gaussian_filter(films.numpy(), (0, 0, 1.5, 1.5)))
    assert (spectrum_distance_to_reference(blurred, films) > 1.0).all()  # the high half loses decades of power
    small = spectrum_distance_to_reference(films[..., :8, :8], films[..., :8, :8])  # bins shrink to 4 for 8 px
    np.testing.assert_allclose(small, 0.0, atol=1e-12)
    with pytest.raises(DataError, match="shape"):
        spectrum_distance_to_reference(films, films[..., :32])


def test_low_pass_correlation_keeps_anatomy_and_ignores_fine_detail():
    rng = np.random.default_rng(1)
    anatomy = torch.from_numpy(ndimage.gaussian_filter(rng.normal(0, 1, (2, 1, 96, 96)), (0, 0, 8, 8)))
    detail = torch.from_numpy(rng.normal(0, 0.2 * float(anatomy.std()), anatomy.shape))
    np.testing.assert_allclose(low_pass_correlation(anatomy, anatomy), 1.0, atol=1e-12)
    assert (low_pass_correlation(anatomy + detail, anatomy) > 0.99).all()
    np.testing.assert_allclose(low_pass_correlation(-anatomy, anatomy), -1.0, atol=1e-12)
    other = torch.from_numpy(ndimage.gaussian_filter(rng.normal(0, 1, (2, 1, 96, 96)), (0, 0, 8, 8)))
    assert (np.abs(low_pass_correlation(other, anatomy)) < 0.5).all()
    with pytest.raises(DataError, match="shape"):
        low_pass_correlation(anatomy, anatomy[..., :64])


def test_noise_power_spectrum_white_noise_on_a_smooth_background():
    rng = np.random.default_rng(7)
    sigma = 0.02
    rows, cols = np.mgrid[0:128, 0:128] / 128.0
    trend = 0.3 + 0.2 * rows + 0.1 * cols**2  # anatomy-like slow trend, removed by detrending
    images = trend + rng.normal(0.0, sigma, (6, 128, 128))
    nps = noise_power_spectrum(batch(images), roi_size_px=32, keep_fraction=1.0)
    assert nps.n_rois == 6 * 16
    assert nps.noise_variance == pytest.approx(sigma**2, rel=0.03)
    assert nps.nps_px2[3:].mean() == pytest.approx(sigma**2, rel=0.03)  # flat at sigma^2 * 1 px^2
    # White noise: mean radial frequency over the square band = (sqrt 2 + ln(1 + sqrt 2)) / 6.
    assert nps.mean_frequency_cycles_per_px == pytest.approx((math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6, rel=0.03)
    blurred = np.stack([ndimage.gaussian_filter(i, 1.0) for i in images])
    coarse = noise_power_spectrum(batch(blurred), roi_size_px=32)
    assert coarse.mean_frequency_cycles_per_px < 0.6 * nps.mean_frequency_cycles_per_px
    with pytest.raises(ConfigError, match="roi_size_px"):
        noise_power_spectrum(batch(images), roi_size_px=256)


def test_edge_rise_distance_of_a_blurred_step_and_its_widening():
    step = np.zeros((96, 96))
    step[:, 48:] = 1.0  # edge at the boundary between columns 47 and 48
    sharp_sigma, extra_sigma = 1.2, 1.6
    sharp = ndimage.gaussian_filter(step, sharp_sigma, mode="nearest")
    blurred = ndimage.gaussian_filter(sharp, extra_sigma, mode="nearest")
    rise = edge_rise_distance_px(batch(np.stack([sharp, blurred])))
    per_sigma = GAUSSIAN_10_90_RISE_PER_SIGMA
    assert per_sigma == pytest.approx(2.5631, abs=1e-4)
    assert rise[0] == pytest.approx(per_sigma * sharp_sigma, rel=0.03)
    assert rise[1] == pytest.approx(per_sigma * math.hypot(sharp_sigma, extra_sigma), rel=0.03)


def test_edge_rise_distance_of_a_blurred_disc():
    blur = 2.0
    image = 0.2 + 0.6 * ndimage.gaussian_filter(disc((96, 96), (47.3, 48.6), 30.0), blur)
    rise = edge_rise_distance_px(batch(image))[0]
    # Anti-aliasing by area adds a 1 px box (variance 1/12) to the blur.
    assert rise == pytest.approx(GAUSSIAN_10_90_RISE_PER_SIGMA * math.sqrt(blur**2 + 1 / 12), rel=0.05)


def test_intensity_wasserstein_known_shift():
    rng = np.random.default_rng(8)
    images = rng.uniform(0.1, 0.8, (3, 32, 32))
    assert intensity_wasserstein(batch(images), batch(images)) == 0.0
    shifted = intensity_wasserstein(batch(images + 0.1), batch(images))
    assert shifted == pytest.approx(0.1, abs=1.0 / 1024)
    per_image = intensity_wasserstein(batch(images + 0.1), batch(images), per_image=True)
    assert per_image.shape == (3,) and np.all(np.abs(per_image - 0.1) < 0.02)


def test_realism_table_orders_sharp_and_blurred_sets():
    rng = np.random.default_rng(9)
    texture = np.stack([ndimage.gaussian_filter(rng.normal(0.5, 0.1, (64, 64)), 0.7) for _ in range(4)])
    blurred = np.stack([ndimage.gaussian_filter(t, 2.0) for t in texture])
    sets = {"real": batch(texture), "blurred": batch(blurred)}
    table = realism_table(sets, "real", n_bins=16, roi_size_px=16)
    assert list(table.columns) == [
        "set", "image_index", "spectrum_distance", "intensity_wasserstein",
        "edge_rise_distance_px", "noise_std", "nps_mean_frequency_cycles_per_px",
    ]
    median = table.groupby("set").median(numeric_only=True)
    assert median.loc["blurred", "spectrum_distance"] > 5 * median.loc["real", "spectrum_distance"]
    assert median.loc["blurred", "noise_std"] < median.loc["real", "noise_std"]
    assert median.loc["blurred", "nps_mean_frequency_cycles_per_px"] < median.loc["real", "nps_mean_frequency_cycles_per_px"]
    distances = set_spectrum_distances(sets, "real", n_bins=16).set_index("set")["spectrum_distance"]
    assert distances["real"] == 0.0 and distances["blurred"] > 0.3
    summary = summarise_realism(table, sets, "real", n_bins=16).set_index("set")
    assert summary.loc["blurred", "set_spectrum_distance"] == distances["blurred"]
    assert summary.loc["real", "edge_rise_distance_px"] == median.loc["real", "edge_rise_distance_px"]


class MeanOfQuadrants(torch.nn.Module):
    """A feature extractor with a known answer: the mean of each image quadrant (4 features)."""

    num_features = 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).reshape(images.shape[0], 4)


def test_fid_and_kid_with_a_known_feature_extractor():
    rng = np.random.default_rng(10)
    real = batch(rng.uniform(0.2, 0.6, (40, 16, 16)))
    identical = frechet_and_kernel_distance(real, real, MeanOfQuadrants(), kid_subsets=10)
    assert identical["fid"] == pytest.approx(0.0, abs=1e-6)
    # Shifting every image by c moves each of the 4 feature means by c: FID = 4 c^2.
    shift = 0.1
    shifted = frechet_and_kernel_distance(real, real + shift, MeanOfQuadrants(), kid_subsets=10)
    assert shifted["fid"] == pytest.approx(4 * shift**2, rel=1e-3)
    assert shifted["kid_mean"] > identical["kid_mean"]


def test_fid_weights_absent_give_a_clear_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="fid_weights_path"):
        inception_feature_extractor(None)
    with pytest.raises(ConfigError, match="no such file"):
        inception_feature_extractor(tmp_path / "pt_inception.pth")


# ---------------------------------------------------------------------------------- nodules


def nodule_scene(contrast=0.2, noise=0.02, centre=(64.0, 64.0), radius=6.0, seed=11, size=128):
    """Flat background 0.4 with white noise; returns (image, nodule-free image, nodule signal)."""
    rng = np.random.default_rng(seed)
    background = 0.4 + rng.normal(0.0, noise, (size, size))
    signal = contrast * disc((size, size), centre, radius)
    return background + signal, background, signal


def test_nodule_contrast_and_cnr_of_a_known_disc():
    image, _, _ = nodule_scene(noise=0.0)
    exact = nodule_contrast(image, 64.0, 64.0, 6.0)
    assert exact["contrast"] == pytest.approx(0.2, abs=1e-9)
    noisy_image, _, _ = nodule_scene(noise=0.02)
    measured = nodule_contrast(noisy_image, 64.0, 64.0, 6.0)
    assert measured["contrast"] == pytest.approx(0.2, abs=0.01)
    assert measured["cnr"] == pytest.approx(0.2 / 0.02, rel=0.1)
    with pytest.raises(GeometryError, match="nodules.csv"):
        nodule_contrast(noisy_image, -40.0, -40.0, 6.0)


def test_nodule_peak_shift_of_a_moved_disc():
    image, _, _ = nodule_scene(noise=0.005, centre=(60.0, 60.0))
    moved, _, _ = nodule_scene(noise=0.005, centre=(63.0, 64.0), seed=12)
    peak = nodule_peak_px(image, 60.0, 60.0, 6.0)
    peak_moved = nodule_peak_px(moved, 60.0, 60.0, 6.0)
    assert peak == pytest.approx((60.0, 60.0), abs=0.3)
    assert math.hypot(peak_moved[0] - peak[0], peak_moved[1] - peak[1]) == pytest.approx(5.0, abs=0.3)


def test_npw_dprime_matches_the_white_noise_closed_form():
    sigma = 0.05
    image, background, signal = nodule_scene(contrast=0.02, noise=sigma, size=256, centre=(128.0, 128.0), radius=4.0)
    template = nodule_signal_template(image, background, 128.0, 128.0, 4.0)
    assert npw_dprime_white_noise(np.ones((3, 3)), 0.5) == pytest.approx(6.0)
    expected = npw_dprime_white_noise(template, sigma)
    # ||s|| = c sqrt(area), a little less for the partial-volume pixels of the disc's rim.
    assert expected == pytest.approx(0.02 * math.sqrt(math.pi * 16) / sigma, rel=0.06)
    # The response at the nodule is one noisy draw (sd about 1 in d' units): average 48 realisations.
    estimates = []
    for seed in range(48):
        noisy = 0.4 + signal + np.random.default_rng(100 + seed).normal(0.0, sigma, signal.shape)
        estimates.append(npw_dprime(noisy, template, 128.0, 128.0, n_background=300, subtract_patch_mean=False, seed=seed))
    standard_error = np.std(estimates, ddof=1) / math.sqrt(len(estimates))
    assert np.mean(estimates) == pytest.approx(expected, abs=3 * standard_error)


def test_npw_dprime_ignores_local_grey_level_with_zero_mean_template():
    sigma = 0.02
    rows, cols = np.mgrid[0:256, 0:256]
    ramp = 0.002 * rows + 0.001 * cols  # a slope that changes the grey level by 0.5 across the image
    image, background, _ = nodule_scene(contrast=0.05, noise=sigma, size=256, centre=(128.0, 128.0), radius=5.0)
    template = nodule_signal_template(image, background, 128.0, 128.0, 5.0)
    flat = npw_dprime(image, template, 128.0, 128.0, n_background=300)
    on_ramp = npw_dprime(image + ramp, template, 128.0, 128.0, n_background=300)
    assert on_ramp == pytest.approx(flat, rel=1e-6)
    without = npw_dprime(image + ramp, template, 128.0, 128.0, n_background=300, subtract_patch_mean=False)
    assert without < 0.2 * flat  # the grey level swamps a filter that keeps the mean


def test_lost_rule_and_preservation_of_kept_removed_and_moved_nodules():
    drr, nodule_free, _ = nodule_scene(noise=0.01)
    grain = np.random.default_rng(1).normal(0, 0.005, drr.shape)  # the restorer's noise: the same seed for both of a pair
    kept = nodule_preservation(drr, nodule_free, drr + grain, nodule_free + grain, 64.0, 64.0, 6.0)
    assert not kept["lost"] and kept["signal_peak_shift_px"] < 0.5
    assert kept["signal_kept"] == pytest.approx(1.0, abs=1e-9)
    assert kept["contrast_restored"] == pytest.approx(kept["contrast_drr"], abs=0.01)
    assert kept["dprime_drr"] > 3 and kept["dprime_restored"] > 3
    removed = nodule_preservation(drr, nodule_free, nodule_free, nodule_free, 64.0, 64.0, 6.0)
    assert removed["lost"] and abs(removed["contrast_restored"]) < 0.02 and removed["signal_kept"] == 0.0
    moved, moved_free, _ = nodule_scene(noise=0.01, centre=(64.0, 72.0))  # 8 px away: more than one radius
    shifted = nodule_preservation(drr, nodule_free, moved, moved_free, 64.0, 64.0, 6.0)
    assert shifted["lost"] and shifted["signal_peak_shift_px"] == pytest.approx(8.0, abs=0.5)
    rule = LostRule(min_contrast_ratio=0.5, max_peak_shift_radii=1.0)
    assert rule.is_lost(0.2, 0.09, 1.0, 0.0, 6.0) and not rule.is_lost(0.2, 0.11, 1.0, 5.9, 6.0)
    assert rule.is_lost(0.2, 0.2, 0.49, 0.0, 6.0) and not rule.is_lost(0.2, 0.2, 0.51, 0.0, 6.0)
    assert not rule.is_lost(-0.05, -0.06, 1.0, 1.0, 6.0) and rule.is_lost(-0.05, -0.06, 1.0, 6.1, 6.0)
    with pytest.raises(DataError, match="resize"):
        nodule_preservation(drr, nodule_free, drr[:64], nodule_free[:64], 64.0, 64.0, 6.0)
    with pytest.raises(DataError, match="no positive signal"):
        nodule_preservation(drr, drr + 0.2 * disc(drr.shape, (64.0, 64.0), 6.0), drr, drr, 64.0, 64.0, 6.0)


def test_a_restored_background_blob_beside_a_kept_nodule_does_not_lose_it():
    """Restoration that sharpens the background beside a nodule moves the image's brightest blob near it;
    the nodule's own signal (restored pair difference) stays put, so the nodule is kept. Moving the signal
    itself by the same distance loses it."""
    drr, nodule_free, signal = nodule_scene(contrast=0.1, noise=0.005)
    blob = 0.3 * disc(drr.shape, (64.0, 74.0), 5.0)  # background structure the restoration made 10 px away
    grain = np.random.default_rng(3).normal(0, 0.005, drr.shape)
    restored_free = nodule_free + blob + grain
    image_peak = nodule_peak_px(restored_free + signal, 64.0, 64.0, 6.0)
    assert math.hypot(image_peak[0] - 64.0, image_peak[1] - 64.0) > 6.0  # the image's peak went to the blob
    kept = nodule_preservation(drr, nodule_free, restored_free + signal, restored_free, 64.0, 64.0, 6.0)
    assert not kept["lost"] and kept["signal_peak_shift_px"] < 0.5 and kept["signal_kept"] == pytest.approx(1.0)
    moved_signal = 0.1 * disc(drr.shape, (64.0, 74.0), 6.0)
    moved = nodule_preservation(drr, nodule_free, restored_free + moved_signal, restored_free, 64.0, 64.0, 6.0)
    assert moved["lost"] and moved["signal_peak_shift_px"] > 6.0


def test_nodule_preservation_table_over_a_nodules_csv():
    drr, nodule_free, _ = nodule_scene(noise=0.01)
    drr = drr + 0.1 * disc(drr.shape, (30.0, 30.0), 6.0)  # a second, fainter nodule
    nodules = pd.DataFrame(
        [("d1", 1, 64.0, 64.0, 58, 58, 70, 70, 8.0), ("d1", 2, 30.0, 30.0, 24, 24, 36, 36, 8.0)],
        columns=[*NODULE_LOCATION_COLUMNS, "diameter_mm"],
    )
    table = nodule_preservation_table(nodules, lambda drr_id: (drr, nodule_free, nodule_free, nodule_free))
    assert list(table["nodule_id"]) == [1, 2] and "diameter_mm" in table
    assert table.loc[0, "radius_px"] == 6.0
    assert table.loc[0, "lost"]  # the restored image lost it (nodule-free)
    assert table["contrast_drr"].to_numpy() == pytest.approx([0.2, 0.1], abs=0.01)
    summary = summarise_nodules(table)
    assert summary["n_nodules"] == 2 and summary["n_lost"] == 2
    assert abs(summary["median_contrast_ratio"]) < 0.1  # nothing of either nodule left
    with pytest.raises(DataError, match="nodules.csv"):
        nodule_preservation_table(nodules.drop(columns="bbox_row0"), lambda drr_id: None)


# ---------------------------------------------------------------------------------- real data


def hannover_folder() -> Path:
    return project_root().parent / "shared" / "data" / "hannover-cxr"


@pytest.mark.shared
@pytest.mark.skipif(not hannover_folder().is_dir(), reason="../shared development data absent")
def test_real_xrays_are_sharper_and_spectrally_closer_than_their_blurred_copy():
    folder = hannover_folder()
    listing = pd.read_csv(folder / "data.csv").query("projection == 'pa'").head(16)
    paths = [folder / "png" / f"{image_id}.png" for image_id in listing["image_id"]]
    real = load_image_batch(paths, size_px=256)
    blurred = batch(np.stack([ndimage.gaussian_filter(image, 2.0) for image in real[:, 0].numpy()]))
    half_a, half_b = real[:8], real[8:]
    _, power_a = radial_power_spectrum(half_a)
    _, power_b = radial_power_spectrum(half_b)
    _, power_blurred = radial_power_spectrum(blurred[8:])
    # Another set of real X-rays is spectrally closer than the blurred copy of the same ones.
    assert log_spectrum_distance(power_b, power_a) < 0.5 * log_spectrum_distance(power_blurred, power_a)
    assert np.median(edge_rise_distance_px(real)) < np.median(edge_rise_distance_px(blurred))
    real_noise, blurred_noise = noise_power_spectrum(real), noise_power_spectrum(blurred)
    assert real_noise.mean_frequency_cycles_per_px > blurred_noise.mean_frequency_cycles_per_px
    # Blurring barely moves the intensity histogram: the histogram alone cannot tell the sets apart.
    assert intensity_wasserstein(blurred, real) < 0.02


# ---------------------------------------------------------------------------------- stage drivers


def test_quality_table_from_pairs_on_a_synthetic_layout(tmp_path: Path):
    from xrlib.io import save_png16

    rng = np.random.default_rng(13)
    rows = []
    for index, (generator, patient) in enumerate([("munit", "p1"), ("munit", "p2"), ("ddpm", "p1"), ("bicubic", "p1")]):
        pair_id = f"{generator}-img{index}"
        hq = rng.uniform(0.2, 0.7, (64, 64))
        save_png16(tmp_path / "pairs" / "hq" / f"{pair_id}.png", hq)
        save_png16(tmp_path / "pairs" / generator / f"{pair_id}.png", hq.reshape(32, 2, 32, 2).mean(axis=(1, 3)))
        save_png16(tmp_path / "restorer" / "exact" / f"{pair_id}.png", hq)
        save_png16(tmp_path / "restorer" / "offset" / f"{pair_id}.png", hq + 0.1)
        rows.append((pair_id, patient, "test", generator, f"pairs/{generator}/{pair_id}.png", f"pairs/hq/{pair_id}.png"))
    rows.append(("munit-train", "p3", "train", "munit", "nowhere.png", "nowhere.png"))
    pairs = pd.DataFrame(rows, columns=["pair_id", "patient_id", "split", "generator", "lq_path", "hq_path"])
    patterns = {"diffusionxray": "restorer/exact/{pair_id}.png", "bicubic_baseline": "restorer/offset/{pair_id}.png"}
    table = quality_table_from_pairs(pairs, patterns, tmp_path)
    assert len(table) == 3 * 3  # 3 test pairs from munit/ddpm x (LQ input + 2 methods)
    by_method = table.groupby("method")
    assert np.isinf(by_method.get_group("diffusionxray")["psnr_db"]).all()
    assert by_method.get_group("diffusionxray")["ssim"].to_numpy() == pytest.approx(1.0, abs=1e-6)
    assert by_method.get_group("bicubic_baseline")["psnr_db"].to_numpy() == pytest.approx(20.0, abs=0.01)
    assert (by_method.get_group("lq_input")["psnr_db"] < 40).all()
    assert set(table["degradation"]) == {"munit", "ddpm"}
    with pytest.raises(DataError, match="3 of 3 restored test images of 'missing'"):
        quality_table_from_pairs(pairs, {"missing": "nowhere/{pair_id}.png"}, tmp_path)
    assert statistical_unit(table) == ("patient_id", "patient")


def test_statistics_resample_tiles_when_tiles_were_held_out():
    # one patient, 10 tiles x 2 images: the unit is the tile, so the paired test sees 10 units, not 1 patient
    table = paired_table().assign(unit_id=lambda t: t.patient_id, patient_id="p", split_unit="tile")
    result = paired_method_test(table, "psnr_db", "ours", "baseline")
    assert result["n_units"] == 10 and result["split_unit"] == "tile"
    assert result["wilcoxon_p"] == pytest.approx(2.0 / 1024.0)
    summary = summarise_metrics(table, ["psnr_db"], ["method"], n_resamples=500)
    assert set(summary["n_units"]) == {10} and set(summary["split_unit"]) == {"tile"}
    by_patient = summarise_metrics(table.drop(columns=["unit_id", "split_unit"]), ["psnr_db"], ["method"], n_resamples=500)
    assert set(by_patient["n_units"]) == {1} and set(by_patient["split_unit"]) == {"patient"}
    assert (by_patient["ci_low"] == by_patient["ci_high"]).all()  # one patient: no spread to resample
    with pytest.raises(DataError, match="mixes split units"):
        statistical_unit(table.assign(split_unit=["tile", "patient"] * 20))


def test_nodule_table_on_an_enlarged_restored_grid():
    drr, nodule_free, _ = nodule_scene(noise=0.0, size=64, centre=(31.5, 31.5), radius=5.0)
    restored = resize_images(batch_of(drr), (128, 128), "bicubic")[0, 0].numpy()
    scaled = scale_nodule_coordinates(pd.DataFrame({"centre_row_px": [10.0], "centre_col_px": [0.0],
        "bbox_row0": [8], "bbox_col0": [0], "bbox_row1": [12], "bbox_col1": [3]}), 2.0)
    assert scaled.iloc[0].tolist() == [20.5, 0.5, 16, 0, 24, 6]
    assert nodule_bbox(scaled.iloc[0]) == (16, 0, 24, 6)
    assert nodule_bbox({"bbox_row0": 8, "bbox_col0": 0, "bbox_row1": 12, "bbox_col1": 3}, 2.0) == (16, 0, 24, 6)
    nodules = pd.DataFrame([("d1", 1, 31.5, 31.5, 27, 27, 37, 37)], columns=list(NODULE_LOCATION_COLUMNS))
    noisy_background = nodule_free + np.random.default_rng(2).normal(0, 0.01, nodule_free.shape)
    restored_free = resize_images(batch_of(noisy_background), (128, 128), "bicubic")[0, 0].numpy()
    table = nodule_preservation_table(
        nodules, lambda drr_id: (drr + noisy_background - nodule_free, noisy_background, restored, restored_free))
    row = table.iloc[0]
    assert row["grid_scale"] == 2.0 and row["radius_px"] == 10.0 and row["centre_row_px"] == 31.5
    assert row["contrast_restored"] == pytest.approx(row["contrast_drr"], abs=0.02) and not row["lost"]
    assert row["signal_peak_shift_px"] < 1.0


def test_spectra_table_and_path_sampling():
    rng = np.random.default_rng(14)
    sigma = 0.05
    table = spectra_table({"noise": batch(rng.normal(0.5, sigma, (6, 64, 64)))}, n_bins=16)
    assert list(table.columns) == ["set", "frequency_cycles_per_px", "power_mean", "power_p10", "power_p90", "log10_power_mean"]
    assert table["power_mean"].iloc[1:].mean() == pytest.approx(sigma**2, rel=0.05)
    assert (table["power_p10"] <= table["power_mean"]).all() and (table["power_mean"] <= table["power_p90"]).all()
    paths = [f"img{i}.png" for i in range(10)]
    chosen = sample_paths(paths, 4, seed=1)
    assert len(chosen) == 4 and chosen == sorted(chosen, key=lambda p: int(p.stem[3:]))
    assert chosen == sample_paths(paths, 4, seed=1) and len(sample_paths(paths, None, 0)) == 10


def test_locating_a_nodule_needs_only_columns_of_the_ground_truth_table():
    assert set(NODULE_LOCATION_COLUMNS) < set(NODULE_COLUMNS)

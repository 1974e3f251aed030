"""LQ twins: translation checks on known cases, SDEdit/ILVR against an exact denoiser, pair manifest, MUNIT on real X-rays."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from xrlib.io import load_png, save_png16
from xrlib.lq.checks import (
    TwinCriteria,
    choose_translation_setting,
    fraction_moved,
    gaussian_blur,
    low_pass_ssim,
    sharpness,
    spectrum_shape,
    translation_report,
    band_offsets,
)
from xrlib.lq.pairs import body_square, build_pairs, load_display_stack
from xrlib.lq.twins import bicubic_twin, ddpm_translate
from xrlib.errors import ConfigError, DataError
from xrlib.eval.realism import radial_power_spectrum
from xrlib.data.pairs import PAIR_COLUMNS, resize_bicubic
from xrlib.params import LqDdpmSettings, load_params, parse



pytestmark = pytest.mark.usefixtures("one_torch_thread")

LQ_DDPM = parse(LqDdpmSettings, load_params(Path(__file__).parents[1] / "params.yaml")["lq_ddpm"], "lq_ddpm")


def textured_images(n: int, size: int, seed: int) -> torch.Tensor:
    """HQ-like display images: smooth 'anatomy' plus fine texture, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    anatomy = torch.nn.functional.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    return (0.2 + 0.6 * anatomy + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def drr_like(hq: torch.Tensor, sigma_px: float = 2.0) -> torch.Tensor:
    """A DRR-like LQ domain for tests: blurred, noise-free, lower contrast."""
    blurred = gaussian_blur(hq, sigma_px)
    mean = blurred.mean(dim=(2, 3), keepdim=True)
    return (mean + 0.6 * (blurred - mean)).clamp(0, 1)


def test_gaussian_blur_keeps_constants_and_has_the_requested_width():
    assert torch.allclose(gaussian_blur(torch.full((1, 1, 9, 9), 0.3), 1.5), torch.full((1, 1, 9, 9), 0.3))
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[..., 20, 20] = 1
    response = gaussian_blur(impulse, 2.0)[0, 0]
    offsets = torch.arange(41.0) - 20
    assert float(response.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float((response.sum(0) * offsets ** 2).sum()) == pytest.approx(4.0, rel=0.02)  # variance sigma^2


def test_radial_power_spectrum_puts_a_cosine_in_its_bin_and_its_shape_ignores_contrast():
    size = 64
    x = torch.arange(size, dtype=torch.float64)
    image = (0.5 + 0.2 * torch.cos(2 * torch.pi * 8 * x / size))[None, :].expand(size, size)[None, None]
    frequency, power = radial_power_spectrum(image, n_bins=size // 2)
    assert frequency[power[0].argmax()] == pytest.approx(8 / 64)
    assert power.shape == (1, 32)
    shape = spectrum_shape(image)
    assert float((10 ** shape).sum()) == pytest.approx(1.0, abs=1e-6)  # unit total power
    assert torch.allclose(10 ** spectrum_shape(0.5 + 0.3 * (image - 0.5)), 10 ** shape, atol=1e-7)


def test_sharpness_of_a_blurred_image_drops_and_ignores_contrast():
    image = textured_images(2, 64, seed=0)
    assert torch.all(sharpness(gaussian_blur(image, 2.0)) < 0.5 * sharpness(image))
    assert torch.allclose(sharpness(0.5 * image), sharpness(image), rtol=1e-4)


def test_fraction_moved_hand_values():
    assert fraction_moved(torch.tensor(2.0), torch.tensor(4.0), torch.tensor(3.0)) == pytest.approx(0.5)
    assert fraction_moved(torch.zeros(2), torch.tensor([2.0, 0.0]), torch.tensor([1.0, 5.0])) == pytest.approx(0.5)
    with pytest.raises(DataError, match="coincide"):
        fraction_moved(torch.ones(2), torch.ones(2), torch.zeros(2))


def test_low_pass_ssim_is_one_for_identical_images_and_ignores_fine_texture():
    image = textured_images(2, 64, seed=1)
    assert torch.allclose(low_pass_ssim(image, image.clone(), 2.0), torch.ones(2))
    fine_noise = (image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert float(low_pass_ssim(image, fine_noise, 3.0).min()) > 0.95
    assert float(low_pass_ssim(image, fine_noise, 0.0).max()) < 0.9
    assert float(low_pass_ssim(image, textured_images(2, 64, seed=9), 3.0).max()) < 0.9  # other anatomy


def test_blur_moves_the_spectrum_and_sharpness_toward_a_blurred_reference():
    hq = textured_images(6, 64, seed=2)
    drrs = gaussian_blur(textured_images(6, 64, seed=3), 2.0)  # other images, same blur
    unchanged = translation_report(hq, hq, drrs, low_pass_sigma_px=3.0)
    assert unchanged["spectrum_fraction"] == pytest.approx(0.0, abs=1e-9) and unchanged["low_pass_ssim"] == pytest.approx(1.0)
    half = translation_report(hq, gaussian_blur(hq, 1.0), drrs, 3.0)
    full = translation_report(hq, gaussian_blur(hq, 2.0), drrs, 3.0)
    assert 0.2 < half["spectrum_fraction"] < full["spectrum_fraction"]
    assert full["spectrum_fraction"] == pytest.approx(1.0, abs=0.1)
    assert 0.2 < half["sharpness_fraction"] < full["sharpness_fraction"]
    assert full["sharpness_fraction"] == pytest.approx(1.0, abs=0.1)
    assert full["low_pass_ssim"] > 0.95
    # the bicubic twin (down 2x) is measured at its own size, where it is the HQ image downsampled: it has not moved
    bicubic = translation_report(hq, resize_bicubic(hq, (32, 32)), drrs, 3.0)
    assert bicubic["spectrum_fraction"] == pytest.approx(0.0, abs=1e-6)
    assert bicubic["spectrum_distance_ratio"] == pytest.approx(1.0, abs=1e-6)
    # a twin blurred at its own size does move, and the DRR grid follows the twin's
    blurred_small = translation_report(hq, gaussian_blur(resize_bicubic(hq, (32, 32)), 1.0), drrs, 3.0)
    assert blurred_small["spectrum_fraction"] > 0.3


def test_band_offsets_tell_a_twin_blurrier_than_the_drrs_from_one_with_artefact_noise():
    hq, drrs = textured_images(6, 64, seed=2), gaussian_blur(textured_images(6, 64, seed=3), 2.0)
    at_drr = translation_report(hq, resize_bicubic(gaussian_blur(hq, 2.0), (32, 32)), drrs, 3.0)
    too_blurred = translation_report(hq, resize_bicubic(gaussian_blur(hq, 2.5), (32, 32)), drrs, 3.0)
    noise = 0.02 * torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    noisy = translation_report(hq, (resize_bicubic(gaussian_blur(hq, 2.0), (32, 32)) + noise).clamp(0, 1), drrs, 3.0)
    assert abs(at_drr["mid_band_offset_to_drr"]) < 0.2 and abs(at_drr["finest_band_offset_to_drr"]) < 0.2
    # blurrier than the DRRs, most of all in the finest band, yet passed by the ratio (an average over bins).
    # Expected from the Gaussians alone (sigmas 1.25 vs 1 px at 32 px): log10 power ratio
    # -4 pi^2 f^2 (1.25^2 - 1) / ln 10 = -0.39 at f = 0.2 and -1.7 at f = 0.42 cycles/px
    assert too_blurred["mid_band_offset_to_drr"] < -0.3 and too_blurred["finest_band_offset_to_drr"] < -1.0
    assert TwinCriteria().verdict(too_blurred)["reached_drr_domain"]
    assert noisy["finest_band_offset_to_drr"] > 1.0 and noisy["finest_band_offset_to_drr"] > noisy["mid_band_offset_to_drr"]
    flat = torch.zeros(16)
    assert band_offsets(flat + 1, flat) == {"mid": pytest.approx(1.0), "finest": pytest.approx(1.0)}


def test_the_drr_reference_read_through_a_coarser_grid_loses_its_top_octave():
    """Why 02 and 03 read the DRR reference at the HQ size from the DRR files, not from a generator's training stack."""
    hq, drrs = textured_images(6, 64, seed=2), gaussian_blur(textured_images(6, 64, seed=3), 1.0)
    twins = resize_bicubic(drrs, (32, 32))  # twins that are exactly the DRRs at the twin size: at the DRR domain
    direct = translation_report(hq, twins, drrs, 3.0)
    assert direct["spectrum_distance_lq_to_drr"] == pytest.approx(0.0, abs=1e-6)
    through_36 = resize_bicubic(resize_bicubic(drrs, (36, 36)), (64, 64))  # via a 36-px stack (MUNIT's 144 at 128 px)
    coarse = translation_report(hq, twins, through_36, 3.0)
    assert coarse["spectrum_distance_lq_to_drr"] > 0.1 * coarse["spectrum_distance_hq_to_drr"]


def test_twin_criteria_pass_a_blurred_twin_and_fail_a_different_image_or_an_unchanged_one():
    hq = textured_images(6, 64, seed=2)
    drrs = gaussian_blur(textured_images(6, 64, seed=3), 2.0)
    criteria = TwinCriteria()
    blurred = translation_report(hq, gaussian_blur(hq, 2.0), drrs, 3.0)
    assert blurred["spectrum_distance_ratio"] < 0.2 and blurred["spectrum_distance_hq_to_drr"] > 0.3
    assert criteria.verdict(blurred) == {"anatomy_kept": True, "reached_drr_domain": True, "passed": True}
    unchanged = translation_report(hq, hq, drrs, 3.0)
    assert unchanged["spectrum_distance_ratio"] == pytest.approx(1.0)
    assert criteria.verdict(unchanged) == {"anatomy_kept": True, "reached_drr_domain": False, "passed": False}
    other_chest = translation_report(hq, gaussian_blur(textured_images(6, 64, seed=9), 2.0), drrs, 3.0)
    assert criteria.verdict(other_chest)["anatomy_kept"] is False


def test_choose_translation_setting_takes_the_nearest_to_drrs_among_those_keeping_anatomy():
    sweep = pd.DataFrame({"strength": [0.2, 0.4, 0.6, 0.8], "low_pass_ssim": [0.97, 0.9, 0.86, 0.5],
                          "spectrum_distance_ratio": [0.8, 0.45, 0.3, 0.1]})
    chosen = choose_translation_setting(sweep)
    assert chosen.strength == 0.6 and bool(chosen.passed)
    strict = choose_translation_setting(sweep, TwinCriteria(min_low_pass_ssim=0.95, max_spectrum_distance_ratio=0.5))
    assert strict.strength == 0.2 and not strict.passed and strict.anatomy_kept
    none_keeps = choose_translation_setting(sweep.assign(low_pass_ssim=[0.5, 0.6, 0.4, 0.3]))
    assert none_keeps.strength == 0.4 and not none_keeps.anatomy_kept
    with pytest.raises(DataError, match="columns"):
        choose_translation_setting(sweep.drop(columns="low_pass_ssim"))


class DeltaDenoiser(torch.nn.Module):
    """The exact noise predictor when every training image is ``target``: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def __init__(self, target_display: torch.Tensor, scheduler):
        super().__init__()
        self.device_anchor = torch.nn.Parameter(torch.zeros(()))  # sdedit reads the device from the parameters
        self.target = target_display * 2 - 1
        self.alphas_cumprod = scheduler.alphas_cumprod

    def forward(self, sample, timestep):
        abar = self.alphas_cumprod[int(timestep)]
        return UNet2DOutput(sample=(sample - abar.sqrt() * self.target) / (1 - abar).sqrt())


class GaussianDenoiser(torch.nn.Module):
    """The exact noise predictor when pixels are i.i.d. N(mean, std^2) (in [-1, 1] units): E[x0 | x_t] is linear in x_t."""

    def __init__(self, mean: float, std: float, scheduler):
        super().__init__()
        self.device_anchor = torch.nn.Parameter(torch.zeros(()))
        self.mean, self.var = mean, std ** 2
        self.alphas_cumprod = scheduler.alphas_cumprod

    def forward(self, sample, timestep):
        abar = self.alphas_cumprod[int(timestep)]
        x0 = self.mean + abar.sqrt() * self.var / (abar * self.var + 1 - abar) * (sample - abar.sqrt() * self.mean)
        return UNet2DOutput(sample=(sample - abar.sqrt() * x0) / (1 - abar).sqrt())


def ddim_gain(scheduler, timesteps, var: float) -> float:
    """The exact factor DDIM with the Gaussian denoiser applies to (x_t - sqrt(abar) m) over the given steps, down to abar = 1.

    One step t -> t': y' = y (sqrt(abar' abar) s^2 + sqrt((1 - abar')(1 - abar))) / (abar s^2 + 1 - abar).
    """
    abars = [float(scheduler.alphas_cumprod[t]) for t in timesteps] + [1.0]
    gain = 1.0
    for abar, abar_next in zip(abars[:-1], abars[1:]):
        gain *= ((abar_next * abar) ** 0.5 * var + ((1 - abar_next) * (1 - abar)) ** 0.5) / (abar * var + 1 - abar)
    return gain


def test_sdedit_strength_sets_how_much_of_the_hq_image_survives():
    """DDPM-LQ (diffusion.sdedit on display images). For Gaussian pixels N(0, s^2) DDIM is linear: the output regressed on the HQ image has slope sqrt(abar_t0) * ddim_gain.

    strength = fraction of the 50 steps re-run: the last round(50 strength) timesteps, the first of them t0.
    """
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    std = 0.2
    denoiser = GaussianDenoiser(0.0, std, scheduler)
    hq = textured_images(1, 64, seed=4)
    centred_hq = (hq * 2 - 1).flatten()
    centred_hq = centred_hq - centred_hq.mean()
    slopes = []
    for strength in (0.05, 0.3, 0.6, 1.0):
        out = ddpm_translate(denoiser, scheduler, hq, strength, 50, seed=0) * 2 - 1
        used = [int(t) for t in scheduler.timesteps[50 - max(1, round(50 * strength)):]]
        assert len(used) == max(1, round(50 * strength)) and used[-1] == 0
        expected_slope = float(scheduler.alphas_cumprod[used[0]]) ** 0.5 * ddim_gain(scheduler, used, std ** 2)
        slopes.append(float((out.flatten() * centred_hq).sum() / (centred_hq ** 2).sum()))
        assert slopes[-1] == pytest.approx(expected_slope, abs=0.03), strength
    assert slopes[0] > 0.7 and slopes[-1] < 0.05 and slopes == sorted(slopes, reverse=True)
    with pytest.raises(ConfigError, match="strength"):
        ddpm_translate(denoiser, scheduler, hq, 0.0, 50, seed=0)


def test_sdedit_reaches_the_lq_domain_and_ilvr_keeps_the_hq_low_pass():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    hq = textured_images(1, 32, seed=4)
    target = drr_like(textured_images(1, 32, seed=5))  # the whole LQ 'domain' is this one image
    denoiser = DeltaDenoiser(target, scheduler)

    def distance(a, b):
        return float((a - b).abs().mean())

    full = ddpm_translate(denoiser, scheduler, hq, 1.0, 50, seed=0)
    assert distance(full, target) < 1e-3
    guided = ddpm_translate(denoiser, scheduler, hq, 1.0, 50, ilvr_factor=4, seed=0)
    assert float(low_pass_ssim(guided, hq, 3.0)) > 0.9 > float(low_pass_ssim(full, hq, 3.0))
    fine = lambda x: x - gaussian_blur(x, 1.0)  # noqa: E731
    assert distance(fine(guided), fine(target)) < distance(fine(guided), fine(hq))


def test_sdedit_sweep_rows_follow_strength_and_ilvr():
    from types import SimpleNamespace

    from xrlib.lq.checks import sdedit_sweep

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    hq = textured_images(1, 32, seed=4)
    target = drr_like(textured_images(1, 32, seed=5))
    denoiser = DeltaDenoiser(target, scheduler)
    denoiser.config = SimpleNamespace(sample_size=32)
    sweep = sdedit_sweep(denoiser, scheduler, hq, target, [0.1, 1.0], [0, 4], 20, 3.0)
    assert list(zip(sweep.strength, sweep.ilvr_factor)) == [(0.1, 0), (0.1, 4), (1.0, 0), (1.0, 4)]
    by = sweep.set_index(["strength", "ilvr_factor"])
    # the exact denoiser of a one-image domain turns any noised input into that image: without guidance the
    # twin is the DRR (anatomy lost, spectrum reached); ILVR keeps the HQ anatomy while moving the spectrum
    assert by.loc[(1.0, 0), "low_pass_ssim"] < 0.5 and by.loc[(1.0, 0), "spectrum_distance_ratio"] < 0.05
    assert by.loc[(1.0, 4), "low_pass_ssim"] > 0.9 and by.loc[(1.0, 4), "spectrum_distance_ratio"] < 0.9
    chosen = choose_translation_setting(sweep)
    assert chosen.ilvr_factor == 4 and chosen.anatomy_kept


def test_ddpm_lq_generator_is_deterministic_for_a_seed():
    from xrlib.lq.twins import pair_generators

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    hq = textured_images(1, 16, seed=6)
    for scheduler in (DDPMScheduler(num_train_timesteps=100), DDIMScheduler(num_train_timesteps=100)):
        settings = replace(LQ_DDPM, num_inference_steps=10)
        ddpm_twin = pair_generators(unet, scheduler, settings, {"strength": 0.5, "ilvr_factor": 2}, None, {})["ddpm"][0]
        first = ddpm_twin(hq, 3)
        assert first.shape == hq.shape and 0 <= first.min() and first.max() <= 1
        assert torch.equal(first, ddpm_twin(hq, 3))
    assert not torch.equal(first, ddpm_twin(hq, 4))


def test_body_square_cuts_the_dark_frame_and_ignores_stray_pixels(tmp_path):
    image = torch.zeros(80, 90)
    image[10:50, 5:75] = 0.6              # the body: 40 rows x 70 columns inside the CT's black surround
    image[70, 85] = image[2, 3] = 1.0      # stray bright pixels (noise, a marker) must not widen the box
    assert body_square(image) == (10, 20, 40)  # the box's shorter side, centred on the box
    save_png16(tmp_path / "drr.png", image.numpy())
    body = load_display_stack([tmp_path / "drr.png"], 16, "body")
    centre = load_display_stack([tmp_path / "drr.png"], 16, "centre")
    assert body.min() > 0.55 and torch.allclose(body, torch.full_like(body, 0.6), atol=2e-3)  # no frame left
    assert centre.min() < 0.05                                                                  # the centre square keeps it
    with pytest.raises(DataError, match="no body"):
        body_square(torch.zeros(20, 20))
    with pytest.raises(ConfigError, match="crop 'middle'"):
        load_display_stack([tmp_path / "drr.png"], 16, "middle")


def test_build_pairs_writes_images_and_a_manifest(tmp_path):
    images = textured_images(3, 48, seed=7)
    table = pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"], "split": ["train", "train", "test"],
                          "path": [f"in/{i}.png" for i in "abc"]})
    for image_id, image in zip("abc", images):
        save_png16(tmp_path / "in" / f"{image_id}.png", image[0].numpy())
    blur = lambda x, seed: gaussian_blur(x, 1.0)  # noqa: E731
    manifest = build_pairs(table, {"bicubic": (bicubic_twin, {}), "blur": (blur, {"sigma_px": 1.0})},
                           tmp_path, tmp_path / "outputs" / "pairs", hq_px=32, lq_px=16, seed=0)
    assert list(manifest.columns) == list(PAIR_COLUMNS) and len(manifest) == 6
    assert manifest.pair_id.is_unique and set(manifest.generator) == {"bicubic", "blur"}
    assert json.loads(manifest.set_index("pair_id").loc["blur-a", "generator_params"]) == {"sigma_px": 1.0}
    assert manifest.set_index("pair_id").loc["bicubic-c", "split"] == "test"
    assert set(manifest.split_unit) == {"patient"} and manifest.unit_id.equals(manifest.patient_id)
    assert pd.read_csv(tmp_path / "outputs" / "pairs" / "pairs.csv").equals(manifest)
    row = manifest.set_index("pair_id").loc["bicubic-b"]
    hq, lq = load_png(tmp_path / row.hq_path), load_png(tmp_path / row.lq_path)
    assert hq.shape == (32, 32) and lq.shape == (16, 16)
    expected_lq = resize_bicubic(torch.from_numpy(hq)[None, None], (16, 16))[0, 0].numpy()
    assert np.abs(lq - expected_lq).max() < 2e-3  # 16-bit quantisation of the HQ in between
    with pytest.raises(ConfigError, match="smaller"):
        build_pairs(table, {}, tmp_path, tmp_path / "x", hq_px=16, lq_px=16, seed=0)


def test_tile_twins_are_cut_from_the_twin_of_the_whole_square(tmp_path):
    """A generator that darkens an image's border (as DDPM-LQ, trained on whole DRRs, paints one) marks
    only the square's outer edge: its tiles' inner edges keep the HQ, and the seed is the image's."""
    image = textured_images(1, 64, seed=5)
    save_png16(tmp_path / "x.png", image[0, 0].numpy())
    one = pd.DataFrame({"image_id": ["x"], "patient_id": ["p"], "split": ["train"], "path": ["x.png"]})
    seeds = []

    def framing(x, seed):
        seeds.append(seed)
        framed = x.clone()
        framed[..., 0, :] = framed[..., -1, :] = framed[..., :, 0] = framed[..., :, -1] = 0.0
        return framed

    manifest = build_pairs(one, {"framed": (framing, {})}, tmp_path, tmp_path / "tiles", hq_px=16, lq_px=8, seed=3,
                           tiles_per_side=2, split_fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    assert seeds == [3]  # one translation of the whole 16-px square
    tiles = manifest.set_index("unit_id")
    top_left = load_png(tmp_path / tiles.loc["x_t00", "lq_path"])
    bottom_right = load_png(tmp_path / tiles.loc["x_t03", "lq_path"])
    assert np.all(top_left[0, :] == 0) and np.all(top_left[:, 0] == 0)  # the square's outer edge
    assert np.all(top_left[-1, 1:] > 0) and np.all(top_left[1:, -1] > 0)  # the edges it shares with other tiles
    assert np.all(bottom_right[-1, :] == 0) and np.all(bottom_right[0, :-1] > 0)


def test_one_patient_is_split_by_tiles_and_many_patients_by_patient(tmp_path):
    image = textured_images(1, 64, seed=11)
    save_png16(tmp_path / "x.png", image[0, 0].numpy())
    one = pd.DataFrame({"image_id": ["x"], "patient_id": ["p"], "split": ["train"], "path": ["x.png"]})
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    manifest = build_pairs(one, {"bicubic": (bicubic_twin, {})}, tmp_path, tmp_path / "tiles", hq_px=16, lq_px=8, seed=3,
                           tiles_per_side=4, split_fractions=fractions)
    assert len(manifest) == 16 and set(manifest.split_unit) == {"tile"} and manifest.unit_id.is_unique
    assert manifest.split.value_counts().to_dict() == {"train": 8, "val": 4, "test": 4}  # assign_splits: round(f * 16)
    test_tiles, train_tiles = set(manifest[manifest.split == "test"].unit_id), set(manifest[manifest.split == "train"].unit_id)
    assert test_tiles and not test_tiles & train_tiles
    # each tile is its own region of the 64-px centre square: tile 5 is rows 16-32, columns 16-32
    tile5 = load_png(tmp_path / manifest.set_index("unit_id").loc["x_t05", "hq_path"])
    assert np.abs(tile5 - image[0, 0, 16:32, 16:32].numpy()).max() < 1e-4
    again = build_pairs(one, {"bicubic": (bicubic_twin, {})}, tmp_path, tmp_path / "tiles", 16, 8, 3, 4, fractions)
    assert again.split.equals(manifest.split)  # seeded

    images = textured_images(4, 32, seed=12)
    many = pd.DataFrame({"image_id": list("abcd"), "patient_id": ["p1", "p1", "p2", "p3"],
                         "split": ["train", "train", "val", "test"], "path": [f"{i}.png" for i in "abcd"]})
    for image_id, im in zip("abcd", images):
        save_png16(tmp_path / f"{image_id}.png", im[0].numpy())
    by_patient = build_pairs(many, {"bicubic": (bicubic_twin, {})}, tmp_path, tmp_path / "patients", 16, 8, 3,
                             tiles_per_side=2, split_fractions=fractions)
    assert len(by_patient) == 16 and set(by_patient.split_unit) == {"patient"}
    assert by_patient.unit_id.equals(by_patient.patient_id)
    assert by_patient.groupby("patient_id").split.agg(set).to_dict() == {"p1": {"train"}, "p2": {"val"}, "p3": {"test"}}
    with pytest.raises(ConfigError, match="tiles_per_side"):
        build_pairs(one, {}, tmp_path, tmp_path / "few", 16, 8, 3, tiles_per_side=1, split_fractions=fractions)


@pytest.mark.shared
@pytest.mark.slow
def test_munit_on_real_xrays_moves_toward_the_drr_like_domain_and_keeps_anatomy(tmp_path, shared_dir):
    from xrlib.models.munit import MunitConfig, MunitTraining, train_munit, translate_hq_to_lq

    HANNOVER = shared_dir / "data" / "hannover-cxr"

    table = pd.read_csv(HANNOVER / "data.csv").sort_values("image_id")
    patients = sorted(table.patient_id.unique())
    hq_train = load_display_stack([HANNOVER / "png" / f"{i}.png" for i in table[table.patient_id.isin(patients[:6])].image_id[:12]], 40)
    drr_domain = drr_like(load_display_stack([HANNOVER / "png" / f"{i}.png" for i in table[table.patient_id.isin(patients[6:12])].image_id[:12]], 40))
    hq_test = load_display_stack([HANNOVER / "png" / f"{i}.png" for i in table[table.patient_id.isin(patients[-4:])].image_id[:6]], 32)
    config = MunitConfig(base_channels=8, n_downsample=2, n_res_blocks=2, mlp_dim=32, disc_channels=8, disc_layers=3, disc_scales=2)
    training = MunitTraining(steps=120, batch_size=2, crop_px=32, learning_rate=2e-3, checkpoint_every=200, seed=0)
    model = train_munit(hq_train, drr_domain, config, training, tmp_path)
    lq = translate_hq_to_lq(model, hq_test, seed=0)
    report = translation_report(hq_test, lq, resize_bicubic(drr_domain, (32, 32)), low_pass_sigma_px=2.0)
    print("MUNIT on Hannover, 32 px:", report)
    assert report["spectrum_fraction"] > 0.3
    assert report["sharpness_fraction"] > 0.3
    assert report["low_pass_ssim"] > 0.5  # 200 steps at 32 px: 0.70; 120 steps: 0.60


def test_the_three_generators_make_pairs_and_their_checks(tmp_path):
    from xrlib.lq.checks import manifest_translation_checks
    from xrlib.lq.twins import DisplayImageDataset, anchor_low_frequencies, pair_generators
    from xrlib.models.munit import Munit, MunitConfig, translate_hq_to_lq

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    munit = Munit(MunitConfig(base_channels=4, n_downsample=1, n_res_blocks=1, mlp_dim=8, disc_channels=4, disc_layers=2, disc_scales=1)).eval()
    generators = pair_generators(unet, DDIMScheduler(num_train_timesteps=100),
                                 replace(LQ_DDPM, num_inference_steps=5, sampler="ddim"),
                                 {"strength": 0.3, "ilvr_factor": 2}, munit, {"steps": 0}, munit_anchor_factor=4)
    images = textured_images(2, 32, seed=8)
    table = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p1", "p2"], "split": ["val", "test"], "path": ["a.png", "b.png"]})
    for image_id, image in zip("ab", images):
        save_png16(tmp_path / f"{image_id}.png", image[0].numpy())
    manifest = build_pairs(table, generators, tmp_path, tmp_path / "pairs", hq_px=32, lq_px=16, seed=10)
    assert sorted(manifest.generator.unique()) == ["bicubic", "ddpm", "munit"]
    assert json.loads(manifest.set_index("pair_id").loc["ddpm-b", "generator_params"])["strength"] == 0.3
    munit_b = torch.from_numpy(load_png(tmp_path / manifest.set_index("pair_id").loc["munit-b", "lq_path"]))
    hq_b_small = resize_bicubic(torch.from_numpy(load_png(tmp_path / "pairs" / "hq" / "b.png"))[None, None], (16, 16))
    anchored = anchor_low_frequencies(translate_hq_to_lq(munit, hq_b_small, seed=11), hq_b_small, 4)  # seed + row index
    assert torch.allclose(munit_b, anchored[0, 0], atol=2e-5)
    assert json.loads(manifest.set_index("pair_id").loc["munit-b", "generator_params"])["low_frequency_anchor_factor"] == 4
    checks = manifest_translation_checks(manifest, tmp_path, drr_like(images), hq_px=32, low_pass_sigma_px=2.0)
    assert list(checks.generator) == ["bicubic", "ddpm", "munit"] and set(checks.n_images) == {2}
    assert checks.set_index("generator").loc["bicubic", "low_pass_ssim"] > 0.9
    assert len(manifest_translation_checks(manifest, tmp_path, drr_like(images), 32, 2.0, split="val")) == 3
    dataset = DisplayImageDataset(images)
    assert len(dataset) == 2 and dataset[(1, 5)]["seed"] == 5 and torch.equal(dataset[1]["image"], images[1] * 2 - 1)


def test_anchoring_takes_the_references_brightness_and_contrast_and_keeps_the_twins_detail():
    from xrlib.lq.twins import anchor_low_frequencies
    from xrlib.models.sampling import low_pass

    reference = textured_images(3, 32, seed=4)
    detail = 0.05 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(16, 16)[None, None]  # area-pools to zero
    smooth = gaussian_blur(reference, 3.0)
    twin = 0.1 + 0.5 * smooth + detail  # another brightness and contrast, plus a detail layer
    anchored = anchor_low_frequencies(twin, reference, 8)
    before = (low_pass(twin, 8) - low_pass(reference, 8)).abs().mean()
    after = (low_pass(anchored, 8) - low_pass(reference, 8)).abs().mean()  # phi_N is not idempotent: near, not equal
    assert after < 0.1 * before
    def detail_amplitude(images):  # projection on the pixel-scale checkerboard
        return (images * detail).sum((2, 3)) / detail.pow(2).sum()
    torch.testing.assert_close(detail_amplitude(anchored), detail_amplitude(twin), atol=0.01, rtol=0)  # detail kept
    assert detail_amplitude(twin).min() > 0.9
    assert (anchored.mean((2, 3)) - reference.mean((2, 3))).abs().max() < 0.01 < (twin.mean((2, 3)) - reference.mean((2, 3))).abs().min()
    assert anchor_low_frequencies(twin, reference, None) is twin
    with pytest.raises(ConfigError, match="divide"):
        anchor_low_frequencies(twin[..., :30, :30], reference[..., :30, :30], 8)
    with pytest.raises(DataError, match="one shape"):
        anchor_low_frequencies(twin, reference[..., :16, :16], 8)


def test_the_anchor_factor_must_divide_the_twin_size():
    from xrlib.params import check_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    params["lq_munit"]["low_frequency_anchor_factor"] = 3
    with pytest.raises(ConfigError, match="low_frequency_anchor_factor = 3 must divide pairs.lq_px"):
        check_params(params)

"""Diffusion models: schedules against their formulas, the loss and every sampler against exact denoisers.

An exact denoiser is known in closed form for two data distributions: a single image y (the
posterior mean of x0 is y) and white Gaussian data N(0, s^2) (the posterior mean is
sqrt(a) s^2 / (a s^2 + 1 - a) x_t, a = alpha_bar_t). Wrapped as epsilon- or v-predicting
"models", they let the samplers be checked against answers known without training.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xrlib.models.restorer import image_seed, restore, restore_condition, restore_files
from xrlib.models.sampling import (
    diffusion_loss, from_diffusion_space, ilvr_guidance, make_scheduler, sample, sdedit, to_diffusion_space,
)
from xrlib.models.unet import build_unet, export_weights, load_model
from xrlib.errors import CheckpointError, ConfigError
from xrlib.io import load_png, save_png16

torch.set_num_threads(1)  # the CI machine has 2 shared cores: more threads only spin

TINY_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, True],
             "norm_num_groups": 4, "condition_channels": 1}
SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "cosine", "prediction_type": "epsilon"}


class ExactDenoiser(torch.nn.Module):
    """A 'model' returning the exact epsilon or v for data whose posterior mean is ``clean_estimate``."""

    def __init__(self, scheduler, clean_estimate, prediction_type):
        super().__init__()
        self.alphas_cumprod = scheduler.alphas_cumprod.double()
        self.clean_estimate = clean_estimate
        self.prediction_type = prediction_type
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(out_channels=1)

    def forward(self, model_input, timesteps):
        noisy = model_input[:, :1].double()
        condition = model_input[:, 1:].double()
        alpha_bar = self.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1)
        clean = self.clean_estimate(noisy, condition, alpha_bar)
        epsilon = (noisy - alpha_bar.sqrt() * clean) / (1 - alpha_bar).sqrt()
        if self.prediction_type == "sample":
            out = clean
        elif self.prediction_type == "epsilon":
            out = epsilon
        else:
            out = alpha_bar.sqrt() * epsilon - (1 - alpha_bar).sqrt() * clean
        return SimpleNamespace(sample=out.float())


def condition_is_clean(noisy, condition, alpha_bar):
    return condition


def gaussian_data(std):
    return lambda noisy, condition, alpha_bar: alpha_bar.sqrt() * std**2 / (alpha_bar * std**2 + 1 - alpha_bar) * noisy


def test_cosine_and_linear_schedules_follow_their_formulas():
    cosine = make_scheduler("ddpm", {"beta_schedule": "cosine", "num_train_timesteps": 1000})
    t = np.arange(1, 1001) / 1000
    f = lambda x: np.cos((x + 0.008) / 1.008 * np.pi / 2) ** 2  # Nichol and Dhariwal 2021, eq. 17
    expected = f(t) / f(0)
    np.testing.assert_allclose(cosine.alphas_cumprod[:980].numpy(), expected[:980], rtol=1e-4)
    linear = make_scheduler("ddim", {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})
    np.testing.assert_allclose(linear.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-5)
    with pytest.raises(ConfigError, match="beta_schedule"):
        make_scheduler("ddpm", {"beta_schedule": "sigmoid"})
    with pytest.raises(ConfigError, match="sampler"):
        make_scheduler("euler", SCHEDULE)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_loss_vanishes_for_the_exact_denoiser_only(prediction_type, loss):
    scheduler = make_scheduler("ddpm", {**SCHEDULE, "prediction_type": prediction_type})
    clean = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    exact = ExactDenoiser(scheduler, condition_is_clean, prediction_type)
    assert diffusion_loss(exact, scheduler, clean, [1, 2, 3, 4], clean, loss) < 1e-3
    wrong = ExactDenoiser(scheduler, lambda n, c, a: torch.zeros_like(c), prediction_type)
    assert diffusion_loss(wrong, scheduler, clean, [1, 2, 3, 4], clean, loss) > 0.02  # >= 0.04 over seeds


def test_each_samples_loss_term_is_independent_of_its_batch():
    torch.manual_seed(0)
    model = build_unet(TINY_UNET)
    scheduler = make_scheduler("ddpm", SCHEDULE)
    clean, condition = torch.rand(2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1
    together = diffusion_loss(model, scheduler, clean, [11, 12], condition)
    alone = [diffusion_loss(model, scheduler, clean[i:i + 1], [s], condition[i:i + 1]) for i, s in enumerate([11, 12])]
    assert together.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, rel=1e-5)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 20), ("dpm_solver", 10)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_samplers_return_the_target_of_an_exact_conditional_denoiser(sampler, steps, prediction_type):
    schedule = {**SCHEDULE, "prediction_type": prediction_type}
    scheduler = make_scheduler(sampler, schedule)
    target = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    exact = ExactDenoiser(make_scheduler("ddpm", schedule), condition_is_clean, prediction_type)
    drawn = sample(exact, scheduler, condition=target, steps=steps, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == target.shape
    torch.testing.assert_close(drawn, target, atol=2e-3, rtol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver"])
def test_sampling_is_seeded_and_each_image_independent_of_its_batch(sampler):
    torch.manual_seed(0)
    model = build_unet(TINY_UNET).eval()
    scheduler = make_scheduler(sampler, SCHEDULE)
    condition = torch.rand(2, 1, 8, 8) * 2 - 1
    both = sample(model, scheduler, condition, 8, [torch.Generator().manual_seed(s) for s in (5, 6)])
    again = sample(model, scheduler, condition, 8, [torch.Generator().manual_seed(s) for s in (5, 6)])
    second = sample(model, scheduler, condition[1:], 8, [torch.Generator().manual_seed(6)])
    other_seed = sample(model, scheduler, condition[1:], 8, [torch.Generator().manual_seed(7)])
    assert torch.equal(both, again)
    torch.testing.assert_close(both[1:], second, atol=1e-4, rtol=0)
    if sampler == "ddpm":  # stochastic: the seed matters at every step
        assert (other_seed - second).abs().max() > 0.05


def test_unconditional_sampling_needs_a_shape():
    model = build_unet({**TINY_UNET, "condition_channels": 0})
    with pytest.raises(ConfigError, match="shape"):
        sample(model, make_scheduler("ddim", SCHEDULE), steps=2)
    drawn = sample(model, make_scheduler("ddim", SCHEDULE), steps=2, shape=(3, 1, 8, 12),
                   generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 1, 8, 12) and drawn.abs().max() <= 1


@pytest.mark.parametrize("strength", [0.3, 0.7])
def test_sdedit_keeps_the_correlation_with_its_input_that_the_noise_level_implies(strength):
    # Gaussian data N(0, s^2) under DDIM: x0 is a scalar multiple of x_t0, so
    # corr(x0, input) = corr(x_t0, input) = sqrt(a) s / sqrt(a s^2 + 1 - a), a = alpha_bar(t0).
    std = 0.25
    scheduler = make_scheduler("ddim", SCHEDULE)
    exact = ExactDenoiser(make_scheduler("ddpm", SCHEDULE), gaussian_data(std), "epsilon")
    image = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(1)) * std
    edited = sdedit(exact, scheduler, image, strength, steps=50, generator=torch.Generator().manual_seed(2))
    first_timestep = int(scheduler.timesteps[50 - round(50 * strength)])
    alpha_bar = float(scheduler.alphas_cumprod[first_timestep])
    expected = math.sqrt(alpha_bar) * std / math.sqrt(alpha_bar * std**2 + 1 - alpha_bar)
    measured = np.corrcoef(edited.flatten().numpy(), image.flatten().numpy())[0, 1]
    assert measured == pytest.approx(expected, abs=0.03)


def test_ilvr_imposes_the_references_low_frequencies():
    std, factor = 0.25, 4
    scheduler = make_scheduler("ddim", SCHEDULE)
    exact = ExactDenoiser(make_scheduler("ddpm", SCHEDULE), gaussian_data(std), "epsilon")
    reference = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3)) * std
    start = torch.zeros_like(reference)
    coarse = lambda x: torch.nn.functional.avg_pool2d(x, factor).flatten().numpy()
    guided = sdedit(exact, scheduler, start, 1.0, 30, torch.Generator().manual_seed(4),
                    guidance=ilvr_guidance(reference, factor, scheduler, torch.Generator().manual_seed(5)))
    free = sdedit(exact, scheduler, start, 1.0, 30, torch.Generator().manual_seed(4))
    assert np.corrcoef(coarse(guided), coarse(reference))[0, 1] > 0.95
    assert abs(np.corrcoef(coarse(free), coarse(reference))[0, 1]) < 0.2


def test_restore_handles_any_size_and_images_do_not_depend_on_their_batch(tmp_path):
    torch.manual_seed(0)
    model = build_unet(TINY_UNET).eval()
    model_config = {"unet": TINY_UNET, "schedule": SCHEDULE, "scale": 2}
    lq = torch.rand(1, 1, 13, 21)
    restored = restore(model, model_config, lq, "ddim", 3, torch.Generator().manual_seed(0))
    assert restored.shape == (1, 1, 26, 42) and 0 <= restored.min() and restored.max() <= 1

    blurred = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 32, 32), 3, 1, 1)[0, 0].numpy()
    inputs = {name: save_png16(tmp_path / f"{name}.png", blurred) for name in ("a", "b")}
    batched = restore_files(model, model_config, inputs, tmp_path / "out", "ddim", 3, batch_size=2, seed=7)
    single = restore_files(model, model_config, {"b": inputs["b"]}, tmp_path / "single", "ddim", 3, seed=7)
    assert load_png(batched["a"]).shape == (64, 64)
    np.testing.assert_allclose(load_png(batched["b"]), load_png(single["b"]), atol=2e-4)
    assert not np.allclose(load_png(batched["a"]), load_png(batched["b"]))  # per-image seeds differ
    assert image_seed(7, "a") == image_seed(7, "a") != image_seed(7, "b")
    resized = restore_files(model, model_config, {"a": inputs["a"]}, tmp_path / "small", "ddim", 2, input_px=16)
    assert load_png(resized["a"]).shape == (32, 32)


def test_exported_weights_round_trip_and_refuse_other_architectures_or_tampering(tmp_path):
    torch.manual_seed(0)
    model = build_unet(TINY_UNET)
    model_config = {"unet": TINY_UNET, "schedule": SCHEDULE, "scale": 2}
    path = export_weights(model, tmp_path / "ema.safetensors", model_config)
    loaded, stored_config = load_model(path)
    assert stored_config == model_config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    wider = {**model_config, "unet": {**TINY_UNET, "block_out_channels": [16, 16]}}
    with pytest.raises(CheckpointError, match="another architecture"):
        load_model(path, wider)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="tampered"):
        load_model(path)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="no diffusion model config"):
        load_model(foreign)


def test_unet_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="attention_levels"):
        build_unet({**TINY_UNET, "attention_levels": [True]})
    with pytest.raises(ConfigError, match="norm_num_groups"):
        build_unet({**TINY_UNET, "norm_num_groups": 3})


RESIDUAL = {**SCHEDULE, "prediction_type": "sample", "target": "residual", "residual_scale": 0.1}


def test_residual_space_round_trips_and_needs_a_condition():
    image = torch.rand(2, 1, 8, 8) * 2 - 1
    condition = (image + 0.05 * torch.randn(2, 1, 8, 8)).clamp(-1, 1)
    residual = to_diffusion_space(image, condition, RESIDUAL)
    torch.testing.assert_close(residual, (image - condition) / 0.1)
    torch.testing.assert_close(from_diffusion_space(residual, condition, RESIDUAL), image)
    assert torch.equal(to_diffusion_space(image, condition, SCHEDULE), image)
    with pytest.raises(ConfigError, match="condition"):
        to_diffusion_space(image, None, RESIDUAL)
    with pytest.raises(ConfigError, match="target"):
        to_diffusion_space(image, condition, {**RESIDUAL, "target": "velocity"})
    with pytest.raises(ConfigError, match="residual_scale"):
        to_diffusion_space(image, condition, {**RESIDUAL, "residual_scale": 0})


class ZeroResidual(torch.nn.Module):
    """An x0-predicting 'model' that always predicts a zero residual."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(out_channels=1)

    def forward(self, model_input, timesteps):
        return SimpleNamespace(sample=torch.zeros_like(model_input[:, :1]))


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_a_zero_residual_gives_back_the_upsampled_input(sampler):
    lq = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    model_config = {"unet": TINY_UNET, "schedule": RESIDUAL, "scale": 2}
    restored = restore(ZeroResidual(), model_config, lq, sampler, 10, torch.Generator().manual_seed(0))
    upsampled = torch.nn.functional.interpolate(lq, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(restored, upsampled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler,steps", [("ddim", 20), ("dpm_solver", 10)])
def test_residual_sampling_with_the_exact_denoiser_returns_the_hq_image(sampler, steps):
    hq = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    condition = (hq + 0.1 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    true_residual = to_diffusion_space(hq, condition, RESIDUAL)
    exact = ExactDenoiser(make_scheduler("ddpm", RESIDUAL), lambda n, c, a: true_residual.double(), "sample")
    restored = restore_condition(exact, {"schedule": RESIDUAL}, condition, sampler, steps, torch.Generator().manual_seed(0))
    torch.testing.assert_close(restored, hq, atol=1e-4, rtol=0)

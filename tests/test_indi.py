"""InDI (Delbracio and Milanfar 2023): the bridge's loss and restoration against answers known without training.

Known answers: an exact denoiser (it returns the clean target) restores it in any number of steps;
a zero residual gives back the upsampled input; and for Gaussian data x ~ N(0, s^2) bridged from
noise z ~ N(0, e^2), whose posterior mean is E[x | x_t] = (1 - t) s^2 / ((1 - t)^2 s^2 + t^2 e^2) x_t,
one step returns that mean (0 at t = 1) and many steps transport the noise onto the data's
spread s (InDI's iteration is the Euler scheme of the bridge's marginal-preserving ODE).
"""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.errors import ConfigError, DataError
from xrlib.models.restorer import (air_outside_body, choose_drr_steps, choose_restore_steps, perception_distortion, restore,
                                   restore_condition)
from xrlib.models.sampling import diffusion_process, indi_loss, indi_restore, to_diffusion_space
from xrlib.models.unet import diffusion_loss_fn
from xrlib.params import check_params, load_params

torch.set_num_threads(1)

T = 1000
INDI = {"num_train_timesteps": T, "prediction_type": "sample", "loss": "l2", "target": "residual",
        "residual_scale": 0.1, "process": "indi", "indi_noise": 0.0}


class BridgeDenoiser(torch.nn.Module):
    """A 'model' F(x_t, t) given in closed form by ``estimate(x_t, t, condition)``."""

    def __init__(self, estimate):
        super().__init__()
        self.estimate = estimate
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(out_channels=1)

    def forward(self, model_input, timesteps):
        t = (timesteps.double() / (T - 1)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=self.estimate(model_input[:, :1].double(), t, model_input[:, 1:]).float())


def hq_and_condition(seed=1):
    hq = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    condition = (hq + 0.1 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed + 1))).clamp(-1, 1)
    return hq, condition


@pytest.mark.parametrize("steps", [1, 3, 8])
@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_the_exact_denoiser_restores_the_hq_image_in_any_number_of_steps(steps, noise):
    hq, condition = hq_and_condition()
    schedule = {**INDI, "indi_noise": noise}
    true_residual = to_diffusion_space(hq, condition, schedule).double()
    exact = BridgeDenoiser(lambda x_t, t, c: true_residual)
    restored = restore_condition(exact, {"schedule": schedule}, condition, steps=steps,
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(restored, hq, atol=1e-5, rtol=0)


def test_a_zero_residual_gives_back_the_upsampled_input():
    lq = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    zero = BridgeDenoiser(lambda x_t, t, c: torch.zeros_like(x_t))
    restored = restore(zero, {"unet": {"block_out_channels": [8, 16]}, "schedule": INDI, "scale": 2}, lq, steps=4)
    upsampled = torch.nn.functional.interpolate(lq, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(restored, upsampled, atol=1e-6, rtol=0)


def chest_on_air(side=16):
    """A DRR-like (1, 1, side, side) image: a grey body on exact black air, with a black hole inside the body."""
    image = torch.zeros(1, 1, side, side)
    image[..., 4:12, 3:13] = 0.5
    image[..., 7:9, 7:9] = 0.0
    return image


def test_air_is_the_black_connected_to_the_border_not_a_black_hole_inside_the_body():
    air = air_outside_body(chest_on_air())[0, 0]
    expected = torch.ones(16, 16, dtype=torch.bool)
    expected[4:12, 3:13] = False
    assert torch.equal(air, expected)
    assert not air_outside_body(torch.full((2, 1, 8, 8), 0.3)).any()


@pytest.mark.parametrize("steps", [1, 4])
def test_drr_restoration_leaves_the_air_around_the_patient_black_and_restores_the_rest(steps):
    brighten = BridgeDenoiser(lambda x_t, t, c: torch.full_like(x_t, 2.0))  # residual 2 x 0.1 in [-1, 1]: +0.1 in [0, 1]
    lq = chest_on_air()
    model_config = {"unet": {"block_out_channels": [8, 16]}, "schedule": INDI, "scale": 2}
    restored = restore(brighten, model_config, lq, steps=steps, keep_air=True)
    air = torch.nn.functional.interpolate(air_outside_body(lq).float(), scale_factor=2, mode="nearest").bool()
    assert restored.shape == (1, 1, 32, 32) and air.sum() == 32 * 32 - 16 * 20
    assert torch.all(restored[air] == 0)
    brightened = (torch.nn.functional.interpolate(lq, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1) + 0.1).clamp(0, 1)
    torch.testing.assert_close(restored[~air], brightened[~air], atol=1e-5, rtol=0)
    assert torch.all(restored[0, 0, 15:17, 15:17] > 0.05)  # the black hole inside the body is restored
    # a twin's black border is restored like any other pixel unless asked (DDPM-LQ's corners are artefacts)
    torch.testing.assert_close(restore(brighten, model_config, lq, steps=steps), brightened, atol=1e-5, rtol=0)


def gaussian_posterior_mean(data_std, noise_std):
    def estimate(x_t, t, condition):
        return (1 - t) * data_std**2 / ((1 - t) ** 2 * data_std**2 + t**2 * noise_std**2) * x_t
    return estimate


def test_one_step_is_the_posterior_mean_and_many_steps_reach_the_data_spread():
    data_std, noise_std = 0.7, 1.0
    schedule = {**INDI, "target": "image", "indi_noise": noise_std}
    model = BridgeDenoiser(gaussian_posterior_mean(data_std, noise_std))
    start = torch.zeros(4, 1, 64, 64)
    one = indi_restore(model, schedule, start, 1, generator=torch.Generator().manual_seed(0))
    assert one.abs().max() == 0  # E[x | x_1] = 0: x_1 is pure noise
    many = indi_restore(model, schedule, start, 400, generator=torch.Generator().manual_seed(0))
    assert many.std().item() == pytest.approx(data_std, rel=0.03)
    few = indi_restore(model, schedule, start, 4, generator=torch.Generator().manual_seed(0))
    assert 0 < few.std().item() < many.std().item()  # fewer steps: nearer the mean, less spread


def test_the_loss_vanishes_for_the_exact_denoiser_only_and_training_batches_use_it():
    hq, condition = hq_and_condition()
    schedule = {**INDI, "indi_noise": 0.3}
    clean = to_diffusion_space(hq, condition, schedule)
    degraded = to_diffusion_space(condition, condition, schedule)
    seeds = torch.tensor([5, 6])
    assert indi_loss(BridgeDenoiser(lambda x_t, t, c: clean.double()), schedule, clean, degraded, seeds, condition) == 0
    wrong = BridgeDenoiser(lambda x_t, t, c: x_t)
    assert indi_loss(wrong, schedule, clean, degraded, seeds, condition) > 0.01
    batch = {"image": hq, "condition": condition, "seed": seeds}
    assert diffusion_loss_fn(schedule)(BridgeDenoiser(lambda x_t, t, c: clean.double()), batch) == 0
    with pytest.raises(ConfigError, match="condition"):
        diffusion_loss_fn(schedule)(wrong, {"image": hq, "seed": seeds})


def test_a_conditioned_bridge_without_noise_leaks_its_target_and_is_refused():
    """With the condition y at hand, x_t = (1 - t) x + t y gives x = (x_t - t y) / (1 - t): a 'network' that only
    divides scores a zero loss at every t < 1 without restoring anything. The bridge's noise stops that."""
    hq, condition = hq_and_condition()
    noisy_schedule = {**INDI, "indi_noise": 2.0}
    clean = to_diffusion_space(hq, condition, noisy_schedule)
    degraded = to_diffusion_space(condition, condition, noisy_schedule)  # zero: the residual's degraded end
    seeds = torch.arange(64)
    dividing = BridgeDenoiser(lambda x_t, t, c: x_t / (1 - t).clamp_min(1e-3))
    clean_batch, degraded_batch = clean.repeat(32, 1, 1, 1), degraded.repeat(32, 1, 1, 1)
    with pytest.raises(ConfigError, match="indi_noise > 0"):
        indi_loss(dividing, {**INDI, "indi_noise": 0.0}, clean_batch, degraded_batch, seeds, condition.repeat(32, 1, 1, 1))
    leaked = indi_loss(dividing, {**INDI, "indi_noise": 0.0}, clean_batch, degraded_batch, seeds)  # no condition: allowed
    assert leaked < 1e-6 * clean.pow(2).mean()
    assert indi_loss(dividing, noisy_schedule, clean_batch, degraded_batch, seeds, condition.repeat(32, 1, 1, 1)) > clean.pow(2).mean()
    params = load_params()
    params["restorer"]["configs"]["diffusionxray_munit"]["schedule"] = {"process": "indi", "prediction_type": "sample",
                                                                        "indi_noise": 0.0}
    with pytest.raises(ConfigError, match="diffusionxray_munit.*indi_noise > 0"):
        check_params(params)


def test_indi_needs_x0_prediction_and_a_known_process():
    with pytest.raises(ConfigError, match="prediction_type"):
        diffusion_process({**INDI, "prediction_type": "epsilon"})
    with pytest.raises(ConfigError, match="process"):
        diffusion_process({**INDI, "process": "bridge"})
    params = load_params()
    params["restorer"]["configs"]["diffusionxray_munit"]["schedule"] = {"process": "indi", "prediction_type": "epsilon"}
    with pytest.raises(ConfigError, match="diffusionxray_munit.*prediction_type"):
        check_params(params)


def sweep_table(gains_by_steps):
    rows = []
    for steps, (psnr_gain, ssim_gain) in gains_by_steps.items():
        for pair in range(3):
            rows.append({"pair_id": f"p{pair}", "steps": steps, "input_psnr_db": 20.0 + pair, "input_ssim": 0.5,
                         "psnr_db": 20.0 + pair + psnr_gain, "ssim": 0.5 + ssim_gain})
    return pd.DataFrame(rows)


def test_the_step_count_with_the_best_ssim_among_those_beating_the_input_in_psnr_is_chosen():
    chosen = choose_restore_steps(sweep_table({1: (1.0, 0.02), 2: (0.5, 0.03), 4: (0.2, 0.04), 8: (-0.5, 0.05)}))
    assert chosen["steps"] == 4 and chosen["chosen"] == "highest SSIM beating the input in PSNR"  # 8 loses in PSNR
    assert chosen["psnr_gain_db"] == pytest.approx(0.2) and chosen["ssim_gain"] == pytest.approx(0.04)
    tie = choose_restore_steps(sweep_table({1: (1.0, 0.02), 2: (0.5, 0.02), 4: (0.2, 0.01)}))
    assert tie["steps"] == 1  # equal SSIM: fewer steps
    fallback = choose_restore_steps(sweep_table({1: (-0.2, 0.01), 4: (-0.1, -0.01)}))
    assert fallback["steps"] == 4 and "none beats" in fallback["chosen"]
    with pytest.raises(DataError, match="input_ssim"):
        choose_restore_steps(sweep_table({1: (1, 1)}).drop(columns="input_ssim"))


def test_drrs_take_the_most_steps_within_the_psnr_budget_of_the_fidelity_choice():
    # PSNR gains over the input by steps 1..4: 1.0, 0.7, 0.33, 0.1 (the released restorer's curve, roughly)
    sweep = sweep_table({1: (1.0, 0.01), 2: (0.7, -0.005), 3: (0.33, -0.02), 4: (0.1, -0.035)})
    chosen = choose_drr_steps(sweep, 1, 0.75)
    assert chosen["steps"] == 3 and chosen["psnr_cost_db"] == pytest.approx(0.67)  # 4 costs 0.9 dB
    assert choose_drr_steps(sweep, 1, 0.0)["steps"] == 1  # no budget: the fidelity end
    assert choose_drr_steps(sweep, 1, 0.9)["steps"] == 4  # exactly at the budget counts
    assert choose_drr_steps(sweep, 1, 5.0)["steps"] == 4  # the sweep's largest count caps it
    # never fewer steps than the fidelity choice, even where fewer would cost nothing
    assert choose_drr_steps(sweep_table({1: (1.0, 0.0), 2: (0.2, 0.01)}), 2, 0.0)["steps"] == 2
    with pytest.raises(ConfigError, match="drr_psnr_budget_db"):
        choose_drr_steps(sweep, 1, -0.1)
    with pytest.raises(DataError, match="no row for the fidelity choice"):
        choose_drr_steps(sweep, 8, 0.5)


def test_perception_distortion_puts_the_input_at_step_zero_and_summarises_each_step_count():
    sweep = sweep_table({1: (1.0, 0.02), 4: (0.2, -0.01)}).assign(config="a")
    sweep["input_spectrum_distance"], sweep["input_high_frequency_fraction"], sweep["hq_high_frequency_fraction"] = 1.5, 1e-4, 1e-3
    sweep["spectrum_distance"] = sweep.steps.map({1: 1.0, 4: 0.4}) + 0.1 * sweep.pair_id.str[1:].astype(int)
    sweep["high_frequency_fraction"] = sweep.steps.map({1: 2e-4, 4: 8e-4})
    table = perception_distortion(sweep).set_index("steps")
    assert list(table.index) == [0, 1, 4] and (table.config == "a").all() and (table.pairs == 3).all()
    assert table.loc[0, "psnr_db"] == pytest.approx(21.0) and table.loc[0, "ssim"] == pytest.approx(0.5)
    assert table.loc[0, "spectrum_distance"] == pytest.approx(1.5) and table.loc[0, "high_frequency_ratio"] == pytest.approx(0.1)
    assert table.loc[1, "psnr_db"] == pytest.approx(22.0) and table.loc[4, "ssim"] == pytest.approx(0.49)
    assert table.loc[1, "spectrum_distance"] == pytest.approx(1.1) and table.loc[4, "spectrum_distance"] == pytest.approx(0.5)  # medians
    assert table.loc[4, "high_frequency_ratio"] == pytest.approx(0.8)
    with pytest.raises(DataError, match="spectrum_distance.*rerun 05"):
        perception_distortion(sweep.drop(columns="spectrum_distance"))


def write_val_pairs(root, n=3):
    """A pair manifest of ``n`` validation pairs (HQ 16 px, bicubic LQ 8 px) written as PNGs under ``root``."""
    from xrlib.data.pairs import PAIR_COLUMNS, resize_bicubic
    from xrlib.io import save_png16

    rows = []
    for i in range(n):
        hq = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(i))
        lq = resize_bicubic(hq, (8, 8))
        save_png16(root / f"hq{i}.png", hq[0, 0].numpy())
        save_png16(root / f"lq{i}.png", lq[0, 0].numpy())
        rows.append({"pair_id": f"bicubic-{i}", "unit_id": f"p{i}", "split_unit": "patient", "patient_id": f"p{i}",
                     "split": "val", "generator": "bicubic", "generator_params": "{}", "lq_path": f"lq{i}.png",
                     "hq_path": f"hq{i}.png"})
    pd.DataFrame(rows, columns=list(PAIR_COLUMNS)).to_csv(root / "pairs.csv", index=False)
    return pd.DataFrame(rows)


def test_validation_sweep_scores_each_step_count_against_the_input_and_diffusion_models_keep_their_steps(tmp_path):
    from xrlib.models.restorer import steps_sweep, validated_steps

    manifest = write_val_pairs(tmp_path)
    zero = BridgeDenoiser(lambda x_t, t, c: torch.zeros_like(x_t))  # restores the upsampled input itself
    config = {"unet": {"block_out_channels": [8, 16]}, "schedule": INDI, "scale": 2,
              "data": {"generator": "bicubic", "pairs": "pairs.csv"}}
    sweep = steps_sweep(zero, config, manifest, tmp_path, [1, 4])
    assert len(sweep) == 6 and sorted(sweep.steps.unique()) == [1, 4]
    # 16-bit PNG rounding apart, a zero residual scores exactly as its input
    assert (sweep.psnr_db - sweep.input_psnr_db).abs().max() < 1e-6
    np.testing.assert_allclose(sweep.spectrum_distance, sweep.input_spectrum_distance, atol=1e-4)
    np.testing.assert_allclose(sweep.high_frequency_fraction, sweep.input_high_frequency_fraction, rtol=1e-3)
    assert (sweep.spectrum_distance > 0).all()  # bicubic blur: the input lacks the HQ's fine-scale power
    assert (sweep.high_frequency_fraction < sweep.hq_high_frequency_fraction).all()
    assert sweep.input_psnr_db.between(10, 60).all() and sweep.input_ssim.between(0, 1).all()
    steps, table = validated_steps(zero, config, tmp_path, [1, 4], default_steps=20)
    assert len(table) == 6 and steps["test_pairs"] in (1, 4)  # every count scores as the input (to rounding)
    assert steps["drrs"] == steps["test_pairs"]  # no PSNR budget: DRRs at the test pairs' count
    # a zero residual costs no PSNR at any count, so any budget takes the sweep's largest for DRRs
    assert validated_steps(zero, config, tmp_path, [1, 4], 20, drr_psnr_budget_db=0.5)[0]["drrs"] == 4
    diffusion = {**config, "schedule": {"prediction_type": "epsilon"}}
    assert validated_steps(zero, diffusion, tmp_path, [1, 4], default_steps=20)[0] == {"test_pairs": 20, "drrs": 20}
    no_val = {**config, "data": {"generator": "munit", "pairs": "pairs.csv"}}
    assert validated_steps(zero, no_val, tmp_path, [1, 4], default_steps=20)[0] == {"test_pairs": 20, "drrs": 20}
    with pytest.raises(DataError, match="no pairs"):
        steps_sweep(zero, config, manifest.iloc[:0], tmp_path, [1])

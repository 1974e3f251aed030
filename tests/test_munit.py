"""MUNIT: network shapes, AdaIN, each loss against hand-computed values, training, exact resume, seeded translation."""

import pytest
import torch

from xrlib.models.munit import (
    Munit,
    MunitConfig,
    MunitTraining,
    adaptive_instance_norm,
    discriminator_loss,
    generator_losses,
    load_munit,
    low_frequency_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    random_crops,
    reconstruction_loss,
    style_interpolation,
    train_munit,
    translate_hq_to_lq,
)
from xrlib.models.checkpoint import latest_checkpoint
from xrlib.errors import ConfigError
from xrlib.params import parse

TINY = MunitConfig(base_channels=4, n_downsample=1, n_res_blocks=1, style_dim=8, mlp_dim=8,
                   disc_channels=4, disc_layers=2, disc_scales=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Display images in [0, 1]: random blobs, enough structure to learn from."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_every_network_output_has_its_shape():
    torch.manual_seed(0)
    model = Munit(TINY)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    content, style = model.gen_a.encode(x)
    assert content.shape == (3, 8, 8, 8)  # 4 channels doubled once, 16 px halved once
    assert style.shape == (3, 8)
    image = model.gen_b.decode(content, style)
    assert image.shape == (3, 1, 16, 16) and image.abs().max() <= 1
    outputs = model.dis_a(x)
    assert [o.shape for o in outputs] == [(3, 1, 4, 4), (3, 1, 2, 2)]  # 2 stride-2 convs, on 16 px and 8 px
    big = Munit(MunitConfig())  # the paper's widths
    assert big.gen_a.content_encoder(torch.zeros(1, 1, 64, 64)).shape == (1, 256, 16, 16)
    assert len(big.dis_a(torch.zeros(1, 1, 64, 64))) == 3


def test_adain_sets_each_channels_mean_and_std():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [2.0, 2.0]]]])  # means 4, 1; stds sqrt(5), 1
    out = adaptive_instance_norm(x, scale=torch.tensor([[2.0, 0.5]]), shift=torch.tensor([[1.0, -1.0]]), eps=0.0)
    expected_first = 2.0 * (torch.tensor([1.0, 3.0, 5.0, 7.0]) - 4.0) / 5.0 ** 0.5 + 1.0
    assert torch.allclose(out[0, 0].flatten(), expected_first)
    assert torch.allclose(out[0, 1].flatten(), torch.tensor([-1.5, -1.5, -0.5, -0.5]))


def test_decoder_output_depends_on_style_through_adain():
    torch.manual_seed(0)
    model = Munit(TINY)
    content = model.gen_a.content_encoder(torch.rand(1, 1, 16, 16))
    style_1, style_2 = torch.randn(2, 1, 8)
    out_1 = model.gen_b.decode(content, style_1)
    assert torch.equal(out_1, model.gen_b.decode(content, style_1.clone()))
    assert (out_1 - model.gen_b.decode(content, style_2)).abs().mean() > 1e-3


def test_lsgan_losses_match_hand_computed_values():
    real = [torch.tensor([1.0, 0.5]), torch.tensor([[0.0]])]
    fake = [torch.tensor([0.0, 0.5]), torch.tensor([[1.0]])]
    # scale 1: mean(0, .25) + mean(0, .25) = .25; scale 2: (0-1)^2 + 1^2 = 2
    assert float(lsgan_discriminator_loss(real, fake)) == pytest.approx(2.25)
    # scale 1: mean(1, .25) = .625; scale 2: 0
    assert float(lsgan_generator_loss(fake)) == pytest.approx(0.625)
    assert float(reconstruction_loss(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0]))) == pytest.approx(1.5)


def test_generator_terms_are_the_papers_and_weighted_as_configured():
    torch.manual_seed(0)
    config = MunitConfig(**{**TINY.to_dict(), "cycle_weight": 2.0})
    model = Munit(config)
    x_a, x_b = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    s_a, s_b = torch.randn(2, 8), torch.randn(2, 8)
    terms = generator_losses(model, x_a, x_b, s_a, s_b)
    expected_total = 10 * terms["image_recon"] + terms["content_recon"] + terms["style_recon"] + terms["gan"] + 2 * terms["cycle"]
    assert torch.allclose(terms["total"], expected_total)
    c_a, own_s_a = model.gen_a.encode(x_a)
    c_b, own_s_b = model.gen_b.encode(x_b)
    by_hand = (model.gen_a.decode(c_a, own_s_a) - x_a).abs().mean() + (model.gen_b.decode(c_b, own_s_b) - x_b).abs().mean()
    assert torch.allclose(terms["image_recon"], by_hand)
    x_ab = model.gen_b.decode(c_a, s_b)
    style_b_back = model.gen_b.style_encoder(x_ab)
    x_ba = model.gen_a.decode(c_b, s_a)
    style_by_hand = (model.gen_a.style_encoder(x_ba) - s_a).abs().mean() + (style_b_back - s_b).abs().mean()
    assert torch.allclose(terms["style_recon"], style_by_hand)
    gan_by_hand = sum(((o - 1) ** 2).mean() for o in model.dis_a(x_ba)) + sum(((o - 1) ** 2).mean() for o in model.dis_b(x_ab))
    assert torch.allclose(terms["gan"], gan_by_hand)
    assert "cycle" not in generator_losses(Munit(TINY), x_a, x_b, s_a, s_b)


def test_low_frequency_term_compares_low_passes_only():
    flat = torch.full((1, 1, 16, 16), 0.2)
    assert float(low_frequency_loss(flat + 0.3, flat, 4)) == pytest.approx(0.3, abs=1e-6)  # a constant offset survives
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 0.4 - 0.2  # finest texture, zero mean per 4x4
    assert float(low_frequency_loss(flat + checker, flat, 4)) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    config = MunitConfig(**{**TINY.to_dict(), "low_frequency_weight": 5.0, "low_frequency_factor": 4})
    model = Munit(config)
    x_a, x_b = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    s_a, s_b = torch.randn(2, 8), torch.randn(2, 8)
    terms = generator_losses(model, x_a, x_b, s_a, s_b)
    x_ab = model.gen_b.decode(model.gen_a.encode(x_a)[0], s_b)
    x_ba = model.gen_a.decode(model.gen_b.encode(x_b)[0], s_a)
    by_hand = low_frequency_loss(x_ab, x_a, 4) + low_frequency_loss(x_ba, x_b, 4)
    assert torch.allclose(terms["low_frequency"], by_hand)
    expected_total = 10 * terms["image_recon"] + terms["content_recon"] + terms["style_recon"] + terms["gan"] + 5 * by_hand
    assert torch.allclose(terms["total"], expected_total)
    assert "low_frequency" not in generator_losses(Munit(TINY), x_a, x_b, s_a, s_b)


def test_discriminator_loss_does_not_train_the_generators():
    torch.manual_seed(0)
    model = Munit(TINY)
    discriminator_loss(model, torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), torch.randn(1, 8), torch.randn(1, 8)).backward()
    assert all(p.grad is None for p in model.generator_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator_parameters())


def test_training_lowers_the_reconstruction_loss(tmp_path):
    hq, lq = smooth_images(2, 16, seed=1), smooth_images(2, 16, seed=2)
    training = MunitTraining(steps=40, batch_size=2, crop_px=16, learning_rate=3e-3, checkpoint_every=40, seed=0)
    fixed_styles = torch.randn(2, 8, generator=torch.Generator().manual_seed(5)), torch.randn(2, 8, generator=torch.Generator().manual_seed(6))

    def image_recon(model):
        with torch.no_grad():
            return float(generator_losses(model, hq * 2 - 1, lq * 2 - 1, *fixed_styles)["image_recon"])

    torch.manual_seed(training.seed)
    before = image_recon(Munit(TINY))  # the same initial weights train_munit starts from
    after = image_recon(train_munit(hq, lq, TINY, training, tmp_path))
    assert after < 0.7 * before


def test_resume_after_interruption_equals_a_straight_run(tmp_path):
    hq, lq = smooth_images(3, 20, seed=1), smooth_images(3, 20, seed=2)
    training = MunitTraining(steps=6, batch_size=2, crop_px=16, learning_rate=1e-3, checkpoint_every=3, seed=3)
    straight = train_munit(hq, lq, TINY, training, tmp_path / "straight")
    interrupted = MunitTraining(**{**training.__dict__, "steps": 3})
    train_munit(hq, lq, TINY, interrupted, tmp_path / "resumed")  # stops after the step-3 checkpoint
    (run,) = (tmp_path / "resumed").iterdir()  # the run identity's folder
    assert latest_checkpoint(run).name == "step-00000003"
    resumed = train_munit(hq, lq, TINY, training, tmp_path / "resumed")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    reloaded = load_munit(latest_checkpoint(run), TINY)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), reloaded.state_dict().values()))


def test_translation_is_deterministic_for_a_seed_and_follows_the_style():
    torch.manual_seed(0)
    model = Munit(TINY).eval()
    hq = smooth_images(2, 16, seed=1)
    first = translate_hq_to_lq(model, hq, seed=7)
    assert first.shape == hq.shape and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, translate_hq_to_lq(model, hq, seed=7))
    assert not torch.equal(first, translate_hq_to_lq(model, hq, seed=8))
    reference = smooth_images(1, 16, seed=3)
    style = model.gen_b.style_encoder(reference * 2 - 1)
    assert torch.allclose(translate_hq_to_lq(model, hq, reference_lq_display=reference), translate_hq_to_lq(model, hq, style=style))
    path = style_interpolation(model, hq[:1], torch.zeros(8), style[0], n_steps=3)
    assert torch.allclose(path[0], translate_hq_to_lq(model, hq[:1], style=torch.zeros(1, 8))[0])
    assert torch.allclose(path[2], translate_hq_to_lq(model, hq[:1], style=style)[0])
    with pytest.raises(ConfigError, match="multiple of 2"):
        translate_hq_to_lq(model, torch.rand(1, 1, 15, 16))


def test_random_crops_refuses_crops_larger_than_the_images():
    with pytest.raises(ConfigError, match="crop_px"):
        random_crops(torch.zeros(1, 1, 8, 8), 1, 16)
    with pytest.raises(ConfigError, match="unknown key style_dims"):
        parse(MunitConfig, {"style_dims": 8})


def test_other_settings_keep_the_earlier_run_and_fewer_steps_are_refused(tmp_path):
    hq, lq = smooth_images(2, 16, seed=1), smooth_images(2, 16, seed=2)
    training = MunitTraining(steps=2, batch_size=2, crop_px=16, learning_rate=1e-3, checkpoint_every=2, seed=0)
    train_munit(hq, lq, TINY, training, tmp_path)
    (earlier,) = tmp_path.iterdir()
    with pytest.warns(UserWarning, match=f"earlier runs {earlier.name} are kept"):
        train_munit(hq, lq, TINY, MunitTraining(**{**training.__dict__, "learning_rate": 2e-3}), tmp_path)
    assert len(list(tmp_path.iterdir())) == 2 and latest_checkpoint(earlier).name == "step-00000002"
    with pytest.raises(ConfigError, match="already reached step 2, past steps = 1"):
        train_munit(hq, lq, TINY, MunitTraining(**{**training.__dict__, "steps": 1}), tmp_path)

"""MUNIT: multimodal unsupervised image-to-image translation (Huang et al., ECCV 2018), for one-channel X-rays.

Written from the paper (arXiv 1804.04732), not from its non-commercial code. Each domain has an
auto-encoder whose encoder splits an image into a *content code* (a spatial map, shared between
domains, instance-normalised so it carries no style) and a *style code* (an 8-dim vector, global
pooled); its decoder renders a content code in a style through AdaIN residual blocks whose scale and
shift an MLP predicts from the style. Translation a -> b keeps the content of an a-image and draws
the style from domain b. Domain ``a`` is the high-quality X-ray, domain ``b`` the low-quality DRR.

Losses (paper eqs. 1-5): LSGAN adversarial terms from multi-scale discriminators, L1 image
reconstruction (weight 10), L1 content and style reconstruction (1 and 1), and an optional L1
cycle term (x -> other domain -> back with the original style). The paper's optional VGG
perceptual term is not implemented: it needs ImageNet weights the embedded default does not have.

Beyond the paper, a **low-frequency consistency** term (off by default, ``low_frequency_weight``):
the L1 distance between the low-passes of each translation and of its source image, with the ILVR
filter phi_N (:func:`xrlib.models.sampling.low_pass`: area downsampling by ``low_frequency_factor``,
bicubic upsampling). It is the identity-preserving low-frequency reconstruction loss of Frequency
Domain Image Translation (Cai et al., ICCV 2021): a translation may change texture and sharpness
(the style) but not the anatomy, which a short CPU training otherwise loses.

Networks see images in [-1, 1]; the translation helpers take and return display images in [0, 1].
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from xrlib.models.checkpoint import load_checkpoint, load_latest_checkpoint, load_weights, save_checkpoint
from xrlib.models.sampling import low_pass
from xrlib.models.training import check_steps_reached, drop_logged_after, run_checkpoints, training_time_extra
from xrlib.errors import ConfigError
from xrlib.io import arrays_sha256
from xrlib.progress import progress as progress_bar


@dataclass(frozen=True)
class MunitConfig:
    """Architecture and loss weights (the paper's defaults, except the smaller widths for CPU)."""

    channels: int = 1
    base_channels: int = 64
    n_downsample: int = 2
    n_res_blocks: int = 4
    style_dim: int = 8
    mlp_dim: int = 256
    disc_channels: int = 64
    disc_layers: int = 4
    disc_scales: int = 3
    gan_weight: float = 1.0
    image_recon_weight: float = 10.0
    content_recon_weight: float = 1.0
    style_recon_weight: float = 1.0
    cycle_weight: float = 0.0
    low_frequency_weight: float = 0.0
    low_frequency_factor: int = 4


    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MunitTraining:
    """Optimisation settings (Adam, beta1 0.5, step LR decay, as in the paper)."""

    steps: int = 1000
    batch_size: int = 1
    crop_px: int = 64
    learning_rate: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-4
    lr_step: int = 100000
    lr_gamma: float = 0.5
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    init_weights: Optional[str] = None
    """Start the generators from these weights (``released:NAME`` or a safetensors path of MUNIT's two
    generators, as :mod:`xrlib.models.release` writes them); the discriminators start fresh."""

    def identity_settings(self) -> dict[str, Any]:
        """What a resumed run must share: not steps (the LR steps do not depend on the total: more steps extend
        a run) nor logging; the start weights by their SHA-256."""
        settings = {k: v for k, v in dataclasses.asdict(self).items()
                    if k not in ("steps", "checkpoint_every", "log_every", "init_weights")}
        if self.init_weights:
            from xrlib.models.released import initial_weights

            settings["init_weights_sha256"] = initial_weights(self.init_weights)[1]
        return settings


# ----------------------------------------------------------------------------------------------
# Building blocks


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, padding_mode="reflect")


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm and a skip connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            _conv(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def adaptive_instance_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN(z, gamma, beta) = gamma (z - mu(z)) / sigma(z) + beta, with per-sample, per-channel stats.

    ``scale`` and ``shift`` are (B, C); mu and sigma are taken over each feature map's pixels.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return scale[:, :, None, None] * (x - mean) / std + shift[:, :, None, None]


class AdaINResidualBlock(nn.Module):
    """Residual block whose two normalisations are AdaIN with externally given parameters."""

    n_params_per_channel = 4  # (scale, shift) for each of the two AdaIN layers

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv1 = _conv(channels, channels, 3)
        self.conv2 = _conv(channels, channels, 3)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        scale1, shift1, scale2, shift2 = params.split(self.channels, dim=1)
        h = F.relu(adaptive_instance_norm(self.conv1(x), scale1, shift1))
        return x + adaptive_instance_norm(self.conv2(h), scale2, shift2)


class ContentEncoder(nn.Module):
    """7x7 conv, ``n_downsample`` strided 4x4 convs (doubling channels), residual blocks; instance norm throughout."""

    def __init__(self, config: MunitConfig):
        super().__init__()
        ch = config.base_channels
        layers: list[nn.Module] = [_conv(config.channels, ch, 7), nn.InstanceNorm2d(ch), nn.ReLU(inplace=True)]
        for _ in range(config.n_downsample):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1, padding_mode="reflect"), nn.InstanceNorm2d(2 * ch), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(config.n_res_blocks)]
        self.net = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StyleEncoder(nn.Module):
    """Strided convs without normalisation (it would erase style), global average pool, 1x1 conv to the style code."""

    def __init__(self, config: MunitConfig):
        super().__init__()
        ch = config.base_channels
        layers: list[nn.Module] = [_conv(config.channels, ch, 7), nn.ReLU(inplace=True)]
        for index in range(config.n_downsample + 2):
            out_ch = 2 * ch if index < 2 else ch
            layers += [nn.Conv2d(ch, out_ch, 4, 2, 1, padding_mode="reflect"), nn.ReLU(inplace=True)]
            ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, config.style_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class Decoder(nn.Module):
    """AdaIN residual blocks (parameters from an MLP of the style), upsampling with layer norm, 7x7 conv, tanh."""

    def __init__(self, config: MunitConfig):
        super().__init__()
        ch = config.base_channels * 2 ** config.n_downsample
        self.blocks = nn.ModuleList(AdaINResidualBlock(ch) for _ in range(config.n_res_blocks))
        n_adain = sum(AdaINResidualBlock.n_params_per_channel * block.channels for block in self.blocks)
        self.mlp = nn.Sequential(
            nn.Linear(config.style_dim, config.mlp_dim), nn.ReLU(inplace=True),
            nn.Linear(config.mlp_dim, config.mlp_dim), nn.ReLU(inplace=True),
            nn.Linear(config.mlp_dim, n_adain),
        )
        layers: list[nn.Module] = []
        for _ in range(config.n_downsample):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(ch, ch // 2, 5), nn.GroupNorm(1, ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        layers += [_conv(ch, config.channels, 7), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        params = self.mlp(style)
        x = content
        for block, block_params in zip(self.blocks, params.split([AdaINResidualBlock.n_params_per_channel * b.channels for b in self.blocks], dim=1)):
            x = block(x, block_params)
        return self.upsample(x)


class Generator(nn.Module):
    """One domain's auto-encoder: content encoder, style encoder, decoder."""

    def __init__(self, config: MunitConfig):
        super().__init__()
        self.content_encoder = ContentEncoder(config)
        self.style_encoder = StyleEncoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.content_encoder(x), self.style_encoder(x)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decoder(content, style)


class MultiScaleDiscriminator(nn.Module):
    """LSGAN PatchGAN discriminators on the image and its 2x, 4x, ... average-pooled versions."""

    def __init__(self, config: MunitConfig):
        super().__init__()
        self.scales = nn.ModuleList(self._one_scale(config) for _ in range(config.disc_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @staticmethod
    def _one_scale(config: MunitConfig) -> nn.Sequential:
        ch = config.disc_channels
        layers: list[nn.Module] = [nn.Conv2d(config.channels, ch, 4, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(config.disc_layers - 1):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for scale in self.scales:
            outputs.append(scale(x))
            x = self.downsample(x)
        return outputs


class Munit(nn.Module):
    """The two auto-encoders and two discriminators; ``a`` = HQ X-ray, ``b`` = LQ (DRR) domain."""

    def __init__(self, config: MunitConfig):
        super().__init__()
        self.config = config
        self.gen_a = Generator(config)
        self.gen_b = Generator(config)
        self.dis_a = MultiScaleDiscriminator(config)
        self.dis_b = MultiScaleDiscriminator(config)

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.gen_a.parameters(), *self.gen_b.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.dis_a.parameters(), *self.dis_b.parameters()]


# ----------------------------------------------------------------------------------------------
# Losses


def lsgan_discriminator_loss(real_outputs: list[torch.Tensor], fake_outputs: list[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of E[(D(x) - 1)^2] + E[D(G(z))^2] (Mao et al. 2017, a=0, b=1)."""
    return sum(((real - 1) ** 2).mean() + (fake ** 2).mean() for real, fake in zip(real_outputs, fake_outputs))


def lsgan_generator_loss(fake_outputs: list[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of E[(D(G(z)) - 1)^2]."""
    return sum(((fake - 1) ** 2).mean() for fake in fake_outputs)


def reconstruction_loss(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the paper's L1 reconstruction terms)."""
    return (estimate - target).abs().mean()


def low_frequency_loss(translation: torch.Tensor, source: torch.Tensor, factor: int) -> torch.Tensor:
    """L1 between the ILVR low-passes phi_N (N = ``factor``) of a translation and its source (Cai et al. 2021)."""
    return reconstruction_loss(low_pass(translation, factor), low_pass(source, factor))


def generator_losses(model: Munit, x_a: torch.Tensor, x_b: torch.Tensor, style_a: torch.Tensor, style_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every generator term of the paper for one batch, unweighted, plus ``total`` (weighted sum).

    ``style_a``/``style_b`` are the prior samples N(0, I) used for the cross-domain translations.
    """
    c = model.config
    content_a, own_style_a = model.gen_a.encode(x_a)
    content_b, own_style_b = model.gen_b.encode(x_b)
    x_ab = model.gen_b.decode(content_a, style_b)
    x_ba = model.gen_a.decode(content_b, style_a)
    content_b_back, style_a_back = model.gen_a.encode(x_ba)
    content_a_back, style_b_back = model.gen_b.encode(x_ab)
    terms = {
        "image_recon": reconstruction_loss(model.gen_a.decode(content_a, own_style_a), x_a)
        + reconstruction_loss(model.gen_b.decode(content_b, own_style_b), x_b),
        "content_recon": reconstruction_loss(content_a_back, content_a) + reconstruction_loss(content_b_back, content_b),
        "style_recon": reconstruction_loss(style_a_back, style_a) + reconstruction_loss(style_b_back, style_b),
        "gan": lsgan_generator_loss(model.dis_a(x_ba)) + lsgan_generator_loss(model.dis_b(x_ab)),
    }
    if c.low_frequency_weight > 0:
        terms["low_frequency"] = low_frequency_loss(x_ab, x_a, c.low_frequency_factor) + low_frequency_loss(
            x_ba, x_b, c.low_frequency_factor)
    if c.cycle_weight > 0:
        terms["cycle"] = reconstruction_loss(model.gen_a.decode(content_a_back, own_style_a), x_a) + reconstruction_loss(
            model.gen_b.decode(content_b_back, own_style_b), x_b)
    weights = {"image_recon": c.image_recon_weight, "content_recon": c.content_recon_weight,
               "style_recon": c.style_recon_weight, "gan": c.gan_weight, "cycle": c.cycle_weight,
               "low_frequency": c.low_frequency_weight}
    terms["total"] = sum(weights[name] * value for name, value in terms.items())
    return terms


def discriminator_loss(model: Munit, x_a: torch.Tensor, x_b: torch.Tensor, style_a: torch.Tensor, style_b: torch.Tensor) -> torch.Tensor:
    """LSGAN loss of both discriminators on real images and (detached) translations, times the GAN weight."""
    with torch.no_grad():
        x_ab = model.gen_b.decode(model.gen_a.content_encoder(x_a), style_b)
        x_ba = model.gen_a.decode(model.gen_b.content_encoder(x_b), style_a)
    loss = lsgan_discriminator_loss(model.dis_a(x_a), model.dis_a(x_ba)) + lsgan_discriminator_loss(model.dis_b(x_b), model.dis_b(x_ab))
    return model.config.gan_weight * loss


# ----------------------------------------------------------------------------------------------
# Training


def random_crops(images: torch.Tensor, batch_size: int, crop_px: int) -> torch.Tensor:
    """A batch of random ``crop_px`` squares from random images of (N, C, H, W) (global torch RNG)."""
    n, _, height, width = images.shape
    if height < crop_px or width < crop_px:
        raise ConfigError(f"munit training: crop_px {crop_px} exceeds the image size {height}x{width}; lower crop_px")
    index = torch.randint(n, (batch_size,))
    top = torch.randint(height - crop_px + 1, (batch_size,))
    left = torch.randint(width - crop_px + 1, (batch_size,))
    return torch.stack([images[i, :, t:t + crop_px, l:l + crop_px] for i, t, l in zip(index, top, left)])


def _optimizers(model: Munit, training: MunitTraining) -> tuple[dict, dict]:
    def adam(params):
        return torch.optim.Adam(params, lr=training.learning_rate, betas=(training.beta1, training.beta2),
                                weight_decay=training.weight_decay)

    optimizers = {"gen": adam(model.generator_parameters()), "dis": adam(model.discriminator_parameters())}
    schedulers = {name: torch.optim.lr_scheduler.StepLR(opt, training.lr_step, training.lr_gamma) for name, opt in optimizers.items()}
    return optimizers, schedulers


def _modules(model: Munit) -> dict[str, nn.Module]:
    return {"gen_a": model.gen_a, "gen_b": model.gen_b, "dis_a": model.dis_a, "dis_b": model.dis_b}


def train_munit(
    hq_display: torch.Tensor,
    lq_display: torch.Tensor,
    config: MunitConfig,
    training: MunitTraining,
    checkpoint_dir: str | Path,
    live: Any = None,
    progress: bool = False,
) -> Munit:
    """Train MUNIT on unpaired HQ (domain a) and LQ (domain b) display images (N, 1, H, W) in [0, 1].

    Resumes from the newest good checkpoint of the same run identity under ``checkpoint_dir`` (see
    :func:`xrlib.models.training.run_checkpoints`; weights, optimizers, schedulers, RNG; a damaged one is
    skipped for the previous), so an interrupted run, restarted, reproduces a straight run
    exactly; ``training.steps`` is the total (raising it continues the run), and a finished run
    returns at once. Runs with other settings are kept beside this one. Batches are random crops (global torch RNG, seeded).
    ``live`` is a dvclive ``Live`` (or None); loss terms are logged every ``log_every`` steps.
    """
    torch.manual_seed(training.seed)
    model = Munit(config)
    optimizers, schedulers = _optimizers(model, training)
    start, earlier_extra, started = 0, None, time.monotonic()
    identity = {"model": config.to_dict(), "settings": training.identity_settings(), "images": [len(hq_display), len(lq_display)],
                "images_sha256": arrays_sha256(hq_display, lq_display)}
    checkpoint_dir = run_checkpoints(checkpoint_dir, identity)
    resumed = load_latest_checkpoint(checkpoint_dir, _modules(model), optimizers, schedulers, config.to_dict())
    if resumed is None and training.init_weights:
        from xrlib.models.released import initial_weights, released_part

        load_weights(initial_weights(training.init_weights)[0], released_part("munit", model))
    if resumed is not None:
        found, restored = resumed
        start, earlier_extra = restored["step"], restored["extra"]
        check_steps_reached(start, training.steps, found)
    if live is not None:
        drop_logged_after(live.dir, start)  # rows of a killed run past its checkpoint, or of an earlier run
    x_a_all = hq_display * 2 - 1
    x_b_all = lq_display * 2 - 1
    model.train()
    for step in progress_bar(range(start + 1, training.steps + 1), "MUNIT", training.steps, initial=start, disable=not progress):
        x_a = random_crops(x_a_all, training.batch_size, training.crop_px)
        x_b = random_crops(x_b_all, training.batch_size, training.crop_px)
        style_a = torch.randn(training.batch_size, config.style_dim)
        style_b = torch.randn(training.batch_size, config.style_dim)

        optimizers["dis"].zero_grad(set_to_none=True)
        loss_dis = discriminator_loss(model, x_a, x_b, style_a, style_b)
        loss_dis.backward()
        optimizers["dis"].step()

        optimizers["gen"].zero_grad(set_to_none=True)
        terms = generator_losses(model, x_a, x_b, style_a, style_b)
        terms["total"].backward()
        optimizers["gen"].step()
        for scheduler in schedulers.values():
            scheduler.step()

        if live is not None and step % training.log_every == 0:
            live.step = step
            live.log_metric("train/dis", float(loss_dis))
            for name, value in terms.items():
                live.log_metric(f"train/gen_{name}", float(value))
            live.next_step()
        if step % training.checkpoint_every == 0 or step == training.steps:
            save_checkpoint(checkpoint_dir, step, _modules(model), optimizers, schedulers, config.to_dict(),
                            training_time_extra(earlier_extra, started, torch.device("cpu")))
    model.eval()
    return model


def load_munit(checkpoint: str | Path, config: MunitConfig) -> Munit:
    """A trained MUNIT from a checkpoint folder (weights only; the config must match), in eval mode."""
    model = Munit(config)
    load_checkpoint(checkpoint, _modules(model), expected_config=config.to_dict(), restore_rng=False)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Translation


@torch.no_grad()
def translate_hq_to_lq(
    model: Munit,
    hq_display: torch.Tensor,
    style: torch.Tensor | None = None,
    reference_lq_display: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """HQ display images (B, 1, H, W) -> LQ: the HQ content code decoded in an LQ style.

    The style is, in order of precedence: ``style`` (B or 1, style_dim); the style code of
    ``reference_lq_display`` (a DRR, B or 1 images); else one draw from N(0, I) per image, seeded
    by ``seed`` (same seed, same output). H and W must be multiples of 2**n_downsample.
    """
    factor = 2 ** model.config.n_downsample
    if hq_display.shape[-1] % factor or hq_display.shape[-2] % factor:
        raise ConfigError(f"MUNIT translation: image size {tuple(hq_display.shape[-2:])} must be a multiple of {factor}")
    content = model.gen_a.content_encoder(hq_display * 2 - 1)
    batch = hq_display.shape[0]
    if style is None and reference_lq_display is not None:
        style = model.gen_b.style_encoder(reference_lq_display * 2 - 1)
    if style is None:
        style = torch.randn(batch, model.config.style_dim, generator=torch.Generator().manual_seed(seed))
    style = style.to(content).expand(batch, -1)
    return ((model.gen_b.decode(content, style) + 1) / 2).clamp(0, 1)


@torch.no_grad()
def style_interpolation(model: Munit, hq_display: torch.Tensor, style_start: torch.Tensor, style_end: torch.Tensor, n_steps: int) -> torch.Tensor:
    """One HQ image (1, 1, H, W) rendered with styles on the line from ``style_start`` to ``style_end``: (n_steps, 1, H, W)."""
    weights = torch.linspace(0, 1, n_steps)[:, None]
    styles = (1 - weights) * style_start.reshape(1, -1) + weights * style_end.reshape(1, -1)
    return translate_hq_to_lq(model, hq_display.expand(n_steps, -1, -1, -1), style=styles)

"""Low-quality (DRR-like) twins of real HQ display X-rays (all images float (B, 1, H, W) in [0, 1]).

- **bicubic** (the baseline): the HQ image brought to the restorer's input size is itself the twin.
- **DDPM-LQ**: :func:`xrlib.models.sampling.sdedit` noises the HQ image part-way and denoises it with a
  DDPM trained on DRRs (SDEdit, Meng et al. 2022); ``strength`` is the fraction of the sampling
  steps re-run (about t0 / T for evenly spaced timesteps). Optional ILVR guidance (Choi et al.
  2021, :func:`xrlib.models.sampling.ilvr_guidance`) replaces the low-pass of every intermediate sample
  by that of the HQ image noised to the same step, so the anatomy stays while the texture becomes DRR-like.
- **MUNIT-LQ**: :func:`xrlib.models.munit.translate_hq_to_lq` (HQ content code, LQ style code), optionally
  with its low-pass phi_N replaced by the HQ image's (:func:`anchor_low_frequencies`, ILVR's filter applied
  once): a sampled style code otherwise sets each twin's brightness and contrast at random.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from xrlib.data.pairs import from_model_range, to_model_range
from xrlib.errors import ConfigError, DataError
from xrlib.io import arrays_sha256
from xrlib.models.sampling import ilvr_guidance, low_pass, sdedit
from xrlib.params import LqDdpmSettings


Translate = Callable[[torch.Tensor, int], torch.Tensor]
"""A generator: (HQ display at the LQ size (1, 1, n, n), seed) -> LQ display twin (1, 1, n, n)."""


def bicubic_twin(hq_display_small: torch.Tensor, seed: int) -> torch.Tensor:
    """The bicubic baseline: the HQ image at the input size is itself the LQ twin (no seed needed)."""
    return hq_display_small


def ddpm_translate(unet: torch.nn.Module, scheduler: Any, hq_display: torch.Tensor, strength: float,
                   num_inference_steps: int, ilvr_factor: int = 0, seed: int = 0) -> torch.Tensor:
    """DDPM-LQ: display images (B, 1, n, n) in [0, 1] -> LQ twins, by :func:`xrlib.diffusion.sdedit`.

    ``strength`` is the fraction of the ``num_inference_steps`` re-run (about t0 / T); with
    ``ilvr_factor`` N > 0, :func:`xrlib.diffusion.ilvr_guidance` keeps the HQ image's low-pass phi_N.
    One generator seeded with ``seed`` draws all the noise: same seed, same twin.
    """
    generator = torch.Generator(device=hq_display.device).manual_seed(int(seed))
    reference = to_model_range(hq_display)
    guidance = ilvr_guidance(reference, ilvr_factor, scheduler, generator) if ilvr_factor > 0 else None
    twin = sdedit(unet, scheduler, reference, strength, num_inference_steps, generator, guidance=guidance)
    return from_model_range(twin).to(hq_display.device)


def anchor_low_frequencies(twin: torch.Tensor, reference: torch.Tensor, factor: int | None) -> torch.Tensor:
    """``twin`` with its low-pass phi_N replaced by ``reference``'s: twin - phi_N(twin) + phi_N(reference), in [0, 1].

    phi_N is ILVR's filter (Choi et al. 2021, :func:`xrlib.models.sampling.low_pass`: area down by
    ``factor``, bicubic up), here applied once to a finished translation: the twin keeps its own
    detail and texture above the filter and the reference's brightness, contrast and anatomy below
    it. ``factor`` None returns ``twin`` unchanged. Display images (B, 1, n, n), n a multiple of ``factor``.
    """
    if factor is None:
        return twin
    if twin.shape != reference.shape:
        raise DataError(f"anchor_low_frequencies needs images of one shape, got {tuple(twin.shape)} and {tuple(reference.shape)}")
    if twin.shape[-1] % factor or twin.shape[-2] % factor:
        raise ConfigError(f"low-frequency anchor factor {factor} must divide the twin size {tuple(twin.shape[-2:])}")
    return (twin - low_pass(twin, factor) + low_pass(reference.to(twin), factor)).clamp(0.0, 1.0)


def pair_generators(
    ddpm_unet: torch.nn.Module,
    ddpm_scheduler: Any,
    ddpm_settings: LqDdpmSettings,
    ddpm_choice: Mapping[str, Any],
    munit_model: torch.nn.Module,
    munit_params: Mapping[str, Any],
    munit_anchor_factor: int | None = None,
) -> dict[str, tuple[Translate, dict[str, Any]]]:
    """The three generators for :func:`build_pairs`: bicubic, DDPM-LQ (SDEdit + ILVR) and MUNIT-LQ (sampled style).

    DDPM-LQ is :func:`ddpm_translate` with the image's seed, the ``lq_ddpm`` settings' steps and the
    strength and ILVR factor of ``ddpm_choice`` (02_lq_ddpm's choice by the twin checks); MUNIT-LQ is
    anchored to its HQ image's low-pass phi_N when ``munit_anchor_factor`` is set
    (:func:`anchor_low_frequencies`); each generator's settings go to the pair manifest.
    """
    from xrlib.models.munit import translate_hq_to_lq

    ddpm = {"strength": float(ddpm_choice["strength"]), "ilvr_factor": int(ddpm_choice["ilvr_factor"]),
            "num_inference_steps": ddpm_settings.num_inference_steps}

    def ddpm_twin(hq_small: torch.Tensor, seed: int) -> torch.Tensor:
        return ddpm_translate(ddpm_unet, ddpm_scheduler, hq_small, seed=seed, **ddpm)

    def munit_twin(hq_small: torch.Tensor, seed: int) -> torch.Tensor:
        return anchor_low_frequencies(translate_hq_to_lq(munit_model, hq_small, seed=seed), hq_small, munit_anchor_factor)

    return {
        "bicubic": (bicubic_twin, {"method": "bicubic, antialiased"}),
        "ddpm": (ddpm_twin, {**ddpm, "sampler": ddpm_settings.sampler}),
        "munit": (munit_twin, {"style": "sampled N(0, I)", "low_frequency_anchor_factor": munit_anchor_factor,
                               **dict(munit_params)}),
    }


class DisplayImageDataset(torch.utils.data.Dataset):
    """Unconditional training images for :func:`xrlib.models.training.train`: item (index, seed) -> {"image" in [-1, 1], "seed"}."""

    def __init__(self, images_display: torch.Tensor):
        self.images = images_display * 2 - 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def content_sha256(self) -> str:
        """SHA-256 of the images (a run's data identity: other DRRs of the same count start a new run)."""
        return arrays_sha256(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (key, 0) if isinstance(key, (int, np.integer)) else key
        return {"image": self.images[int(index)], "seed": int(seed)}

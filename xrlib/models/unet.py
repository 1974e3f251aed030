"""The diffusion UNet (diffusers' UNet2DModel): built from a model config, trained, saved and loaded.

One model config (a JSON-able dict, stored in every safetensors file's metadata) describes a model::

    {"unet": {...}, "schedule": {...}, "scale": 2}

``unet`` builds a :class:`diffusers.UNet2DModel` (:func:`build_unet`); ``condition_channels`` is 0
for the unconditional model (used by DDPM-LQ), 1 for the SR3/Palette-style restorer (the LQ image,
upsampled ``scale`` times with bicubic, is concatenated to the noisy input) and 2 for the mask
variant (LQ + nodule mask). ``schedule`` is the forward process (:mod:`xrlib.models.sampling`).
"""


import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from diffusers import UNet2DModel
from safetensors.torch import save_model

from xrlib.models.checkpoint import load_weights, read_config
from xrlib.errors import CheckpointError, ConfigError
from xrlib.io import atomic_path
from xrlib.models.sampling import diffusion_loss, diffusion_process, indi_loss, make_scheduler, to_diffusion_space
from xrlib.models.training import train


def build_unet(unet_config: Mapping[str, Any]) -> UNet2DModel:
    """A UNet2DModel from ``unet_config``.

    Keys: ``image_channels`` (1), ``condition_channels`` (0, 1 or 2), ``block_out_channels``
    (one width per resolution level), ``layers_per_block``, ``attention_levels`` (one bool per
    level: self-attention there), ``norm_num_groups``, ``dropout``, ``sample_px`` (training size).
    """
    widths = list(unet_config["block_out_channels"])
    attention = list(unet_config.get("attention_levels", [False] * len(widths)))
    if len(attention) != len(widths):
        raise ConfigError(f"unet.attention_levels has {len(attention)} entries but block_out_channels has "
                          f"{len(widths)}; give one bool per level")
    groups = int(unet_config.get("norm_num_groups", 32))
    if any(width % groups for width in widths):
        raise ConfigError(f"unet.norm_num_groups={groups} must divide every block_out_channels {widths}")
    image_channels = int(unet_config.get("image_channels", 1))
    return UNet2DModel(
        sample_size=int(unet_config.get("sample_px", 64)),
        in_channels=image_channels + int(unet_config.get("condition_channels", 0)),
        out_channels=image_channels,
        block_out_channels=tuple(widths),
        layers_per_block=int(unet_config.get("layers_per_block", 2)),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        norm_num_groups=groups,
        dropout=float(unet_config.get("dropout", 0.0)),
        attention_head_dim=int(unet_config.get("attention_head_dim", 8)),
    )


def downsampling_factor(unet_config: Mapping[str, Any]) -> int:
    """Input sizes must be multiples of this (2 per resolution level below the first)."""
    return 2 ** (len(unet_config["block_out_channels"]) - 1)


def export_weights(module: torch.nn.Module, path: str | Path, model_config: Mapping[str, Any]) -> Path:
    """Write ``module``'s weights as safetensors with ``model_config`` in the metadata (atomically)."""
    with atomic_path(path) as tmp:
        save_model(module, str(tmp), metadata={"config": json.dumps(dict(model_config), sort_keys=True)})
    return Path(path)


def load_model(path: str | Path, expected_config: Mapping[str, Any] | None = None,
               device: str | torch.device = "cpu") -> tuple[UNet2DModel, dict[str, Any]]:
    """Build the UNet described in a safetensors file's metadata and load its weights (no code runs).

    With ``expected_config`` a file made for another architecture raises a CheckpointError.
    """
    model_config = read_config(path) if expected_config is None else dict(expected_config)
    if "unet" not in model_config or "schedule" not in model_config:
        raise CheckpointError(f"{path}: its metadata holds no diffusion model config; it was not written by "
                              "xrlib.models.unet.export_weights")
    model = build_unet(model_config["unet"])
    load_weights(path, model, model_config)
    return model.to(device).eval(), model_config


def diffusion_loss_fn(schedule_config: Mapping[str, Any]):
    """The training loss for :func:`xrlib.models.training.train`: batches of {"image", "seed"[, "condition"]}.

    A DDPM's denoising loss, or for ``schedule.process: indi`` InDI's, whose degraded end is the
    condition's first channel (the upsampled LQ image) taken into the same diffusion space.
    """
    if diffusion_process(schedule_config) == "indi":
        def indi_loss_fn(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
            condition = batch.get("condition")
            if condition is None:
                raise ConfigError("schedule.process 'indi' needs batches with a condition (the upsampled LQ image)")
            clean = to_diffusion_space(batch["image"], condition, schedule_config)
            degraded = to_diffusion_space(condition[:, :1], condition, schedule_config)
            return indi_loss(model, schedule_config, clean, degraded, batch["seed"], condition)

        return indi_loss_fn
    scheduler = make_scheduler("ddpm", schedule_config)
    loss = schedule_config.get("loss", "l2")

    def loss_fn(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        condition = batch.get("condition")
        clean = to_diffusion_space(batch["image"], condition, schedule_config)
        return diffusion_loss(model, scheduler, clean, batch["seed"], condition, loss)

    return loss_fn


def train_diffusion(
    model_config: Mapping[str, Any],
    train_config: Mapping[str, Any],
    dataset: torch.utils.data.Dataset,
    run_dir: str | Path,
    weights_name: str,
    sample_fn: Callable[[torch.nn.Module], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train a diffusion model (conditional or not) and export its EMA weights to ``run_dir/weights_name``.

    Resumes from ``run_dir/checkpoints``; see :func:`xrlib.models.training.train`. Returns train()'s
    result with "weights" (the exported file) added.
    """
    model = build_unet(model_config["unet"])
    result = train(model, diffusion_loss_fn(model_config["schedule"]), dataset, train_config, run_dir,
                   model_config, sample_fn)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        result["weights"] = export_weights(result["ema"], Path(run_dir) / weights_name, model_config)
    return result

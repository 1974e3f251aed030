"""Diffusion models on diffusers: UNet and scheduler set-up, the training loss, samplers, SDEdit/ILVR.

One model config (a JSON-able dict, stored in every safetensors file's metadata) describes a model::

    {"unet": {...}, "schedule": {...}, "scale": 2}

``unet`` builds a :class:`diffusers.UNet2DModel` (:func:`build_unet`); ``condition_channels`` is 0
for the unconditional model (used by DDPM-LQ), 1 for the SR3/Palette-style restorer (the LQ image,
upsampled ``scale`` times with bicubic, is concatenated to the noisy input) and 2 for the mask
variant (LQ + nodule mask). ``schedule`` sets the forward process shared by every sampler
(:func:`make_scheduler`): ``beta_schedule`` cosine or linear, ``prediction_type`` epsilon or
v_prediction, ``loss`` l1 or l2. Images given to the model are in [-1, 1].

Inference is patch-free: the UNet is fully convolutional, so a model trained on crops restores a
whole image of any size, padded (edge-replicated) to a multiple of its downsampling factor and
cropped back afterwards; nothing is resized unless the caller asks for it.
"""

from __future__ import annotations

import argparse
import json
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_model

from xrlib.checkpoint import load_weights, read_config
from xrlib.errors import CheckpointError, ConfigError
from xrlib.io import atomic_path, load_png, save_png16
from xrlib.pairs_dataset import PairDataset, from_model_range, read_pairs, resize_bicubic, to_model_range
from xrlib.params import load_params
from xrlib.paths import outputs_dir, project_root
from xrlib.training import init_distributed, train

SAMPLERS = ("ddpm", "ddim", "dpm_solver")
BETA_SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
PREDICTION_TYPES = ("epsilon", "v_prediction")
LOSSES = ("l1", "l2")

Guidance = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


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


def make_scheduler(name: str, schedule_config: Mapping[str, Any]):
    """A diffusers scheduler ``name`` (ddpm, ddim, dpm_solver) for the forward process ``schedule_config``.

    Keys: ``num_train_timesteps``, ``beta_schedule`` (cosine: Nichol and Dhariwal 2021; linear:
    Ho et al. 2020 from ``beta_start`` to ``beta_end``), ``prediction_type``. Every sampler made
    from one config shares the same betas, so a model trained once samples with any of them.
    """
    beta_schedule = schedule_config.get("beta_schedule", "cosine")
    prediction_type = schedule_config.get("prediction_type", "epsilon")
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"schedule.beta_schedule '{beta_schedule}' unknown; use one of {sorted(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"schedule.prediction_type '{prediction_type}' unknown; use one of {PREDICTION_TYPES}")
    common = dict(
        num_train_timesteps=int(schedule_config.get("num_train_timesteps", 1000)),
        beta_start=float(schedule_config.get("beta_start", 1e-4)),
        beta_end=float(schedule_config.get("beta_end", 0.02)),
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        prediction_type=prediction_type,
    )
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=True, clip_sample_range=1.0)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=True, clip_sample_range=1.0, timestep_spacing="trailing")
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ConfigError(f"sampler '{name}' unknown; use one of {SAMPLERS}")


def _per_sample_generators(seeds: Sequence[int] | torch.Tensor, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def diffusion_loss(
    model: torch.nn.Module,
    scheduler,
    clean: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    condition: torch.Tensor | None = None,
    loss: str = "l2",
) -> torch.Tensor:
    """Denoising loss (Ho et al. 2020, eq. 14; v-target of Salimans and Ho 2022) on images in [-1, 1].

    Each sample's timestep and noise are drawn from its own generator seeded with ``seeds[i]``,
    so a sample's loss term does not depend on the batch it is in (or on the DDP rank).
    """
    if loss not in LOSSES:
        raise ConfigError(f"schedule.loss '{loss}' unknown; use one of {LOSSES}")
    generators = _per_sample_generators(seeds, clean.device)
    steps = scheduler.config.num_train_timesteps
    timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g, device=clean.device) for g in generators])
    noise = randn_tensor(clean.shape, generator=generators, device=clean.device, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    model_input = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    prediction = model(model_input, timesteps).sample.float()
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = noise
    return F.l1_loss(prediction, target.float()) if loss == "l1" else F.mse_loss(prediction, target.float())


def _denoise(
    model: torch.nn.Module,
    scheduler,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    condition: torch.Tensor | None,
    generator,
    guidance: Guidance | None,
) -> torch.Tensor:
    for index, timestep in enumerate(timesteps):
        model_input = scheduler.scale_model_input(sample, timestep)
        if condition is not None:
            model_input = torch.cat([model_input, condition.to(model_input.dtype)], dim=1)
        batch_timesteps = timestep.expand(sample.shape[0]).to(sample.device)
        output = model(model_input, batch_timesteps).sample
        sample = scheduler.step(output.to(sample.dtype), timestep, sample, generator=generator).prev_sample
        if guidance is not None:
            sample = guidance(sample, timesteps[index + 1] if index + 1 < len(timesteps) else None)
    return sample.clamp(-1.0, 1.0)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    scheduler,
    condition: torch.Tensor | None = None,
    steps: int = 50,
    generator: torch.Generator | list[torch.Generator] | None = None,
    shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """Draw images in [-1, 1] by reverse diffusion with ``scheduler`` in ``steps`` steps.

    ``condition`` (B, C, H, W) in [-1, 1] is concatenated to the noisy input at every step (it
    sets the output shape); an unconditional model needs ``shape``. ``generator`` may be a list
    with one generator per image, which makes each image independent of the batch it is in.
    """
    reference = next(model.parameters())
    if condition is not None:
        condition = condition.to(reference.device)
        shape = (condition.shape[0], model.config.out_channels, *condition.shape[2:])
    if shape is None:
        raise ConfigError("sample() needs a condition or an output shape")
    scheduler.set_timesteps(steps, device=reference.device)
    noise = randn_tensor(tuple(shape), generator=generator, device=reference.device, dtype=torch.float32)
    return _denoise(model, scheduler, noise * scheduler.init_noise_sigma, scheduler.timesteps, condition,
                    generator, None)


@torch.no_grad()
def sdedit(
    model: torch.nn.Module,
    scheduler,
    image: torch.Tensor,
    strength: float,
    steps: int = 50,
    generator: torch.Generator | list[torch.Generator] | None = None,
    condition: torch.Tensor | None = None,
    guidance: Guidance | None = None,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise ``image`` (in [-1, 1]) to ``strength`` of the schedule, then denoise.

    ``strength`` in (0, 1] is the fraction of the ``steps`` sampling steps that are run again
    (rounded, at least one): the image is noised to the first of those timesteps, so for evenly
    spaced timesteps strength is about t0 / T; 1 starts from (almost) pure noise. ``guidance`` is applied after every step, e.g.
    :func:`ilvr_guidance` to keep the low frequencies of a reference image.
    """
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"SDEdit strength must be in (0, 1], got {strength}")
    reference = next(model.parameters())
    image = image.to(reference.device, torch.float32)
    scheduler.set_timesteps(steps, device=reference.device)
    kept = max(1, min(len(scheduler.timesteps), round(len(scheduler.timesteps) * strength)))
    begin = len(scheduler.timesteps) - kept
    timesteps = scheduler.timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    noise = randn_tensor(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    noisy = scheduler.add_noise(image, noise, timesteps[:1].expand(image.shape[0]))
    return _denoise(model, scheduler, noisy, timesteps, condition, generator, guidance)


def low_pass(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The ILVR filter phi_N: area downsampling by ``factor`` then bicubic upsampling back."""
    small = F.interpolate(image, scale_factor=1.0 / factor, mode="area")
    return F.interpolate(small, size=image.shape[-2:], mode="bicubic", align_corners=False)


def ilvr_guidance(
    reference: torch.Tensor,
    factor: int,
    scheduler,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> Guidance:
    """ILVR (Choi et al. 2021, eq. 8): x <- x - phi_N(x) + phi_N(y_t), y_t the reference noised to t.

    At the last step (next timestep None) the clean reference is used, so the result's low
    frequencies (below 1/``factor`` of the sampling rate) are the reference's.
    """

    def guide(sample: torch.Tensor, next_timestep: torch.Tensor | None) -> torch.Tensor:
        target = reference.to(sample.device, sample.dtype)
        if next_timestep is not None:
            noise = randn_tensor(target.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            target = scheduler.add_noise(target, noise, next_timestep.expand(target.shape[0]))
        return sample - low_pass(sample, factor) + low_pass(target, factor)

    return guide


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom and right, replicating edges, to multiples of ``multiple``."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    return image, (height, width)


def make_condition(lq_image: torch.Tensor, scale: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The restorer's condition from LQ images in [0, 1]: bicubic upsampled by ``scale``, in [-1, 1].

    A nodule ``mask`` (B, 1, H, W) in [0, 1] at the output size is appended as a second channel.
    """
    size = (lq_image.shape[-2] * scale, lq_image.shape[-1] * scale)
    condition = to_model_range(resize_bicubic(lq_image, size))
    if mask is not None:
        condition = torch.cat([condition, to_model_range(mask.to(condition))], dim=1)
    return condition


@torch.no_grad()
def restore(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    lq_image: torch.Tensor,
    sampler: str = "dpm_solver",
    steps: int = 20,
    generator: torch.Generator | list[torch.Generator] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Restore LQ images (B, 1, h, w) in [0, 1] of any size into (B, 1, scale*h, scale*w) in [0, 1]."""
    condition = make_condition(lq_image, int(model_config["scale"]), mask)
    padded, (height, width) = pad_to_multiple(condition, downsampling_factor(model_config["unet"]))
    scheduler = make_scheduler(sampler, model_config["schedule"])
    restored = sample(model, scheduler, condition=padded, steps=steps, generator=generator)
    return from_model_range(restored[..., :height, :width])


def image_seed(seed: int, image_id: str) -> int:
    """A stable per-image seed, so a restored image does not depend on its batch or on file order."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(str(image_id).encode())]).generate_state(1)[0])


def restore_files(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    inputs: Mapping[str, str | Path],
    output_dir: str | Path,
    sampler: str = "dpm_solver",
    steps: int = 20,
    batch_size: int = 4,
    seed: int = 0,
    input_px: int | None = None,
) -> dict[str, Path]:
    """Restore the PNGs ``inputs`` (id -> path) into ``output_dir/<id>.png`` (16-bit); return id -> output path.

    Images of equal size are batched. With ``input_px`` each input is first resized (antialiased)
    so that its longer side is ``input_px``; otherwise it is restored at its own size.
    """
    device = next(model.parameters()).device
    loaded: dict[str, torch.Tensor] = {}
    for image_id, path in inputs.items():
        image = torch.from_numpy(load_png(path))[None, None]
        if input_px is not None:
            ratio = input_px / max(image.shape[-2:])
            image = resize_bicubic(image, (round(image.shape[-2] * ratio), round(image.shape[-1] * ratio)))
        loaded[image_id] = image
    by_size: dict[tuple[int, int], list[str]] = {}
    for image_id, image in loaded.items():
        by_size.setdefault(tuple(image.shape[-2:]), []).append(image_id)
    written: dict[str, Path] = {}
    for ids in by_size.values():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            batch = torch.cat([loaded[i] for i in chunk]).to(device)
            generators = [torch.Generator(device=device).manual_seed(image_seed(seed, i)) for i in chunk]
            restored = restore(model, model_config, batch, sampler, steps, generators)
            for image_id, image in zip(chunk, restored.cpu().numpy()):
                written[image_id] = save_png16(Path(output_dir) / f"{image_id}.png", image[0])
    return written


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
                              "xrlib.diffusion.export_weights")
    model = build_unet(model_config["unet"])
    load_weights(path, model, model_config)
    return model.to(device).eval(), model_config


def diffusion_loss_fn(schedule_config: Mapping[str, Any]):
    """The training loss for :func:`xrlib.training.train`: batches of {"image", "seed"[, "condition"]}."""
    scheduler = make_scheduler("ddpm", schedule_config)
    loss = schedule_config.get("loss", "l2")

    def loss_fn(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return diffusion_loss(model, scheduler, batch["image"], batch["seed"], batch.get("condition"), loss)

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

    Resumes from ``run_dir/checkpoints``; see :func:`xrlib.training.train`. Returns train()'s
    result with "weights" (the exported file) added.
    """
    model = build_unet(model_config["unet"])
    result = train(model, diffusion_loss_fn(model_config["schedule"]), dataset, train_config, run_dir,
                   model_config, sample_fn)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        result["weights"] = export_weights(result["ema"], Path(run_dir) / weights_name, model_config)
    return result


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) \
            else value
    return merged


def restorer_settings(section: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``restorer`` section's ``base`` settings overridden by those of configuration ``name``."""
    configs = section.get("configs", {})
    if name not in configs:
        raise ConfigError(f"restorer.configs has no '{name}'; known: {sorted(configs)}")
    settings = _merged(section.get("base", {}), configs[name] or {})
    for key in ("generator", "pairs", "unet", "schedule", "train"):
        if key not in settings:
            raise ConfigError(f"restorer configuration '{name}' lacks '{key}' (in restorer.base or restorer.configs.{name})")
    settings["train"] = {"seed": int(section.get("seed", 0)), **settings["train"]}
    return settings


def restorer_model_config(settings: Mapping[str, Any], scale: int) -> dict[str, Any]:
    """A restorer's config: architecture (condition = LQ (+ mask); output ``scale`` times the input)
    and the pairs it learns from ("data": generator and manifest), stored with its weights."""
    unet = {**settings["unet"], "image_channels": 1,
            "condition_channels": 2 if settings.get("mask_channel", False) else 1,
            "sample_px": int(settings.get("crop_px") or settings["unet"].get("sample_px", 64))}
    return {"unet": unet, "schedule": dict(settings["schedule"]), "scale": int(scale),
            "data": {"generator": settings["generator"], "pairs": str(settings["pairs"])}}


def train_restorer(section: Mapping[str, Any], name: str, root: str | Path, run_dir: str | Path) -> dict[str, Any]:
    """Train restorer configuration ``name`` of the ``restorer`` params section on its train pairs.

    Pairs come from ``settings["pairs"]`` (relative to ``root``) filtered by ``generator`` and
    split ``train``; EMA weights go to ``run_dir/restorer_ema.safetensors``. dvclive logs, every
    ``sample_every`` steps, LQ crops, their DDIM-20 restorations and the HQ crops side by side.
    """
    settings = restorer_settings(section, name)
    root = Path(root)
    manifest = read_pairs(root / settings["pairs"], settings["generator"], "train")
    dataset = PairDataset(manifest, root, settings.get("crop_px"), settings.get("flip_left_right", False),
                          settings.get("mask_channel", False))
    model_config = restorer_model_config(settings, int(section["scale"]))
    preview = [dataset[(i % len(dataset), i)] for i in range(int(settings.get("preview_images", 2)))]
    preview_condition = torch.stack([item["condition"] for item in preview])
    preview_hq = torch.stack([item["image"] for item in preview])

    def preview_fn(ema: torch.nn.Module) -> torch.Tensor:
        device = next(ema.parameters()).device
        restored = sample(ema, make_scheduler("ddim", model_config["schedule"]), preview_condition.to(device), 20,
                          torch.Generator(device=device).manual_seed(0))
        return from_model_range(torch.cat([preview_condition[:, :1], restored.cpu(), preview_hq]))

    return train_diffusion(model_config, settings["train"], dataset, run_dir, "restorer_ema.safetensors", preview_fn)


def restore_test_pairs(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    manifest: pd.DataFrame,
    root: str | Path,
    output_dir: str | Path,
    **restore_kwargs: Any,
) -> pd.DataFrame:
    """Restore the LQ images of ``manifest``'s rows into ``output_dir/<pair_id>.png`` at their own size.

    Returns the manifest with a ``restored_path`` column (relative to ``root``) for the metrics stage.
    """
    root = Path(root)
    inputs = {row.pair_id: root / row.lq_path for row in manifest.itertuples()}
    written = restore_files(model, model_config, inputs, output_dir, **restore_kwargs)
    restored = manifest.copy()
    restored["restored_path"] = [os.path.relpath(written[pair_id], root) for pair_id in manifest["pair_id"]]
    return restored


def main(argv: Sequence[str] | None = None) -> None:
    """Train one restorer configuration from params.yaml; the entry point for torchrun (DDP)::

        torchrun --nproc_per_node 8 -m xrlib.diffusion bicubic_baseline
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="a name under restorer.configs in params.yaml")
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    args = parser.parse_args(argv)
    init_distributed()
    section = load_params(args.params)["restorer"]
    train_restorer(section, args.config, project_root(), outputs_dir() / "04_restorer" / args.config)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

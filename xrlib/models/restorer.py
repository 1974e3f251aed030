"""The restorer: a conditional diffusion UNet (:mod:`xrlib.models.unet`) on (LQ, HQ) pairs.

Its model config adds ``scale`` (output size / input size, from the pair sizes) and the pairs it
learns from. Inference is patch-free: the UNet is fully convolutional, so a model trained on crops
restores a whole image of any size, padded (edge-replicated) to a multiple of its downsampling
factor and cropped back afterwards; nothing is resized unless the caller asks for it.
"""


import argparse
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

from xrlib.errors import ConfigError, DataError
from xrlib.eval.quality import psnr_db, ssim
from xrlib.eval.realism import high_frequency_power_fraction, spectrum_distance_to_reference
from xrlib.io import load_png, save_png16
from xrlib.data.pairs import PairDataset, from_model_range, read_pairs, resize_bicubic, to_model_range
from xrlib.params import RestorerSettings, check_params, deep_merge, load_params
from xrlib.paths import project_root
from xrlib.progress import progress
from xrlib import stages
from xrlib.models.sampling import (diffusion_process, from_diffusion_space, indi_restore, make_scheduler, sample, sdedit,
                                   to_diffusion_space)
from xrlib.models.training import init_distributed
from xrlib.models.unet import downsampling_factor, train_diffusion


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


def air_outside_body(images: torch.Tensor) -> torch.Tensor:
    """Where (B, 1, H, W) radiographs in [0, 1] show the air around the patient: black pixels (0) connected to the border.

    A DRR's air is exactly black (nothing attenuates the rays there); a film's black border is too. Black
    pixels enclosed by the body (a clipped lung pixel) are not air.
    """
    black = (images <= 0).cpu().numpy()
    air = np.zeros_like(black)
    for index, image in enumerate(black[:, 0]):
        labels, _ = ndimage.label(image)
        touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        air[index, 0] = np.isin(labels, touching[touching > 0])
    return torch.from_numpy(air).to(images.device)


@torch.no_grad()
def restore_condition(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    condition: torch.Tensor,
    sampler: str = "dpm_solver",
    steps: int = 20,
    generator: torch.Generator | list[torch.Generator] | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Restored images in [-1, 1] from a condition (B, C, H, W) at the output size (H, W multiples of the UNet's factor).

    An InDI model (``schedule.process: indi``) runs ``steps`` InDI steps from the input itself
    (:func:`xrlib.models.sampling.indi_restore`); ``sampler`` and ``strength`` are for diffusion models.
    For those, ``strength`` 1 samples from pure noise. Below 1 the reverse process starts from the upsampled
    LQ image itself (a zero residual, or the condition for an image target) noised to ``strength``
    of the schedule and runs only that fraction of the ``steps`` (Come-Closer-Diffuse-Faster,
    Chung, Sim and Ye, CVPR 2022): fewer steps, and the lower the strength the less is invented.
    """
    schedule = model_config["schedule"]
    if diffusion_process(schedule) == "indi":
        degraded = to_diffusion_space(condition[:, :1], condition, schedule)
        drawn = indi_restore(model, schedule, degraded, steps, condition, generator)
        return from_diffusion_space(drawn, condition.to(drawn.device), schedule)
    scheduler = make_scheduler(sampler, schedule)
    if strength >= 1.0:
        drawn = sample(model, scheduler, condition=condition, steps=steps, generator=generator, clamp=False)
    else:
        start = to_diffusion_space(condition[:, :1], condition, schedule)
        drawn = sdedit(model, scheduler, start, strength, steps, generator, condition=condition, clamp=False)
    return from_diffusion_space(drawn, condition.to(drawn.device), schedule)


@torch.no_grad()
def restore(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    lq_image: torch.Tensor,
    sampler: str = "dpm_solver",
    steps: int = 20,
    generator: torch.Generator | list[torch.Generator] | None = None,
    mask: torch.Tensor | None = None,
    strength: float = 1.0,
    keep_air: bool = False,
) -> torch.Tensor:
    """Restore LQ images (B, 1, h, w) in [0, 1] of any size into (B, 1, scale*h, scale*w) in [0, 1] (see :func:`restore_condition`).

    ``keep_air``: the air around the patient (:func:`air_outside_body` of the input) stays black. For DRRs,
    whose air is black by construction (zero attenuation) and holds nothing to restore: sampled steps would
    draw texture into it. Off for a generator's twins, which can carry black border artefacts where their
    HQ image is grey (DDPM-LQ's corners), and which the restorer should restore like any other pixel.
    """
    scale = int(model_config["scale"])
    condition = make_condition(lq_image, scale, mask)
    padded, (height, width) = pad_to_multiple(condition, downsampling_factor(model_config["unet"]))
    restored = from_model_range(restore_condition(model, model_config, padded, sampler, steps, generator, strength)[..., :height, :width])
    if not keep_air:
        return restored
    air = F.interpolate(air_outside_body(lq_image).float(), scale_factor=scale, mode="nearest").bool()
    return restored.masked_fill(air.to(restored.device), 0.0)


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
    strength: float = 1.0,
    keep_air: bool = False,
) -> dict[str, Path]:
    """Restore the PNGs ``inputs`` (id -> path) into ``output_dir/<id>.png`` (16-bit); return id -> output path.

    Images of equal size are batched. With ``input_px`` each input is first resized (antialiased)
    so that its longer side is ``input_px``; otherwise it is restored at its own size. ``keep_air``: see
    :func:`restore` (on for DRRs).
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
    bar = progress(desc=f"restore -> {Path(output_dir).name}", total=len(loaded), unit="image")
    for ids in by_size.values():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            batch = torch.cat([loaded[i] for i in chunk]).to(device)
            generators = [torch.Generator(device=device).manual_seed(image_seed(seed, i)) for i in chunk]
            restored = restore(model, model_config, batch, sampler, steps, generators, strength=strength, keep_air=keep_air)
            for image_id, image in zip(chunk, restored.cpu().numpy()):
                written[image_id] = save_png16(Path(output_dir) / f"{image_id}.png", image[0])
            bar.update(len(chunk))
    bar.close()
    return written


def steps_sweep(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    manifest: pd.DataFrame,
    root: str | Path,
    steps_options: Sequence[int],
    seed: int = 0,
    **restore_kwargs: Any,
) -> pd.DataFrame:
    """Distortion and fine scale of each pair of ``manifest`` restored in each of ``steps_options`` steps,
    beside its bicubic-upsampled LQ input's (the "LQ input" row of the paper's table).

    Columns: pair_id, patient_id (if the manifest has it), steps, psnr_db, ssim, spectrum_distance (log-RMS
    distance of the restoration's radial spectrum to its HQ image's, decades), high_frequency_fraction, and
    the input's input_psnr_db, input_ssim, input_spectrum_distance, input_high_frequency_fraction, with
    hq_high_frequency_fraction: the perception-distortion trade-off of the step count
    (:func:`perception_distortion`).
    Each image keeps its own seed (:func:`image_seed`) whatever the step count.
    """
    if not len(manifest):
        raise DataError("steps_sweep: no pairs to restore (is the validation split empty?)")
    root = Path(root)
    device = next(model.parameters()).device
    rows = []
    for pair in progress(manifest.itertuples(), "steps sweep", len(manifest), unit="pair"):
        lq_image = torch.from_numpy(load_png(root / pair.lq_path))[None, None]
        hq_image = torch.from_numpy(load_png(root / pair.hq_path))[None, None]
        upsampled = resize_bicubic(lq_image, tuple(hq_image.shape[-2:])).clamp(0, 1)
        baseline = {"input_psnr_db": float(psnr_db(upsampled, hq_image)[0]), "input_ssim": float(ssim(upsampled, hq_image)[0]),
                    "input_spectrum_distance": float(spectrum_distance_to_reference(upsampled, hq_image)[0]),
                    "input_high_frequency_fraction": float(high_frequency_power_fraction(upsampled)[0]),
                    "hq_high_frequency_fraction": float(high_frequency_power_fraction(hq_image)[0])}
        for steps in steps_options:
            generator = torch.Generator(device=device).manual_seed(image_seed(seed, pair.pair_id))
            restored = restore(model, model_config, lq_image.to(device), steps=int(steps), generator=generator,
                               **restore_kwargs).cpu()
            if restored.shape != hq_image.shape:
                raise DataError(f"pair {pair.pair_id}: restored {tuple(restored.shape[-2:])} but HQ is "
                                f"{tuple(hq_image.shape[-2:])}; the pair sizes do not match the model's scale")
            rows.append({"pair_id": pair.pair_id, "patient_id": getattr(pair, "patient_id", pair.pair_id),
                         "steps": int(steps), "psnr_db": float(psnr_db(restored, hq_image)[0]),
                         "ssim": float(ssim(restored, hq_image)[0]),
                         "spectrum_distance": float(spectrum_distance_to_reference(restored, hq_image)[0]),
                         "high_frequency_fraction": float(high_frequency_power_fraction(restored)[0]), **baseline})
    return pd.DataFrame(rows)


def choose_restore_steps(sweep: pd.DataFrame) -> pd.Series:
    """The step count whose restorations have the highest mean SSIM among those beating their LQ inputs in mean
    PSNR (over :func:`steps_sweep`'s pairs); ties go to fewer steps.

    More steps of a noisy bridge sample more detail (Blau and Michaeli 2018: it costs fidelity).
    SSIM rewards added detail only where it matches the HQ structure and penalises sampled texture
    that does not; on DRRs such texture shows as speckle and fading nodules (the smoke profile at 8
    steps, chosen by a "largest still beating the input" rule: speckled background, 5 of 11 nodules
    kept). If no step count beats the input in PSNR, the one with the highest mean PSNR gain.
    Returns the chosen row of the per-steps means (``chosen`` says which rule).
    """
    needed = {"steps", "psnr_db", "ssim", "input_psnr_db", "input_ssim"}
    if missing := needed - set(sweep.columns):
        raise DataError(f"choose_restore_steps: the sweep lacks {sorted(missing)}")
    means = sweep.groupby("steps")[["psnr_db", "ssim", "input_psnr_db", "input_ssim"]].mean()
    means["psnr_gain_db"] = means.psnr_db - means.input_psnr_db
    means["ssim_gain"] = means.ssim - means.input_ssim
    beating = means[means.psnr_gain_db > 0]
    if len(beating):
        best = beating.ssim.idxmax()
        return pd.concat([means.loc[best], pd.Series({"steps": best, "chosen": "highest SSIM beating the input in PSNR"})])
    best = means.psnr_gain_db.idxmax()
    return pd.concat([means.loc[best], pd.Series({"steps": best, "chosen": "highest PSNR gain (none beats input)"})])


def choose_drr_steps(sweep: pd.DataFrame, fidelity_steps: int, psnr_budget_db: float) -> pd.Series:
    """The step count DRRs are restored with: the most steps whose mean validation PSNR stays within
    ``psnr_budget_db`` of the fidelity choice's (``fidelity_steps``, :func:`choose_restore_steps`).

    The fidelity end (one InDI step: the mean HQ image given the input) is what PSNR and SSIM reward,
    and the paper's table measures it; a DRR has no HQ image to be faithful to, and its restoration
    is meant to look like a radiograph, which the mean image does not (smooth lung fields). A fixed
    PSNR budget on the validation pairs buys fine scale at a stated cost in fidelity (a point of
    bounded distortion on the perception-distortion curve, Blau and Michaeli 2018); 0 restores DRRs with
    ``fidelity_steps``. Only the counts of the sweep are candidates, so its largest caps the texture.
    Returns the chosen row of the per-steps means, with ``psnr_cost_db`` (fidelity choice minus it).
    """
    if psnr_budget_db < 0:
        raise ConfigError(f"restore.drr_psnr_budget_db = {psnr_budget_db}; use 0 (the fidelity end) or more dB")
    if missing := {"steps", "psnr_db", "ssim"} - set(sweep.columns):
        raise DataError(f"choose_drr_steps: the sweep lacks {sorted(missing)}")
    means = sweep.groupby("steps")[["psnr_db", "ssim"]].mean()
    if fidelity_steps not in means.index:
        raise DataError(f"choose_drr_steps: the sweep has no row for the fidelity choice ({fidelity_steps} steps); "
                        f"it has {sorted(means.index)}")
    means["psnr_cost_db"] = means.psnr_db.loc[fidelity_steps] - means.psnr_db
    within = means[(means.index >= fidelity_steps) & (means.psnr_cost_db <= psnr_budget_db + 1e-9)]
    best = int(within.index.max()) if psnr_budget_db > 0 else int(fidelity_steps)
    return pd.concat([means.loc[best], pd.Series({"steps": best})])


def perception_distortion(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (if the sweep has ``config``) and step count: mean PSNR and SSIM (distortion), median
    spectrum distance to the HQ images and median high-frequency fraction over the HQ images' (perception:
    0 decades and 1 match the films' fine scale), from :func:`steps_sweep` rows. The LQ input is step 0.

    Blau and Michaeli (CVPR 2018): no restoration is best at both; more InDI steps move along the curve.
    """
    needed = {"steps", "psnr_db", "ssim", "spectrum_distance", "high_frequency_fraction", "input_psnr_db",
              "input_ssim", "input_spectrum_distance", "input_high_frequency_fraction", "hq_high_frequency_fraction"}
    if missing := needed - set(sweep.columns):
        raise DataError(f"perception_distortion: the sweep lacks {sorted(missing)} (rerun 05_restore)")
    keys = ["config"] if "config" in sweep.columns else []
    rows = sweep.assign(high_frequency_ratio=sweep.high_frequency_fraction / sweep.hq_high_frequency_fraction)
    inputs = sweep.drop_duplicates(keys + ["pair_id"]).assign(
        steps=0, psnr_db=lambda d: d.input_psnr_db, ssim=lambda d: d.input_ssim,
        spectrum_distance=lambda d: d.input_spectrum_distance,
        high_frequency_ratio=lambda d: d.input_high_frequency_fraction / d.hq_high_frequency_fraction)
    table = pd.concat([inputs, rows], ignore_index=True).groupby(keys + ["steps"])
    return table.agg(psnr_db=("psnr_db", "mean"), ssim=("ssim", "mean"), spectrum_distance=("spectrum_distance", "median"),
                     high_frequency_ratio=("high_frequency_ratio", "median"), pairs=("pair_id", "nunique")).reset_index()


def validated_steps(
    model: torch.nn.Module,
    model_config: Mapping[str, Any],
    root: str | Path,
    steps_options: Sequence[int] | None,
    default_steps: int,
    seed: int = 0,
    drr_psnr_budget_db: float = 0.0,
) -> tuple[dict[str, int], pd.DataFrame]:
    """The step counts an InDI restorer restores with, chosen over ``steps_options`` on the validation pairs
    of its own generator (the pairs it was trained from): ``test_pairs`` by :func:`choose_restore_steps`
    (the fidelity end, for the quality table) and ``drrs`` by :func:`choose_drr_steps` within
    ``drr_psnr_budget_db`` of it. Both are ``default_steps`` for a diffusion model, without
    ``steps_options``, or when its generator has no validation pairs. Returns them and the sweep.
    """
    default = {"test_pairs": int(default_steps), "drrs": int(default_steps)}
    if diffusion_process(model_config["schedule"]) != "indi" or not steps_options:
        return default, pd.DataFrame()
    data = model_config["data"]
    val_pairs = read_pairs(Path(root) / data["pairs"], data["generator"], "val")
    if not len(val_pairs):
        return default, pd.DataFrame()
    sweep = steps_sweep(model, model_config, val_pairs, root, steps_options, seed)
    fidelity = int(choose_restore_steps(sweep)["steps"])
    return {"test_pairs": fidelity, "drrs": int(choose_drr_steps(sweep, fidelity, drr_psnr_budget_db)["steps"])}, sweep


def restorer_settings(section: RestorerSettings, name: str) -> dict[str, Any]:
    """Configuration ``name``: the ``restorer`` section's ``base`` overridden by ``configs[name]``,
    learning from the pairs 03_lq_munit writes, with the section's seed; ``{config}`` in
    ``train.init_weights`` becomes ``name``."""
    if name not in section.configs:
        raise ConfigError(f"restorer.configs has no '{name}'; known: {sorted(section.configs)}")
    settings = deep_merge(section.base, section.configs[name])
    for key in ("generator", "unet", "schedule", "train"):
        if key not in settings:
            raise ConfigError(f"restorer configuration '{name}' lacks '{key}' (in restorer.base or restorer.configs.{name})")
    settings["pairs"] = stages.relative_path("03_lq_munit.pairs")
    settings["train"] = {"seed": section.seed, **settings["train"]}
    if settings["train"].get("init_weights"):  # e.g. "released:{config}": each configuration from its own release
        settings["train"]["init_weights"] = settings["train"]["init_weights"].format(config=name)
    return settings


def restorer_model_config(settings: Mapping[str, Any], scale: int) -> dict[str, Any]:
    """A restorer's config: architecture (condition = LQ (+ mask); output ``scale`` times the input)
    and the pairs it learns from ("data": generator and manifest), stored with its weights."""
    unet = {**settings["unet"], "image_channels": 1,
            "condition_channels": 2 if settings.get("mask_channel", False) else 1,
            "sample_px": int(settings.get("crop_px") or settings["unet"].get("sample_px", 64))}
    return {"unet": unet, "schedule": dict(settings["schedule"]), "scale": int(scale),
            "data": {"generator": settings["generator"], "pairs": str(settings["pairs"])}}


def train_restorer(section: RestorerSettings, name: str, scale: int, root: str | Path,
                   run_dir: str | Path) -> dict[str, Any]:
    """Train restorer configuration ``name`` of the ``restorer`` params section on its train pairs
    (output ``scale`` times the input: :attr:`xrlib.params.PairsSettings.scale`).

    Pairs come from ``settings["pairs"]`` (relative to ``root``) filtered by ``generator`` and
    split ``train``; EMA weights go to ``run_dir/restorer_ema.safetensors``. dvclive logs, every
    ``sample_every`` steps, LQ crops, their 20-step restorations (InDI steps or DDIM) and the HQ crops side by side.
    """
    settings = restorer_settings(section, name)
    root = Path(root)
    manifest = read_pairs(root / settings["pairs"], settings["generator"], "train")
    dataset = PairDataset(manifest, root, settings.get("crop_px"), settings.get("flip_left_right", False),
                          settings.get("mask_channel", False))
    model_config = restorer_model_config(settings, scale)
    preview = [dataset[(i % len(dataset), i)] for i in range(int(settings.get("preview_images", 2)))]
    preview_condition = torch.stack([item["condition"] for item in preview])
    preview_hq = torch.stack([item["image"] for item in preview])

    def preview_fn(ema: torch.nn.Module) -> torch.Tensor:
        device = next(ema.parameters()).device
        restored = restore_condition(ema, model_config, preview_condition.to(device), "ddim", 20,
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

        torchrun --nproc_per_node 8 -m xrlib.models.restorer bicubic_baseline
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="a name under restorer.configs in params.yaml")
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    args = parser.parse_args(argv)
    init_distributed()
    settings = check_params(load_params(args.params))
    train_restorer(settings["restorer"], args.config, settings["pairs"].scale, project_root(),
                   stages.path("04_restorer.run", config=args.config))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

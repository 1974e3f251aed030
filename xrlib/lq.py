"""Low-quality (DRR-like) twins of real X-rays, the paired training set, and checks of the translation.

Three ways to make an LQ twin of an HQ display X-ray (all images float (B, 1, H, W) in [0, 1]):

- **bicubic** (the baseline): antialiased bicubic downsampling to the restorer's input size.
- **DDPM-LQ**: :func:`sdedit_translate` noises the HQ image to a strength t0 and denoises it with a
  DDPM trained on DRRs (SDEdit, Meng et al. 2022); optional ILVR guidance (Choi et al. 2021)
  replaces the low-pass of every intermediate sample by that of the HQ image noised to the same
  step, so the anatomy stays while the texture becomes DRR-like.
- **MUNIT-LQ**: :func:`xrlib.munit.translate_hq_to_lq` (HQ content code, LQ style code).

:func:`build_pairs` writes every twin with its HQ image and a manifest. :func:`translation_report`
says whether a generator does what the paper needs: the twin's radially averaged power spectrum
and sharpness move from the HQ value toward the DRR value (reported as the fraction of the
HQ -> DRR distance covered), while the low-pass SSIM to the HQ image stays high (anatomy kept).
The spectrum and sharpness helpers here are only those checks; realism metrics live in xrlib.metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from xrlib.errors import ConfigError, DataError
from xrlib.io import load_png, save_png16, write_csv_atomic

PAIR_COLUMNS = ["pair_id", "patient_id", "split", "generator", "generator_params", "lq_path", "hq_path"]


# ----------------------------------------------------------------------------------------------
# Resampling and loading


def resize_display(images: torch.Tensor, size_px: int) -> torch.Tensor:
    """Bicubic resampling of (B, C, H, W) to ``size_px`` squared, antialiased when shrinking, clipped to [0, 1]."""
    shrinking = size_px < images.shape[-1] or size_px < images.shape[-2]
    return F.interpolate(images, size=(size_px, size_px), mode="bicubic", align_corners=False, antialias=shrinking).clamp(0, 1)


def load_square_display(path: str | Path, size_px: int) -> torch.Tensor:
    """A display PNG as (1, 1, size_px, size_px): centre square crop (the lungs), then bicubic resize."""
    image = torch.from_numpy(load_png(path))
    height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    return resize_display(square[None, None], size_px)


def load_display_stack(paths: Sequence[str | Path], size_px: int) -> torch.Tensor:
    """Several display PNGs as one (N, 1, size_px, size_px) tensor."""
    if not paths:
        raise DataError("no images to load; check the manifest (it lists no files)")
    return torch.cat([load_square_display(p, size_px) for p in paths])


def split_by_patient(patient_ids: Sequence[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign each patient to a split (e.g. train/val/test) with the given fractions, seeded; every image of a patient shares it."""
    patients = sorted(set(patient_ids))
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ConfigError(f"split fractions {dict(fractions)} must be non-negative and sum to more than 0")
    order = np.random.default_rng(seed).permutation(len(patients))
    bounds = np.round(np.cumsum([v / total for v in fractions.values()]) * len(patients)).astype(int)
    assignment = {}
    for rank, index in enumerate(order):
        split_index = int(np.searchsorted(bounds, rank, side="right"))
        assignment[patients[index]] = list(fractions)[min(split_index, len(fractions) - 1)]
    return assignment


# ----------------------------------------------------------------------------------------------
# Translation checks


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian low-pass of (B, C, H, W) with reflect padding (kernel radius 3 sigma)."""
    if sigma_px <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def radial_power_spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of each image, normalised to unit total power (its shape, not its contrast).

    Images (B, 1, N, N) have their mean removed and a Hann window applied; returns the frequencies
    in cycles per pixel (bins 1 .. N/2, DC excluded) and the power (B, N/2) per bin.
    """
    size = images.shape[-1]
    if images.shape[-2] != size:
        raise DataError(f"radial_power_spectrum needs square images, got {tuple(images.shape[-2:])}")
    window = torch.hann_window(size, periodic=False, dtype=images.dtype)
    centred = (images - images.mean(dim=(-2, -1), keepdim=True)) * (window[:, None] * window[None, :])
    power = torch.fft.fftshift(torch.fft.fft2(centred).abs() ** 2, dim=(-2, -1))[:, 0]
    coords = torch.arange(size) - size // 2
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2).round().long().flatten()
    n_bins = size // 2
    keep = (radius >= 1) & (radius <= n_bins)
    sums = torch.zeros(images.shape[0], n_bins + 1, dtype=images.dtype).index_add_(1, radius[keep], power.flatten(1)[:, keep])
    counts = torch.bincount(radius[keep], minlength=n_bins + 1).to(images.dtype)
    radial = sums[:, 1:] / counts[1:]
    radial = radial / radial.sum(dim=1, keepdim=True).clamp_min(1e-20)
    return torch.arange(1, n_bins + 1, dtype=images.dtype) / size, radial


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude over the image's standard deviation (per pixel; contrast-free), one value per image."""
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    gradient = torch.sqrt(dx ** 2 + dy ** 2).mean(dim=(1, 2, 3))
    return gradient / images.std(dim=(1, 2, 3)).clamp_min(1e-8)


def low_pass_ssim(a: torch.Tensor, b: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """SSIM (torchmetrics, data range 1) between Gaussian low-passed versions of ``a`` and ``b``, one value per pair."""
    if a.shape != b.shape:
        raise DataError(f"low_pass_ssim needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return structural_similarity_index_measure(gaussian_blur(a, sigma_px), gaussian_blur(b, sigma_px), data_range=1.0, reduction="none")


def fraction_moved(start: torch.Tensor, end: torch.Tensor, moved: torch.Tensor) -> float:
    """Where ``moved`` lies on the way from ``start`` to ``end``: projection of (moved - start) on (end - start) over |end - start|^2.

    0 = still at the start (the HQ value), 1 = at the end (the DRR value); works for scalars and vectors.
    """
    direction = (end - start).flatten()
    length2 = float(direction @ direction)
    if length2 == 0:
        raise DataError("HQ and DRR values coincide; the direction of movement is undefined")
    return float((moved - start).flatten() @ direction) / length2


def translation_report(hq_display: torch.Tensor, lq_display: torch.Tensor, drr_display: torch.Tensor, low_pass_sigma_px: float) -> dict[str, float]:
    """How far LQ twins moved from their HQ images toward the DRR domain, and how much anatomy they kept.

    All are measured at the HQ size: LQ twins (same count as HQ, any size) and DRRs (any count) are
    bicubic-resampled to it. Spectrum: mean log10 normalised radial power spectrum of each set;
    sharpness: mean of :func:`sharpness`. ``*_fraction`` = :func:`fraction_moved` (0 HQ, 1 DRR).
    ``low_pass_ssim`` = mean SSIM of the Gaussian low-passes (sigma ``low_pass_sigma_px``) of twin and HQ.
    """
    size = hq_display.shape[-1]
    if lq_display.shape[0] != hq_display.shape[0]:
        raise DataError(f"{lq_display.shape[0]} LQ twins for {hq_display.shape[0]} HQ images; they must pair up")
    lq = resize_display(lq_display, size)
    drr = resize_display(drr_display, size)

    def log_spectrum(x):
        return torch.log10(radial_power_spectrum(x)[1].clamp_min(1e-12)).mean(dim=0)

    spectra = {name: log_spectrum(x) for name, x in (("hq", hq_display), ("lq", lq), ("drr", drr))}
    sharp = {name: sharpness(x).mean() for name, x in (("hq", hq_display), ("lq", lq), ("drr", drr))}
    return {
        "spectrum_fraction": fraction_moved(spectra["hq"], spectra["drr"], spectra["lq"]),
        "sharpness_fraction": fraction_moved(sharp["hq"], sharp["drr"], sharp["lq"]),
        "sharpness_hq": float(sharp["hq"]),
        "sharpness_lq": float(sharp["lq"]),
        "sharpness_drr": float(sharp["drr"]),
        "low_pass_ssim": float(low_pass_ssim(lq, hq_display, low_pass_sigma_px).mean()),
    }


# ----------------------------------------------------------------------------------------------
# DDPM-LQ: SDEdit with optional ILVR


def ilvr_low_pass(images: torch.Tensor, factor: int) -> torch.Tensor:
    """ILVR's phi_N: bicubic down by ``factor`` (antialiased) and back up to the original size."""
    small = F.interpolate(images, scale_factor=1 / factor, mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False)


@torch.no_grad()
def sdedit_translate(
    unet: torch.nn.Module,
    scheduler: Any,
    hq_display: torch.Tensor,
    strength: float,
    num_inference_steps: int,
    ilvr_factor: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """HQ display images -> LQ by partial noising and denoising with a DDPM of the LQ domain.

    ``unet(x_t, t).sample`` predicts the noise (a diffusers UNet2DModel); ``scheduler`` is a
    diffusers DDPMScheduler or DDIMScheduler configured as in training. ``strength`` in (0, 1] is
    t0 / T: the HQ image is noised to the last inference timestep not above t0 (``add_noise``) and
    the reverse steps run from there. ``ilvr_factor`` N > 0: after each step, the sample's
    low-pass phi_N is replaced by that of the HQ image noised to the step's next timestep (ILVR).
    All randomness comes from ``seed``: same seed, same output.
    """
    if not 0 < strength <= 1:
        raise ConfigError(f"lq_ddpm strength {strength} must lie in (0, 1]")
    device = hq_display.device
    generator = torch.Generator(device=device).manual_seed(seed)
    scheduler.set_timesteps(num_inference_steps)
    t0 = strength * scheduler.config.num_train_timesteps
    timesteps = [int(t) for t in scheduler.timesteps if t < t0]
    if not timesteps:
        raise ConfigError(f"lq_ddpm strength {strength} is below the first inference timestep; raise it or num_inference_steps")
    clean = hq_display * 2 - 1

    def noised(t: int) -> torch.Tensor:
        noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
        return scheduler.add_noise(clean, noise, torch.tensor([t], device=device))

    sample = noised(timesteps[0])
    for index, t in enumerate(timesteps):
        model_output = unet(sample, torch.tensor([t], device=device)).sample
        sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
        if ilvr_factor > 0:
            reference = noised(timesteps[index + 1]) if index + 1 < len(timesteps) else clean
            sample = sample - ilvr_low_pass(sample, ilvr_factor) + ilvr_low_pass(reference, ilvr_factor)
    return ((sample + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Pairs


Translate = Callable[[torch.Tensor, int], torch.Tensor]
"""A generator: (HQ display at the LQ size (1, 1, n, n), seed) -> LQ display twin (1, 1, n, n)."""


def bicubic_twin(hq_display_small: torch.Tensor, seed: int) -> torch.Tensor:
    """The bicubic baseline: the HQ image at the input size is itself the LQ twin (no seed needed)."""
    return hq_display_small


def build_pairs(
    hq_table: pd.DataFrame,
    generators: Mapping[str, tuple[Translate, Mapping[str, Any]]],
    root: Path,
    output_dir: Path,
    hq_px: int,
    lq_px: int,
    seed: int,
) -> pd.DataFrame:
    """Write every HQ image (at ``hq_px``) and its LQ twin by each generator (at ``lq_px``) and the manifest.

    ``hq_table`` has image_id, patient_id, split and path (16-bit display PNG, relative to ``root``).
    Each generator is (translate, params): the LQ twin of an image is ``translate(HQ at lq_px,
    seed + row index)``, its params go to the manifest as JSON. Files: ``output_dir/hq/<image_id>.png``,
    ``output_dir/<generator>/<image_id>.png``; the manifest ``output_dir/pairs.csv`` (paths relative to ``root``).
    """
    missing = {"image_id", "patient_id", "split", "path"} - set(hq_table.columns)
    if missing:
        raise DataError(f"HQ manifest lacks columns {sorted(missing)}; it needs image_id, patient_id, split, path")
    if lq_px >= hq_px:
        raise ConfigError(f"pairs: lq_px {lq_px} must be smaller than hq_px {hq_px}")
    rows = []
    for index, record in enumerate(hq_table.itertuples(index=False)):
        hq = load_square_display(root / record.path, hq_px)
        hq_path = output_dir / "hq" / f"{record.image_id}.png"
        save_png16(hq_path, hq[0, 0].numpy())
        hq_small = resize_display(hq, lq_px)
        for name, (translate, params) in generators.items():
            lq = translate(hq_small, seed + index)
            if lq.shape != hq_small.shape:
                raise DataError(f"generator {name} returned shape {tuple(lq.shape)} for {tuple(hq_small.shape)}")
            lq_path = output_dir / name / f"{record.image_id}.png"
            save_png16(lq_path, lq[0, 0].cpu().numpy())
            rows.append({
                "pair_id": f"{name}-{record.image_id}", "patient_id": record.patient_id, "split": record.split,
                "generator": name, "generator_params": json.dumps(dict(params), sort_keys=True),
                "lq_path": str(lq_path.relative_to(root)), "hq_path": str(hq_path.relative_to(root)),
            })
    manifest = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    write_csv_atomic(output_dir / "pairs.csv", manifest)
    return manifest


def pair_generators(
    ddpm_unet: torch.nn.Module,
    ddpm_scheduler: Any,
    ddpm_params: Mapping[str, Any],
    munit_model: torch.nn.Module,
    munit_params: Mapping[str, Any],
) -> dict[str, tuple[Translate, dict[str, Any]]]:
    """The three generators for :func:`build_pairs`: bicubic, DDPM-LQ (SDEdit + ILVR) and MUNIT-LQ (sampled style)."""
    from xrlib.munit import translate_hq_to_lq

    ddpm = {k: ddpm_params[k] for k in ("strength", "num_inference_steps", "ilvr_factor")}

    def ddpm_twin(hq_small: torch.Tensor, seed: int) -> torch.Tensor:
        return sdedit_translate(ddpm_unet, ddpm_scheduler, hq_small, seed=seed, **ddpm)

    def munit_twin(hq_small: torch.Tensor, seed: int) -> torch.Tensor:
        return translate_hq_to_lq(munit_model, hq_small, seed=seed)

    return {
        "bicubic": (bicubic_twin, {"method": "bicubic, antialiased"}),
        "ddpm": (ddpm_twin, {**ddpm, "sampler": ddpm_params.get("sampler", "ddpm")}),
        "munit": (munit_twin, {"style": "sampled N(0, I)", **dict(munit_params)}),
    }


def manifest_translation_checks(manifest: pd.DataFrame, root: Path, drr_display: torch.Tensor, hq_px: int,
                                low_pass_sigma_px: float, split: str | None = None) -> pd.DataFrame:
    """:func:`translation_report` for each generator of a pair manifest (optionally one split), one row per generator."""
    rows = []
    chosen = manifest if split is None else manifest[manifest.split == split]
    for generator, group in chosen.groupby("generator", sort=True):
        hq = load_display_stack([root / p for p in group.hq_path], hq_px)
        lq = torch.cat([torch.from_numpy(load_png(root / p))[None, None] for p in group.lq_path])
        rows.append({"generator": generator, "n_images": len(group), **translation_report(hq, lq, drr_display, low_pass_sigma_px)})
    return pd.DataFrame(rows)


class DisplayImageDataset(torch.utils.data.Dataset):
    """Unconditional training images for :func:`xrlib.training.train`: item (index, seed) -> {"image" in [-1, 1], "seed"}."""

    def __init__(self, images_display: torch.Tensor):
        self.images = images_display * 2 - 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (key, 0) if isinstance(key, (int, np.integer)) else key
        return {"image": self.images[int(index)], "seed": int(seed)}


def read_drr_paths(root: Path) -> list[Path]:
    """The DRR display PNGs of stage 01 (outputs/01_drr/drrs.csv, drr/<drr_id>.png)."""
    table_path = root / "outputs" / "01_drr" / "drrs.csv"
    if not table_path.is_file():
        raise DataError(f"{table_path}: missing; run the 01_drr stage first (dvc repro drr)")
    return [root / "outputs" / "01_drr" / "drr" / f"{drr_id}.png" for drr_id in pd.read_csv(table_path).drr_id]


def read_hq_manifest(root: Path) -> pd.DataFrame:
    """The HQ X-ray manifest of stage 00 (image_id, patient_id, split, path relative to the root)."""
    table_path = root / "outputs" / "00_data" / "xray_manifest.csv"
    if not table_path.is_file():
        raise DataError(f"{table_path}: missing; run the 00_data stage first (dvc repro data)")
    return pd.read_csv(table_path, dtype={"image_id": str, "patient_id": str})

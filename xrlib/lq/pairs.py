"""Low-quality (DRR-like) twins of real X-rays, the paired training set, and checks of the translation.

Three ways to make an LQ twin of an HQ display X-ray (all images float (B, 1, H, W) in [0, 1]):

- **bicubic** (the baseline): antialiased bicubic downsampling to the restorer's input size.
- **DDPM-LQ**: :func:`xrlib.diffusion.sdedit` noises the HQ image part-way and denoises it with a
  DDPM trained on DRRs (SDEdit, Meng et al. 2022); ``strength`` is the fraction of the sampling
  steps re-run (about t0 / T for evenly spaced timesteps). Optional ILVR guidance (Choi et al.
  2021, :func:`xrlib.diffusion.ilvr_guidance`) replaces the low-pass of every intermediate sample
  by that of the HQ image noised to the same step, so the anatomy stays while the texture becomes DRR-like.
- **MUNIT-LQ**: :func:`xrlib.munit.translate_hq_to_lq` (HQ content code, LQ style code).

:func:`build_pairs` writes every twin with its HQ image and the pair manifest
(:data:`xrlib.pairs_dataset.PAIR_COLUMNS`); with too few patients to hold any out it splits image
tiles instead, and the manifest says so (``split_unit``). :func:`translation_report`
says whether a generator does what the paper needs: the twin's radially averaged power spectrum
and sharpness move from the HQ value toward the DRR value (reported as the fraction of the
HQ -> DRR distance covered), while the low-pass SSIM to the HQ image stays high (anatomy kept).
Resampling is :func:`xrlib.pairs_dataset.resize_bicubic`, spectra :func:`xrlib.metrics.radial_power_spectrum`,
Gaussian low-passes scipy's ``gaussian_filter``; sharpness here is only this check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.ndimage import gaussian_filter
from torchmetrics.functional.image import structural_similarity_index_measure

from xrlib.data.manifest import assign_splits
from xrlib.diffusion import ilvr_guidance, sdedit
from xrlib.errors import ConfigError, DataError
from xrlib.paths import outputs_dir
from xrlib.io import load_png, save_png16, write_csv_atomic
from xrlib.metrics import radial_power_spectrum
from xrlib.pairs_dataset import PAIR_COLUMNS, from_model_range, resize_bicubic, to_model_range


# ----------------------------------------------------------------------------------------------
# Resampling and loading


def load_square_display(path: str | Path, size_px: int) -> torch.Tensor:
    """A display PNG as (1, 1, size_px, size_px): centre square crop (the lungs), then bicubic resize."""
    image = torch.from_numpy(load_png(path))
    height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    return resize_bicubic(square[None, None], (size_px, size_px))


def load_display_stack(paths: Sequence[str | Path], size_px: int) -> torch.Tensor:
    """Several display PNGs as one (N, 1, size_px, size_px) tensor."""
    if not paths:
        raise DataError("no images to load; check the manifest (it lists no files)")
    return torch.cat([load_square_display(p, size_px) for p in paths])


# ----------------------------------------------------------------------------------------------
# Translation checks


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass of each (B, C, H, W) image (scipy ``gaussian_filter``, reflect edges, radius 4 sigma)."""
    if sigma_px <= 0:
        return images
    blurred = gaussian_filter(images.detach().cpu().numpy(), sigma=(0, 0, sigma_px, sigma_px), mode="reflect")
    return torch.from_numpy(blurred).to(images)


def spectrum_shape(images: torch.Tensor) -> torch.Tensor:
    """Mean over images of log10 of the radial power spectrum normalised to unit total power (its shape, not its contrast).

    Spectra are :func:`xrlib.metrics.radial_power_spectrum` of square (B, 1, N, N) images, N/2 bins.
    """
    if images.shape[-2] != images.shape[-1]:
        raise DataError(f"spectrum_shape needs square images, got {tuple(images.shape[-2:])}")
    _, power = radial_power_spectrum(images, n_bins=images.shape[-1] // 2)
    unit_power = power / np.clip(power.sum(axis=1, keepdims=True), 1e-20, None)
    return torch.from_numpy(np.log10(np.clip(unit_power, 1e-12, None)).mean(axis=0))


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
    bicubic-resampled to it. Spectrum: :func:`spectrum_shape` of each set;
    sharpness: mean of :func:`sharpness`. ``*_fraction`` = :func:`fraction_moved` (0 HQ, 1 DRR).
    ``low_pass_ssim`` = mean SSIM of the Gaussian low-passes (sigma ``low_pass_sigma_px``) of twin and HQ.
    """
    size = hq_display.shape[-1]
    if lq_display.shape[0] != hq_display.shape[0]:
        raise DataError(f"{lq_display.shape[0]} LQ twins for {hq_display.shape[0]} HQ images; they must pair up")
    lq = resize_bicubic(lq_display, (size, size))
    drr = resize_bicubic(drr_display, (size, size))
    spectra = {name: spectrum_shape(x) for name, x in (("hq", hq_display), ("lq", lq), ("drr", drr))}
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
# Pairs


Translate = Callable[[torch.Tensor, int], torch.Tensor]
"""A generator: (HQ display at the LQ size (1, 1, n, n), seed) -> LQ display twin (1, 1, n, n)."""


def bicubic_twin(hq_display_small: torch.Tensor, seed: int) -> torch.Tensor:
    """The bicubic baseline: the HQ image at the input size is itself the LQ twin (no seed needed)."""
    return hq_display_small


def cut_tiles(square: torch.Tensor, tiles_per_side: int) -> list[torch.Tensor]:
    """Cut a square (1, C, N, N) image into ``tiles_per_side``^2 square tiles, row by row (N a multiple of it)."""
    side = square.shape[-1] // tiles_per_side
    if side * tiles_per_side != square.shape[-1]:
        raise ConfigError(f"image side {square.shape[-1]} px is not a multiple of pairs.tiles_per_side={tiles_per_side}")
    return [square[..., r * side:(r + 1) * side, c * side:(c + 1) * side]
            for r in range(tiles_per_side) for c in range(tiles_per_side)]


def pair_units(hq_table: pd.DataFrame, tiles_per_side: int, split_fractions: Mapping[str, float], seed: int) -> pd.DataFrame:
    """One row per HQ tile: image_id, tile (row-major index), tile_id, patient_id, unit_id, split_unit, split.

    With ``test`` rows in ``hq_table`` the patients' splits stand (``split_unit`` "patient",
    ``unit_id`` = patient_id; tiles, if more than one per image, only add training data and inherit
    their patient's split). Without (too few patients, e.g. the one embedded X-ray), tiles are the
    unit: :func:`xrlib.data.manifest.assign_splits` spreads the tile ids over ``split_fractions``
    with ``seed`` (``split_unit`` "tile", ``unit_id`` = tile_id) -- a hold-out of image regions,
    not of patients.
    """
    missing = {"image_id", "patient_id", "split", "path"} - set(hq_table.columns)
    if missing:
        raise DataError(f"HQ manifest lacks columns {sorted(missing)}; it needs image_id, patient_id, split, path")
    if tiles_per_side < 1:
        raise ConfigError(f"pairs.tiles_per_side={tiles_per_side} must be at least 1")
    rows = []
    for record in hq_table.itertuples(index=False):
        for tile in range(tiles_per_side ** 2):
            tile_id = str(record.image_id) if tiles_per_side == 1 else f"{record.image_id}_t{tile:02d}"
            rows.append({"image_id": str(record.image_id), "tile": tile, "tile_id": tile_id, "patient_id": str(record.patient_id),
                         "path": record.path, "split": record.split})
    units = pd.DataFrame(rows)
    if (hq_table.split == "test").any():
        return units.assign(unit_id=units.patient_id, split_unit="patient")
    tile_splits = assign_splits(units.tile_id, dict(split_fractions), seed)
    if "test" not in tile_splits.values():
        raise ConfigError(f"{len(units)} tiles cannot fill a test split with pairs.split_fractions {dict(split_fractions)}; "
                          "raise pairs.tiles_per_side")
    return units.assign(unit_id=units.tile_id, split_unit="tile", split=units.tile_id.map(tile_splits))


def build_pairs(
    hq_table: pd.DataFrame,
    generators: Mapping[str, tuple[Translate, Mapping[str, Any]]],
    root: Path,
    output_dir: Path,
    hq_px: int,
    lq_px: int,
    seed: int,
    tiles_per_side: int = 1,
    split_fractions: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Write every HQ tile (at ``hq_px``) and its LQ twin by each generator (at ``lq_px``) and the pair manifest.

    ``hq_table`` has image_id, patient_id, split and path (16-bit display PNG, relative to ``root``).
    Each image's centre square is resized to ``tiles_per_side * hq_px`` and cut into tiles; units
    and splits come from :func:`pair_units` (``split_fractions`` default 0.7/0.1/0.2). Each generator
    is (translate, params): the LQ twin of a tile is ``translate(HQ tile at lq_px, seed + tile
    index)``, its params go to the manifest as JSON. Files: ``output_dir/hq/<tile_id>.png``,
    ``output_dir/<generator>/<tile_id>.png``; the manifest ``output_dir/pairs.csv`` (columns
    :data:`xrlib.pairs_dataset.PAIR_COLUMNS`, paths relative to ``root``).
    """
    if lq_px >= hq_px:
        raise ConfigError(f"pairs: lq_px {lq_px} must be smaller than hq_px {hq_px}")
    fractions = split_fractions or {"train": 0.7, "val": 0.1, "test": 0.2}
    units = pair_units(hq_table, tiles_per_side, fractions, seed)
    rows, tile_index = [], 0
    for _, image_units in units.groupby("image_id", sort=False):
        square = load_square_display(root / image_units.path.iloc[0], hq_px * tiles_per_side)
        for unit, hq in zip(image_units.itertuples(index=False), cut_tiles(square, tiles_per_side)):
            hq_path = save_png16(output_dir / "hq" / f"{unit.tile_id}.png", hq[0, 0].numpy())
            hq_small = resize_bicubic(hq, (lq_px, lq_px))
            tile_seed, tile_index = seed + tile_index, tile_index + 1
            for name, (translate, params) in generators.items():
                lq = translate(hq_small, tile_seed)
                if lq.shape != hq_small.shape:
                    raise DataError(f"generator {name} returned shape {tuple(lq.shape)} for {tuple(hq_small.shape)}")
                lq_path = save_png16(output_dir / name / f"{unit.tile_id}.png", lq[0, 0].cpu().numpy())
                rows.append({
                    "pair_id": f"{name}-{unit.tile_id}", "unit_id": unit.unit_id, "split_unit": unit.split_unit,
                    "patient_id": unit.patient_id, "split": unit.split, "generator": name,
                    "generator_params": json.dumps(dict(params), sort_keys=True),
                    "lq_path": str(Path(lq_path).relative_to(root)), "hq_path": str(Path(hq_path).relative_to(root)),
                })
    manifest = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    write_csv_atomic(output_dir / "pairs.csv", manifest)
    return manifest


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


def pair_generators(
    ddpm_unet: torch.nn.Module,
    ddpm_scheduler: Any,
    ddpm_params: Mapping[str, Any],
    munit_model: torch.nn.Module,
    munit_params: Mapping[str, Any],
) -> dict[str, tuple[Translate, dict[str, Any]]]:
    """The three generators for :func:`build_pairs`: bicubic, DDPM-LQ (SDEdit + ILVR) and MUNIT-LQ (sampled style).

    DDPM-LQ is :func:`ddpm_translate` with the image's seed.
    """
    from xrlib.munit import translate_hq_to_lq

    ddpm = {k: ddpm_params[k] for k in ("strength", "num_inference_steps", "ilvr_factor")}

    def ddpm_twin(hq_small: torch.Tensor, seed: int) -> torch.Tensor:
        return ddpm_translate(ddpm_unet, ddpm_scheduler, hq_small, seed=seed, **ddpm)

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


def read_drr_paths(root: Path, nodule_free: bool = False) -> list[Path]:
    """The DRR display PNGs of stage 01: ``drr/<drr_id>.png``, or with ``nodule_free`` the same
    renders without their nodules, ``drr_nodule_free/<drr_id>.png`` (listed in outputs/01_drr/drrs.csv)."""
    table_path = outputs_dir(root) / "01_drr" / "drrs.csv"
    if not table_path.is_file():
        raise DataError(f"{table_path}: missing; run the 01_drr stage first (dvc repro 01_drr)")
    folder = outputs_dir(root) / "01_drr" / ("drr_nodule_free" if nodule_free else "drr")
    return [folder / f"{drr_id}.png" for drr_id in pd.read_csv(table_path).drr_id]


def read_hq_manifest(root: Path) -> pd.DataFrame:
    """The HQ X-ray manifest of stage 00 (image_id, patient_id, split, path relative to the root)."""
    table_path = outputs_dir(root) / "00_data" / "xray_manifest.csv"
    if not table_path.is_file():
        raise DataError(f"{table_path}: missing; run the 00_data stage first (dvc repro data)")
    return pd.read_csv(table_path, dtype={"image_id": str, "patient_id": str})

"""Paired (LQ, HQ) chest X-ray data for the restorer: pair manifests, bicubic pairs, the training dataset.

A pair manifest (``outputs/pairs/pairs.csv``) has the columns :data:`PAIR_COLUMNS`; paths are
16-bit PNGs relative to the project root, the LQ image at the input size, the HQ one ``scale``
times larger. The model sees the LQ image upsampled back to the HQ size with bicubic
interpolation, and both images in [-1, 1].

Augmentation respects anatomy: aligned random crops (patch-based training) and, only if asked,
a left-right flip (off by default: the heart's side matters). Every random choice of a sample
comes from the seed the sampler hands in with its index, so the data a step sees depends only on
the run's seed and the step, not on workers, ranks or restarts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xrlib.errors import ConfigError, DataError
from xrlib.io import load_png, save_png16, write_csv_atomic

PAIR_COLUMNS = ("pair_id", "patient_id", "split", "generator", "lq_path", "hq_path")
XRAY_COLUMNS = ("image_id", "patient_id", "split", "path")


def to_model_range(image01: torch.Tensor) -> torch.Tensor:
    """Display intensity in [0, 1] -> model range [-1, 1]."""
    return image01 * 2.0 - 1.0


def from_model_range(image: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> display intensity in [0, 1] (clipped)."""
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def resize_bicubic(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic resize of (B, C, H, W) to ``size`` (antialiased when shrinking)."""
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=tuple(int(s) for s in size), mode="bicubic", align_corners=False,
                         antialias=shrinking)


def bicubic_degrade(hq_image: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline's LQ image: ``hq_image`` (B, C, H, W) downsampled ``scale`` times, antialiased bicubic."""
    height, width = hq_image.shape[-2:]
    if height % scale or width % scale:
        raise ConfigError(f"HQ size {height}x{width} is not a multiple of scale {scale}; choose hq_px accordingly")
    return resize_bicubic(hq_image, (height // scale, width // scale)).clamp(0.0, 1.0)


def read_dicom_display(path: str | os.PathLike) -> np.ndarray:
    """A chest radiograph DICOM as display intensity in [0, 1] (bone bright; MONOCHROME1 inverted).

    Stand-in loader for the embedded X-ray until the data stage's manifest exists: the stored
    values are windowed to their 0.5-99.5 percentiles.
    """
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
        raw = dataset.pixel_array.astype(np.float64)
    except (OSError, pydicom.errors.InvalidDicomError, AttributeError) as error:
        raise DataError(f"{path}: not a readable DICOM image ({error})") from error
    low, high = np.percentile(raw, [0.5, 99.5])
    display = np.clip((raw - low) / max(high - low, 1e-9), 0.0, 1.0)
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        display = 1.0 - display
    return display.astype(np.float32)


def build_bicubic_pairs(
    images: Mapping[str, Mapping[str, Any]],
    output_dir: str | os.PathLike,
    root: str | os.PathLike,
    hq_px: int,
    scale: int,
) -> pd.DataFrame:
    """Write bicubic (LQ, HQ) pairs and their manifest ``output_dir/pairs.csv``; return the manifest.

    ``images`` maps image_id -> {"patient_id", "split", "image"} with ``image`` a 2-D display
    array in [0, 1] (any size). The HQ image is the X-ray resized to ``hq_px`` x ``hq_px``
    (antialiased bicubic); the LQ image is it downsampled ``scale`` times (:func:`bicubic_degrade`).
    Paths in the manifest are relative to ``root``.
    """
    if hq_px % scale:
        raise ConfigError(f"hq_px={hq_px} must be a multiple of scale={scale}")
    output_dir, root = Path(output_dir), Path(root)
    rows = []
    for image_id, item in images.items():
        image = torch.as_tensor(np.asarray(item["image"], dtype=np.float32))[None, None]
        hq = resize_bicubic(image, (hq_px, hq_px)).clamp(0.0, 1.0)
        lq = bicubic_degrade(hq, scale)
        hq_path = save_png16(output_dir / "hq" / f"{image_id}.png", hq[0, 0].numpy())
        lq_path = save_png16(output_dir / "lq" / f"{image_id}.png", lq[0, 0].numpy())
        rows.append({"pair_id": f"bicubic-{image_id}", "patient_id": item["patient_id"], "split": item["split"],
                     "generator": "bicubic", "lq_path": os.path.relpath(lq_path, root),
                     "hq_path": os.path.relpath(hq_path, root)})
    manifest = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    write_csv_atomic(output_dir / "pairs.csv", manifest)
    return manifest


def read_pairs(path: str | os.PathLike, generator: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Read a pair manifest, keeping the rows of ``generator`` and ``split`` if given."""
    try:
        manifest = pd.read_csv(path, dtype={"patient_id": str, "pair_id": str})
    except FileNotFoundError as error:
        raise DataError(f"{path}: pair manifest not found; run the stage that builds the pairs") from error
    missing = [c for c in PAIR_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"{path}: pair manifest lacks columns {missing}")
    if generator is not None:
        manifest = manifest[manifest["generator"] == generator]
    if split is not None:
        manifest = manifest[manifest["split"] == split]
    return manifest.reset_index(drop=True)


class PairDataset(torch.utils.data.Dataset):
    """(condition, HQ) training pairs from a pair manifest, in [-1, 1].

    An item is requested as ``dataset[(index, sample_seed)]`` (or a bare index, seed 0) and is
    ``{"image": HQ (1, crop, crop), "condition": (C, crop, crop), "seed": sample_seed}``; the condition is
    the LQ image upsampled to the HQ size (plus the ``mask_path`` image when ``mask_channel``).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | os.PathLike,
        crop_px: int | None = None,
        flip_left_right: bool = False,
        mask_channel: bool = False,
        cache_in_memory: bool = True,
    ):
        if len(manifest) == 0:
            raise DataError("the pair manifest has no rows for this generator and split; build the pairs first")
        if mask_channel and "mask_path" not in manifest.columns:
            raise ConfigError("mask_channel is on but the pair manifest has no mask_path column")
        self.manifest = manifest.reset_index(drop=True)
        self.root = Path(root)
        self.crop_px = crop_px
        self.flip_left_right = flip_left_right
        self.mask_channel = mask_channel
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache_in_memory else None

    def __len__(self) -> int:
        return len(self.manifest)

    def _pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        row = self.manifest.iloc[index]
        hq = torch.from_numpy(load_png(self.root / row["hq_path"]))[None, None]
        lq = torch.from_numpy(load_png(self.root / row["lq_path"]))[None, None]
        condition = [to_model_range(resize_bicubic(lq, hq.shape[-2:]))]
        if self.mask_channel:
            condition.append(to_model_range(torch.from_numpy(load_png(self.root / row["mask_path"]))[None, None]))
        pair = (to_model_range(hq)[0], torch.cat(condition, dim=1)[0])
        if self.cache is not None:
            self.cache[index] = pair
        return pair

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = (key, 0) if isinstance(key, (int, np.integer)) else key
        hq, condition = self._pair(int(index))
        rng = np.random.default_rng(int(seed))
        if self.crop_px is not None:
            height, width = hq.shape[-2:]
            if self.crop_px > min(height, width):
                raise ConfigError(f"crop_px={self.crop_px} exceeds the HQ image size {height}x{width}")
            top = int(rng.integers(0, height - self.crop_px + 1))
            left = int(rng.integers(0, width - self.crop_px + 1))
            hq = hq[:, top:top + self.crop_px, left:left + self.crop_px]
            condition = condition[:, top:top + self.crop_px, left:left + self.crop_px]
        if self.flip_left_right and rng.random() < 0.5:
            hq, condition = hq.flip(-1), condition.flip(-1)
        return {"image": hq.contiguous(), "condition": condition.contiguous(), "seed": int(seed)}


def load_hq_xrays(root: str | os.PathLike, xray_manifest: str | os.PathLike,
                  embedded_xray: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """HQ X-rays for :func:`build_bicubic_pairs`: the data stage's manifest (columns :data:`XRAY_COLUMNS`).

    Until that manifest exists, the embedded DICOM ``embedded_xray`` stands in as one training
    image (patient and image id from its file name); the restorer then trains on crops of it.
    """
    root = Path(root)
    manifest_path = root / xray_manifest
    if not manifest_path.is_file():
        image_id = Path(embedded_xray).stem
        return {image_id: {"patient_id": image_id, "split": "train", "image": read_dicom_display(root / embedded_xray)}}
    manifest = pd.read_csv(manifest_path, dtype={"image_id": str, "patient_id": str})
    missing = [c for c in XRAY_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"{manifest_path}: X-ray manifest lacks columns {missing}")
    return {row.image_id: {"patient_id": row.patient_id, "split": row.split, "image": load_png(root / row.path)}
            for row in manifest.itertuples()}

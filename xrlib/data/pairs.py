"""Paired (LQ, HQ) chest X-ray data for the restorer: the pair manifest's schema and reader, the training dataset.

A pair manifest (``outputs/pairs/pairs.csv``, written by :func:`xrlib.lq.pairs.build_pairs`) has the columns :data:`PAIR_COLUMNS`; paths are
16-bit PNGs relative to the project root, the LQ image at the input size, the HQ one ``scale``
times larger. The model sees the LQ image upsampled back to the HQ size with bicubic
interpolation, and both images in [-1, 1].

Augmentation respects anatomy: aligned random crops (patch-based training) and, only if asked,
a left-right flip (off by default: the heart's side matters). Every random choice of a sample
comes from the seed the sampler hands in with its index, so the data a step sees depends only on
the run's seed and the step, not on workers, ranks or restarts.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xrlib.errors import ConfigError, DataError
from xrlib.io import load_png, sha256_file

PAIR_COLUMNS = ("pair_id", "unit_id", "split_unit", "patient_id", "split", "generator", "generator_params",
                "lq_path", "hq_path")
"""The pair manifest (written by :func:`xrlib.lq.pairs.build_pairs`). ``unit_id`` is the unit that was split
and that statistics resample: the patient (``split_unit`` "patient") or, when too few patients hold
nothing out, an image tile (``split_unit`` "tile"). ``generator_params`` is JSON."""


def to_model_range(image01: torch.Tensor) -> torch.Tensor:
    """Display intensity in [0, 1] -> model range [-1, 1]."""
    return image01 * 2.0 - 1.0


def from_model_range(image: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> display intensity in [0, 1] (clipped)."""
    return ((image + 1.0) / 2.0).clamp(0.0, 1.0)


def resize_bicubic(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic resize of display images (B, C, H, W) in [0, 1] to ``size`` (antialiased when shrinking), clipped to [0, 1]."""
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=tuple(int(s) for s in size), mode="bicubic", align_corners=False,
                         antialias=shrinking).clamp(0.0, 1.0)


def read_pairs(path: str | os.PathLike, generator: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Read a pair manifest, keeping the rows of ``generator`` and ``split`` if given."""
    try:
        manifest = pd.read_csv(path, dtype={"patient_id": str, "pair_id": str, "unit_id": str})
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

    def content_sha256(self) -> str:
        """SHA-256 over the SHA-256 of every file the pairs read, in order (a run's data identity)."""
        columns = ["hq_path", "lq_path"] + (["mask_path"] if self.mask_channel else [])
        digest = hashlib.sha256()
        for row in self.manifest[columns].itertuples(index=False):
            for relative in row:
                digest.update(sha256_file(self.root / relative).encode())
        return digest.hexdigest()

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

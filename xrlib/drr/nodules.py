"""Lung nodules: parametric (solid, part-solid, ground-glass) and real LIDC patches, placed inside
lung parenchyma and blended into the CT's HU without step edges.

A :class:`Nodule` is an HU patch with a soft occupancy ``alpha`` in [0, 1] on the CT's voxel
spacing; inserting it sets ``hu = (1 - alpha) * hu + alpha * nodule_hu`` around a centre, so the
nodule's rim fades over about a voxel. Placement keeps the whole nodule inside the lungs, at least
``margin_mm`` from the pleura, large vessels and airways.
"""

from __future__ import annotations

import functools

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from scipy import ndimage

from xrlib.data.ct import CTVolume
from xrlib.errors import ConfigError, DataError, GeometryError

NODULE_TYPES = ("solid", "part_solid", "ground_glass")
MARGINS = ("smooth", "lobulated", "spiculated")
DIAMETER_RANGE_MM = (4.0, 30.0)
#: Typical attenuation (HU) of nodule components (Fleischner glossary; Lee et al. 2014).
SOLID_HU, GROUND_GLASS_HU = 30.0, -550.0


@dataclass(frozen=True)
class Nodule:
    """A nodule on the CT's grid: HU and occupancy patches (odd-sized cubes), and its description."""

    hu: np.ndarray
    alpha: np.ndarray
    diameter_mm: float
    kind: str
    source: str

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5


def parametric_nodule(diameter_mm: float, kind: str, margin: str, spacing_mm, rng: np.random.Generator) -> Nodule:
    """A synthetic nodule: radius modulated for lobulation, thin tapering spicules, HU by type.

    Solid: ~+30 HU with a 10% darker rim; ground-glass: ~-550 HU; part-solid: ground-glass with
    a solid core of 30-60% of the diameter. Occupancy is anti-aliased over one voxel.
    """
    low, high = DIAMETER_RANGE_MM
    if not low <= diameter_mm <= high:
        raise ConfigError(f"nodule diameter {diameter_mm} mm is outside [{low}, {high}] mm; change drr.nodule_diameter_mm")
    if kind not in NODULE_TYPES or margin not in MARGINS:
        raise ConfigError(f"nodule type {kind!r} / margin {margin!r}: use one of {NODULE_TYPES} / {MARGINS}")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    radius = diameter_mm / 2.0
    reach = radius * (1.8 if margin == "spiculated" else 1.3) + 2 * spacing.max()
    half = np.ceil(reach / spacing).astype(int)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    distance = np.sqrt(x**2 + y**2 + z**2) + 1e-9
    directions = np.stack([x, y, z], -1) / distance[..., None]
    surface = np.full_like(distance, radius)
    if margin in ("lobulated", "spiculated"):
        lobes = rng.normal(size=(rng.integers(3, 7), 3))
        lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
        bumps = sum(np.exp((directions @ lobe - 1.0) / 0.15) for lobe in lobes)
        surface = radius * (0.85 + 0.3 * bumps / max(float(bumps.max()), 1e-6))
    edge = spacing.min()
    alpha = np.clip(0.5 - (distance - surface) / edge, 0.0, 1.0)
    if margin == "spiculated":
        for _ in range(int(rng.integers(6, 13))):
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            length = radius * rng.uniform(0.4, 0.8)
            along = directions @ axis * distance
            across = np.sqrt(np.maximum(distance**2 - along**2, 0.0))
            t = np.clip((along - radius * 0.8) / length, 0.0, 1.0)
            width = np.maximum(0.8 * (1.0 - t), 0.2)  # mm, tapering towards the tip
            inside = (along > 0) & (along < radius * 0.8 + length)
            spicule = np.clip(0.5 - (across - width) / edge, 0.0, 1.0) * inside
            alpha = np.maximum(alpha, spicule)
    if kind == "solid":
        hu = SOLID_HU - 0.1 * (SOLID_HU + 1000.0) * np.clip(distance / radius, 0, 1) ** 4
    elif kind == "ground_glass":
        hu = np.full_like(distance, GROUND_GLASS_HU + rng.uniform(-100, 100))
    else:
        core = radius * rng.uniform(0.3, 0.6)
        core_weight = np.clip(0.5 - (distance - core) / edge, 0.0, 1.0)
        hu = (1 - core_weight) * (GROUND_GLASS_HU + rng.uniform(-100, 100)) + core_weight * SOLID_HU
    return Nodule(hu=hu.astype(np.float32), alpha=alpha.astype(np.float32), diameter_mm=float(diameter_mm),
                  kind=kind, source=f"parametric:{margin}")


@functools.lru_cache(maxsize=4)
def _library_table(folder: Path) -> pd.DataFrame:
    masks = sorted(folder.rglob("*_seg_*.mha"))
    if not masks:
        raise DataError(f"{folder}: no nodule masks (*_seg_N.mha) found; point drr.nodule_library at a folder "
                        "of LIDC nodule patches (`xrlib fetch lidc-nodule-patches`)")
    listed = {}
    table_path = folder / "ct_nodules.csv"
    if table_path.is_file():
        listed = {Path(row.seg_name).name: float(row.diameter_mm) for row in pd.read_csv(table_path).itertuples()}
    rows = []
    for mask_path in masks:
        image_path = mask_path.with_name(mask_path.name.replace("_seg_", "_dcm_"))
        if not image_path.is_file():
            raise DataError(f"{mask_path}: its HU patch {image_path.name} is missing; restore it or remove the mask")
        diameter_mm = listed.get(mask_path.name)
        if diameter_mm is None:  # equivalent-sphere diameter of the mask
            mask = tio.LabelMap(mask_path)
            volume_mm3 = float((mask.data > 0).sum()) * float(np.prod(mask.spacing))
            diameter_mm = (6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0)
        rows.append({"img_name": str(image_path), "seg_name": str(mask_path), "diameter_mm": diameter_mm})
    return pd.DataFrame(rows)


def list_nodule_library(folder: str | os.PathLike) -> pd.DataFrame:
    """The nodule patches under ``folder`` (``*_dcm_N.mha`` HU with ``*_seg_N.mha`` masks, any depth).

    Columns img_name, seg_name (absolute paths) and diameter_mm: from ``ct_nodules.csv`` where the
    folder has one (the NODE21 layout), else the mask's equivalent-sphere diameter.
    """
    return _library_table(Path(folder).resolve()).copy()


def library_nodule(image_path, mask_path, diameter_mm: float, spacing_mm, rng: np.random.Generator,
                   rotate: bool = True, scale_range=(1.0, 1.0)) -> Nodule:
    """A real nodule patch (HU + mask) resampled to ``spacing_mm``, optionally rotated and rescaled.

    Only the masked nodule is kept (its occupancy is the mask smoothed over ~0.7 mm), so the
    patch's own surroundings never enter the host CT.
    """
    image = tio.ScalarImage(image_path)
    mask = tio.LabelMap(mask_path)
    hu = image.data[0].numpy().astype(np.float32)
    alpha = (mask.data[0].numpy() > 0).astype(np.float32)
    if not alpha.any():
        raise DataError(f"{mask_path}: empty nodule mask; remove this row from ct_nodules.csv")
    source_spacing = np.asarray(image.spacing, dtype=np.float64)
    scale = float(rng.uniform(*scale_range))
    if rotate:
        rotation = _random_rotation(rng)
        centre = (np.asarray(hu.shape) - 1) / 2.0
        offset = centre - rotation @ centre
        hu = ndimage.affine_transform(hu, rotation, offset=offset, order=1, mode="nearest")
        alpha = ndimage.affine_transform(alpha, rotation, offset=offset, order=1, mode="constant")
    zoom = source_spacing * scale / np.asarray(spacing_mm, dtype=np.float64)
    hu = ndimage.zoom(hu, zoom, order=1, mode="nearest")
    alpha = ndimage.gaussian_filter(ndimage.zoom(alpha, zoom, order=1), 0.7 / np.asarray(spacing_mm))
    alpha = np.clip(alpha, 0.0, 1.0)
    # Crop to the nodule's support (odd cube sizes centred on the mask's centre).
    support = np.argwhere(alpha > 0.01)
    centre = np.round(ndimage.center_of_mass(alpha)).astype(int)
    half = np.max(np.abs(support - centre), axis=0) + 1
    low = np.maximum(centre - half, 0)
    high = np.minimum(centre + half + 1, alpha.shape)
    return Nodule(hu=hu[tuple(slice(a, b) for a, b in zip(low, high))],
                  alpha=alpha[tuple(slice(a, b) for a, b in zip(low, high))].astype(np.float32),
                  diameter_mm=float(diameter_mm) * scale, kind="real", source=f"lidc:{Path(image_path).name}")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=rng).as_matrix()


@dataclass(frozen=True)
class Clearance:
    """Distance (mm, minus the margin) to the nearest forbidden voxel on a coarse ~2 mm grid of
    blocks of ``factors`` CT voxels; block (a, b, c) covers CT voxels [a*f0, (a+1)*f0) etc."""

    distance_mm: np.ndarray
    factors: tuple[int, int, int]


def allowed_centres(ct: CTVolume, lungs: torch.Tensor, margin_mm: float = 3.0, vessel_hu: float = -300.0,
                    airway_hu: float = -950.0, large_structure_mm: float = 3.0, grid_mm: float = 2.0) -> Clearance:
    """Where nodule centres may go: distance to the nearest voxel outside the lungs, in a large
    vessel (block HU > vessel_hu, thicker than large_structure_mm) or a large airway (HU < airway_hu,
    wider than large_structure_mm), minus ``margin_mm``; on a ~``grid_mm`` grid for speed.
    A nodule whose farthest voxel is r mm from its centre fits where the clearance is >= r."""
    spacing = np.asarray(ct.spacing_mm)
    factors = tuple(int(f) for f in np.maximum(np.round(grid_mm / spacing), 1))
    shape = [n // f for n, f in zip(ct.shape, factors)]
    crop = tuple(slice(0, n * f) for n, f in zip(shape, factors))

    def blocks(array):
        view = array[crop].reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
        return view.mean(axis=(1, 3, 5))

    hu = blocks(ct.hu.numpy().astype(np.float32))
    lung = blocks(np.asarray(lungs, dtype=np.float32)) > 0.99
    coarse = spacing * np.asarray(factors)
    radius = np.maximum(np.round(large_structure_mm / 2 / coarse).astype(int), 1)
    ball = np.ones(tuple(2 * radius + 1), dtype=bool)
    vessels = ndimage.binary_opening(lung & (hu > vessel_hu), structure=ball)
    airways = ndimage.binary_opening(lung & (hu < airway_hu), structure=ball)
    forbidden = ~lung | vessels | airways
    # Half a block's diagonal makes the coarse test conservative for every voxel of the block.
    distance = ndimage.distance_transform_edt(~forbidden, sampling=coarse) - margin_mm - np.linalg.norm(coarse) / 2
    return Clearance(distance_mm=distance, factors=factors)


def place_nodules(ct: CTVolume, lungs: torch.Tensor, nodules: list[Nodule], rng: np.random.Generator,
                  margin_mm: float = 3.0, clearance: Clearance | None = None) -> tuple[CTVolume, list[dict]]:
    """Insert ``nodules`` at random admissible centres; returns the new CT and one record per nodule
    (centre_ras_mm, centre_index, diameter_mm, type, source, mask_index: its voxels' indices).
    Nodules keep ``margin_mm`` from each other. Raises :class:`GeometryError` naming the CT when a
    nodule cannot fit.
    """
    clearance = clearance or allowed_centres(ct, lungs, margin_mm)
    distance = clearance.distance_mm.copy()
    factors = np.asarray(clearance.factors)
    spacing = np.asarray(ct.spacing_mm)
    block_centres_mm = np.stack(np.meshgrid(*[(np.arange(n) * f + (f - 1) / 2.0) * s for n, f, s in
                                              zip(distance.shape, factors, spacing)], indexing="ij"), -1)
    hu = ct.hu.numpy().copy()
    records = []
    for nodule in nodules:
        half = (np.asarray(nodule.alpha.shape) - 1) // 2
        offsets = np.argwhere(nodule.alpha > 0.01) - half
        extent_mm = float(np.max(np.linalg.norm(offsets * spacing, axis=1))) if len(offsets) else nodule.diameter_mm / 2
        candidates = np.argwhere(distance >= extent_mm)
        if len(candidates) == 0:
            raise GeometryError(
                f"{ct.source}: a {nodule.diameter_mm:.1f} mm nodule cannot fit inside the lungs at "
                f"{margin_mm} mm from pleura, vessels and airways; use a smaller diameter or margin"
            )
        block = candidates[rng.integers(len(candidates))]
        centre = block * factors + factors // 2
        region = tuple(slice(c - h, c - h + s) for c, h, s in zip(centre, half, nodule.alpha.shape))
        hu[region] = (1.0 - nodule.alpha) * hu[region] + nodule.alpha * nodule.hu
        centre_mm = centre * spacing
        gap = np.linalg.norm(block_centres_mm - centre_mm, axis=-1) - extent_mm - margin_mm
        distance = np.minimum(distance, gap)
        records.append({"centre_ras_mm": ct.voxel_to_world_mm(centre.astype(float))[0],
                        "centre_index": centre, "diameter_mm": nodule.diameter_mm,
                        "type": nodule.kind, "source": nodule.source,
                        "mask_index": np.argwhere(nodule.mask) + centre - half})
    return ct.with_hu(torch.from_numpy(hu)), records

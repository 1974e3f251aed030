"""The paired (LQ, HQ) training set: HQ tiles and their LQ twins by each generator, with the pair manifest.

:func:`build_pairs` writes every twin with its HQ image and the pair manifest
(:data:`xrlib.data.pairs.PAIR_COLUMNS`); with too few patients to hold any out it splits image
tiles instead, and the manifest says so (``split_unit``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence, get_args

import pandas as pd
import torch

from xrlib.data.manifest import assign_splits
from xrlib.data.pairs import PAIR_COLUMNS, resize_bicubic
from xrlib.errors import ConfigError, DataError
from xrlib.lq.twins import Translate
from xrlib.io import load_png, save_png16, write_csv_atomic
from xrlib.params import DRR_CROPS
from xrlib.progress import progress


def body_square(image: torch.Tensor, threshold: float = 0.02, min_fraction: float = 0.02) -> tuple[int, int, int]:
    """(top, left, side) of the largest square centred on the body's bounding box inside it, for an (H, W) display image.

    The body is every pixel brighter than ``threshold`` (a DRR shows air, and everything outside the
    CT's field of view, as 0); its bounding box spans the rows and columns of which at least
    ``min_fraction`` is body, so stray bright pixels do not widen it. The square's side is the box's
    shorter side. A DRR cut this way holds no black frame and no field-of-view edge (where the CT
    ends), which a generator trained on centre squares learns as anatomy.
    """
    inside = image > threshold
    rows = torch.nonzero(inside.float().mean(dim=1) >= min_fraction).flatten()
    cols = torch.nonzero(inside.float().mean(dim=0) >= min_fraction).flatten()
    if len(rows) == 0 or len(cols) == 0:
        raise DataError(f"no body in a {tuple(image.shape)} image (no row or column with {min_fraction:.0%} of its pixels "
                        f"above {threshold}); is it a radiograph? use pairs.drr_crop: centre for images without a dark surround")
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = min(bottom - top, right - left)
    return (top + bottom - side) // 2, (left + right - side) // 2, side


def load_square_display(path: str | Path, size_px: int, crop: str = "centre") -> torch.Tensor:
    """A display PNG as (1, 1, size_px, size_px): a square crop (``centre``: the centre square, the lungs of an
    X-ray; ``body``: :func:`body_square`, for DRRs), then bicubic resize."""
    image = torch.from_numpy(load_png(path))
    if crop == "body":
        top, left, side = body_square(image)
    elif crop == "centre":
        side = min(image.shape)
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    else:
        raise ConfigError(f"crop '{crop}': use one of {get_args(DRR_CROPS)}")
    square = image[top:top + side, left:left + side]
    return resize_bicubic(square[None, None], (size_px, size_px))


def load_display_stack(paths: Sequence[str | Path], size_px: int, crop: str = "centre") -> torch.Tensor:
    """Several display PNGs as one (N, 1, size_px, size_px) tensor, each cut by ``crop`` (:func:`load_square_display`)."""
    if not paths:
        raise DataError("no images to load; check the manifest (it lists no files)")
    return torch.cat([load_square_display(p, size_px, crop) for p in paths])


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
    is (translate, params): it translates the whole square at ``tiles_per_side * lq_px``,
    ``translate(square, seed + image index)``, and the twin is cut into the same tiles, so a generator
    trained on whole DRRs sees a whole chest (translating each tile alone gave every tile a chest's
    border); its params go to the manifest as JSON. Files: ``output_dir/hq/<tile_id>.png``,
    ``output_dir/<generator>/<tile_id>.png``; the manifest ``output_dir/pairs.csv`` (columns
    :data:`xrlib.data.pairs.PAIR_COLUMNS`, paths relative to ``root``).
    """
    if lq_px >= hq_px:
        raise ConfigError(f"pairs: lq_px {lq_px} must be smaller than hq_px {hq_px}")
    fractions = split_fractions or {"train": 0.7, "val": 0.1, "test": 0.2}
    units = pair_units(hq_table, tiles_per_side, fractions, seed)
    rows = []
    bar = progress(desc="pairs", total=len(units), unit="tile")
    for image_index, (_, image_units) in enumerate(units.groupby("image_id", sort=False)):
        square = load_square_display(root / image_units.path.iloc[0], hq_px * tiles_per_side)
        square_small = resize_bicubic(square, (lq_px * tiles_per_side,) * 2)
        twins = {}
        for name, (translate, _) in generators.items():
            twin = translate(square_small, seed + image_index)
            if twin.shape != square_small.shape:
                raise DataError(f"generator {name} returned shape {tuple(twin.shape)} for {tuple(square_small.shape)}")
            twins[name] = cut_tiles(twin.cpu(), tiles_per_side)
        for unit, hq in zip(image_units.itertuples(index=False), cut_tiles(square, tiles_per_side)):
            hq_path = save_png16(output_dir / "hq" / f"{unit.tile_id}.png", hq[0, 0].numpy())
            for name, (_, params) in generators.items():
                lq_path = save_png16(output_dir / name / f"{unit.tile_id}.png", twins[name][unit.tile][0, 0].numpy())
                rows.append({
                    "pair_id": f"{name}-{unit.tile_id}", "unit_id": unit.unit_id, "split_unit": unit.split_unit,
                    "patient_id": unit.patient_id, "split": unit.split, "generator": name,
                    "generator_params": json.dumps(dict(params), sort_keys=True),
                    "lq_path": str(Path(lq_path).relative_to(root)), "hq_path": str(Path(hq_path).relative_to(root)),
                })
            bar.update(1)
    manifest = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    bar.close()
    write_csv_atomic(output_dir / "pairs.csv", manifest)
    return manifest


def read_drr_paths(drrs_csv: Path, image_template: str | Path) -> list[Path]:
    """The DRR images stage 01 lists in its ``drrs_csv``: ``image_template`` with ``{drr_id}`` filled in."""
    if not Path(drrs_csv).is_file():
        raise DataError(f"{drrs_csv}: missing; run the 01_drr stage first (dvc repro 01_drr)")
    return [Path(str(image_template).format(drr_id=drr_id)) for drr_id in pd.read_csv(drrs_csv).drr_id]


def read_hq_manifest(manifest_csv: Path) -> pd.DataFrame:
    """The HQ X-ray manifest of stage 00 (image_id, patient_id, split, path relative to the root)."""
    if not Path(manifest_csv).is_file():
        raise DataError(f"{manifest_csv}: missing; run the 00_data stage first (dvc repro 00_data)")
    return pd.read_csv(manifest_csv, dtype={"image_id": str, "patient_id": str})

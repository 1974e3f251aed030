"""Nodule preservation by restoration: contrast and CNR of an inserted nodule, the contrast and
peak of its own signal (with minus without the nodule), the detectability index d' of a
non-prewhitening (NPW) matched filter, and a documented rule that flags nodules lost by restoration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from xrlib.drr.truth import NODULE_LOCATION_COLUMNS
from xrlib.errors import ConfigError, DataError, GeometryError
from xrlib.io import load_png
from xrlib.eval.images import batch_of, missing_files, resize_images


def _distance_map(shape_hw: tuple[int, int], centre_row_px: float, centre_col_px: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape_hw[0], : shape_hw[1]]
    return np.hypot(rows - centre_row_px, cols - centre_col_px)


def _as_image_2d(image: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(array).astype(np.float64)
    if array.ndim != 2:
        raise DataError(f"{name} must be one 2-D image, got shape {np.shape(image)}")
    return array


def nodule_radius_px(bbox_row0: float, bbox_col0: float, bbox_row1: float, bbox_col1: float) -> float:
    """Radius of a nodule from its bounding box (end-exclusive pixel bounds): a quarter of height + width."""
    return 0.25 * ((bbox_row1 - bbox_row0) + (bbox_col1 - bbox_col0))


def nodule_contrast(
    image: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    core_fraction: float = 0.75,
    annulus_radii: tuple[float, float] = (1.5, 2.5),
) -> dict[str, float]:
    """Local contrast and contrast-to-noise ratio of a nodule.

    contrast = mean in the core disc (``core_fraction`` * radius) - mean in the background annulus
    (``annulus_radii`` * radius); background_std = standard deviation in the annulus;
    cnr = contrast / background_std. Positive for a nodule brighter (more attenuating) than around it.
    """
    array = _as_image_2d(image, "image")
    distance = _distance_map(array.shape, centre_row_px, centre_col_px)
    core = distance <= core_fraction * radius_px
    ring = (distance >= annulus_radii[0] * radius_px) & (distance <= annulus_radii[1] * radius_px)
    if core.sum() < 1 or ring.sum() < 8:
        raise _outside_error(centre_row_px, centre_col_px, radius_px, array.shape)
    contrast = float(array[core].mean() - array[ring].mean())
    background_std = float(array[ring].std(ddof=1))
    cnr = contrast / background_std if background_std > 0 else math.copysign(math.inf, contrast) if contrast else 0.0
    return {"contrast": contrast, "background_std": background_std, "cnr": cnr}


def _outside_error(centre_row_px: float, centre_col_px: float, radius_px: float, shape_hw: tuple[int, ...]) -> GeometryError:
    """The error for a nodule whose measuring regions fall outside the image."""
    return GeometryError(
        f"nodule at (row {centre_row_px:.1f}, col {centre_col_px:.1f}) px with radius {radius_px:.1f} px "
        f"leaves too few pixels of its core, background or search region inside the {shape_hw} image; "
        "check nodules.csv against the image size"
    )


def nodule_peak_px(
    image: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    search_radius_factor: float = 2.0,
) -> tuple[float, float]:
    """Sub-pixel (row, col) of a nodule's peak near its expected centre.

    The image is band-passed for blobs of this size (difference of Gaussians, sigma radius/2
    minus sigma 2 * radius), the maximum taken within ``search_radius_factor`` * radius of the
    centre, and refined by a parabola through it and its neighbours along each axis.
    """
    array = _as_image_2d(image, "image")
    sigma = max(radius_px / 2.0, 0.5)
    blob = ndimage.gaussian_filter(array, sigma) - ndimage.gaussian_filter(array, 4.0 * sigma)
    distance = _distance_map(array.shape, centre_row_px, centre_col_px)
    search = distance <= search_radius_factor * radius_px
    if not search.any():
        raise _outside_error(centre_row_px, centre_col_px, radius_px, array.shape)
    masked = np.where(search, blob, -np.inf)
    row, col = np.unravel_index(np.argmax(masked), masked.shape)
    refined = []
    for axis, index in ((0, row), (1, col)):
        if 0 < index < array.shape[axis] - 1:
            take = (lambda k: blob[k, col]) if axis == 0 else (lambda k: blob[row, k])
            left, middle, right = take(index - 1), take(index), take(index + 1)
            curvature = left - 2.0 * middle + right
            offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            refined.append(index + float(np.clip(offset, -0.5, 0.5)))
        else:
            refined.append(float(index))
    return refined[0], refined[1]


def nodule_signal_template(
    drr: np.ndarray | torch.Tensor,
    nodule_free_drr: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    half_size_factor: float = 2.0,
) -> np.ndarray:
    """The nodule's own signal (DRR minus nodule-free DRR) in a square patch around its centre.

    The patch has half-size ceil(``half_size_factor`` * radius) px; it is the NPW observer's template.
    """
    signal = _as_image_2d(drr, "drr") - _as_image_2d(nodule_free_drr, "nodule_free_drr")
    return _patch(signal, int(round(centre_row_px)), int(round(centre_col_px)), int(math.ceil(half_size_factor * radius_px)))


def _patch(array: np.ndarray, row: int, col: int, half: int) -> np.ndarray:
    if row - half < 0 or col - half < 0 or row + half + 1 > array.shape[0] or col + half + 1 > array.shape[1]:
        raise _outside_error(row, col, half, array.shape)
    return array[row - half : row + half + 1, col - half : col + half + 1]


def npw_dprime_white_noise(signal: np.ndarray, noise_std: float) -> float:
    """Closed-form NPW (matched filter) detectability for a known signal in white noise: ||s|| / sigma."""
    if noise_std <= 0:
        raise ConfigError(f"noise_std must be positive, got {noise_std}")
    return float(np.sqrt(np.sum(np.square(signal))) / noise_std)


def npw_dprime(
    image: np.ndarray | torch.Tensor,
    template: np.ndarray,
    centre_row_px: float,
    centre_col_px: float,
    n_background: int = 64,
    max_distance_px: float | None = None,
    subtract_patch_mean: bool = True,
    seed: int = 0,
) -> float:
    """Empirical detectability d' of a non-prewhitening matched filter in one image.

    The filter's response is <w, g> with w the (odd-sized, square) ``template`` and g the patch
    under it. d' = (response at the nodule - mean response at ``n_background`` nodule-free spots)
    / their standard deviation; the spots are drawn (``seed``) at distances between one template
    width and ``max_distance_px`` (default four template widths) from the nodule, so the
    background statistics are the image's own (anatomy and noise). ``subtract_patch_mean``
    makes w zero-mean, so the filter ignores the local grey level. In white noise of standard
    deviation sigma without mean subtraction this tends to :func:`npw_dprime_white_noise`.
    """
    array = _as_image_2d(image, "image")
    template = np.asarray(template, dtype=np.float64)
    if template.ndim != 2 or template.shape[0] != template.shape[1] or template.shape[0] % 2 == 0:
        raise DataError(f"template must be a square patch of odd size, got shape {template.shape}")
    if not np.any(template):
        raise DataError("the nodule's template is zero (DRR and nodule-free DRR agree there); check the nodule's position")
    half = template.shape[0] // 2
    weights = template - template.mean() if subtract_patch_mean else template
    inner = float(template.shape[0])
    outer = max_distance_px or 4.0 * inner
    row_c, col_c = int(round(centre_row_px)), int(round(centre_col_px))
    rows, cols = np.mgrid[half : array.shape[0] - half, half : array.shape[1] - half]
    distance = np.hypot(rows - row_c, cols - col_c)
    allowed = (distance >= inner) & (distance <= outer)
    if allowed.sum() < n_background:
        raise _outside_error(centre_row_px, centre_col_px, outer, array.shape)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(int(allowed.sum()), size=n_background, replace=False)
    spots = np.stack([rows[allowed][chosen], cols[allowed][chosen]], axis=1)
    background = np.array([np.sum(weights * _patch(array, r, c, half)) for r, c in spots])
    signal = float(np.sum(weights * _patch(array, row_c, col_c, half)))
    spread = background.std(ddof=1)
    if spread == 0:
        raise DataError("the background responses do not vary (a constant image?); d' is undefined")
    return float((signal - background.mean()) / spread)


@dataclass(frozen=True)
class LostRule:
    """When is a nodule lost by restoration (both parameters in params.yaml ``metrics:``).

    The nodule's own signal is the difference of a restored pair, the DRR with and without the
    nodule restored with the same seed, as for the signal-present minus signal-absent images by
    which nonlinear reconstructions and denoisers are assessed (Li, Zhou, Li and Anastasio, IEEE
    TMI 40:2295, 2021). Lost if the restored image keeps less than ``min_contrast_ratio`` of the
    DRR's local contrast (visibility against its background), or the restored signal keeps less
    than ``min_contrast_ratio`` of the DRR's signal contrast, or the signal's peak moved by more
    than ``max_peak_shift_radii`` nodule radii. Where the DRR's own local contrast is not positive
    (a nodule over a rib edge or a steep background), its ratio says nothing and is not used.
    """

    min_contrast_ratio: float = 0.5
    max_peak_shift_radii: float = 1.0

    def is_lost(self, contrast_drr: float, contrast_restored: float, signal_kept: float,
                signal_peak_shift_px: float, radius_px: float) -> bool:
        faded = contrast_drr > 0 and contrast_restored < self.min_contrast_ratio * contrast_drr
        signal_faded = signal_kept < self.min_contrast_ratio
        return bool(faded or signal_faded or signal_peak_shift_px > self.max_peak_shift_radii * radius_px)


def nodule_preservation(
    drr: np.ndarray | torch.Tensor,
    nodule_free_drr: np.ndarray | torch.Tensor,
    restored: np.ndarray | torch.Tensor,
    restored_nodule_free: np.ndarray | torch.Tensor,
    centre_row_px: float,
    centre_col_px: float,
    radius_px: float,
    rule: LostRule = LostRule(),
    n_background: int = 64,
    seed: int = 0,
) -> dict[str, float | bool]:
    """Contrast, CNR and NPW d' of one nodule in the DRR and in its restored image, the contrast and
    peak of its own signal (with minus without nodule) in both, and ``lost`` (:class:`LostRule`)."""
    images = {name: _as_image_2d(image, name) for name, image in (
        ("drr", drr), ("nodule_free_drr", nodule_free_drr), ("restored", restored), ("restored_nodule_free", restored_nodule_free))}
    if len({image.shape for image in images.values()}) != 1:
        raise DataError(
            f"DRR, nodule-free DRR and the restored pair differ in shape ({[image.shape for image in images.values()]}); "
            "resize the restored images to the DRR grid (resize_images) so nodule coordinates apply"
        )
    template = nodule_signal_template(images["drr"], images["nodule_free_drr"], centre_row_px, centre_col_px, radius_px)
    signals = {"drr": images["drr"] - images["nodule_free_drr"], "restored": images["restored"] - images["restored_nodule_free"]}
    result: dict[str, float | bool] = {"radius_px": radius_px}
    peaks = {}
    for name in ("drr", "restored"):
        measured = nodule_contrast(images[name], centre_row_px, centre_col_px, radius_px)
        result[f"contrast_{name}"] = measured["contrast"]
        result[f"cnr_{name}"] = measured["cnr"]
        result[f"dprime_{name}"] = npw_dprime(images[name], template, centre_row_px, centre_col_px, n_background, seed=seed)
        result[f"signal_contrast_{name}"] = nodule_contrast(signals[name], centre_row_px, centre_col_px, radius_px)["contrast"]
        peaks[name] = nodule_peak_px(signals[name], centre_row_px, centre_col_px, radius_px)
    if result["signal_contrast_drr"] <= 0:
        raise DataError(
            f"the nodule at (row {centre_row_px:.1f}, col {centre_col_px:.1f}) px has no positive signal in the DRR "
            "(DRR minus nodule-free DRR); check nodules.csv against the DRRs"
        )
    result["signal_kept"] = result["signal_contrast_restored"] / result["signal_contrast_drr"]
    result["signal_peak_shift_px"] = float(np.hypot(peaks["restored"][0] - peaks["drr"][0], peaks["restored"][1] - peaks["drr"][1]))
    result["lost"] = rule.is_lost(result["contrast_drr"], result["contrast_restored"], result["signal_kept"],
                                  result["signal_peak_shift_px"], radius_px)
    return result


def scale_nodule_coordinates(nodules: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """Nodule centres and boxes on a grid ``ratio`` times finer (pixel centres at integers, boxes end-exclusive)."""
    scaled = nodules.copy()
    for column in ("centre_row_px", "centre_col_px"):
        scaled[column] = (nodules[column] + 0.5) * ratio - 0.5
    for column in ("bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"):
        scaled[column] = nodules[column] * ratio
    return scaled


def nodule_bbox(nodule: Mapping[str, float], grid_scale: float = 1.0) -> tuple[float, float, float, float]:
    """(row0, col0, row1, col1) of one nodule row, on a grid ``grid_scale`` times finer than the DRR's."""
    return tuple(float(nodule[k]) * grid_scale for k in ("bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"))


def nodule_image_loader(
    root: Path, drr_pattern: str, nodule_free_pattern: str, restored_pattern: str, restored_nodule_free_pattern: str
) -> Callable[[str], tuple[np.ndarray, ...]]:
    """``load_images(drr_id)`` for :func:`nodule_preservation_table`; patterns take ``{drr_id}``, relative to ``root``."""
    patterns = (drr_pattern, nodule_free_pattern, restored_pattern, restored_nodule_free_pattern)

    def load_images(drr_id: str) -> tuple[np.ndarray, ...]:
        paths = [root / pattern.format(drr_id=drr_id) for pattern in patterns]
        missing_files(paths, f"images of DRR '{drr_id}' (DRR, nodule-free DRR, restored, restored nodule-free)")
        return tuple(load_png(path) for path in paths)

    return load_images


def nodule_preservation_table(
    nodules: pd.DataFrame,
    load_images: Callable[[str], tuple[np.ndarray, ...]],
    rule: LostRule = LostRule(),
    n_background: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`nodule_preservation` for every row of ``nodules`` (the columns of 01_drr's nodules.csv).

    ``load_images(drr_id)`` returns (DRR, nodule-free DRR, restored DRR, restored nodule-free DRR);
    each is loaded once. Where the restorer enlarged the image (restored = k x the DRR's size), both DRRs are
    brought to the restored grid by bicubic interpolation and the nodule coordinates scaled by k
    (column ``grid_scale``), so the restoration's detail is measured at its own resolution.
    Extra columns of ``nodules`` (e.g. diameter_mm) are kept, in DRR pixels.
    """
    missing = [column for column in NODULE_LOCATION_COLUMNS if column not in nodules.columns]
    if missing:
        raise DataError(f"nodule table lacks columns {missing}; it must follow 01_drr's nodules.csv")
    rows = []
    for drr_id, group in nodules.groupby("drr_id", sort=False):
        drr, nodule_free, restored, restored_nodule_free = (_as_image_2d(image, name) for image, name in zip(
            load_images(str(drr_id)), ("drr", "nodule_free_drr", "restored", "restored_nodule_free")))
        ratio = restored.shape[0] / drr.shape[0]
        if not math.isclose(ratio, restored.shape[1] / drr.shape[1], rel_tol=1e-6):
            raise DataError(f"DRR '{drr_id}' {drr.shape} and its restored image {restored.shape} differ in aspect ratio")
        on_grid = scale_nodule_coordinates(group, ratio) if ratio != 1 else group
        if ratio != 1:
            drr, nodule_free = (resize_images(batch_of(image), restored.shape, "bicubic")[0, 0].double().numpy() for image in (drr, nodule_free))
        for original, nodule in zip(group.itertuples(index=False), on_grid.itertuples(index=False)):
            radius = nodule_radius_px(nodule.bbox_row0, nodule.bbox_col0, nodule.bbox_row1, nodule.bbox_col1)
            measured = nodule_preservation(
                drr, nodule_free, restored, restored_nodule_free, nodule.centre_row_px, nodule.centre_col_px, radius,
                rule, n_background, seed
            )
            rows.append({**original._asdict(), "grid_scale": ratio, **measured})
    return pd.DataFrame(rows)


def summarise_nodules(preserved: pd.DataFrame) -> dict[str, float]:
    """Counts and medians of a :func:`nodule_preservation_table`: how many nodules, how many lost, d' and contrast kept."""
    if preserved.empty:
        raise DataError("no nodules to summarise; 01_drr's nodules.csv is empty")
    positive = preserved[preserved["contrast_drr"] > 0]
    return {
        "n_nodules": int(len(preserved)),
        "n_lost": int(preserved["lost"].sum()),
        "median_contrast_ratio": float((positive["contrast_restored"] / positive["contrast_drr"]).median()) if len(positive) else math.nan,
        "median_cnr_drr": float(preserved["cnr_drr"].median()),
        "median_cnr_restored": float(preserved["cnr_restored"].median()),
        "median_dprime_drr": float(preserved["dprime_drr"].median()),
        "median_dprime_restored": float(preserved["dprime_restored"].median()),
        "median_signal_kept": float(preserved["signal_kept"].median()),
        "median_signal_peak_shift_px": float(preserved["signal_peak_shift_px"].median()),
        "max_signal_peak_shift_px": float(preserved["signal_peak_shift_px"].max()),
    }

"""Model observers used as *virtual readers*: channelized Hotelling (Laguerre-Gauss channels,
internal noise) and the non-prewhitening matched filter.

They rate signal-present and signal-absent regions of interest (ROIs) cut from the pipeline's
images, so the MRMC analysis of :mod:`xrlib.stats` runs on computed ratings before any human has
read a case. Every table they produce says ``virtual reader`` in its reader names. From:

- Barrett, H. H. and Myers, K. J. (2004). Foundations of Image Science, ch. 13-14.
- Myers, K. J. and Barrett, H. H. (1987). Addition of a channel mechanism to the ideal-observer
  model. J Opt Soc Am A 4:2447 (channelized Hotelling).
- Gallas, B. D. and Barrett, H. H. (2003). Validating the use of channels to estimate the ideal
  linear observer. J Opt Soc Am A 20:1725 (Laguerre-Gauss channels).
- Rolland, J. P. and Barrett, H. H. (1992). Effect of random background inhomogeneity on observer
  detection performance. J Opt Soc Am A 9:649 (lumpy backgrounds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.special import eval_laguerre

from xrlib.errors import DataError
from xrlib.io import load_png
from xrlib.progress import progress

VIRTUAL_READER_PREFIX = "virtual reader"


def laguerre_gauss_channels(size_px: int, n_channels: int, width_px: float) -> np.ndarray:
    """Laguerre-Gauss channel profiles, shape (n_channels, size_px * size_px), centred on the ROI.

    u_p(r) = sqrt(2) / a * exp(-pi r^2 / a^2) * L_p(2 pi r^2 / a^2), a = ``width_px``.
    """
    if n_channels < 1 or width_px <= 0:
        raise DataError(f"need n_channels >= 1 and width_px > 0, got {n_channels} and {width_px}")
    coords = np.arange(size_px) - (size_px - 1) / 2.0
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    gauss = np.sqrt(2.0) / width_px * np.exp(-np.pi * r2 / width_px ** 2)
    channels = [gauss * eval_laguerre(p, 2.0 * np.pi * r2 / width_px ** 2) for p in range(n_channels)]
    return np.stack(channels).reshape(n_channels, -1)


def gaussian_signal(size_px: int, sigma_px: float, amplitude: float, centre_rc_px=None) -> np.ndarray:
    """A 2-D Gaussian blob (a simple nodule-like signal) of peak ``amplitude``."""
    centre = np.full(2, (size_px - 1) / 2.0) if centre_rc_px is None else np.asarray(centre_rc_px, float)
    rows, cols = np.mgrid[:size_px, :size_px]
    return amplitude * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma_px ** 2))


def lumpy_background(size_px: int, mean_lumps: float, lump_sigma_px: float, lump_amplitude: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Rolland-Barrett lumpy background: a Poisson number of Gaussian lumps at uniform positions."""
    image = np.zeros((size_px, size_px))
    for _ in range(rng.poisson(mean_lumps)):
        image += gaussian_signal(size_px, lump_sigma_px, lump_amplitude, rng.uniform(0, size_px, 2))
    return image


def extract_rois(image: np.ndarray, centres_rc_px, size_px: int) -> np.ndarray:
    """Square ROIs of side ``size_px`` centred (row, col, pixels) in a 2-D image: (N, size, size)."""
    image = np.asarray(image, float)
    if image.ndim != 2:
        raise DataError(f"ROIs are cut from a 2-D image, got shape {image.shape}")
    half = size_px // 2
    rois = []
    for row, col in np.atleast_2d(np.asarray(centres_rc_px, float)):
        top, left = int(round(row)) - half, int(round(col)) - half
        if top < 0 or left < 0 or top + size_px > image.shape[0] or left + size_px > image.shape[1]:
            raise DataError(f"a {size_px}-px ROI at (row {row:.1f}, col {col:.1f}) leaves the "
                            f"{image.shape} image; use a smaller roi_size_px")
        rois.append(image[top:top + size_px, left:left + size_px])
    return np.stack(rois)


@dataclass(frozen=True)
class ROISet:
    """ROIs of one condition: ``rois`` (N, size, size), ``truth`` (1 signal present), ``case_ids``."""

    rois: np.ndarray
    truth: np.ndarray
    case_ids: np.ndarray


def rois_from_condition_table(table: pd.DataFrame, size_px: int) -> dict[str, ROISet]:
    """ROI sets per condition from a table of images and ROI centres.

    Columns: ``condition``, ``case_id`` (the same location read under every condition),
    ``image_path``, ``truth`` (1: the ROI holds the nodule; 0: it does not, e.g. the same place in
    the nodule-free DRR), ``centre_row_px``, ``centre_col_px``.
    """
    needed = ["condition", "case_id", "image_path", "truth", "centre_row_px", "centre_col_px"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"ROI table lacks columns {missing}; need {needed}")
    sets = {}
    cache: dict[str, np.ndarray] = {}
    for condition, rows in table.groupby("condition", sort=True):
        rows = rows.sort_values("case_id")
        rois = []
        for row in rows.itertuples():
            if row.image_path not in cache:
                cache[row.image_path] = load_png(row.image_path)
            rois.append(extract_rois(cache[row.image_path], [(row.centre_row_px, row.centre_col_px)], size_px)[0])
        sets[condition] = ROISet(np.stack(rois), rows["truth"].to_numpy(int), rows["case_id"].to_numpy())
    return sets


def detectability_index(statistic_present, statistic_absent) -> float:
    """d' = (mean_present - mean_absent) / sqrt((var_present + var_absent) / 2)."""
    present, absent = np.asarray(statistic_present, float), np.asarray(statistic_absent, float)
    pooled = np.sqrt((present.var(ddof=1) + absent.var(ddof=1)) / 2.0)
    return float((present.mean() - absent.mean()) / pooled)


class NPWObserver:
    """Non-prewhitening matched filter: t = (mean signal-present - mean signal-absent) . g.

    ``template`` may be given (a known signal); else it is estimated by :meth:`fit`.
    """

    def __init__(self, template: np.ndarray | None = None):
        self.template = None if template is None else np.asarray(template, float).ravel()

    def fit(self, present: np.ndarray, absent: np.ndarray) -> "NPWObserver":
        self.template = _flat(present).mean(axis=0) - _flat(absent).mean(axis=0)
        return self

    def rate(self, rois: np.ndarray) -> np.ndarray:
        if self.template is None:
            raise DataError("NPW observer has no template: call fit() or give the signal")
        return _flat(rois) @ self.template


class CHOObserver:
    """Channelized Hotelling observer with Laguerre-Gauss channels and internal channel noise.

    Channel outputs v = U^T g; template w = K^-1 (mean v_present - mean v_absent), K the mean of
    the two classes' channel covariances plus internal noise (variance ``internal_noise`` times
    the diagonal of K), which is also added to each rated ROI's channel outputs (Abbey and
    Barrett 2001). ``rng`` makes the internal noise reproducible.
    """

    def __init__(self, size_px: int, n_channels: int = 6, width_px: float = 8.0,
                 internal_noise: float = 0.0, rng: np.random.Generator | None = None):
        self.channels = laguerre_gauss_channels(size_px, n_channels, width_px)
        self.internal_noise = internal_noise
        self.rng = rng or np.random.default_rng(0)
        self.template = None
        self.noise_sd = None

    def channel_outputs(self, rois: np.ndarray) -> np.ndarray:
        return _flat(rois) @ self.channels.T

    def fit(self, present: np.ndarray, absent: np.ndarray) -> "CHOObserver":
        v1, v0 = self.channel_outputs(present), self.channel_outputs(absent)
        covariance = (np.cov(v1, rowvar=False) + np.cov(v0, rowvar=False)) / 2.0
        covariance = np.atleast_2d(covariance)
        noise_variance = self.internal_noise * np.diag(covariance)
        self.noise_sd = np.sqrt(noise_variance)
        self.template = np.linalg.solve(covariance + np.diag(noise_variance), v1.mean(axis=0) - v0.mean(axis=0))
        return self

    def rate(self, rois: np.ndarray) -> np.ndarray:
        if self.template is None:
            raise DataError("CHO observer is not trained: call fit() first")
        v = self.channel_outputs(rois)
        v = v + self.rng.normal(size=v.shape) * self.noise_sd
        return v @ self.template


def _flat(rois: np.ndarray) -> np.ndarray:
    rois = np.asarray(rois, float)
    return rois.reshape(rois.shape[0], -1)


def split_cases(case_ids, train_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split unique case ids into training and testing sets (same split for every condition)."""
    unique = np.unique(np.asarray(case_ids))
    shuffled = rng.permutation(unique)
    n_train = int(round(train_fraction * len(unique)))
    if n_train < 2 or len(unique) - n_train < 2:
        raise DataError(f"{len(unique)} cases cannot be split into training and testing sets of 2 or more; "
                        "provide more ROIs or change train_fraction")
    return np.sort(shuffled[:n_train]), np.sort(shuffled[n_train:])


def virtual_readings(roi_sets: dict[str, ROISet], n_readers: int, seed: int, train_fraction: float = 0.5,
                     n_channels: int = 6, width_px: float = 8.0, internal_noise: float = 0.1) -> pd.DataFrame:
    """Ratings by virtual readers (CHOs with independent internal noise) of every condition's test ROIs.

    Each reader is trained per condition on the training cases and rates the test cases; the
    long table (reader, modality, case, truth, rating) feeds :func:`xrlib.stats.or_analysis`.
    Reader names start with 'virtual reader'.
    """
    if n_readers < 1:
        raise DataError("n_readers must be at least 1")
    rng = np.random.default_rng(seed)
    conditions = sorted(roi_sets)
    all_cases = np.concatenate([roi_sets[c].case_ids for c in conditions])
    train_cases, test_cases = split_cases(all_cases, train_fraction, rng)
    rows = []
    for reader in progress(range(n_readers), "virtual readers", n_readers, unit="reader"):
        reader_rng = np.random.default_rng([seed, reader])
        name = f"{VIRTUAL_READER_PREFIX} CHO {reader + 1}"
        for condition in conditions:
            roi_set = roi_sets[condition]
            train = np.isin(roi_set.case_ids, train_cases)
            test = np.isin(roi_set.case_ids, test_cases)
            observer = CHOObserver(roi_set.rois.shape[-1], n_channels, width_px, internal_noise, reader_rng)
            observer.fit(roi_set.rois[train & (roi_set.truth == 1)], roi_set.rois[train & (roi_set.truth == 0)])
            ratings = observer.rate(roi_set.rois[test])
            rows.append(pd.DataFrame({"reader": name, "modality": condition, "case": roi_set.case_ids[test],
                                      "truth": roi_set.truth[test], "rating": ratings}))
    return pd.concat(rows, ignore_index=True)


def observer_detectability(roi_sets: dict[str, ROISet], seed: int, train_fraction: float = 0.5,
                           n_channels: int = 6, width_px: float = 8.0) -> pd.DataFrame:
    """Test-set d' of the NPW and the (noise-free) CHO observer per condition, trained on the rest."""
    rng = np.random.default_rng(seed)
    all_cases = np.concatenate([s.case_ids for s in roi_sets.values()])
    train_cases, _ = split_cases(all_cases, train_fraction, rng)
    rows = []
    for condition, roi_set in sorted(roi_sets.items()):
        train = np.isin(roi_set.case_ids, train_cases)
        present, absent = roi_set.truth == 1, roi_set.truth == 0
        observers = {"NPW": NPWObserver(),
                     "CHO": CHOObserver(roi_set.rois.shape[-1], n_channels, width_px)}
        for name, observer in observers.items():
            observer.fit(roi_set.rois[train & present], roi_set.rois[train & absent])
            d_prime = detectability_index(observer.rate(roi_set.rois[~train & present]),
                                          observer.rate(roi_set.rois[~train & absent]))
            rows.append({"observer": f"{VIRTUAL_READER_PREFIX} {name}", "condition": condition,
                         "d_prime": d_prime, "n_test": int((~train).sum())})
    return pd.DataFrame(rows)


def condition_table_from_outputs(nodules: pd.DataFrame, images: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """ROI table (see :func:`rois_from_condition_table`) from the pipeline's images and nodules.csv.

    ``nodules`` has drr_id, nodule_id, centre_row_px, centre_col_px (01_drr's table).
    ``images[condition] = (present, absent)``: path templates with ``{drr_id}`` of the image with
    the nodule and of the nodule-free one, read at the same centre (truth 1 and 0). A condition is
    kept only if every file it names exists.
    """
    rows = []
    for condition, (present, absent) in images.items():
        candidate = []
        for nodule in nodules.itertuples(index=False):
            for truth, template in ((1, present), (0, absent)):
                path = str(template).format(drr_id=nodule.drr_id)
                candidate.append({"condition": condition, "case_id": f"{nodule.drr_id}-{nodule.nodule_id}-{truth}",
                                  "image_path": path, "truth": truth, "centre_row_px": nodule.centre_row_px,
                                  "centre_col_px": nodule.centre_col_px})
        if candidate and all(pd.io.common.file_exists(row["image_path"]) for row in candidate):
            rows.extend(candidate)
    return pd.DataFrame(rows, columns=["condition", "case_id", "image_path", "truth", "centre_row_px", "centre_col_px"])


def reader_images(nodules_csv: Path, images: Mapping[str, tuple[str, str]], min_cases_per_condition: int,
                  phantoms_dir: Path, n_synthetic_cases: int, amplitude_by_condition: Mapping[str, float],
                  seed: int) -> tuple[pd.DataFrame, str]:
    """What the virtual readers rate, and a sentence saying which it is.

    The pipeline's images (:func:`condition_table_from_outputs`) when at least two conditions have
    every file and each has ``min_cases_per_condition`` cases; otherwise (too few nodules, or no
    pipeline images yet) synthetic lumpy-background phantoms (:func:`synthetic_condition_table`)
    written under ``phantoms_dir``, so the MRMC analysis always runs on enough cases.
    """
    table = (condition_table_from_outputs(pd.read_csv(nodules_csv), images) if Path(nodules_csv).exists()
             else pd.DataFrame(columns=["condition", "case_id"]))
    per_condition = table.groupby("condition")["case_id"].nunique()
    if len(per_condition) >= 2 and per_condition.min() >= min_cases_per_condition:
        return table, "pipeline images (outputs/01_drr, outputs/05_restore)"
    phantoms = synthetic_condition_table(Path(phantoms_dir), n_synthetic_cases, dict(amplitude_by_condition), seed)
    return phantoms, "synthetic lumpy-background phantoms (pipeline images too few or absent)"


def synthetic_condition_table(folder, n_cases: int, amplitude_by_condition: dict, seed: int,
                              size_px: int = 32, nodule_sigma_px: float = 2.0) -> pd.DataFrame:
    """Synthetic phantoms for the observers when no pipeline images exist: lumpy backgrounds with a
    centred Gaussian nodule (odd cases) or without (even cases), one PNG per case and condition;
    conditions differ only in the nodule's amplitude."""
    from xrlib.io import save_png16

    rng = np.random.default_rng(seed)
    signal = gaussian_signal(size_px, nodule_sigma_px, 1.0)
    rows = []
    for case in range(n_cases):
        truth = case % 2
        background = (lumpy_background(size_px, 30, size_px / 8, 0.05, rng)
                      + rng.normal(size=(size_px, size_px)) * 0.03 + 0.2)
        for condition, amplitude in amplitude_by_condition.items():
            path = folder / f"{condition}_{case:04d}.png"
            save_png16(path, np.clip(background + truth * amplitude * signal, 0, 1))
            rows.append({"condition": condition, "case_id": f"c{case:04d}", "image_path": str(path), "truth": truth,
                         "centre_row_px": (size_px - 1) / 2, "centre_col_px": (size_px - 1) / 2})
    return pd.DataFrame(rows)

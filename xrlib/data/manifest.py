"""Manifests of the inputs under data/, with patient-level splits.

Layout a user fills (then ``dvc add data``)::

    data/xray/<patient_id>/*.dcm|*.png         one folder per patient, or
    data/xray/<dataset>/data.csv + images      a dataset folder whose data.csv has image_id, patient_id
                                                 (and optionally projection), images found by stem
    data/ct/<patient_id>/<image> [+ label map]  see xrlib.data.ct

Splits are drawn over patients, never images, so no patient is in two splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xrlib.data.xray import XRAY_SUFFIXES, read_xray
from xrlib.errors import ConfigError, DataError
from xrlib.io import save_png16, write_csv_atomic

SPLITS = ("train", "val", "test")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in XRAY_SUFFIXES)


def list_xrays(xray_root: str | os.PathLike) -> pd.DataFrame:
    """One row per X-ray under ``xray_root``: image_id, patient_id, dataset, path, stated_view."""
    root = Path(xray_root)
    if not root.is_dir():
        raise DataError(f"{root}: no X-ray folder; run `xrlib fetch` or place X-rays there (see README, Data)")
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        table = folder / "data.csv"
        if table.is_file():
            listing = read_dataset_table(table)
            by_stem = {p.stem: p for p in _image_files(folder)}
            for record in listing.itertuples(index=False):
                path = by_stem.get(record.image_id)
                if path is None:
                    raise DataError(f"{table}: image '{record.image_id}' has no file in {folder}; remove the row or add the image")
                view = getattr(record, "projection", "")
                rows.append((f"{folder.name}-{record.image_id}", f"{folder.name}-{record.patient_id}", folder.name, path,
                             view.strip().upper() or None if isinstance(view, str) else None))
        else:
            for path in _image_files(folder):
                rows.append((f"{folder.name}-{path.stem}", folder.name, folder.name, path, None))
    if not rows:
        raise DataError(f"{root}: no DICOM or PNG X-rays found; run `xrlib fetch` or add images")
    frame = pd.DataFrame(rows, columns=["image_id", "patient_id", "dataset", "source_path", "stated_view"])
    duplicated = frame.image_id[frame.image_id.duplicated()]
    if len(duplicated):
        raise DataError(f"{root}: image ids occur twice ({', '.join(duplicated[:3])}); rename the files")
    return frame


#: Texts that mean "unknown" in exported tables; never a patient or image id.
MISSING_ID_TEXTS = ("", "na", "n/a", "nan", "null", "none", "<na>")


def read_dataset_table(table: Path) -> pd.DataFrame:
    """A dataset's data.csv as literal strings; rows with an empty or NA-like id are refused by line.

    pandas would read empty, "NA" and "null" ids as missing, pooling those rows into one patient
    and breaking the patient-level split; here every cell is text and such rows are named.
    """
    try:
        listing = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{table}: not a readable CSV ({error}); save it as UTF-8 CSV with a header") from error
    missing = {"image_id", "patient_id"} - set(listing.columns)
    if missing:
        raise DataError(f"{table}: lacks column(s) {', '.join(sorted(missing))}; add them")
    for column in ("patient_id", "image_id"):
        unknown = listing[column].str.strip().str.lower().isin(MISSING_ID_TEXTS)
        if unknown.any():
            lines = [str(i + 2) for i in listing.index[unknown]]  # header = line 1
            raise DataError(f"{table}: {column} is empty or NA-like ({sorted(set(listing[column][unknown]))}) on "
                            f"line(s) {', '.join(lines[:10])}{' ...' if len(lines) > 10 else ''}; give every row "
                            "its real id (or remove the rows): such rows would be pooled into one patient")
    return listing


def assign_splits(patient_ids, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Map each patient to train/val/test by seeded shuffle; fractions must sum to 1.

    With at least as many patients as non-empty splits, each such split gets at least one patient.
    With fewer (the one-patient embedded example), every patient goes to ``train``: downstream
    stages then hold out image regions instead, and say so.
    """
    if set(fractions) - set(SPLITS) or abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
        raise ConfigError(f"split fractions {fractions} must be non-negative over {SPLITS} and sum to 1")
    patients = sorted(set(patient_ids))
    wanted = [s for s in SPLITS if fractions.get(s, 0) > 0]
    if len(patients) < len(wanted):
        return {patient: "train" for patient in patients}
    order = np.random.default_rng(seed).permutation(len(patients))
    counts = {s: max(1, int(round(fractions.get(s, 0) * len(patients)))) for s in wanted}
    counts[wanted[0]] = len(patients) - sum(counts[s] for s in wanted[1:])
    if counts[wanted[0]] < 1:
        raise ConfigError(f"{len(patients)} patients cannot fill splits {fractions}; lower val/test fractions")
    labels = [s for s in wanted for _ in range(counts[s])]
    return {patients[i]: labels[k] for k, i in enumerate(order)}


def resize_longest_side(display: np.ndarray, max_side_px: int) -> np.ndarray:
    """Downscale (anti-aliased) so the longest side is at most ``max_side_px``; never upscale."""
    scale = max_side_px / max(display.shape)
    if scale >= 1:
        return display
    size = (max(1, round(display.shape[0] * scale)), max(1, round(display.shape[1] * scale)))
    tensor = torch.from_numpy(np.ascontiguousarray(display))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


#: The report of unreadable X-rays stage 00 writes into its output folder.
BAD_XRAYS_REPORT = "bad_xrays.csv"


def report_bad_inputs(bad: list[dict], report: Path, skip_bad: bool, what: str) -> None:
    """Write the bad inputs (path, problem) to ``report`` (removed when there are none).

    Unless ``skip_bad``, raise one DataError at the end that counts them, names the first few
    and points to the report, so a large dataset is checked whole in one run.
    """
    if not bad:
        report.unlink(missing_ok=True)
        return
    write_csv_atomic(report, pd.DataFrame(bad, columns=["path", "problem"]))
    if not skip_bad:
        first = "; ".join(row["problem"] for row in bad[:3])
        raise DataError(f"{len(bad)} {what} cannot be used (all listed in {report}): {first}"
                        f"{' ...' if len(bad) > 3 else ''}. Fix or remove them, or pass skip_bad=True to leave "
                        "them out (they stay listed in the report)")


def build_xray_manifest(xray_root: str | os.PathLike, out_dir: str | os.PathLike, project_root: str | os.PathLike,
                        fractions: dict[str, float], seed: int, max_side_px: int,
                        views: list[str] | None = None, skip_bad: bool = False) -> pd.DataFrame:
    """Read every X-ray, write it as a de-identified 16-bit display PNG, return the manifest.

    Columns: image_id, patient_id, dataset, split, path (the PNG, relative to ``project_root``),
    source_format, modality, view, rows_px, cols_px, spacing_row_mm, spacing_col_mm (of the written
    image), p01, p99 (intensity percentiles). ``views`` keeps only the stated views (e.g. ["PA"]);
    images whose view is not stated are kept. Every image is checked: unreadable ones are listed
    in ``out_dir/bad_xrays.csv`` and then fail the call together (see :func:`report_bad_inputs`),
    or, with ``skip_bad``, are left out of the manifest.
    """
    listing = list_xrays(xray_root)
    out_dir, project_root = Path(out_dir), Path(project_root)
    rows, bad = [], []
    for record in listing.itertuples(index=False):
        try:
            image = read_xray(record.source_path)
        except DataError as error:
            bad.append({"path": str(record.source_path), "problem": str(error)})
            continue
        view = image.view_position or record.stated_view
        if views and view is not None and view not in views:
            continue
        display = resize_longest_side(image.display, max_side_px)
        factor = image.display.shape[0] / display.shape[0]
        spacing = tuple(s * factor for s in image.pixel_spacing_mm) if image.pixel_spacing_mm else (np.nan, np.nan)
        png = out_dir / "xray" / f"{record.image_id}.png"
        save_png16(png, display)
        p01, p99 = np.percentile(display, [1, 99])
        rows.append(dict(image_id=record.image_id, patient_id=record.patient_id, dataset=record.dataset,
                         path=str(png.relative_to(project_root)), source_format=image.source_format,
                         modality=image.modality, view=view, rows_px=display.shape[0], cols_px=display.shape[1],
                         spacing_row_mm=spacing[0], spacing_col_mm=spacing[1], p01=p01, p99=p99))
    report_bad_inputs(bad, out_dir / BAD_XRAYS_REPORT, skip_bad, "X-ray files")
    if not rows:
        raise DataError(f"{xray_root}: no X-ray of views {views}; widen data.xray_views in params.yaml")
    manifest = pd.DataFrame(rows)
    splits = assign_splits(manifest.patient_id, fractions, seed)
    manifest.insert(3, "split", manifest.patient_id.map(splits))
    return manifest


def build_ct_manifest(ct_root: str | os.PathLike, project_root: str | os.PathLike) -> pd.DataFrame:
    """Load every CT under ``ct_root`` (see xrlib.data.ct), check it has lungs, and tabulate its geometry.

    Columns: patient_id, image_path, label_path (relative to ``project_root``), shape, spacing_mm,
    orientation (RAS after loading), hu_min, hu_max, lung_volume_ml, lung_source ("labels" when the
    label map holds lung lobes, else "hu"). Every CT is checked; unreadable ones and CTs without
    lungs in view raise one DataError at the end naming them all.
    """
    from xrlib.data.ct import list_ct_folder, load_ct, lung_labels, lung_mask

    project_root = Path(project_root)
    listing = list_ct_folder(ct_root, relative_to=project_root)
    rows, problems = [], []
    for record in listing.itertuples(index=False):
        try:
            ct = load_ct(project_root / record.image_path, project_root / record.label_path if record.label_path else None)
            mask = lung_mask(ct)
        except DataError as error:
            problems.append(str(error))
            continue
        rows.append(dict(patient_id=record.patient_id, image_path=record.image_path, label_path=record.label_path,
                         shape="x".join(map(str, ct.shape)), spacing_mm="x".join(f"{s:.3f}" for s in ct.spacing_mm),
                         orientation="RAS", hu_min=float(ct.hu.min()), hu_max=float(ct.hu.max()),
                         lung_volume_ml=float(mask.sum()) * float(np.prod(ct.spacing_mm)) / 1000.0,
                         lung_source="hu" if lung_labels(ct) is None else "labels"))
    if problems:
        raise DataError(f"{len(problems)} of {len(listing)} CTs cannot be used; fix or remove them: " + " | ".join(problems))
    return pd.DataFrame(rows)

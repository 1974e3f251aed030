"""CT volumes: loading through torchio, RAS orientation, HU clamping, lung masks.

A :class:`CTVolume` holds Hounsfield units as a float32 tensor indexed ``[i, j, k]``, reoriented
so that i, j, k grow towards the patient's Right, Anterior and Superior (RAS), its 4x4
voxel-to-world affine in RAS millimetres, and an optional label map on the same grid. World
coordinates everywhere in xrlib are RAS millimetres: +x towards the patient's right, +y anterior,
+z superior.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchio as tio
from scipy import ndimage

from xrlib.errors import DataError

#: TotalSegmentator (v2) label values of the five lung lobes.
TOTALSEGMENTATOR_LUNG_LOBES = (10, 11, 12, 13, 14)
#: Voxel spacings outside this range (mm) are treated as a broken header.
PLAUSIBLE_SPACING_MM = (0.1, 10.0)
#: Smallest plausible volume of both lungs together (millilitres).
MIN_LUNG_VOLUME_ML = 500.0

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_LABEL_WORDS = ("mask", "label", "seg")


@dataclass(frozen=True)
class CTVolume:
    """A CT in RAS orientation: HU (float32, shape I x J x K), affine (voxel -> RAS mm), labels."""

    hu: torch.Tensor
    affine: np.ndarray
    source: str
    labels: torch.Tensor | None = None

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along the three index axes in millimetres."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def voxel_to_world_mm(self, index: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous voxel indices to (N, 3) RAS millimetres."""
        index = np.atleast_2d(index)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """Map (N, 3) RAS millimetres to (N, 3) continuous voxel indices."""
        points_mm = np.atleast_2d(points_mm)
        inverse = np.linalg.inv(self.affine)
        return points_mm @ inverse[:3, :3].T + inverse[:3, 3]

    def with_hu(self, hu: torch.Tensor) -> "CTVolume":
        """The same CT (grid, labels, source) with other HU values."""
        return replace(self, hu=hu)


def load_ct(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike | None = None,
    clamp_hu: tuple[float, float] = (-1024.0, 3071.0),
) -> CTVolume:
    """Load a CT (NIfTI, NRRD, MHA or a DICOM series folder) through torchio, reoriented to RAS.

    HU are clamped to ``clamp_hu``; a label map, if given, must share the image's grid.
    Raises :class:`DataError` naming the file for unreadable files, NaNs and absurd spacing.
    """
    image_path = Path(image_path)
    if not image_path.exists():
        raise DataError(f"{image_path}: CT not found; check the path in the CT manifest")
    hidden_non_finite = _check_nifti(image_path)
    subject_images = {"image": tio.ScalarImage(image_path)}
    if label_path:
        if not Path(label_path).exists():
            raise DataError(f"{label_path}: label map not found; fix label_path or leave it empty")
        subject_images["labels"] = tio.LabelMap(label_path)
    try:
        subject = tio.ToCanonical()(tio.Subject(**subject_images))
        hu = subject["image"].data[0].to(torch.float32)
    except (RuntimeError, OSError, ValueError) as error:
        raise DataError(f"{image_path}: not a readable CT ({error}); replace or re-export it") from error
    affine = np.asarray(subject["image"].affine, dtype=np.float64)
    bad = max(int((~torch.isfinite(hu)).sum()), hidden_non_finite)
    if bad:
        raise DataError(
            f"{image_path}: {bad} voxels are NaN or infinite; re-export the CT or fill them "
            "(e.g. with -1000 HU outside the body)"
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = PLAUSIBLE_SPACING_MM
    if not ((spacing >= low) & (spacing <= high)).all():
        raise DataError(
            f"{image_path}: voxel spacing {np.round(spacing, 4).tolist()} mm is outside "
            f"[{low}, {high}] mm; the header is probably wrong, fix the spacing in the file"
        )
    labels = None
    if "labels" in subject_images:
        labels = subject["labels"].data[0].to(torch.int16)
        if labels.shape != hu.shape or not np.allclose(subject["labels"].affine, affine, atol=1e-3):
            raise DataError(
                f"{label_path}: label map grid {tuple(labels.shape)} differs from the CT's "
                f"{tuple(hu.shape)} ({image_path}); resample the labels onto the CT"
            )
    return CTVolume(hu=hu.clamp(*clamp_hu), affine=affine, source=str(image_path), labels=labels)


def _check_nifti(path: Path) -> int:
    """Check a NIfTI for what torchio's ITK reader silently hides; return its NaN/inf voxel count.

    The ITK reader fills the missing voxels of a file cut short (with 0 or -1024 HU), turns NaN
    and infinities into numbers, and reads a spacing of 0 as 1 mm. Here nibabel reads the raw
    header (unrepaired) and every voxel: a short file or a zero spacing raises a DataError.
    Other formats return 0 (nothing to add to torchio's own checks).
    """
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return 0
    import zlib

    import nibabel
    from nibabel.filebasedimages import ImageFileError
    from nibabel.openers import ImageOpener

    try:
        image = nibabel.load(str(path))
        with ImageOpener(str(path)) as handle:
            raw_header = image.header_class.from_fileobj(handle, check=False)
        voxels = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, ImageFileError, zlib.error) as error:
        raise DataError(f"{path}: the NIfTI is cut short or damaged ({str(error).splitlines()[0]}); "
                        "re-export or copy the CT again") from error
    spacing = np.asarray(raw_header["pixdim"][1:4], dtype=np.float64)[: min(3, voxels.ndim)]
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise DataError(f"{path}: voxel spacing {spacing.tolist()} mm in the header (pixdim) is not positive; "
                        "fix the spacing in the file (a spacing of 0 is not 1 mm)")
    return int((~np.isfinite(voxels)).sum())


def lung_labels(ct: CTVolume, lung_label_values=TOTALSEGMENTATOR_LUNG_LOBES) -> torch.Tensor | None:
    """The lungs of the CT's label map (its lung-lobe labels), or None where it holds none."""
    if ct.labels is None:
        return None
    from_labels = torch.isin(ct.labels, torch.tensor(lung_label_values, dtype=ct.labels.dtype))
    return from_labels if from_labels.any() else None


def lung_mask(ct: CTVolume, lung_label_values=TOTALSEGMENTATOR_LUNG_LOBES) -> torch.Tensor:
    """Boolean lung mask: from the label map when it holds lung labels, else from HU.

    Raises :class:`DataError` when the mask is smaller than :data:`MIN_LUNG_VOLUME_ML`.
    """
    mask = lung_labels(ct, lung_label_values)
    if mask is None:
        mask = torch.from_numpy(segment_lungs_hu(ct.hu.numpy(), ct.spacing_mm))
    volume_ml = float(mask.sum()) * float(np.prod(ct.spacing_mm)) / 1000.0
    if volume_ml < MIN_LUNG_VOLUME_ML:
        raise DataError(
            f"{ct.source}: found only {volume_ml:.0f} mL of lung (< {MIN_LUNG_VOLUME_ML:.0f} mL); "
            "this is not a chest CT with lungs in the field of view, or its HU are not calibrated. "
            "Use a chest CT, or pass a label map with lung lobes (TotalSegmentator labels 10-14)."
        )
    return mask


def segment_lungs_hu(
    hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    threshold_hu: float = -320.0,
    airway_hu: float = -950.0,
) -> np.ndarray:
    """Lungs from HU alone (scipy.ndimage), for CTs in RAS index order.

    Air below ``threshold_hu`` not connected to the volume's border (outside air) forms the
    candidates; components smaller than 2% of the largest are dropped (bowel gas); the trachea and
    main bronchi (air below ``airway_hu`` in the thin tube above the lungs) are cut by keeping only
    axial slices' components that are not airway-sized; vessels are filled by a closing and hole
    filling on every axial slice.
    """
    air = hu < threshold_hu
    # Outside air: everything low-HU connected to the in-plane border of each axial slice.
    border = np.zeros_like(air)
    border[0, :, :] = border[-1, :, :] = border[:, 0, :] = border[:, -1, :] = True
    structure_2d = ndimage.generate_binary_structure(3, 1)
    structure_2d[:, :, 0] = structure_2d[:, :, 2] = False  # connect within axial slices only
    labels, _ = ndimage.label(air, structure=structure_2d)
    outside_labels = np.unique(labels[border & air])
    body_air = air & ~np.isin(labels, outside_labels[outside_labels > 0])
    labels, count = ndimage.label(body_air)
    if count == 0:
        return np.zeros_like(air)
    sizes = ndimage.sum(body_air, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= 0.02 * sizes.max()) + 1
    lungs = np.isin(labels, keep)
    # Trachea and main bronchi: very dark, small in-plane components near the midline.
    voxel_area_mm2 = spacing_mm[0] * spacing_mm[1]
    airway = lungs & (hu < airway_hu)
    for k in range(lungs.shape[2]):
        slice_labels, slice_count = ndimage.label(lungs[:, :, k])
        if slice_count == 0:
            continue
        areas = ndimage.sum(lungs[:, :, k], slice_labels, index=np.arange(1, slice_count + 1)) * voxel_area_mm2
        dark = ndimage.mean(airway[:, :, k], slice_labels, index=np.arange(1, slice_count + 1))
        tube = np.flatnonzero((areas < 600.0) & (dark > 0.6)) + 1
        lungs[:, :, k] &= ~np.isin(slice_labels, tube)
    radius_px = max(1, int(round(3.0 / spacing_mm[0])))
    disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius_px)
    for k in range(lungs.shape[2]):
        if lungs[:, :, k].any():
            closed = ndimage.binary_closing(lungs[:, :, k], structure=disk, border_value=0)
            lungs[:, :, k] = ndimage.binary_fill_holes(closed)
    return lungs


def dice(mask_a: torch.Tensor | np.ndarray, mask_b: torch.Tensor | np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    a = np.asarray(mask_a, dtype=bool)
    b = np.asarray(mask_b, dtype=bool)
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else 1.0


def lung_centre_mm(mask: torch.Tensor, ct: CTVolume) -> np.ndarray:
    """Centre of the lungs' bounding box in RAS millimetres (the DRR's central ray aims here)."""
    index = np.argwhere(np.asarray(mask))
    if len(index) == 0:
        raise DataError(f"{ct.source}: empty lung mask; cannot centre the radiograph on the lungs")
    centre_index = (index.min(axis=0) + index.max(axis=0)) / 2.0
    return ct.voxel_to_world_mm(centre_index)[0]


def list_ct_folder(folder: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> pd.DataFrame:
    """List the CTs of ``folder``: one subfolder per patient with an image and optional label map.

    The label map is the file whose name contains 'mask', 'label' or 'seg'; the image is the other
    volume file, or the subfolder itself when it holds a DICOM series (``*.dcm``). Returns a table
    with columns patient_id, image_path, label_path ('' when absent), paths relative to
    ``relative_to`` when given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: CT folder not found; put one subfolder per patient there")
    rows = []
    for patient in sorted(p for p in folder.iterdir() if p.is_dir()):
        volumes = [f for f in sorted(patient.iterdir()) if f.name.lower().endswith(_IMAGE_SUFFIXES)]
        labels = [f for f in volumes if any(word in f.name.lower() for word in _LABEL_WORDS)]
        images = [f for f in volumes if f not in labels]
        if not images and any(patient.glob("*.dcm")):
            images = [patient]
        if len(images) != 1 or len(labels) > 1:
            raise DataError(
                f"{patient}: expected one CT image and at most one label map, found images "
                f"{[f.name for f in images]} and labels {[f.name for f in labels]}; keep one of each"
            )
        paths = [images[0], labels[0] if labels else None]
        if relative_to is not None:
            paths = [os.path.relpath(p, relative_to) if p else None for p in paths]
        rows.append({"patient_id": patient.name, "image_path": str(paths[0]), "label_path": str(paths[1] or "")})
    if not rows:
        raise DataError(f"{folder}: no patient subfolders with a CT; add data/ct/<patient>/<image>")
    return pd.DataFrame(rows, columns=["patient_id", "image_path", "label_path"])


def mid_lung_slices(ct: CTVolume, mask: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Axial and coronal slices through the lungs' centre, oriented for display.

    Radiological convention: the patient's right on the image's left; anterior up (axial),
    superior up (coronal). Returns ``{view: (hu_2d, lung_mask_2d, aspect)}`` where ``aspect`` is
    the row-to-column spacing ratio to pass to ``imshow`` so that millimetres stay square.
    """
    hu, lungs = ct.hu.numpy(), np.asarray(mask)
    centre_i, centre_j, centre_k = (int(round(v)) for v in np.argwhere(lungs).mean(axis=0))
    spacing_i, spacing_j, spacing_k = ct.spacing_mm
    return {
        "axial": (hu[:, :, centre_k].T[::-1, ::-1], lungs[:, :, centre_k].T[::-1, ::-1], spacing_j / spacing_i),
        "coronal": (hu[:, centre_j, :].T[::-1, ::-1], lungs[:, centre_j, :].T[::-1, ::-1], spacing_k / spacing_i),
    }

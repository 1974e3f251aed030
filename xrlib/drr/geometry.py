"""Cone-beam chest radiograph geometry, in RAS world millimetres.

Conventions (the one place they are defined; docs and notebook quote them):

* World: RAS millimetres from the CT's affine: +x patient's right, +y anterior, +z superior.
* PA view (default): the X-ray source is behind the patient (posterior, -y) and the detector in
  front (anterior, +y); rays travel posterior -> anterior. AP view: source anterior, detector
  posterior. ``sid_mm`` is the source-to-image (detector) distance; the detector plane is
  ``centre_to_detector_mm`` beyond the lung centre, so the lungs are magnified by
  ``sid_mm / (sid_mm - centre_to_detector_mm)``.
* The central ray passes through the lung centre (:func:`xrlib.data.ct.lung_centre_mm`) and hits the
  detector's centre at right angles.
* Image axes (both views): radiological convention, as if facing the patient. Row 0 is the top of
  the image (superior); rows grow towards the feet (-z). Column 0 is the image's left, which shows
  the patient's RIGHT; columns grow towards the patient's left (-x). Pixel (r, c) has its centre at
  ``detector_centre + (r - (n-1)/2) * pixel_mm * row_dir + (c - (n-1)/2) * pixel_mm * col_dir``.
* Pose perturbation: the patient is rotated by ``rotation_deg = (about x, about y, about z)``
  (right-handed, degrees, applied x then y then z, about the lung centre) and shifted by
  ``translation_mm``; it is realised by moving source and detector by the inverse motion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from xrlib.errors import ConfigError, GeometryError

MIN_SIZE_PX, MAX_SIZE_PX = 128, 2048


@dataclass(frozen=True)
class ProjectionGeometry:
    """One radiograph's geometry: point source and flat square detector, in RAS millimetres."""

    source_mm: tuple[float, float, float]
    detector_centre_mm: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    size_px: int
    pixel_mm: float
    view: str
    sid_mm: float
    centre_to_detector_mm: float
    lung_centre_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]

    def pixel_centres_mm(self, dtype=torch.float64) -> torch.Tensor:
        """World positions of all detector pixel centres, shape (size_px, size_px, 3)."""
        offsets = (torch.arange(self.size_px, dtype=dtype) - (self.size_px - 1) / 2.0) * self.pixel_mm
        centre = torch.tensor(self.detector_centre_mm, dtype=dtype)
        row_dir = torch.tensor(self.row_dir, dtype=dtype)
        col_dir = torch.tensor(self.col_dir, dtype=dtype)
        return centre + offsets[:, None, None] * row_dir + offsets[None, :, None] * col_dir

    def world_to_pixel(self, points_mm: np.ndarray) -> np.ndarray:
        """Perspective projection of (N, 3) RAS points to (N, 2) continuous (row, col) pixels."""
        points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
        source = np.asarray(self.source_mm)
        centre = np.asarray(self.detector_centre_mm)
        row_dir, col_dir = np.asarray(self.row_dir), np.asarray(self.col_dir)
        normal = np.cross(row_dir, col_dir)
        rays = points - source
        scale = np.dot(centre - source, normal) / (rays @ normal)
        hits = source + rays * scale[:, None] - centre
        half = (self.size_px - 1) / 2.0
        return np.stack([hits @ row_dir / self.pixel_mm + half, hits @ col_dir / self.pixel_mm + half], axis=1)

    @property
    def magnification(self) -> float:
        return self.sid_mm / (self.sid_mm - self.centre_to_detector_mm)

    def to_dict(self) -> dict:
        """Every parameter, JSON-ready, plus the conventions in words."""
        record = asdict(self)
        record["magnification"] = self.magnification
        record["detector_mm"] = self.size_px * self.pixel_mm
        record["conventions"] = (
            "RAS world mm; image row 0 superior, rows towards feet; column 0 shows the patient's "
            "right (radiological convention); PA: source posterior, detector anterior"
        )
        return record


def chest_geometry(
    lung_centre_mm,
    view: str = "PA",
    size_px: int = 512,
    sid_mm: float = 1800.0,
    detector_mm: float = 430.0,
    centre_to_detector_mm: float = 150.0,
    rotation_deg=(0.0, 0.0, 0.0),
    translation_mm=(0.0, 0.0, 0.0),
) -> ProjectionGeometry:
    """A PA (default) or AP chest geometry centred on the lungs (see the module's conventions)."""
    view = view.upper()
    if view not in ("PA", "AP"):
        raise ConfigError(f"drr.view must be 'PA' or 'AP', got {view!r}")
    if not MIN_SIZE_PX <= int(size_px) <= MAX_SIZE_PX:
        raise ConfigError(f"drr.size_px must be within [{MIN_SIZE_PX}, {MAX_SIZE_PX}], got {size_px}")
    if not 0.0 < centre_to_detector_mm < sid_mm:
        raise GeometryError(
            f"centre_to_detector_mm={centre_to_detector_mm} must lie between 0 and sid_mm={sid_mm}"
        )
    centre = np.asarray(lung_centre_mm, dtype=np.float64)
    beam = np.array([0.0, 1.0, 0.0]) if view == "PA" else np.array([0.0, -1.0, 0.0])
    source = centre - beam * (sid_mm - centre_to_detector_mm)
    detector_centre = centre + beam * centre_to_detector_mm
    row_dir = np.array([0.0, 0.0, -1.0])
    col_dir = np.array([-1.0, 0.0, 0.0])
    # Patient motion R, t about the lung centre == imaging system moved by the inverse motion.
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    inverse = rotation.T
    shift = np.asarray(translation_mm, dtype=np.float64)

    def move_point(point):
        return centre + inverse @ (point - centre - shift)

    return ProjectionGeometry(
        source_mm=tuple(move_point(source)),
        detector_centre_mm=tuple(move_point(detector_centre)),
        row_dir=tuple(inverse @ row_dir),
        col_dir=tuple(inverse @ col_dir),
        size_px=int(size_px),
        pixel_mm=float(detector_mm) / int(size_px),
        view=view,
        sid_mm=float(sid_mm),
        centre_to_detector_mm=float(centre_to_detector_mm),
        lung_centre_mm=tuple(centre),
        rotation_deg=tuple(float(a) for a in rotation_deg),
        translation_mm=tuple(float(t) for t in shift),
    )


def random_pose(rng: np.random.Generator, max_rotation_deg: float, max_translation_mm: float) -> dict:
    """A small uniform pose perturbation: rotation_deg and translation_mm for :func:`chest_geometry`."""
    return {
        "rotation_deg": tuple(rng.uniform(-max_rotation_deg, max_rotation_deg, 3)),
        "translation_mm": tuple(rng.uniform(-max_translation_mm, max_translation_mm, 3)),
    }

"""The DRR set: CTs -> (augmented) patients -> nodules inserted -> PA DRRs with and without
nodules, line integrals, display images, sidecars and the nodule ground-truth table."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from xrlib.data.augment import augment_ct, resample_ct
from xrlib.data.ct import CTVolume, load_ct, lung_centre_mm, lung_mask
from xrlib.drr.display import display_window, to_display
from xrlib.drr.geometry import ProjectionGeometry, chest_geometry, random_pose
from xrlib.drr.physics import (attenuation_per_mm, detector_response, material_densities,
                               polyenergetic_line_integrals, tube_spectrum)
from xrlib.drr.projector import ConeBeamProjector
from xrlib.drr.truth import NODULE_COLUMNS
from xrlib.io import save_png16, write_bytes_atomic, write_csv_atomic, write_json_atomic
from xrlib.params import DrrSettings
from xrlib.paths import project_root
from xrlib.progress import progress
from xrlib.drr.nodules import (
    allowed_centres,
    library_nodule,
    list_nodule_library,
    parametric_nodule,
    place_nodules,
)



def line_integrals(ct: CTVolume, geometry: ProjectionGeometry, settings: DrrSettings) -> torch.Tensor:
    """Noise-free -ln(I/I0), shape (H, W): polyenergetic (settings.kvp, settings.filtration_mm_al) or
    monoenergetic at settings.energy_kev when that is set."""
    if settings.energy_kev:
        projector = ConeBeamProjector(attenuation_per_mm(ct.hu, float(settings.energy_kev)), ct.affine)
        return projector(geometry)[0, 0]
    projector = ConeBeamProjector(material_densities(ct.hu), ct.affine)
    spectrum = tube_spectrum(float(settings.kvp), float(settings.filtration_mm_al))
    return polyenergetic_line_integrals(projector(geometry), spectrum)[0, 0]


def nodule_ground_truth(geometry: ProjectionGeometry, record: dict, ct: CTVolume, difference: torch.Tensor) -> dict:
    """2-D centre, bounding box (inclusive-exclusive px), mask and contrast of one nodule.

    The mask is the nodule's voxels projected onto the detector (filled); contrast is the mean
    line-integral difference (with minus without nodules) inside it."""
    size = geometry.size_px
    points = geometry.world_to_pixel(ct.voxel_to_world_mm(record["mask_index"].astype(float)))
    pixels = np.round(points).astype(int)
    pixels = pixels[(pixels >= 0).all(axis=1) & (pixels < size).all(axis=1)]
    mask = np.zeros((size, size), dtype=bool)
    mask[pixels[:, 0], pixels[:, 1]] = True
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    centre = geometry.world_to_pixel(record["centre_ras_mm"])[0]
    rows, cols = np.nonzero(mask)
    contrast = float(difference.numpy()[mask].mean()) if mask.any() else 0.0
    return {"centre_row_px": float(centre[0]), "centre_col_px": float(centre[1]),
            "bbox_row0": int(rows.min()) if mask.any() else -1, "bbox_col0": int(cols.min()) if mask.any() else -1,
            "bbox_row1": int(rows.max()) + 1 if mask.any() else -1, "bbox_col1": int(cols.max()) + 1 if mask.any() else -1,
            "contrast": contrast, "mask": mask}


def make_nodules(settings: DrrSettings, spacing_mm, rng: np.random.Generator) -> list:
    """settings.nodules_per_drr nodules: from the LIDC library when settings.nodule_library is a folder,
    else parametric with random type, margin and diameter in settings.nodule_diameter_mm."""
    count = int(settings.nodules_per_drr)
    low, high = settings.nodule_diameter_mm
    if settings.nodule_library:
        table = list_nodule_library(project_root() / settings.nodule_library)  # relative paths: from the project root
        table = table[(table.diameter_mm >= low) & (table.diameter_mm <= high)]
        rows = table.iloc[rng.choice(len(table), size=count, replace=False)]
        return [library_nodule(r.img_name, r.seg_name, r.diameter_mm, spacing_mm, rng, scale_range=(0.9, 1.1))
                for r in rows.itertuples()]
    return [parametric_nodule(float(rng.uniform(low, high)), str(rng.choice(settings.nodule_types)),
                              str(rng.choice(settings.nodule_margins)), spacing_mm, rng) for _ in range(count)]


def render_patient(ct: CTVolume, patient_id: str, settings: DrrSettings, rng: np.random.Generator) -> dict:
    """One patient's DRR pair and ground truth (in memory): see :func:`build_drr_set`."""
    lungs = lung_mask(ct)
    nodules = make_nodules(settings, ct.spacing_mm, rng)
    with_nodules, records = place_nodules(ct, lungs, nodules, rng, margin_mm=float(settings.margin_mm),
                                          clearance=allowed_centres(ct, lungs, float(settings.margin_mm)))
    pose = random_pose(rng, float(settings.max_rotation_deg), float(settings.max_translation_mm))
    geometry = chest_geometry(lung_centre_mm(lungs, ct), view=settings.view, size_px=int(settings.size_px),
                              sid_mm=float(settings.sid_mm), detector_mm=float(settings.detector_mm),
                              centre_to_detector_mm=float(settings.centre_to_detector_mm), **pose)
    clean = line_integrals(ct, geometry, settings)
    loaded = line_integrals(with_nodules, geometry, settings)
    difference = loaded - clean
    truth = [nodule_ground_truth(geometry, record, ct, difference) | record for record in records]
    blur_px = float(settings.blur_sigma_mm) / geometry.pixel_mm
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    photons = settings.photons_per_pixel
    noisy = {}
    for name, image in (("clean", clean), ("loaded", loaded)):
        generator.manual_seed(int(rng.integers(2**31)))
        noisy[name] = detector_response(image[None, None], photons, blur_px, generator)[0, 0]
    lung_region = ConeBeamProjector(lungs.float(), ct.affine)(geometry)[0, 0] > 10.0
    window = display_window(noisy["clean"], lung_region, unsharp_amount=float(settings.unsharp_amount))
    return {"geometry": geometry, "window": window, "line_integrals": noisy["loaded"],
            "display": to_display(noisy["loaded"], window), "display_nodule_free": to_display(noisy["clean"], window),
            "difference": difference, "nodules": truth, "lungs": lungs, "ct_with_nodules": with_nodules,
            "patient_id": patient_id}


def build_drr_set(ct_table: pd.DataFrame, settings: DrrSettings, out_dir: Path, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Render settings.augmentations_per_ct patients per CT and write, under ``out_dir``:
    drr/, drr_nodule_free/ (16-bit PNG display), line_integrals/ (float32 .npy), sidecar/ (JSON),
    drrs.csv and nodules.csv. Returns (drrs, nodules) tables."""
    out_dir = Path(out_dir)
    drr_rows, nodule_rows = [], []
    bar = progress(desc="render DRRs", total=len(ct_table) * int(settings.augmentations_per_ct), unit="DRR")
    for ct_row in ct_table.itertuples():
        label = str(root / ct_row.label_path) if isinstance(ct_row.label_path, str) and ct_row.label_path else None
        base = resample_ct(load_ct(root / ct_row.image_path, label), settings.ct_spacing_mm)
        for index in range(int(settings.augmentations_per_ct)):
            patient_id = f"{ct_row.patient_id}-aug{index:02d}"
            rng = np.random.default_rng([int(settings.seed), index, zlib.crc32(ct_row.patient_id.encode())])
            ct = augment_ct(base, index, int(settings.seed), float(settings.augment_rotation_deg),
                            float(settings.augment_scale), float(settings.elastic_displacement_mm))
            result = render_patient(ct, patient_id, settings, rng)
            bar.update(1)
            drr_id = f"{patient_id}-{result['geometry'].view.lower()}"
            paths = {"drr_path": f"drr/{drr_id}.png", "drr_nodule_free_path": f"drr_nodule_free/{drr_id}.png",
                     "line_integrals_path": f"line_integrals/{drr_id}.npy", "sidecar_path": f"sidecar/{drr_id}.json"}
            save_png16(out_dir / paths["drr_path"], result["display"].numpy())
            save_png16(out_dir / paths["drr_nodule_free_path"], result["display_nodule_free"].numpy())
            _save_npy(out_dir / paths["line_integrals_path"], result["line_integrals"].numpy().astype(np.float32))
            physics = {key: getattr(settings, key) for key in ("kvp", "filtration_mm_al", "energy_kev", "photons_per_pixel",
                                                     "blur_sigma_mm")}
            if not settings.energy_kev:
                physics["spectrum"] = tube_spectrum(float(settings.kvp), float(settings.filtration_mm_al)).to_dict()
            write_json_atomic(out_dir / paths["sidecar_path"], {
                "drr_id": drr_id, "patient_id": patient_id, "ct_id": ct_row.patient_id,
                "ct_path": ct_row.image_path, "ct_spacing_mm": ct.spacing_mm, "augmentation_index": index,
                "geometry": result["geometry"].to_dict(), "physics": physics,
                "display": result["window"].to_dict(), "projector": "xrlib.drr.projector.ConeBeamProjector",
                "line_integrals": "-ln(I/I0), float32, noise and blur included"})
            drr_rows.append({"drr_id": drr_id, "patient_id": patient_id, "ct_id": ct_row.patient_id,
                             "size_px": result["geometry"].size_px, **paths})
            for number, nodule in enumerate(result["nodules"]):
                nodule_rows.append({"drr_id": drr_id, "patient_id": patient_id, "nodule_id": f"{drr_id}-n{number}",
                                    "type": nodule["type"], "source": nodule["source"],
                                    **dict(zip(["centre_ras_mm_x", "centre_ras_mm_y", "centre_ras_mm_z"],
                                               nodule["centre_ras_mm"])),
                                    "diameter_mm": nodule["diameter_mm"],
                                    **{k: nodule[k] for k in NODULE_COLUMNS[9:]}})
    bar.close()
    drrs = pd.DataFrame(drr_rows)
    nodules = pd.DataFrame(nodule_rows, columns=list(NODULE_COLUMNS))
    write_csv_atomic(out_dir / "drrs.csv", drrs)
    write_csv_atomic(out_dir / "nodules.csv", nodules)
    return drrs, nodules


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())

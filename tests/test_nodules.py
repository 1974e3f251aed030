"""Nodules: sizes and HU by type, placement inside lungs, refusal when they cannot fit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from xrlib.data.ct import CTVolume
from xrlib.errors import ConfigError, DataError, GeometryError
from xrlib.drr.nodules import library_nodule, list_nodule_library, parametric_nodule, place_nodules



@pytest.mark.parametrize("kind, centre_hu", [("solid", 30.0), ("ground_glass", -550.0), ("part_solid", 30.0)])
def test_smooth_nodule_volume_and_hu(kind, centre_hu):
    nodule = parametric_nodule(12.0, kind, "smooth", (0.5, 0.5, 0.5), np.random.default_rng(0))
    volume_mm3 = float(nodule.alpha.sum()) * 0.125
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.03)
    centre = tuple(s // 2 for s in nodule.hu.shape)
    assert nodule.hu[centre] == pytest.approx(centre_hu, abs=101.0)
    assert set(np.unique(nodule.alpha)) - {0.0, 1.0}  # a soft rim, no step edge


def test_spiculated_nodule_reaches_beyond_its_sphere():
    nodule = parametric_nodule(10.0, "solid", "spiculated", (0.5, 0.5, 0.5), np.random.default_rng(1))
    reach = np.max(np.linalg.norm((np.argwhere(nodule.mask) - (np.asarray(nodule.mask.shape) - 1) / 2) * 0.5, axis=1))
    assert reach > 6.0


def test_diameter_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="diameter"):
        parametric_nodule(40.0, "solid", "smooth", (1, 1, 1), np.random.default_rng(0))


def _box_lungs(size=60, spacing=2.0):
    hu = torch.full((size, size, size), 40.0)
    lungs = torch.zeros(size, size, size, dtype=torch.bool)
    lungs[10:50, 10:50, 10:50] = True
    hu[lungs] = -850.0
    affine = np.diag([spacing] * 3 + [1.0])
    return CTVolume(hu=hu, affine=affine, source="box.nii.gz"), lungs


def test_placement_inside_lungs_with_margin_and_blending():
    ct, lungs = _box_lungs()
    rng = np.random.default_rng(0)
    nodules = [parametric_nodule(10.0, "solid", "smooth", ct.spacing_mm, rng) for _ in range(3)]
    placed, records = place_nodules(ct, lungs, nodules, rng, margin_mm=3.0)
    for record in records:
        index = record["mask_index"]
        assert lungs[tuple(index.T)].all()
        distance_to_wall_mm = np.min(np.minimum(index - 10, 49 - index)) * 2.0
        assert distance_to_wall_mm >= 3.0
    changed = (placed.hu - ct.hu).abs() > 1
    assert float(placed.hu[changed].max()) <= 30.0 + 1e-3  # never brighter than a solid nodule
    assert changed.sum() > 3 * 0.5 * (4 / 3 * np.pi * 5.0**3) / 8.0


def test_nodule_that_cannot_fit_is_refused():
    ct, lungs = _box_lungs()
    nodule = parametric_nodule(30.0, "solid", "smooth", ct.spacing_mm, np.random.default_rng(0))
    with pytest.raises(GeometryError, match=r"box.nii.gz.*cannot fit"):
        place_nodules(ct, lungs, [nodule], np.random.default_rng(0), margin_mm=30.0)


@pytest.mark.shared
def test_library_nodule_keeps_its_volume_when_resampled(shared_dir):
    table = list_nodule_library(shared_dir / "data" / "lidc-nodule-patches")
    row = table.iloc[len(table) // 2]
    import SimpleITK as sitk

    mask_volume_mm3 = float(sitk.GetArrayFromImage(sitk.ReadImage(row.seg_name)).sum())  # 1 mm voxels
    nodule = library_nodule(row.img_name, row.seg_name, row.diameter_mm, (0.7, 0.7, 2.5),
                            np.random.default_rng(0), rotate=True)
    assert float(nodule.alpha.sum()) * 0.7 * 0.7 * 2.5 == pytest.approx(mask_volume_mm3, rel=0.1)
    assert nodule.source.startswith("lidc:")


def test_library_without_table_uses_equivalent_sphere_diameters(tmp_path):
    import SimpleITK as sitk

    axis = np.arange(40) - 19.5
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    sphere = (x**2 + y**2 + z**2 <= 7.0**2).astype(np.uint8)  # 14 mm across at 1 mm voxels
    folder = tmp_path / "lidc" / "deeper"
    folder.mkdir(parents=True)
    for name, array in (("p_seg_0.mha", sphere), ("p_dcm_0.mha", sphere.astype(np.int16) * 1030 - 1000)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(image, str(folder / name))
    table = list_nodule_library(tmp_path / "lidc")
    assert table.diameter_mm.iloc[0] == pytest.approx(14.0, rel=0.03)
    assert table.img_name.iloc[0].endswith("p_dcm_0.mha")
    (folder / "p_dcm_0.mha").unlink()
    with pytest.raises(DataError, match="p_dcm_0.mha is missing"):
        list_nodule_library(tmp_path / "lidc" / "deeper")
    with pytest.raises(DataError, match="no nodule masks"):
        list_nodule_library(tmp_path / "empty")

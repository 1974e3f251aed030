"""Damaged CT files are errors naming the file and the fix, never volumes filled with made-up HU."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from xrlib.data.ct import load_ct
from xrlib.errors import DataError


def _chest_like(shape=(48, 48, 24)):
    """A body of soft tissue (40 HU) in air (-1000 HU) holding two lungs (-850 HU), int16."""
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[6:-6, 6:-6, :] = 40
    hu[10:22, 12:-12, 2:-2] = -850
    hu[26:38, 12:-12, 2:-2] = -850
    return hu


def _save(path, array, zooms=(1.5, 1.5, 2.5)):
    image = nib.Nifti1Image(array, np.diag([*zooms, 1.0]))
    image.header.set_zooms(zooms)
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_cut_short_is_an_error(tmp_path, suffix):
    whole = _save(tmp_path / f"whole{suffix}", _chest_like())
    load_ct(whole)  # the intact file loads
    raw = gzip.decompress(whole.read_bytes()) if suffix == ".nii.gz" else whole.read_bytes()
    cut = raw[: len(raw) * 2 // 3]  # the last third of the slices missing
    short = tmp_path / f"short{suffix}"
    short.write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    with pytest.raises(DataError, match=rf"short{suffix}.*(cut short|truncated).*re-export"):
        load_ct(short)


def test_nifti_gzip_stream_cut_short_is_an_error(tmp_path):
    whole = _save(tmp_path / "whole.nii.gz", _chest_like())
    data = whole.read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"short.nii.gz.*(cut short|truncated)"):
        load_ct(short)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_voxel_is_an_error(tmp_path, value):
    hu = _chest_like().astype(np.float32)
    hu[20, 20, 10] = value
    with pytest.raises(DataError, match=r"inf.nii.gz.*1 voxels are NaN or infinite"):
        load_ct(_save(tmp_path / "inf.nii.gz", hu))


PIXDIM_OFFSET = 76  # NIfTI-1 header: pixdim[0..7] are float32s at bytes 76-107


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_zero_spacing_in_the_header_is_an_error(tmp_path, axis):
    raw = bytearray(_save(tmp_path / "whole.nii", _chest_like()).read_bytes())
    offset = PIXDIM_OFFSET + 4 * (axis + 1)
    raw[offset:offset + 4] = np.float32(0.0).tobytes()
    path = tmp_path / "flat.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"flat.nii.gz.*spacing.*0\.0.*fix the spacing"):
        load_ct(path)

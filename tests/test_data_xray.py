"""X-ray reading: DICOM LUTs, MONOCHROME1, spacing, de-identification, bad files, manifests."""

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xrlib.data.manifest import assign_splits, build_xray_manifest, list_xrays
from xrlib.data.xray import read_xray
from xrlib.errors import ConfigError, DataError

IDENTIFIERS = {"PatientName": "Doe^Jane", "PatientID": "PID-99731", "StudyDate": "19870412",
               "PatientBirthDate": "19450101", "InstitutionName": "St Example Hospital"}


def make_dicom(path, pixels, photometric="MONOCHROME2", window=None, rescale=(1.0, 0.0), spacing=None, pixel_data=True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    for key, value in IDENTIFIERS.items():
        setattr(ds, key, value)
    ds.Modality, ds.ViewPosition = "CR", "PA"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if spacing:
        ds.PixelSpacing = list(spacing)
    if pixel_data:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ramp():
    return np.tile(np.linspace(0, 4000, 64).astype(np.uint16), (48, 1))


def test_monochrome1_is_inverted(tmp_path, ramp):
    mono2 = read_xray(make_dicom(tmp_path / "m2.dcm", ramp)).display
    mono1 = read_xray(make_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1")).display
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono2[0, -1] > mono2[0, 0]  # MONOCHROME2: high stored value is bright


def test_rescale_and_window_follow_the_standard(tmp_path, ramp):
    # stored 0..4000, slope 2, intercept -1000 -> -1000..7000; window centre 3000 width 4000 -> 1000..5000
    image = read_xray(make_dicom(tmp_path / "w.dcm", ramp, window=(3000, 4000), rescale=(2.0, -1000.0)))
    modality = 2.0 * ramp[0].astype(float) - 1000.0
    expected = np.clip((modality - (3000 - 0.5)) / (4000 - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2 linear
    np.testing.assert_allclose(image.display[0], expected, atol=2e-3)


def test_pixel_spacing_and_view_are_kept(tmp_path, ramp):
    image = read_xray(make_dicom(tmp_path / "s.dcm", ramp, spacing=(0.143, 0.139)))
    assert image.pixel_spacing_mm == (0.143, 0.139)
    assert image.view_position == "PA" and image.modality == "CR"
    assert read_xray(make_dicom(tmp_path / "z.dcm", ramp, spacing=(0, 0))).pixel_spacing_mm is None


def test_manifest_outputs_carry_no_identifiers(tmp_path, project_root, ramp):
    xray_root = tmp_path / "data" / "xray"
    make_dicom((xray_root / "patient-a").mkdir(parents=True) or xray_root / "patient-a" / "img.dcm", ramp, spacing=(0.2, 0.2))
    out = tmp_path / "outputs"
    manifest = build_xray_manifest(xray_root, out, tmp_path, {"train": 1.0}, seed=0, max_side_px=32)
    manifest.to_csv(out / "manifest.csv", index=False)
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for value in IDENTIFIERS.values():
        assert value.encode() not in written and value.split("^")[0].encode() not in written
    record = manifest.iloc[0]
    assert (record.rows_px, record.cols_px) == (24, 32)
    assert record.spacing_row_mm == pytest.approx(0.4)  # 48 -> 24 rows: spacing doubles
    assert Image.open(tmp_path / record.path).mode.startswith("I")  # 16-bit PNG


def test_bad_files_are_named(tmp_path, ramp):
    no_pixels = make_dicom(tmp_path / "nopix.dcm", ramp, pixel_data=False)
    with pytest.raises(DataError, match="nopix.dcm.*no pixel data"):
        read_xray(no_pixels)
    whole = make_dicom(tmp_path / "whole.dcm", ramp).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) - 3000])
    with pytest.raises(DataError, match="cut.dcm"):
        read_xray(tmp_path / "cut.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"hello")
    with pytest.raises(DataError, match="junk.dcm"):
        read_xray(tmp_path / "junk.dcm")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="bad.png"):
        read_xray(tmp_path / "bad.png")


def test_dataset_folder_with_table_and_missing_image(tmp_path):
    folder = tmp_path / "xray" / "set"
    (folder / "png").mkdir(parents=True)
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) % 255).astype(np.uint8)).save(folder / "png" / "i1.png")
    pd.DataFrame({"patient_id": ["p1"], "image_id": ["i1"], "projection": ["pa"]}).to_csv(folder / "data.csv", index=False)
    listing = list_xrays(tmp_path / "xray")
    assert listing.loc[0, ["image_id", "patient_id", "stated_view"]].tolist() == ["set-i1", "set-p1", "PA"]
    pd.DataFrame({"patient_id": ["p1", "p2"], "image_id": ["i1", "i2"]}).to_csv(folder / "data.csv", index=False)
    with pytest.raises(DataError, match="'i2' has no file"):
        list_xrays(tmp_path / "xray")


def test_splits_are_by_patient_and_seeded():
    patients = [f"p{i}" for i in range(20) for _ in range(3)]  # three images each
    splits = assign_splits(patients, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    assert sorted(pd.Series(splits).value_counts().to_dict().items()) == [("test", 4), ("train", 14), ("val", 2)]
    assert splits == assign_splits(patients, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    assert splits != assign_splits(patients, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=4)
    assert set(assign_splits(["only"], {"train": 0.8, "test": 0.2}, 0).values()) == {"train"}
    with pytest.raises(ConfigError):
        assign_splits(patients, {"train": 0.7, "test": 0.2}, 0)

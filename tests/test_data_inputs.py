"""Stage 00 inputs: data.csv ids read literally and checked, every image checked before failing once."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrlib.data.manifest import BAD_XRAYS_REPORT, build_ct_manifest, build_xray_manifest, list_xrays
from xrlib.errors import DataError


def _image(path, seed):
    values = np.random.default_rng(seed).integers(0, 255, (40, 40)).astype(np.uint8)
    Image.fromarray(values).save(path)
    return path


def _dataset(root, patient_ids):
    folder = root / "set"
    folder.mkdir(parents=True)
    for i in range(len(patient_ids)):
        _image(folder / f"i{i}.png", i)
    lines = ["image_id,patient_id"] + [f"i{i},{p}" for i, p in enumerate(patient_ids)]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("missing", ["", "NA", "null", "NaN", " n/a "])
def test_empty_or_na_patient_ids_are_refused_by_line(tmp_path, missing):
    root = _dataset(tmp_path / "xray", ["p1", missing, "p2", missing])
    with pytest.raises(DataError, match=r"data.csv: patient_id is empty or NA-like .* line\(s\) 3, 5"):
        list_xrays(root)


def test_ids_are_read_as_literal_text(tmp_path):
    root = _dataset(tmp_path / "xray", ["007", "7", "NAomi", "True"])
    listing = list_xrays(root)
    assert listing.patient_id.tolist() == ["set-007", "set-7", "set-NAomi", "set-True"]
    assert listing.stated_view.isna().all()


def test_every_bad_image_is_reported_before_the_stage_fails(tmp_path):
    xray_root = tmp_path / "data" / "xray"
    for patient in ("a", "b", "c", "d"):
        (xray_root / patient).mkdir(parents=True)
        _image(xray_root / patient / "good.png", ord(patient))
    for patient in ("b", "d"):
        (xray_root / patient / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    out = tmp_path / "outputs"
    with pytest.raises(DataError, match=rf"2 X-ray files cannot be used .*{BAD_XRAYS_REPORT}.*b/broken.png"):
        build_xray_manifest(xray_root, out, tmp_path, {"train": 1.0}, seed=0, max_side_px=32)
    report = pd.read_csv(out / BAD_XRAYS_REPORT)
    assert sorted(report.path.map(lambda p: p.split("/xray/")[1])) == ["b/broken.png", "d/broken.png"]
    assert report.problem.str.contains("not a readable PNG").all()
    assert len(list((out / "xray").glob("*.png"))) == 4  # every good image was still read and written
    kept = build_xray_manifest(xray_root, out, tmp_path, {"train": 1.0}, seed=0, max_side_px=32, skip_bad=True)
    assert sorted(kept.image_id) == ["a-good", "b-good", "c-good", "d-good"]
    assert (out / BAD_XRAYS_REPORT).is_file()
    for patient in ("b", "d"):
        (xray_root / patient / "broken.png").unlink()
    build_xray_manifest(xray_root, out, tmp_path, {"train": 1.0}, seed=0, max_side_px=32)
    assert not (out / BAD_XRAYS_REPORT).exists()  # a clean run leaves no stale report


def test_every_bad_ct_is_named_at_once(tmp_path):
    for name in ("one", "two"):
        (tmp_path / "ct" / name).mkdir(parents=True)
        (tmp_path / "ct" / name / "image.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match=r"2 of 2 CTs cannot be used.*one/image.nii.gz.*two/image.nii.gz"):
        build_ct_manifest(tmp_path / "ct", tmp_path)

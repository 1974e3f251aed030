"""Paired data: bicubic resampling, the pair manifest, aligned crops, no silent flips, the scale check."""

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.errors import ConfigError, DataError
from xrlib.io import load_png, save_png16
from xrlib.lq.pairs import build_pairs
from xrlib.lq.twins import bicubic_twin
from xrlib.data.pairs import PAIR_COLUMNS, PairDataset, read_pairs, resize_bicubic

torch.set_num_threads(1)


def smooth_and_asymmetric(size: int = 96) -> np.ndarray:
    """A low-frequency image brighter on its left half, so a flip or a misaligned crop shows."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    return (0.5 + 0.3 * np.cos(2 * np.pi * rows) * np.sin(np.pi * cols) + 0.15 * (cols < 0.5)).clip(0, 1)


def bicubic_pairs(images: dict, output_dir, root, hq_px: int, scale: int) -> pd.DataFrame:
    """Bicubic pairs of whole images through the one pair builder (xrlib.lq.pairs.build_pairs)."""
    table = pd.DataFrame([{"image_id": image_id, "patient_id": item["patient_id"], "split": item["split"],
                           "path": f"in/{image_id}.png"} for image_id, item in images.items()])
    for image_id, item in images.items():
        save_png16(root / "in" / f"{image_id}.png", item["image"])
    return build_pairs(table, {"bicubic": (bicubic_twin, {})}, root, output_dir, hq_px, hq_px // scale, seed=0)


def test_bicubic_downsampling_keeps_low_and_removes_high_frequencies():
    rows, cols = np.mgrid[0:64, 0:64]
    smooth = torch.tensor(0.5 + 0.4 * np.sin(2 * np.pi * rows / 32), dtype=torch.float32)[None, None]
    round_trip = resize_bicubic(resize_bicubic(smooth, (32, 32)), (64, 64))
    assert (round_trip - smooth)[..., 4:-4, 4:-4].abs().max() < 0.01
    checkerboard = torch.tensor((rows + cols) % 2, dtype=torch.float32)[None, None]
    degraded = resize_bicubic(checkerboard, (32, 32))  # antialiased: the Nyquist pattern averages to grey
    assert degraded.shape == (1, 1, 32, 32)
    assert (degraded[..., 2:-2, 2:-2] - 0.5).abs().max() < 0.02
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1.0
    overshooting = resize_bicubic(step, (64, 64))  # bicubic rings at an edge; display images stay in [0, 1]
    assert overshooting.min() == 0.0 and overshooting.max() == 1.0


def test_bicubic_pairs_manifest_and_aligned_unflipped_crops(tmp_path):
    images = {f"img{i}": {"patient_id": f"p{i // 2}", "split": "train" if i < 2 else "test",
                          "image": smooth_and_asymmetric()} for i in range(3)}
    manifest = bicubic_pairs(images, tmp_path / "pairs", tmp_path, hq_px=64, scale=2)
    assert list(manifest.columns) == list(PAIR_COLUMNS)
    assert set(manifest["generator"]) == {"bicubic"}
    assert load_png(tmp_path / manifest.loc[0, "hq_path"]).shape == (64, 64)
    assert load_png(tmp_path / manifest.loc[0, "lq_path"]).shape == (32, 32)
    train = read_pairs(tmp_path / "pairs" / "pairs.csv", "bicubic", "train")
    assert list(train["pair_id"]) == ["bicubic-img0", "bicubic-img1"]
    assert read_pairs(tmp_path / "pairs" / "pairs.csv", "ddpm").empty

    whole = PairDataset(train, tmp_path)[0]
    assert whole["image"].shape == whole["condition"].shape == (1, 64, 64)
    assert -1 <= whole["image"].min() and whole["image"].max() <= 1
    assert whole["image"][0, :, :32].mean() > whole["image"][0, :, 32:].mean()  # left stays left
    crops = PairDataset(train, tmp_path, crop_px=24)
    first, again, other = crops[(0, 5)], crops[(0, 5)], crops[(0, 6)]
    assert first["image"].shape == (1, 24, 24) and first["seed"] == 5
    assert torch.equal(first["image"], again["image"]) and not torch.equal(first["image"], other["image"])
    # the condition crop is cut at the same place: it is the blurred HQ crop, not another region
    for item in (first, other):
        error = (item["condition"] - item["image"])[..., 2:-2, 2:-2].abs().mean()
        assert error < 0.02
    shifted = (crops[(0, 5)]["condition"][..., 2:-2, 2:-2] - crops[(0, 6)]["image"][..., 2:-2, 2:-2]).abs().mean()
    assert shifted > 5 * error
    with pytest.raises(ConfigError, match="crop_px"):
        PairDataset(train, tmp_path, crop_px=65)[(0, 1)]
    # the content hash (a restorer run's data identity) follows the files, not the manifest's size
    before = PairDataset(train, tmp_path).content_sha256()
    assert PairDataset(train, tmp_path, crop_px=24).content_sha256() == before
    lq_file = tmp_path / train.iloc[0]["lq_path"]
    save_png16(lq_file, np.clip(load_png(lq_file) * 0.9, 0, 1))  # another twin of the same HQ image
    assert PairDataset(train, tmp_path).content_sha256() != before


def test_flip_is_opt_in_and_missing_data_is_named(tmp_path):
    images = {"img": {"patient_id": "p", "split": "test", "image": smooth_and_asymmetric()}}
    manifest = bicubic_pairs(images, tmp_path, tmp_path, hq_px=32, scale=2)
    flipping = PairDataset(manifest, tmp_path, flip_left_right=True)
    flipped = [bool(flipping[(0, s)]["image"][0, :, :16].mean() < flipping[(0, s)]["image"][0, :, 16:].mean())
               for s in range(20)]
    assert 3 < sum(flipped) < 17
    with pytest.raises(DataError, match="no rows"):
        PairDataset(manifest.iloc[0:0], tmp_path)
    with pytest.raises(ConfigError, match="mask_path"):
        PairDataset(manifest, tmp_path, mask_channel=True)
    with pytest.raises(DataError, match="not found"):
        read_pairs(tmp_path / "absent.csv")
    pd.DataFrame({"pair_id": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="lacks columns"):
        read_pairs(tmp_path / "bad.csv")

"""The restorer end to end: configuration merging, training on bicubic pairs, export, test restoration."""

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.models.restorer import restore_test_pairs, restorer_settings, train_restorer
from xrlib.models.unet import load_model
from xrlib.errors import ConfigError
from xrlib.io import load_png, save_png16
from xrlib.lq.pairs import build_pairs
from xrlib.lq.twins import bicubic_twin
from xrlib.data.pairs import read_pairs
from xrlib.params import RestorerSettings, parse

torch.set_num_threads(1)

SECTION = parse(RestorerSettings, {
    "seed": 0,
    "train_configs": ["bicubic_baseline"],
    "base": {
        "crop_px": 16, "preview_images": 2,
        "unet": {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, True],
                 "norm_num_groups": 4},
        "schedule": {"beta_schedule": "cosine", "prediction_type": "v_prediction", "loss": "l2"},
        "train": {"steps": 60, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5, "checkpoint_every": 30,
                  "log_every": 5, "sample_every": 60, "ema_decay": 0.9, "progress": False},
    },
    "configs": {"bicubic_baseline": {"generator": "bicubic"},
                "wider": {"generator": "ddpm", "unet": {"block_out_channels": [8, 8]}}},
}, "restorer")


def test_configurations_override_the_base_key_by_key():
    wider = restorer_settings(SECTION, "wider")
    assert wider["unet"]["block_out_channels"] == [8, 8] and wider["unet"]["norm_num_groups"] == 4
    assert wider["train"]["seed"] == 0 and wider["generator"] == "ddpm"
    assert wider["pairs"] == "outputs/pairs/pairs.csv"  # 03_lq_munit's manifest (xrlib.stages)
    with pytest.raises(ConfigError, match="no 'absent'"):
        restorer_settings(SECTION, "absent")


def test_restorer_learns_on_bicubic_pairs_and_restores_held_out_images(tmp_path):
    rows, cols = np.mgrid[0:48, 0:48] / 48
    images = {f"x{i}": {"patient_id": f"p{i}", "split": "test" if i == 3 else "train",
                        "image": (0.5 + 0.35 * np.sin(2 * np.pi * (i + 2) * rows) * np.cos(3 * np.pi * cols)).clip(0, 1)}
              for i in range(4)}
    for image_id, item in images.items():
        save_png16(tmp_path / "in" / f"{image_id}.png", item["image"])
    table = pd.DataFrame([{"image_id": i, "patient_id": item["patient_id"], "split": item["split"], "path": f"in/{i}.png"}
                          for i, item in images.items()])
    build_pairs(table, {"bicubic": (bicubic_twin, {})}, tmp_path, tmp_path / "outputs" / "pairs", hq_px=32, lq_px=16, seed=0)
    run_dir = tmp_path / "run"
    result = train_restorer(SECTION, "bicubic_baseline", 2, tmp_path, run_dir)

    losses = [loss for _, loss in result["history"]]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    assert (run_dir / "dvclive" / "plots" / "images" / "samples" / "00000060.png").is_file()
    model, model_config = load_model(result["weights"])
    assert model_config["unet"]["condition_channels"] == 1 and model_config["scale"] == 2

    test_pairs = read_pairs(tmp_path / "outputs" / "pairs" / "pairs.csv", "bicubic", "test")
    restored = restore_test_pairs(model, model_config, test_pairs, tmp_path, tmp_path / "test", sampler="ddim", steps=5)
    assert list(restored["pair_id"]) == ["bicubic-x3"]
    output = load_png(tmp_path / restored.loc[0, "restored_path"])
    assert output.shape == load_png(tmp_path / restored.loc[0, "hq_path"]).shape == (32, 32)

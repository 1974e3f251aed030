"""The training loop: data order, EMA, LR schedule, learning, exact resume after SIGKILL, DDP on gloo."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xrlib.models.checkpoint import latest_checkpoint, list_checkpoints
from xrlib.errors import ConfigError
from xrlib.io import arrays_sha256
from xrlib.params import parse
from xrlib.models import training
from xrlib.models.training import (
    SeededBatches, TrainConfig, drop_logged_after, ema_decay_at, train, update_ema, warmup_cosine,
)

torch.set_num_threads(1)  # the CI machine has 2 shared cores: more threads only spin

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
MODEL_CONFIG = {"kind": "tiny-denoiser", "hidden_channels": 8}


class BlurredPairs(torch.utils.data.Dataset):
    """Smooth random 16x16 images (HQ) with their 2x box-blurred copies (condition), in [-1, 1]."""

    def __init__(self, n_items: int = 12):
        base = torch.rand(n_items, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.images = torch.nn.functional.interpolate(base, size=(16, 16), mode="bicubic").clamp(-1, 1)
        self.conditions = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(self.images, 2), scale_factor=2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        index, seed = key
        return {"image": self.images[index], "condition": self.conditions[index], "seed": seed}


def tiny_denoiser():
    torch.manual_seed(123)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 1, 3, padding=1))


def denoising_loss(model, batch):
    """Predict the image from a noisy copy and the condition; the noise comes from each sample's seed."""
    noise = torch.stack([torch.randn(batch["image"].shape[1:], generator=torch.Generator().manual_seed(int(s)))
                         for s in batch["seed"]])
    prediction = model(torch.cat([batch["image"] + 0.5 * noise, batch["condition"]], dim=1))
    return torch.nn.functional.mse_loss(prediction, batch["image"])


def run_tiny_training(run_dir, steps, checkpoint_every=5, batch_size=4, on_step=None, dvclive=False, learning_rate=1e-2):
    """Train the tiny denoiser on BlurredPairs; what both the tests and their subprocesses run."""
    config = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "warmup_steps": 3,
              "checkpoint_every": checkpoint_every, "log_every": 1, "ema_decay": 0.9, "seed": 7,
              "progress": False, "dvclive": dvclive}
    return train(tiny_denoiser(), denoising_loss, BlurredPairs(), config, run_dir, MODEL_CONFIG, on_step=on_step)


def test_seeded_batches_cover_each_epoch_and_split_over_ranks_and_restarts():
    single = [b for b in SeededBatches(10, 4, seed=3, start_step=0, end_step=5)]
    indices = [i for batch in single for i, _ in batch]
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:20]) == list(range(10))
    assert indices[:10] != indices[10:20]  # a new permutation each epoch
    ranks = [list(SeededBatches(10, 2, 3, 0, 5, rank=r, world_size=2)) for r in (0, 1)]
    assert [ranks[0][s] + ranks[1][s] for s in range(5)] == single
    assert list(SeededBatches(10, 4, 3, start_step=3, end_step=5)) == single[3:]
    assert list(SeededBatches(10, 4, seed=4, start_step=0, end_step=5)) != single


def test_ema_follows_its_closed_form():
    model, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 2.0)
    torch.nn.init.constant_(ema.weight, 0.0)
    for _ in range(5):
        update_ema(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(2.0 * (1 - 0.9**5))
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10_000, 0.999) == 0.999


def test_ema_of_a_channels_last_unet_equals_the_per_parameter_lerp():
    from xrlib.models.unet import build_unet

    unet = dict(image_channels=1, block_out_channels=[8, 16], layers_per_block=1, attention_levels=[False, False],
                norm_num_groups=4, sample_px=16)
    torch.manual_seed(0)
    model = build_unet(unet).to(memory_format=torch.channels_last)
    ema = build_unet(unet).to(memory_format=torch.channels_last).requires_grad_(False)
    expected = [e.detach().clone().lerp_(m.detach(), 1 - 0.95) for e, m in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.95)
    assert all(torch.allclose(e, x, atol=1e-7) for e, x in zip(ema.parameters(), expected))


def test_training_settings_are_checked_by_the_params_schema():
    with pytest.raises(ConfigError, match="learnig_rate"):
        parse(TrainConfig, {"learnig_rate": 1e-3}, "train")
    with pytest.raises(ConfigError, match="train.steps = 0 is out of range"):
        parse(TrainConfig, {"steps": 0}, "train")
    assert parse(TrainConfig, {"learning_rate": "1e-4"}, "train").learning_rate == pytest.approx(1e-4)


def test_loss_falls_and_lr_warms_up_then_follows_the_cosine(tmp_path):
    result = run_tiny_training(tmp_path, steps=60, checkpoint_every=60, batch_size=8, dvclive=True)
    losses = np.array([loss for _, loss in result["history"]])
    assert losses[-10:].mean() < 0.3 * losses[:5].mean()
    logged = pd.read_csv(tmp_path / "dvclive" / "plots" / "metrics" / "train" / "learning_rate.tsv", sep="\t")
    lr = dict(zip(logged["step"], logged["learning_rate"]))
    # the rate logged after step k is the one step k+1 uses: 1e-2 * min(k / 3, cosine over steps 3..60)
    assert lr[1] == pytest.approx(1e-2 / 3) and lr[3] == pytest.approx(1e-2)
    assert lr[31] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 28 / 57)))
    assert lr[60] == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(100, 3, 60) == 0.0
    assert (tmp_path / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert [p.name for p in list_checkpoints(only_run(tmp_path))] == ["step-00000060"]


KILLABLE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_training import run_tiny_training
    run_dir, steps, pause_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def pause(step):
        if step == pause_at:
            (run_dir / "paused").write_text(str(step))
            time.sleep(600)

    run_tiny_training(run_dir, steps, checkpoint_every=5, on_step=pause)
""")


def _start(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_resume_after_sigkill_continues_as_if_never_stopped(tmp_path):
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE.format(tests=str(TESTS_DIR)))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        folder.mkdir()
    expected = run_tiny_training(straight, 10)

    victim = _start(script, killed, 10, 7)  # checkpoint at 5, two more steps, then killed
    deadline = time.monotonic() + 90
    while not (killed / "paused").exists():
        assert victim.poll() is None and time.monotonic() < deadline, "the training run stopped early"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert latest_checkpoint(only_run(killed)).name == "step-00000005"

    resumed = run_tiny_training(killed, 10)
    assert [step for step, _ in resumed["history"]] == list(range(6, 11))
    for name in ("model", "ema"):
        for key, tensor in expected[name].state_dict().items():
            torch.testing.assert_close(resumed[name].state_dict()[key], tensor, rtol=1e-6, atol=1e-7)
    assert resumed["history"] == expected["history"][5:]
    assert latest_checkpoint(only_run(killed)).name == "step-00000010"


def _ddp_worker(rank, world_size, init_file, run_dir, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = run_tiny_training(run_dir, steps=6, checkpoint_every=3, batch_size=2, dvclive=True)
        torch.save({"weights": result["model"].state_dict(), "history": result["history"]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_on_gloo_matches_one_process_with_the_global_batch(tmp_path):
    run_dir, out_dir = tmp_path / "ddp", tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(run_dir), str(out_dir)), nprocs=2, join=True)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][key])
    assert ranks[0]["history"] == ranks[1]["history"]
    assert [p.name for p in list_checkpoints(only_run(run_dir))] == ["step-00000003", "step-00000006"]
    assert not [p for p in only_run(run_dir).iterdir() if p.name.startswith(".")]

    single = run_tiny_training(tmp_path / "single", steps=6, checkpoint_every=6, batch_size=4)
    for key, tensor in single["model"].state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][key], tensor, rtol=0, atol=1e-5)
    for (step, loss), (single_step, single_loss) in zip(ranks[0]["history"], single["history"]):
        assert step == single_step and loss == pytest.approx(single_loss, rel=1e-4)


def only_run(run_dir):
    """The one run-identity folder under run_dir/checkpoints."""
    (folder,) = (run_dir / "checkpoints").iterdir()
    return folder


def test_other_settings_start_a_new_run_and_keep_the_earlier_one(tmp_path):
    first = run_tiny_training(tmp_path / "changed", steps=5)
    earlier = only_run(tmp_path / "changed")
    with pytest.warns(UserWarning, match=f"earlier runs {earlier.name} are kept"):
        changed = run_tiny_training(tmp_path / "changed", steps=8, learning_rate=5e-3)
    fresh = run_tiny_training(tmp_path / "fresh", steps=8, learning_rate=5e-3)
    runs = sorted((tmp_path / "changed" / "checkpoints").iterdir())
    assert len(runs) == 2 and earlier in runs and latest_checkpoint(earlier).name == "step-00000005"
    assert json.loads((earlier / "identity.json").read_text())["settings"]["learning_rate"] == 1e-2
    assert changed["history"][0][0] == fresh["history"][0][0] == 1 and first["step"] == 5 and changed["step"] == 8
    for a, b in zip(changed["model"].state_dict().values(), fresh["model"].state_dict().values()):
        torch.testing.assert_close(a, b)
    # setting the learning rate back resumes the earlier run where it stopped
    back = run_tiny_training(tmp_path / "changed", steps=7)
    assert [step for step, _ in back["history"]] == [6, 7]


class HashedBlurredPairs(BlurredPairs):
    """BlurredPairs that give their content's SHA-256, as the project's datasets do."""

    def content_sha256(self):
        return arrays_sha256(self.images, self.conditions)


def test_other_data_of_the_same_size_start_a_new_run(tmp_path):
    config = {"steps": 5, "batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 3, "checkpoint_every": 5,
              "log_every": 1, "ema_decay": 0.9, "seed": 7, "progress": False, "dvclive": False}
    data = HashedBlurredPairs()
    train(tiny_denoiser(), denoising_loss, data, config, tmp_path, MODEL_CONFIG)
    earlier = only_run(tmp_path)
    assert json.loads((earlier / "identity.json").read_text())["data"] == {"n_items": 12, "sha256": data.content_sha256()}
    again = train(tiny_denoiser(), denoising_loss, HashedBlurredPairs(), config, tmp_path, MODEL_CONFIG)
    assert again["history"] == [] and only_run(tmp_path) == earlier  # the same data: the finished run is found
    other = HashedBlurredPairs()
    other.conditions = other.conditions.flip(-1)  # other twins of the same HQ images, as after a generator change
    with pytest.warns(UserWarning, match="earlier runs"):
        retrained = train(tiny_denoiser(), denoising_loss, other, config, tmp_path, MODEL_CONFIG)
    assert [step for step, _ in retrained["history"]] == [1, 2, 3, 4, 5]
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2


def test_more_steps_continue_the_run_and_fewer_are_refused(tmp_path):
    run_tiny_training(tmp_path, steps=5)
    extended = run_tiny_training(tmp_path, steps=10)
    assert [step for step, _ in extended["history"]] == list(range(6, 11))
    assert [p.name for p in list_checkpoints(only_run(tmp_path))] == ["step-00000005", "step-00000010"]
    with pytest.raises(ConfigError, match="already reached step 10, past steps = 8; set steps >= 10"):
        run_tiny_training(tmp_path, steps=8)
    assert [p.name for p in list_checkpoints(only_run(tmp_path))] == ["step-00000005", "step-00000010"]


def test_damaged_latest_checkpoint_falls_back_to_the_previous_and_says_so(tmp_path):
    straight = run_tiny_training(tmp_path / "straight", steps=10)
    run_tiny_training(tmp_path / "damaged", steps=10)
    run = only_run(tmp_path / "damaged")
    weights = run / "step-00000010" / "model.safetensors"
    flipped = bytearray(weights.read_bytes())
    flipped[-5] ^= 0x40  # one bit of one weight
    weights.write_bytes(bytes(flipped))
    with pytest.warns(UserWarning, match="step-00000010/model.safetensors: SHA-256 differs.*damaged-step-00000010"):
        resumed = run_tiny_training(tmp_path / "damaged", steps=10)
    assert [step for step, _ in resumed["history"]] == list(range(6, 11))  # redone from step 5
    for key, tensor in straight["model"].state_dict().items():
        torch.testing.assert_close(resumed["model"].state_dict()[key], tensor, rtol=1e-6, atol=1e-7)
    assert (run / "damaged-step-00000010").is_dir() and (run / "step-00000010").is_dir()


def test_staging_left_by_a_kill_during_a_save_is_removed(tmp_path):
    run_tiny_training(tmp_path, steps=5)
    staging = only_run(tmp_path) / ".step-00000010.k1ll3d"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    run_tiny_training(tmp_path, steps=6)
    assert not staging.exists()
    assert [p.name for p in list_checkpoints(only_run(tmp_path))] == ["step-00000005", "step-00000006"]


def test_dvclive_rows_past_the_checkpoint_and_cut_rows_are_dropped_atomically(tmp_path, monkeypatch):
    table = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    table.parent.mkdir(parents=True)
    table.write_text("timestamp\tstep\tloss\n1\t1\t0.5\n2\t2\t0.4\n3\t3\t0.3\n4\t4")
    written = []
    monkeypatch.setattr(training, "write_text_atomic", lambda path, text: written.append(path) or path.write_text(text))
    drop_logged_after(tmp_path, 2)
    assert written == [table]
    assert table.read_text() == "timestamp\tstep\tloss\n1\t1\t0.5\n2\t2\t0.4\n"
    drop_logged_after(tmp_path, 2)  # nothing to drop: not rewritten
    assert written == [table]


def test_a_mistyped_setting_is_refused_before_anything_is_touched(tmp_path):
    run_tiny_training(tmp_path, steps=5)
    earlier = only_run(tmp_path)
    with pytest.raises(ConfigError, match="learning_rate = 'fast': expected float"):
        run_tiny_training(tmp_path, steps=5, learning_rate="fast")
    assert [p.name for p in list_checkpoints(earlier)] == ["step-00000005"] and only_run(tmp_path) == earlier
    with pytest.warns(UserWarning, match="are kept"):  # YAML 1.1 reads 1e-4 as text: taken as the number, a new run
        run_tiny_training(tmp_path, steps=5, learning_rate="1e-4")
    assert [p.name for p in list_checkpoints(earlier)] == ["step-00000005"] and len(list((tmp_path / "checkpoints").iterdir())) == 2

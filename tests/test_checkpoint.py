"""Checkpoints: exact round trip, atomic visibility, refusal of foreign or tampered files."""

import json
import os
import random
import stat

import numpy as np
import pytest
import torch

from xrlib.models.checkpoint import (
    latest_checkpoint, list_checkpoints, load_checkpoint, load_latest_checkpoint, load_weights, save_checkpoint,
    verify_checkpoint,
)
from xrlib.errors import CheckpointError

CONFIG = {"channels": 4, "kind": "tiny"}


def tiny_model(channels: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, channels), torch.nn.ReLU(), torch.nn.Linear(channels, 1))


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model(torch.randn(8, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    saved = save_checkpoint(tmp_path, 7, {"model": model}, {"opt": optimizer}, {"lr": scheduler}, CONFIG, {"loss": 0.5})
    expected_draws = (torch.rand(3), random.random(), np.random.rand())

    restored = tiny_model()
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    restored_sched = torch.optim.lr_scheduler.StepLR(restored_opt, step_size=1, gamma=0.5)
    info = load_checkpoint(saved, {"model": restored}, {"opt": restored_opt}, {"lr": restored_sched}, CONFIG)

    assert info == {"step": 7, "extra": {"loss": 0.5}}
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    assert restored_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert restored_sched.get_last_lr() == scheduler.get_last_lr()
    draws = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]


def test_keeps_last_and_ignores_partial_folders(tmp_path):
    model = tiny_model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model}, keep_last=2)
    (tmp_path / ".step-00000004.partial").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    assert latest_checkpoint(tmp_path / "absent") is None


def test_other_architecture_is_refused(tmp_path):
    saved = save_checkpoint(tmp_path, 1, {"model": tiny_model()}, config=CONFIG)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_weights(saved / "model.safetensors", tiny_model(8), {"channels": 8, "kind": "tiny"})
    with pytest.raises(CheckpointError, match="does not match"):
        load_weights(saved / "model.safetensors", tiny_model(8))


def test_tampered_files_are_refused_without_running_code(tmp_path):
    saved = save_checkpoint(tmp_path, 1, {"model": tiny_model()}, config=CONFIG)
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or tampered"):
        load_weights(weights, tiny_model())

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"step": 1, "payload": Payload()}, saved / "training_state.pt")
    save_checkpoint(tmp_path / "ok", 1, {"model": tiny_model()})
    good = latest_checkpoint(tmp_path / "ok")
    (good / "training_state.pt").write_bytes((saved / "training_state.pt").read_bytes())
    with pytest.raises(CheckpointError, match="tampered"):
        load_checkpoint(good, {"model": tiny_model()})
    assert not marker.exists()


def test_checksums_catch_one_flipped_byte_before_anything_is_loaded(tmp_path):
    saved = save_checkpoint(tmp_path, 1, {"model": tiny_model()}, config=CONFIG)
    listing = json.loads((saved / "checksums.json").read_text())
    assert sorted(listing) == ["model.safetensors", "training_state.pt"]
    verify_checkpoint(saved)
    state = bytearray((saved / "training_state.pt").read_bytes())
    state[len(state) // 2] ^= 0x01
    (saved / "training_state.pt").write_bytes(bytes(state))
    target = tiny_model()
    before = [t.clone() for t in target.state_dict().values()]
    with pytest.raises(CheckpointError, match="training_state.pt: SHA-256 differs.*damaged or tampered"):
        load_checkpoint(saved, {"model": target}, expected_config=CONFIG)
    assert all(torch.equal(a, b) for a, b in zip(before, target.state_dict().values()))  # nothing loaded


def test_latest_good_checkpoint_is_found_and_none_good_is_an_error(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"model": tiny_model()}, config=CONFIG)
    (tmp_path / "step-00000002" / "model.safetensors").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="Moved it to damaged-step-00000002"):
        folder, restored = load_latest_checkpoint(tmp_path, {"model": tiny_model()}, expected_config=CONFIG)
    assert folder.name == "step-00000001" and restored["step"] == 1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    (tmp_path / "step-00000001" / "checksums.json").write_text("{not json")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="every checkpoint is damaged"):
        load_latest_checkpoint(tmp_path, {"model": tiny_model()}, expected_config=CONFIG)
    assert load_latest_checkpoint(tmp_path / "absent", {"model": tiny_model()}) is None


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        saved = save_checkpoint(tmp_path, 1, {"model": tiny_model()})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in saved.iterdir()} == {0o640}

"""GPU-only checks of the restorer (run by benchmarks/gpu_check.py on a CUDA machine; skipped elsewhere)."""

import math

import pytest
import torch

from xrlib.models.sampling import diffusion_loss, make_scheduler, sample
from xrlib.models.unet import build_unet

pytestmark = pytest.mark.cuda

UNET = {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [False, True],
        "norm_num_groups": 8, "condition_channels": 1}
SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "cosine", "prediction_type": "v_prediction"}


def test_sampling_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = build_unet(UNET).eval()
    condition = torch.rand(2, 1, 32, 32) * 2 - 1
    results = {}
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    for device in ("cpu", "cuda"):
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in (1, 2)]  # same noise on both
        results[device] = sample(model.to(device), make_scheduler("ddim", SCHEDULE), condition.to(device),
                                 steps=10, generator=generators).cpu()
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-3, atol=2e-3)


def test_bf16_autocast_training_reduces_the_loss():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_unet(UNET).to(device)
    scheduler = make_scheduler("ddpm", SCHEDULE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    clean = torch.linspace(-0.8, 0.8, 32, device=device).view(1, 1, 1, 32).expand(8, 1, 32, 32).contiguous()
    condition = clean
    losses = []
    for step in range(60):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion_loss(model, scheduler, clean, list(range(step * 8, step * 8 + 8)), condition)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_graph_and_compiled_sampling_agree_with_eager_within_bf16_tolerance():
    """restore.accel's paths against eager sampling of the same UNet, same noise: CUDA graphs replay
    the eager kernels (float32: near-identical), bf16 and compiled within bf16 tolerance."""
    from xrlib.models.accel import SamplingUNet, for_sampling
    from xrlib.models.restorer import restore

    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_unet(UNET).to(device).eval()
    condition = torch.rand(2, 1, 32, 32, device=device) * 2 - 1

    def ddim(unet):
        generators = [torch.Generator(device=device).manual_seed(s) for s in (1, 2)]
        return sample(unet, make_scheduler("ddim", SCHEDULE), condition, steps=10, generator=generators)

    eager, eager_bf16 = ddim(model), ddim(SamplingUNet(model, "off", bf16=True))
    graphed = SamplingUNet(model, "cuda_graph")
    torch.testing.assert_close(ddim(graphed), eager, rtol=1e-4, atol=1e-4)
    assert len(graphed._graphs) == 1
    torch.testing.assert_close(ddim(SamplingUNet(model, "cuda_graph", bf16=True)), eager_bf16, rtol=1.6e-2, atol=1.6e-2)
    torch.testing.assert_close(eager_bf16, eager, rtol=5e-2, atol=5e-2)
    compiled = for_sampling(model, {"device": "cuda", "graph": "compile", "compile_mode": "reduce-overhead"})
    torch.testing.assert_close(ddim(compiled), eager, rtol=1.6e-2, atol=1.6e-2)
    config = {"unet": UNET, "schedule": SCHEDULE, "scale": 2}
    lq = torch.rand(2, 1, 16, 16, device=device)
    restored = [restore(m, config, lq, "ddim", 5, [torch.Generator(device=device).manual_seed(s) for s in (3, 4)])
                for m in (model, for_sampling(model, {"device": "cuda", "graph": "cuda_graph"}))]
    torch.testing.assert_close(restored[1], restored[0], rtol=1e-4, atol=1e-4)


def test_train_with_the_cuda_accelerations_learns(tmp_path):
    """train() with train.accel's CUDA defaults (channels_last, fused AdamW, SDPA, pinned prefetching loader),
    resuming a run that began without them (unfused, contiguous optimizer state)."""
    from test_training import BlurredPairs

    from xrlib.models import accel as gpu
    from xrlib.models.training import train
    from xrlib.models.unet import diffusion_loss_fn

    optimizers = []
    original = gpu.make_adamw

    def spy(*args, **kwargs):
        optimizers.append(original(*args, **kwargs))
        return optimizers[-1]

    gpu.make_adamw = spy
    config = {"batch_size": 8, "learning_rate": 2e-3, "warmup_steps": 5, "checkpoint_every": 30, "log_every": 10,
              "progress": False, "dvclive": False, "num_workers": 2, "device": "cuda"}
    try:
        first = train(build_unet(UNET), diffusion_loss_fn(SCHEDULE), BlurredPairs(), {
            **config, "steps": 30, "accel": {"fused_adamw": False, "channels_last": False}}, tmp_path,
            {"unet": UNET, "schedule": SCHEDULE})
        result = train(build_unet(UNET), diffusion_loss_fn(SCHEDULE), BlurredPairs(), {**config, "steps": 60},
                       tmp_path, {"unet": UNET, "schedule": SCHEDULE})
    finally:
        gpu.make_adamw = original
    assert not optimizers[0].param_groups[0]["fused"] and optimizers[1].param_groups[0]["fused"]
    assert all(state["step"].device.type == "cuda" for state in optimizers[1].state.values())
    assert result["model"].conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    losses = [loss for _, loss in first["history"] + result["history"]]
    assert [step for step, _ in result["history"]] == [40, 50, 60]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]

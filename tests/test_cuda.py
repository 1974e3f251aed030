"""GPU-only checks of the restorer (run by benchmarks/gpu_check.py on a CUDA machine; skipped elsewhere)."""

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

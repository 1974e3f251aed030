"""Restorer throughput: training images/s (and achieved FLOP/s), sampling latency per image.

Side by side for DDPM-1000, DDIM-50 and DPM-Solver-20 at each output size, on the CPU or one GPU::

    python benchmarks/bench_diffusion.py --device cpu --sizes 128 512
    python benchmarks/bench_diffusion.py --device cuda --params params/paper.yaml --sizes 128 512 1024

The UNet is ``restorer.base.unet`` of the params file (default: the project's params.yaml).
Training steps run as in :func:`xrlib.training.train` (AdamW, bf16 autocast on CUDA); FLOPs are
counted by torch's FlopCounterMode on one step. Sampling is timed on ``--timed-steps`` denoising
steps at most (all of them with 0) and the per-image latency extrapolated to the full step count:
every step costs one UNet call and one scheduler update, so the estimate is linear. Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from xrlib.models.restorer import restorer_model_config, restorer_settings
from xrlib.models.sampling import make_scheduler
from xrlib.models.unet import build_unet, diffusion_loss_fn
from xrlib.params import load_params
from xrlib.models.training import select_device

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm_solver", 20))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def bench_training(model_config, size_px: int, batch: int, iterations: int, device: torch.device) -> dict:
    model = build_unet(model_config["unet"]).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = diffusion_loss_fn(model_config["schedule"])
    data = {"image": torch.rand(batch, 1, size_px, size_px, device=device) * 2 - 1,
            "condition": torch.rand(batch, 1, size_px, size_px, device=device) * 2 - 1,
            "seed": torch.arange(batch)}

    def step():
        with autocast(device):
            loss = loss_fn(model, data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / iterations
    return {"size_px": size_px, "batch": batch, "seconds_per_step": seconds, "images_per_s": batch / seconds,
            "flop_per_step": counter.get_total_flops(), "achieved_tflop_per_s": counter.get_total_flops() / seconds / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


@torch.no_grad()
def bench_sampling(model_config, size_px: int, batch: int, timed_steps: int, device: torch.device) -> list[dict]:
    model = build_unet(model_config["unet"]).to(device).eval()
    condition = torch.rand(batch, 1, size_px, size_px, device=device) * 2 - 1
    results = []
    for name, steps in SAMPLERS:
        scheduler = make_scheduler(name, model_config["schedule"])
        scheduler.set_timesteps(steps, device=device)
        run = len(scheduler.timesteps) if timed_steps <= 0 else min(timed_steps, len(scheduler.timesteps))
        sample = torch.randn(batch, 1, size_px, size_px, device=device)
        generator = torch.Generator(device=device).manual_seed(0)

        def denoise(timesteps, sample):
            for timestep in timesteps:
                with autocast(device):
                    output = model(torch.cat([scheduler.scale_model_input(sample, timestep), condition], 1),
                                   timestep.expand(batch)).sample
                sample = scheduler.step(output.float(), timestep, sample, generator=generator).prev_sample
            return sample

        denoise(scheduler.timesteps[:1], sample)  # warm-up
        scheduler.set_timesteps(steps, device=device)
        synchronize(device)
        start = time.perf_counter()
        denoise(scheduler.timesteps[:run], sample)
        synchronize(device)
        per_step = (time.perf_counter() - start) / run
        results.append({"sampler": name, "steps": steps, "size_px": size_px, "batch": batch, "timed_steps": run,
                        "seconds_per_image": per_step * steps / batch, "seconds_per_step_per_batch": per_step})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--params", default=None, help="params file whose restorer.base.unet is benchmarked")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512], help="output sizes (px)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--sample-batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3, help="timed training steps")
    parser.add_argument("--timed-steps", type=int, default=3, help="timed denoising steps per sampler (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    section = load_params(args.params)["restorer"]
    model_config = restorer_model_config(restorer_settings(section, next(iter(section["configs"]))), section["scale"])
    parameters = sum(p.numel() for p in build_unet(model_config["unet"]).parameters())
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "unet": model_config["unet"], "parameters": parameters,
              "schedule": model_config["schedule"], "training": [], "sampling": []}
    for size_px in args.sizes:
        report["training"].append(bench_training(model_config, size_px, args.train_batch, args.iterations, device))
        report["sampling"].extend(bench_sampling(model_config, size_px, args.sample_batch, args.timed_steps, device))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

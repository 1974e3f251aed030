"""Restorer throughput beside plain diffusers defaults on the same UNet, in one run.

Two implementations of one model (``restorer.base.unet`` of the params file, default the
project's params.yaml; condition concatenated to the noisy input as in the restorer):

* ``xrlib``: the restorer's own code path. A training step as :func:`xrlib.models.training.train` takes
  it (xrlib's diffusion loss with per-sample seeded timesteps and noise and the restorer's
  schedule, AdamW, gradient clipping, EMA update; bf16 autocast on CUDA); sampling with
  :func:`xrlib.models.sampling.sample` and the restorer's schedulers (:func:`xrlib.models.sampling.make_scheduler`).
* ``diffusers``: the plain diffusers recipe with default settings. ``DDPMScheduler()``, noise from
  ``torch.randn``, timesteps from ``torch.randint``, MSE on the noise, an AdamW step; sampling with
  the scheduler classes' default configs in the textbook loop (``scale_model_input``, UNet, ``step``).

The two are timed alternately, step by step, so machine load hits both alike; the ratio
xrlib / diffusers (images/s, or diffusers' latency over xrlib's) shows what the project's path
costs, and a change that slows it shows as a lower ratio. Training: median over ``--iterations``
steps after a warm-up, FLOPs counted by torch's FlopCounterMode on one xrlib step. Sampling (in
float32, as :func:`xrlib.models.restorer.restore` runs it): median time per denoising step over ``--timed-steps``-step runs (each step is one UNet call and
one scheduler update), extrapolated to DDPM-1000, DDIM-50 and DPM-Solver-20 per image::

    python benchmarks/bench_diffusion.py --device cpu --threads 2    # the pipeline's sizes (32-px crops, 256-px restores)
    python benchmarks/bench_diffusion.py --device cuda --params params/paper.yaml --sizes 256 512

Prints the JSON report on stdout and a table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's xrlib, whichever is installed

from xrlib.models import accel as gpu  # noqa: E402
from xrlib.models.accel import TrainAccel  # noqa: E402
from xrlib.models.restorer import restorer_model_config, restorer_settings  # noqa: E402
from xrlib.models.sampling import make_scheduler, sample  # noqa: E402
from xrlib.models.training import ema_decay_at, select_device, update_ema, warmup_cosine  # noqa: E402
from xrlib.models.unet import build_unet, diffusion_loss_fn  # noqa: E402
from xrlib.params import check_params, load_params  # noqa: E402

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm_solver", 20))
DEFAULT_SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}
IMPLEMENTATIONS = ("xrlib", "diffusers")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def training_steps(model_config, size_px: int, batch: int, device: torch.device, implementations=IMPLEMENTATIONS,
                   settings: TrainAccel | None = None) -> dict:
    """One training step per implementation, each on its own copy of the same initial UNet; each
    returns its loss. ``settings``: xrlib's step with ``train.accel`` (default: none, as before)."""
    data = {"image": torch.rand(batch, 1, size_px, size_px, device=device) * 2 - 1,
            "condition": torch.rand(batch, 1, size_px, size_px, device=device) * 2 - 1,
            "seed": torch.arange(batch)}
    steps = {}

    torch.manual_seed(0)
    model = build_unet(model_config["unet"]).to(device).train()
    if settings is not None:
        model = gpu.prepare_model(model, settings, device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = (gpu.make_adamw(model.parameters(), settings, device, lr=1e-4) if settings is not None
                 else torch.optim.AdamW(model.parameters(), lr=1e-4))
    network = gpu.compile_for_training(model, settings, device) if settings is not None else model
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, 10, 10**6))
    loss_fn = diffusion_loss_fn(model_config["schedule"])
    count = iter(range(1, 10**9))

    def xrlib_step():
        with autocast(device):
            loss = loss_fn(network, data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        update_ema(ema, model, ema_decay_at(next(count), 0.999))
        return loss.detach()

    steps["xrlib"] = xrlib_step
    if "diffusers" not in implementations:
        return steps

    torch.manual_seed(0)
    plain = build_unet(model_config["unet"]).to(device).train()
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    noise_scheduler = DDPMScheduler()

    def diffusers_step():
        clean = data["image"]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), device=device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with autocast(device):
            prediction = plain(torch.cat([noisy, data["condition"]], dim=1), timesteps).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()
        return loss.detach()

    steps["diffusers"] = diffusers_step
    return steps


def bench_training(model_config, size_px: int, batch: int, iterations: int, device: torch.device,
                   implementations=IMPLEMENTATIONS) -> list[dict]:
    steps = training_steps(model_config, size_px, batch, device, implementations)
    with FlopCounterMode(display=False) as counter:
        steps["xrlib"]()  # also the warm-up
    flops = counter.get_total_flops()
    if "diffusers" in implementations:
        steps["diffusers"]()  # warm-up
    seconds = {name: [] for name in implementations}
    for _ in range(iterations):
        for name in implementations:
            seconds[name].append(timed(steps[name], device))
    results = []
    for name in implementations:
        per_step = statistics.median(seconds[name])
        results.append({"implementation": name, "size_px": size_px, "batch": batch, "seconds_per_step": per_step,
                        "images_per_s": batch / per_step, "flop_per_step": flops,
                        "achieved_tflop_per_s": flops / per_step / 1e12,
                        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda" else None})
    return results


@torch.no_grad()
def bench_sampling(model_config, size_px: int, batch: int, timed_steps: int, rounds: int, device: torch.device,
                   implementations=IMPLEMENTATIONS) -> list[dict]:
    model = build_unet(model_config["unet"]).to(device).eval()
    condition = torch.rand(batch, 1, size_px, size_px, device=device) * 2 - 1

    def xrlib_run(name, steps):
        scheduler = make_scheduler(name, model_config["schedule"])
        generator = torch.Generator(device=device).manual_seed(0)
        sample(model, scheduler, condition=condition, steps=steps, generator=generator)

    def diffusers_run(name, steps):
        scheduler = DEFAULT_SCHEDULERS[name]()
        scheduler.set_timesteps(steps, device=device)
        image = torch.randn(batch, 1, size_px, size_px, device=device) * scheduler.init_noise_sigma
        for timestep in scheduler.timesteps:
            output = model(torch.cat([scheduler.scale_model_input(image, timestep), condition], dim=1), timestep).sample
            image = scheduler.step(output, timestep, image).prev_sample

    runs = {"xrlib": xrlib_run, "diffusers": diffusers_run}
    results = []
    for name, steps in SAMPLERS:
        for implementation in implementations:
            runs[implementation](name, 1)  # warm-up
        seconds = {implementation: [] for implementation in implementations}
        for _ in range(rounds):
            for implementation in implementations:
                seconds[implementation].append(timed(lambda: runs[implementation](name, timed_steps), device))
        for implementation in implementations:
            per_step = statistics.median(seconds[implementation]) / timed_steps
            results.append({"implementation": implementation, "sampler": name, "steps": steps, "size_px": size_px,
                            "batch": batch, "timed_steps": timed_steps, "seconds_per_step_per_batch": per_step,
                            "seconds_per_image": per_step * steps / batch})
    return results


def table(report: dict) -> str:
    """Both implementations side by side: training images/s, sampling seconds per image, ratios."""
    lines = [f"{report['device_name']}, {report['threads']} threads, torch {report['torch']}, "
             f"UNet {report['unet']['block_out_channels']} ({report['parameters']:,} parameters), "
             f"load average {report['load_average_1min']:.1f}",
             f"{'measure':<34}{'xrlib':>12}{'diffusers':>12}{'speed xrlib/diffusers':>23}"]
    by = {}
    for row in report["training"]:
        by.setdefault(("train", row["size_px"], row["batch"]), {})[row["implementation"]] = row["images_per_s"]
    for (_, size, batch), value in by.items():
        lines.append(f"{f'training images/s, {size} px, batch {batch}':<34}"
                     + _cells(value.get("xrlib"), value.get("diffusers"), higher_is_faster=True))
    by = {}
    for row in report["sampling"]:
        by.setdefault((row["sampler"], row["steps"], row["size_px"]), {})[row["implementation"]] = row["seconds_per_image"]
    for (sampler, steps, size), value in by.items():
        lines.append(f"{f's/image {sampler}-{steps}, {size} px':<34}"
                     + _cells(value.get("xrlib"), value.get("diffusers"), higher_is_faster=False))
    return "\n".join(lines)


def _cells(ours: float | None, theirs: float | None, higher_is_faster: bool) -> str:
    speed = float("nan") if ours is None or theirs is None else (ours / theirs if higher_is_faster else theirs / ours)
    return "".join(f"{value:>12.2f}" if value is not None else f"{'-':>12}" for value in (ours, theirs)) + f"{speed:>23.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--params", default=None, help="params file whose restorer.base.unet is benchmarked")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="sizes (px) for training and sampling (default: training at the restorer's crop, "
                             "sampling at the restored size restore.input_px x scale)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--sample-batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="timed training steps per implementation")
    parser.add_argument("--timed-steps", type=int, default=3, help="denoising steps per timed sampling run")
    parser.add_argument("--rounds", type=int, default=3, help="timed sampling runs per implementation and sampler")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    checked = check_params(load_params(args.params))
    section, scale = checked["restorer"], checked["pairs"].scale
    model_config = restorer_model_config(restorer_settings(section, section.train_configs[0]), scale)
    restored_px = checked["restore"].input_px
    train_sizes = args.sizes or [int(model_config["unet"]["sample_px"])]
    sample_sizes = args.sizes or [int(restored_px) * scale if restored_px else train_sizes[0]]
    parameters = sum(p.numel() for p in build_unet(model_config["unet"]).parameters())
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
              "unet": model_config["unet"], "parameters": parameters, "schedule": model_config["schedule"],
              "training": [], "sampling": []}
    for size_px in train_sizes:
        report["training"].extend(bench_training(model_config, size_px, args.train_batch, args.iterations, device,
                                                 args.implementations))
    for size_px in sample_sizes:
        report["sampling"].extend(bench_sampling(model_config, size_px, args.sample_batch, args.timed_steps,
                                                 args.rounds, device, args.implementations))
    report["load_average_1min_after"] = os.getloadavg()[0]
    print(table(report), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

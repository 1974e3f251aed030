"""NCHW beside NHWC (channels_last) on the CPU for a profile's UNets, timed alternately in one run.

What the real-data profile's ``on_cpu: true`` accel blocks buy, for each UNet and what it does there:

* restorer training step (``restorer.base``, ``crop_px`` crops, ``train.batch_size``): xrlib's loss,
  AdamW, gradient clipping, as :func:`xrlib.models.training.train` takes it, the model prepared by
  :func:`xrlib.models.accel.prepare_model` with ``channels_last`` off and on;
* DDPM-LQ UNet call at ``lq_ddpm.image_px`` (one image: twins are made one by one);
* restorer UNet call on a whole DRR (``restore.input_px`` x scale, one image).

Each pair runs step by step alternately on two copies of one UNet, so machine load hits both alike;
reports medians, the speed ratio NHWC/NCHW (> 1: NHWC faster) and the largest output difference::

    xrlib params real-data --out /tmp/real-data.yaml
    python benchmarks/bench_cpu_layout.py --params /tmp/real-data.yaml --threads 2

Prints the JSON report on stdout and a table on stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's xrlib, whichever is installed

from xrlib.models import accel as gpu  # noqa: E402
from xrlib.models.accel import TrainAccel  # noqa: E402
from xrlib.models.restorer import restorer_model_config, restorer_settings  # noqa: E402
from xrlib.models.unet import build_unet, diffusion_loss_fn  # noqa: E402
from xrlib.params import check_params, load_params  # noqa: E402

CPU = torch.device("cpu")
LAYOUTS = {"nchw": TrainAccel(on_cpu=True, channels_last=False), "nhwc": TrainAccel(on_cpu=True, channels_last=True)}


def alternate(calls: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, timed one after the other ``repeats`` times after ``warmup`` calls each."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def training_calls(model_config: dict, crop_px: int, batch: int) -> dict:
    """One restorer training step per layout, each on its own copy of one initial UNet and one batch."""
    torch.manual_seed(0)
    initial = build_unet(model_config["unet"])
    data = {"image": torch.rand(batch, 1, crop_px, crop_px) * 2 - 1, "condition": torch.rand(batch, 1, crop_px, crop_px) * 2 - 1,
            "seed": torch.arange(batch)}
    loss_fn = diffusion_loss_fn(model_config["schedule"])
    calls = {}
    for name, settings in LAYOUTS.items():
        model = gpu.prepare_model(copy.deepcopy(initial).train(), settings, CPU)
        optimizer = gpu.make_adamw(model.parameters(), settings, CPU, lr=1e-4)

        def step(model=model, optimizer=optimizer):
            loss = loss_fn(model, data)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        calls[name] = step
    return calls


def inference_calls(unet_config: dict, size_px: int) -> tuple[dict, float]:
    """One UNet call per layout on one image of ``size_px``, and the largest difference of their outputs."""
    torch.manual_seed(0)
    initial = build_unet(unet_config).eval()
    channels = initial.config.in_channels
    image, timestep = torch.rand(1, channels, size_px, size_px) * 2 - 1, torch.tensor([500.0])
    models = {name: gpu.prepare_model(copy.deepcopy(initial), settings, CPU) for name, settings in LAYOUTS.items()}
    with torch.no_grad():
        outputs = [model(image, timestep).sample for model in models.values()]

    def call(model):
        with torch.no_grad():
            return model(image, timestep)

    return {name: (lambda model=model: call(model)) for name, model in models.items()}, float((outputs[0] - outputs[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checked = check_params(load_params(args.params))
    restorer, scale = checked["restorer"], checked["pairs"].scale
    settings = restorer_settings(restorer, restorer.train_configs[0])
    model_config = restorer_model_config(settings, scale)
    lq_ddpm = checked["lq_ddpm"]
    drr_px = (checked["restore"].input_px or checked["drr"].size_px // scale) * scale
    batch = int(settings["train"]["batch_size"])
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_average_1min": os.getloadavg()[0], "params": args.params or "params.yaml", "measures": []}
    cases = [("restorer training step", f"{settings['crop_px']}-px crops, batch {batch}",
              training_calls(model_config, int(settings["crop_px"]), batch), None),
             ("DDPM-LQ UNet call", f"{lq_ddpm.image_px} px, one image",
              *inference_calls({**lq_ddpm.unet, "sample_px": lq_ddpm.image_px}, lq_ddpm.image_px)),
             ("restorer UNet call", f"{drr_px} px, one image", *inference_calls(model_config["unet"], drr_px))]
    for measure, size, calls, difference in cases:
        seconds = alternate(calls, args.repeats)
        report["measures"].append({"measure": measure, "size": size, "nchw_s": seconds["nchw"], "nhwc_s": seconds["nhwc"],
                                   "speed_nhwc_over_nchw": seconds["nchw"] / seconds["nhwc"], "max_output_difference": difference})
    report["load_average_1min_after"] = os.getloadavg()[0]
    rows = [f"{m['measure']:<24} {m['size']:<24} NCHW {m['nchw_s'] * 1e3:7.1f} ms  NHWC {m['nhwc_s'] * 1e3:7.1f} ms  "
            f"x{m['speed_nhwc_over_nchw']:.2f}" + (f"  max |diff| {m['max_output_difference']:.1e}" if m["max_output_difference"] is not None else "")
            for m in report["measures"]]
    print("\n".join(rows), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

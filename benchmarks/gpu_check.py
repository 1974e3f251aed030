"""One-GPU check: every GPU measurement of the restorer and the projector in one run, as JSON and a markdown table.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check_h200.json   # CUDA machine (estimated 6-9 min; the compiles last)
    python benchmarks/gpu_check.py --dry-run --out /tmp/check.json               # anywhere: every code path, tiny, CPU

The model is the ``--profile``'s restorer UNet (paper: 74 M parameters) at random initialisation
(cost does not depend on the weights). Parts, in this order; the report (``--out`` and the same
name with ``.md``) is rewritten after each, so a run cut short keeps what it measured:

1. ``drr``: xrlib's projector, PA DRRs per second at 512 px, a batch of 16 perturbed poses, on a
   volume of the example CT's grid (512 x 512 x 133 voxels of 0.70 x 0.70 x 2.5 mm).
2. ``matmul``: the bf16 matrix-product rate this device reaches (8192^3, a measured ceiling beside
   the datasheet's dense bf16 peak, :data:`PEAK_BF16_DENSE_TFLOPS`).
3. ``training``: the training step as :func:`xrlib.models.training.train` takes it (xrlib's seeded
   diffusion loss, bf16 autocast, AdamW, clipping, EMA) at ``--train-px`` (512): first as before
   (no accelerations, batch 8), then eager with ``train.accel``'s CUDA defaults (channels_last,
   fused AdamW, SDPA, cuDNN autotuning) over ``--batches`` up to the first that does not fit;
   images/s, TFLOP/s (FLOPs counted by torch's FlopCounterMode on one forward and backward at
   batch 1, times the batch) and % of the dense bf16 peak.
4. ``loader``: the restorer's real data path (:class:`xrlib.data.pairs.PairDataset` on 16-bit PNG
   pairs written for the check, ``train.accel``'s loader options, pinned memory, non-blocking
   copies) alone, in images/s at the best batch: above the training rate, the GPU never waits.
5. ``sampling``: per-step latency (one UNet call and one DDIM update) at batch 1 at 256 and
   512 px: as before (contiguous, eager, float32), eager with ``restore.accel``'s CUDA defaults,
   CUDA graphs in float32 and bf16; at 512 px, graph vs eager agreement of DDIM-20 samples.
6. ``throughput``: restored DRRs per hour at 1024 px with DDIM-50 and DDIM-500 (the paper's) over
   batches, CUDA graphs, float32 and bf16 (UNet and sampler only: PNG I/O excluded).
7. ``cuda_tests``: the tests marked ``cuda`` (tests/test_cuda.py, the projector's), in their own process.
8. ``sampling_compiled``: ``torch.compile(mode="reduce-overhead")`` at 512 px, batch 1: latency and agreement.
9. ``training_compiled``: the accelerated step compiled (``--train-compile``, default ``default``;
   ``max-autotune-no-cudagraphs`` autotunes for several more minutes) at the best eager batch.

``--dry-run`` runs every part on the CPU at toy sizes (the smoke profile's UNet, TorchDynamo with
its ``eager`` backend in place of Inductor, the CUDA-graph wrapper's buffers around eager calls):
it checks the script, and measures nothing. Only torch, diffusers, numpy, pandas, PyYAML and
Pillow are needed (diffusers travels as a wheel to a GPU machine that lacks it: see
benchmarks/results/README.md).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_diffusion import autocast, synchronize, timed, training_steps  # noqa: E402  xrlib's training step

from xrlib.data.pairs import PairDataset  # noqa: E402
from xrlib.drr.geometry import chest_geometry, random_pose  # noqa: E402
from xrlib.drr.projector import ConeBeamProjector  # noqa: E402
from xrlib.io import save_png16, write_json_atomic, write_text_atomic  # noqa: E402
from xrlib.models import accel as gpu  # noqa: E402
from xrlib.models.accel import SamplingUNet, TrainAccel  # noqa: E402
from xrlib.models.restorer import restorer_model_config, restorer_settings  # noqa: E402
from xrlib.models.sampling import make_scheduler, sample  # noqa: E402
from xrlib.models.training import SeededBatches  # noqa: E402
from xrlib.models.unet import build_unet, diffusion_loss_fn  # noqa: E402
from xrlib.params import check_params  # noqa: E402
from xrlib.profiles import profile_params  # noqa: E402

EXAMPLE_CT_SHAPE = (512, 512, 133)
EXAMPLE_CT_SPACING_MM = (0.703125, 0.703125, 2.5)

#: Datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; the first name found in the
#: device's name wins (so the longer names come first). Others: "unknown device", no % of peak.
PEAK_BF16_DENSE_TFLOPS = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 6000 Ada", 364.0),
)
#: Within bf16 tolerance: |compiled - eager| <= atol + rtol |eager| with torch.testing's bf16 rtol
#: as both (images in [-1, 1]).
BF16_TOLERANCE = 1.6e-2
#: CUDA graphs replay the eager kernels: float32 graph and eager samples agree to this.
FLOAT32_TOLERANCE = 1e-3


class Sizes:
    """The sizes of a run: the real ones on a GPU, toy ones in the dry run."""

    def __init__(self, dry_run: bool, args: argparse.Namespace):
        self.dry_run = dry_run
        self.train_px = 32 if dry_run else args.train_px
        self.batches = [2, 4] if dry_run else args.batches
        self.latency_px = [16, 32] if dry_run else [256, 512]
        self.throughput_px = 32 if dry_run else 1024
        self.throughput_batches = [1, 2] if dry_run else args.throughput_batches
        self.agreement_steps = 3 if dry_run else 20
        self.timed_steps = 2 if dry_run else args.timed_steps
        self.rounds = 2 if dry_run else 3
        self.iterations = 2 if dry_run else args.iterations
        self.matmul_n = 128 if dry_run else 8192
        self.loader_hq_px, self.loader_lq_px = (64, 32) if dry_run else (1024, 512)
        self.workers = 1 if dry_run else args.workers
        self.compile_backend = "eager" if dry_run else "inductor"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def datasheet_peak(device_name: str, override: float | None) -> tuple[float | None, str]:
    """(dense bf16 TFLOP/s, where it comes from) for a device name."""
    if override:
        return override, "--peak-tflops"
    for name, tflops in PEAK_BF16_DENSE_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops, f"datasheet ({name})"
    return None, "unknown device: no datasheet peak (give --peak-tflops); % of peak not computed"


# ------------------------------------------------------------------------------------------------
# 1-3: projector, CUDA tests, matmul ceiling


def drrs_per_second(device: str, size_px: int, batch: int, shape=EXAMPLE_CT_SHAPE) -> dict:
    """Time the projector on a volume of the example CT's grid (content does not change the cost)."""
    spacing = np.array(EXAMPLE_CT_SPACING_MM)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * spacing
    generator = torch.Generator().manual_seed(0)
    attenuation_per_mm = 0.02 * torch.rand(shape, generator=generator)
    projector = ConeBeamProjector(attenuation_per_mm, affine).to(device)
    rng = np.random.default_rng(0)
    poses = [chest_geometry((0.0, 0.0, 0.0), size_px=size_px, **random_pose(rng, 2.0, 5.0)) for _ in range(batch)]
    projector(poses[:1])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    images = projector(poses)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"size_px": size_px, "batch": batch, "volume_shape": list(shape), "seconds": seconds,
            "drrs_per_second": batch / seconds, "finite": bool(torch.isfinite(images).all()),
            "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def run_cuda_tests() -> dict:
    """The tests marked cuda, in their own process; returns pytest's summary line and exit code."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                             "tests/test_cuda.py", "tests/test_drr_projector.py"],
                            cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {"exit_code": result.returncode, "summary": lines[-1] if lines else result.stderr[-500:],
            "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))]}


def matmul_ceiling(device: torch.device, n: int, repeats: int = 10) -> dict:
    """bf16 n x n x n matrix products: the rate this device reaches (mean of ``repeats`` after 3 warm-ups)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=generator)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return {"n": n, "repeats": repeats, "tflop_per_s": 2 * n**3 * repeats / seconds / 1e12}


# ------------------------------------------------------------------------------------------------
# 4-5: training and its data


def flop_per_image(model_config: dict, size_px: int, device: torch.device) -> int:
    """FLOPs of one image's forward and backward (xrlib's loss on the eager UNet, bf16 autocast on CUDA)."""
    torch.manual_seed(0)
    model = build_unet(model_config["unet"]).to(device).train()
    loss_fn = diffusion_loss_fn(model_config["schedule"])
    data = {"image": torch.zeros(1, 1, size_px, size_px, device=device),
            "condition": torch.zeros(1, 1, size_px, size_px, device=device), "seed": torch.arange(1)}
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            loss = loss_fn(model, data)
        loss.backward()
    return int(counter.get_total_flops())


def training_run(model_config: dict, size_px: int, batch: int, settings: TrainAccel, device: torch.device,
                 iterations: int, warmup: int = 2) -> dict:
    """Median seconds per training step as :func:`xrlib.models.training.train` takes it, with ``settings``."""
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark and device.type == "cuda"  # a global flag: as this row says
    xrlib_step = training_steps(model_config, size_px, batch, device, ("xrlib",), settings)["xrlib"]
    losses = []

    def step():
        losses.append(xrlib_step())

    free_memory(device)
    first_s = timed(step, device)  # compiles, when compiled
    for _ in range(warmup - 1):
        step()
    seconds = [timed(step, device) for _ in range(iterations)]
    per_step = statistics.median(seconds)
    return {"size_px": size_px, "batch": batch, "settings": dataclasses.asdict(settings), "first_step_s": first_s,
            "seconds_per_step": per_step, "images_per_s": batch / per_step, "peak_memory_gib": peak_gib(device),
            "finite_loss": bool(torch.isfinite(torch.stack(losses)).all())}


def with_rates(row: dict, flop_image: int, peak: float | None, ceiling: float | None) -> dict:
    flops = flop_image * row["batch"]
    tflops = flops / row["seconds_per_step"] / 1e12
    return {**row, "flop_per_step": flops, "achieved_tflop_per_s": tflops,
            "percent_of_datasheet_peak": 100 * tflops / peak if peak else None,
            "percent_of_measured_matmul": 100 * tflops / ceiling if ceiling else None}


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure_training(model_config, sizes: Sizes, device, settings: TrainAccel, peak, ceiling) -> dict:
    """Before (no accelerations, batch 8 or the first) and the eager accelerated step over batches."""
    flop_image = flop_per_image(model_config, sizes.train_px, device)
    before = TrainAccel(channels_last=False, fused_adamw=False, cudnn_benchmark=False)
    result = {"size_px": sizes.train_px, "flop_per_image": flop_image,
              "before": with_rates(training_run(model_config, sizes.train_px, sizes.batches[0], before, device,
                                                sizes.iterations), flop_image, peak, ceiling),
              "batches": [], "out_of_memory_at": None}
    for batch in sizes.batches:
        try:
            row = training_run(model_config, sizes.train_px, batch, settings, device, sizes.iterations)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            result["out_of_memory_at"] = batch
            break
        finally:
            free_memory(device)
        result["batches"].append(with_rates(row, flop_image, peak, ceiling))
    result["best"] = max(result["batches"], key=lambda r: r["images_per_s"]) if result["batches"] else None
    return result


def measure_loader(sizes: Sizes, device: torch.device, batch: int, settings: TrainAccel) -> dict:
    """The restorer's data path alone, steady state: PairDataset over 16-bit PNG pairs (each worker has
    decoded and cached them in its 2 warm-up batches), DataLoader, non-blocking copies to the device."""
    warmup, batches = 2 * max(1, sizes.workers), max(20, 3 * sizes.workers)
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        rng = np.random.default_rng(0)
        for index in range(16):
            smooth = np.cumsum(np.cumsum(rng.random((sizes.loader_hq_px, sizes.loader_hq_px)), 0), 1)
            hq = (smooth / smooth.max()).astype(np.float32)
            lq = hq[::2, ::2][: sizes.loader_lq_px, : sizes.loader_lq_px]
            save_png16(Path(folder) / f"hq{index}.png", hq)
            save_png16(Path(folder) / f"lq{index}.png", lq)
            rows.append({"hq_path": f"hq{index}.png", "lq_path": f"lq{index}.png"})
        dataset = PairDataset(pd.DataFrame(rows), folder, crop_px=sizes.train_px, flip_left_right=True)
        options = gpu.loader_options(settings, device, sizes.workers)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=SeededBatches(len(dataset), batch, 0, 0, warmup + batches),
                                             **options)
        iterator = iter(loader)
        for _ in range(warmup):  # workers start, decode and cache their pairs
            next(iterator)
        synchronize(device)
        start = time.perf_counter()
        for item in iterator:
            moved = {k: v.to(device, non_blocking=True) for k, v in item.items() if torch.is_tensor(v)}
        synchronize(device)
        seconds = time.perf_counter() - start
        del iterator, loader, moved
    return {"batch": batch, "batches_timed": batches, "crop_px": sizes.train_px, "hq_px": sizes.loader_hq_px,
            "loader_options": options, "images_per_s": batch * batches / seconds}


# ------------------------------------------------------------------------------------------------
# 6-8: sampling


def ddim_samples(model: torch.nn.Module, schedule: dict, condition: torch.Tensor, steps: int) -> torch.Tensor:
    generators = [torch.Generator(device=condition.device).manual_seed(seed) for seed in range(condition.shape[0])]
    return sample(model, make_scheduler("ddim", schedule), condition, steps=steps, generator=generators)


def sampling_latency(unet: torch.nn.Module, schedule: dict, size_px: int, batch: int, graph: str, bf16: bool,
                     sizes: Sizes, device: torch.device, label: str = "") -> dict:
    """Median seconds per DDIM step (UNet call + scheduler update) over ``rounds`` runs of ``timed_steps``."""
    torch.backends.cudnn.benchmark = device.type == "cuda" and label != "as before"
    wrapped = SamplingUNet(unet, graph, bf16, "reduce-overhead", sizes.compile_backend, simulate_graph=sizes.dry_run)
    condition = torch.rand(batch, 1, size_px, size_px, device=device, generator=torch.Generator(device=device).manual_seed(0))
    free_memory(device)
    setup_s = timed(lambda: ddim_samples(wrapped, schedule, condition * 2 - 1, 2), device)  # capture / compile
    seconds = [timed(lambda: ddim_samples(wrapped, schedule, condition * 2 - 1, sizes.timed_steps), device)
               for _ in range(sizes.rounds)]
    per_step = statistics.median(seconds) / sizes.timed_steps
    wrapped.release()
    return {"size_px": size_px, "batch": batch, "graph": graph, "bf16": bf16, "label": label, "setup_s": setup_s,
            "seconds_per_step": per_step, "ms_per_step": 1e3 * per_step, "peak_memory_gib": peak_gib(device)}


def agreement(unet: torch.nn.Module, schedule: dict, size_px: int, graph: str, bf16: bool, sizes: Sizes,
              device: torch.device, reference: dict[bool, torch.Tensor]) -> dict:
    """DDIM samples of the wrapped UNet against eager ones of the same precision (batch 1, same noise)."""
    condition = torch.rand(1, 1, size_px, size_px, device=device, generator=torch.Generator(device=device).manual_seed(1)) * 2 - 1
    if bf16 not in reference:
        reference[bf16] = ddim_samples(SamplingUNet(unet, "off", bf16), schedule, condition, sizes.agreement_steps)
    wrapped = SamplingUNet(unet, graph, bf16, "reduce-overhead", sizes.compile_backend, simulate_graph=sizes.dry_run)
    got = ddim_samples(wrapped, schedule, condition, sizes.agreement_steps)
    wrapped.release()
    difference = (got - reference[bf16]).abs()
    tolerance = BF16_TOLERANCE if bf16 or graph == "compile" else FLOAT32_TOLERANCE
    within = bool((difference <= tolerance + tolerance * reference[bf16].abs()).all())
    return {"graph": graph, "bf16": bf16, "steps": sizes.agreement_steps, "size_px": size_px,
            "max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
            "tolerance": tolerance, "within_tolerance": within}


def measure_sampling(unet, plain, schedule, sizes: Sizes, device) -> dict:
    """Latency as before (``plain``: contiguous, eager, float32, no cuDNN autotuning), then ``unet``
    (``restore.accel``'s CUDA defaults) from CUDA graphs in float32 and bf16; graph vs eager agreement."""
    rows, agreements, reference = [], [], {}
    for size_px in sizes.latency_px:
        rows.append(sampling_latency(plain, schedule, size_px, 1, "off", False, sizes, device, "as before"))
        for graph, bf16 in (("off", False), ("cuda_graph", False), ("cuda_graph", True)):
            rows.append(sampling_latency(unet, schedule, size_px, 1, graph, bf16, sizes, device, "accel"))
    for graph, bf16 in (("cuda_graph", False), ("cuda_graph", True)):
        agreements.append(agreement(unet, schedule, sizes.latency_px[-1], graph, bf16, sizes, device, reference))
    return {"latency": rows, "agreement": agreements}


def measure_throughput(unet, schedule, sizes: Sizes, device) -> dict:
    """Restored DRRs per hour at 1024 px, DDIM-50 and DDIM-500, per batch; CUDA graphs, float32 and bf16."""
    rows = []
    for bf16 in (False, True):
        for batch in sizes.throughput_batches:
            try:
                row = sampling_latency(unet, schedule, sizes.throughput_px, batch, "cuda_graph", bf16, sizes, device)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
                break
            finally:
                free_memory(device)
            per_image_step = row["seconds_per_step"] / batch
            rows.append({**row, "drrs_per_hour_ddim50": 3600 / (50 * per_image_step),
                         "drrs_per_hour_ddim500": 3600 / (500 * per_image_step)})
    best = {str(bf16): max((r for r in rows if r["bf16"] == bf16), key=lambda r: r["drrs_per_hour_ddim50"], default=None)
            for bf16 in (False, True)}
    return {"rows": rows, "best": best}


def measure_sampling_compiled(unet, schedule, sizes: Sizes, device) -> dict:
    size_px = sizes.latency_px[-1]
    latency = sampling_latency(unet, schedule, size_px, 1, "compile", False, sizes, device, "accel")
    return {"latency": latency, "agreement": agreement(unet, schedule, size_px, "compile", False, sizes, device, {})}


# ------------------------------------------------------------------------------------------------
# report


def markdown(report: dict) -> str:
    """The report's figures as markdown tables (what benchmarks/results/README.md takes)."""
    lines = [f"# gpu_check: {report['device']}, torch {report['torch']}, {report.get('date', '')}", "",
             f"dense bf16 peak: {report.get('peak_tflops')} TFLOP/s ({report.get('peak_source')})", ""]
    if "matmul" in report:
        lines += [f"measured bf16 matmul ceiling ({report['matmul']['n']}^3): {report['matmul']['tflop_per_s']:.0f} TFLOP/s", ""]
    if "drr" in report:
        drr = report["drr"]
        lines += [f"projector: {drr['drrs_per_second']:.1f} DRRs/s at {drr['size_px']} px, batch {drr['batch']}", ""]
    if "cuda_tests" in report:
        lines += [f"CUDA tests: {report['cuda_tests']['summary']} (exit {report['cuda_tests']['exit_code']})", ""]

    def pct(value):
        return "-" if value is None else f"{value:.1f} %"

    training = [("before (no accel)", report["training"]["before"])] if "training" in report else []
    training += [("eager + accel", row) for row in report.get("training", {}).get("batches", [])]
    training += [(f"compiled ({report['training_compiled']['settings']['compile']})", report["training_compiled"])] \
        if "training_compiled" in report and "images_per_s" in report.get("training_compiled", {}) else []
    if training:
        lines += ["| training, px | batch | images/s | TFLOP/s | % of dense bf16 peak | % of measured matmul | peak GiB | first step s |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in training:
            lines.append(f"| {name}, {row['size_px']} | {row['batch']} | {row['images_per_s']:.1f} | "
                         f"{row['achieved_tflop_per_s']:.1f} | {pct(row['percent_of_datasheet_peak'])} | "
                         f"{pct(row['percent_of_measured_matmul'])} | {row['peak_memory_gib'] or 0:.1f} | {row['first_step_s']:.1f} |")
        if report["training"].get("out_of_memory_at"):
            lines.append(f"\nbatch {report['training']['out_of_memory_at']} did not fit (eager).")
        lines.append("")
    if "loader" in report:
        loader = report["loader"]
        lines += [f"data loader alone: {loader['images_per_s']:.0f} images/s ({loader['crop_px']} px crops of "
                  f"{loader['hq_px']} px PNG pairs, batch {loader['batch']}, {loader['loader_options']})", ""]
    latency = list(report.get("sampling", {}).get("latency", []))
    latency += [report["sampling_compiled"]["latency"]] if "latency" in report.get("sampling_compiled", {}) else []
    if latency:
        lines += ["| sampling, batch 1 | px | ms per DDIM step | set-up s |", "|---|---|---|---|"]
        for row in latency:
            lines.append(f"| {row['label']}: {row['graph']}{' bf16' if row['bf16'] else ' fp32'} | {row['size_px']} | "
                         f"{row['ms_per_step']:.2f} | {row['setup_s']:.1f} |")
        lines.append("")
    agreements = list(report.get("sampling", {}).get("agreement", []))
    agreements += [report["sampling_compiled"]["agreement"]] if "agreement" in report.get("sampling_compiled", {}) else []
    if agreements:
        lines += ["| agreement with eager (same precision) | px | DDIM steps | max abs diff | mean abs diff | tolerance | within |",
                  "|---|---|---|---|---|---|---|"]
        for row in agreements:
            lines.append(f"| {row['graph']}{' bf16' if row['bf16'] else ' fp32'} | {row['size_px']} | {row['steps']} | "
                         f"{row['max_abs_difference']:.2e} | {row['mean_abs_difference']:.2e} | {row['tolerance']} | {row['within_tolerance']} |")
        lines.append("")
    if "throughput" in report:
        lines += ["| throughput, CUDA graphs | px | batch | ms per step | DRRs/hour DDIM-50 | DRRs/hour DDIM-500 |",
                  "|---|---|---|---|---|---|"]
        for row in report["throughput"]["rows"]:
            lines.append(f"| {'bf16' if row['bf16'] else 'fp32'} | {row['size_px']} | {row['batch']} | {row['ms_per_step']:.1f} | "
                         f"{row['drrs_per_hour_ddim50']:.0f} | {row['drrs_per_hour_ddim500']:.0f} |")
        lines.append("")
    errors = {name: part["error"] for name, part in report.items() if isinstance(part, dict) and "error" in part}
    lines += [f"**{name} failed**: `{error.strip().splitlines()[-1] if error.strip() else error}`" for name, error in errors.items()]
    lines.append(f"\nwall time {report.get('wall_seconds', 0):.0f} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON report; the markdown table goes beside it (.md)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks every code path, measures nothing")
    parser.add_argument("--profile", default="paper", help="profile whose restorer UNet is measured")
    parser.add_argument("--train-px", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 24, 32, 48, 64],
                        help="training batches tried in order, up to the first that does not fit")
    parser.add_argument("--train-compile", default="default", choices=gpu.COMPILE_MODES,
                        help="torch.compile mode of the compiled training step")
    parser.add_argument("--throughput-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--iterations", type=int, default=5, help="timed training steps per batch")
    parser.add_argument("--timed-steps", type=int, default=10, help="DDIM steps per timed sampling run")
    parser.add_argument("--workers", type=int, default=8, help="data loader workers (the paper profile's num_workers)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of an unlisted device")
    parser.add_argument("--skip", nargs="*", default=[], help="parts not to run (names as in the report)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or use --dry-run")
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = Sizes(args.dry_run, args)
    profile = "smoke" if args.dry_run else args.profile
    checked = check_params(profile_params(profile, ROOT))
    section = checked["restorer"]
    model_config = restorer_model_config(restorer_settings(section, section.train_configs[0]), checked["pairs"].scale)
    schedule = model_config["schedule"]
    settings = TrainAccel(on_cpu=args.dry_run, compile_backend=sizes.compile_backend)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    peak, peak_source = datasheet_peak(device_name, args.peak_tflops)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": device_name, "torch": torch.__version__, "dry_run": args.dry_run, "profile": profile,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "unet": model_config["unet"],
        "parameters": sum(p.numel() for p in build_unet(model_config["unet"]).parameters()),
        "schedule": schedule, "peak_tflops": peak, "peak_source": peak_source,
        "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None}
    plain = build_unet(model_config["unet"]).to(device).eval()
    unet = gpu.prepare_model(copy.deepcopy(plain), gpu.SamplingAccel(on_cpu=args.dry_run), device)

    def best_batch() -> int:
        best = report.get("training", {}).get("best")
        return best["batch"] if best else sizes.batches[0]

    def compiled_training() -> dict:
        compiled = TrainAccel(on_cpu=args.dry_run, compile=args.train_compile, compile_backend=sizes.compile_backend)
        row = training_run(model_config, sizes.train_px, best_batch(), compiled, device, sizes.iterations)
        return with_rates(row, report["training"]["flop_per_image"], peak, report.get("matmul", {}).get("tflop_per_s"))

    parts: dict[str, Callable[[], dict]] = {
        "drr": lambda: drrs_per_second("cpu", 128, 2, shape=(64, 64, 32)) if args.dry_run else drrs_per_second("cuda", 512, 16),
        "matmul": lambda: matmul_ceiling(device, sizes.matmul_n),
        "training": lambda: measure_training(model_config, sizes, device, settings, peak,
                                             report.get("matmul", {}).get("tflop_per_s")),
        "loader": lambda: measure_loader(sizes, device, best_batch(), settings),
        "sampling": lambda: measure_sampling(unet, plain, schedule, sizes, device),
        "throughput": lambda: measure_throughput(unet, schedule, sizes, device),
        "cuda_tests": run_cuda_tests,
        "sampling_compiled": lambda: measure_sampling_compiled(unet, schedule, sizes, device),
        "training_compiled": compiled_training,
    }
    out = Path(args.out)
    for name, measure in parts.items():  # the report is rewritten after each part: a time-out keeps what ran
        if name in args.skip:
            continue
        part_started = time.perf_counter()
        try:
            report[name] = measure()
        except Exception as error:  # noqa: BLE001  one part's failure must not lose the others
            import traceback

            report[name] = {"error": traceback.format_exc()[-3000:]}
            print(f"{name} failed: {error}", file=sys.stderr)
        finally:
            free_memory(device)
        report[name]["part_seconds"] = time.perf_counter() - part_started
        report["wall_seconds"] = time.perf_counter() - started
        write_json_atomic(out, report)
        write_text_atomic(out.with_suffix(".md"), markdown(report))
        print(f"{name}: {report[name]['part_seconds']:.1f} s", file=sys.stderr, flush=True)
    print(markdown(report))
    if any(isinstance(part, dict) and "error" in part for part in report.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

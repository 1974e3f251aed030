"""One-GPU check: the CUDA tests, restorer throughput, sampling latency and DRRs per second, as JSON.

    python benchmarks/gpu_check.py --out gpu_check.json            # on a CUDA machine (about 3-5 min)
    python benchmarks/gpu_check.py --dry-run --out /tmp/check.json # anywhere: tiny sizes on the CPU

On CUDA it runs (1) the tests marked ``cuda``, (2) ``bench_diffusion.py`` with the paper profile's
restorer UNet: training images/s and achieved bf16 TFLOP/s at 256 and 512 px, sampling latency
per image at 512 px for DDPM-1000, DDIM-50 and DPM-Solver-20 (timed on ``--timed-steps`` steps,
extrapolated linearly: each step is one UNet call), and (3) xrlib's projector on a volume with the
example CT's grid (512 x 512 x 133 voxels of 0.70 x 0.70 x 2.5 mm): PA DRRs per second at 512 px
for a batch of 16 perturbed poses. The dry run checks the same code paths at toy sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xrlib.drr.geometry import chest_geometry, random_pose  # noqa: E402
from xrlib.drr.projector import ConeBeamProjector  # noqa: E402
from xrlib.io import write_json_atomic  # noqa: E402
from xrlib.profiles import profile_params  # noqa: E402

EXAMPLE_CT_SHAPE = (512, 512, 133)
EXAMPLE_CT_SPACING_MM = (0.703125, 0.703125, 2.5)


def run_cuda_tests() -> dict:
    """The tests marked cuda, in their own process; returns pytest's summary line and exit code."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                             "tests/test_cuda.py", "tests/test_drr_projector.py"],
                            cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {"exit_code": result.returncode, "summary": lines[-1] if lines else result.stderr[-500:]}


def run_restorer_bench(profile: str, device: str, sizes: list[int], timed_steps: int, batch: int) -> dict:
    """bench_diffusion.py on the profile's restorer UNet; returns its JSON report."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(profile_params(profile, ROOT), handle)
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_diffusion.py"), "--device", device, "--params",
               handle.name, "--sizes", *map(str, sizes), "--train-batch", str(batch), "--timed-steps", str(timed_steps),
               "--implementations", "xrlib"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where the JSON report goes")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script, measures nothing")
    parser.add_argument("--profile", default="paper", help="profile whose restorer UNet is benchmarked")
    parser.add_argument("--timed-steps", type=int, default=10, help="denoising steps timed per sampler")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or use --dry-run")
    device = "cpu" if args.dry_run else "cuda"
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "dry_run": args.dry_run}
    parts = {
        "drr": lambda: drrs_per_second("cpu", 128, 2, shape=(64, 64, 32)) if args.dry_run else drrs_per_second("cuda", 512, 16),
        "cuda_tests": run_cuda_tests,
        "restorer": lambda: run_restorer_bench("smoke", "cpu", [32], 1, 2) if args.dry_run
        else run_restorer_bench(args.profile, "cuda", [256, 512], args.timed_steps, 8),
    }
    for name, measure in parts.items():  # the report is rewritten after each part: a time-out keeps what ran
        report[name] = measure()
        report["wall_seconds"] = time.perf_counter() - started
        write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

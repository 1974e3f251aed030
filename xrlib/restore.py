"""``xrlib restore``: anyone's DRRs restored by a trained restorer, one PNG and one JSON record per input.

Inputs, each read into display intensity in [0, 1] with bright = attenuating:

- PNG, 8- or 16-bit greyscale of any size and aspect (:func:`xrlib.io.load_png`). A colour PNG is
  refused; grey stored as RGB(A) or a palette is accepted only where every pixel's R, G and B are
  equal (it is grey), since averaging real colour would invent a radiograph.
- ``.npy`` line integrals ``-ln(I/I0)`` (as 01_drr writes them): windowed in the log domain as 01
  windows its DRRs (:mod:`xrlib.drr.display`, without a lung region: over the body), with the
  released model's unsharp amount.
- DICOM (MONOCHROME1 or 2; modality and VOI LUTs applied, :func:`xrlib.data.xray.read_dicom_xray`).

Every input is read before anything is restored, and all unreadable ones are named in one error.
Each is resized (antialiased) so that its longer side is ``input_px`` (default: what the release
used in 05_restore), restored by :func:`xrlib.models.restorer.restore` (the pipeline's own entry
point, so the restorer's formulation is the pipeline's) at ``scale`` times that size, and written to
``DIR/<stem>.png`` (16-bit, same orientation) with ``DIR/<stem>.json``: the weights' SHA-256, the
process (InDI: ``steps`` steps from the input; diffusion: ``sampler`` in ``steps`` steps, ``strength``),
seed (and the image's own seed, from the seed and the stem, so an output does not depend on the
other inputs), input file SHA-256, and the input, restorer-input and output sizes. Steps and sampler
default to those 05_restore restored DRRs with (the release records them; InDI steps as 05 chose them on
validation pairs for DRRs, ``usage.test_pair_steps`` being the quality table's). A bare weights file records
none: it takes 20 steps at each input's own size unless told, with a warning.
Images of one size are batched (a batch of ``batch_size``, default 8 on a GPU and 1 on a CPU).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

import xrlib
from xrlib.data.pairs import resize_bicubic
from xrlib.data.xray import read_dicom_xray, read_png_xray
from xrlib.drr.display import display_window, to_display
from xrlib.errors import CheckpointError, ConfigError, DataError, XRLibError
from xrlib.eval.checks import CHECK_COLUMNS
from xrlib.eval.realism import high_frequency_power_fraction, low_pass_correlation
from xrlib.io import load_png, save_png16, sha256_file, write_json_atomic
from xrlib.models.checkpoint import read_config
from xrlib.models.released import load_released, release_folder
from xrlib.models.restorer import image_seed, restore
from xrlib.models.sampling import diffusion_process
from xrlib.models.training import select_device

INPUT_SUFFIXES = (".png", ".npy", ".dcm", ".dicom")
DEFAULT_USAGE = {"sampler": "ddim", "steps": 20, "strength": 1.0, "input_px": None, "display_unsharp_amount": 0.0}
"""Sampling settings for a weights file given by path (a release states its own)."""


# ----------------------------------------------------------------------------------------------
# Reading inputs


def refuse_colour(path: str | os.PathLike) -> None:
    """A DataError for a PNG whose pixels are not grey (R, G and B differ somewhere); grey stored as colour passes."""
    with Image.open(path) as image:
        if image.mode not in ("RGB", "RGBA", "P", "PA"):
            return
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    spread = int(np.abs(rgb - rgb[..., :1]).max())
    if spread:
        raise DataError(f"{path}: a colour image (R, G and B differ by up to {spread} levels); xrlib restore takes "
                        "greyscale radiographs: save it as 8- or 16-bit greyscale")


def read_line_integrals(path: str | os.PathLike, unsharp_amount: float = 0.0) -> np.ndarray:
    """A ``.npy`` of line integrals (H, W) as a display image, windowed as 01_drr windows DRRs (over the body)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from error
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: line integrals must be one 2-D numeric image, got {array.dtype} of shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: {int((~np.isfinite(array)).sum())} line integrals are NaN or infinite")
    values = torch.from_numpy(array.astype(np.float32))
    return to_display(values, display_window(values, unsharp_amount=float(unsharp_amount))).numpy()


def read_input(path: str | os.PathLike, unsharp_amount: float = 0.0) -> tuple[np.ndarray, str]:
    """One input as (display image (H, W) float32 in [0, 1], bright = attenuating; its format)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if suffix == ".png":
        try:
            refuse_colour(path)
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{path}: not a readable PNG ({error})") from error
        return read_png_xray(path).display, "png"
    if suffix == ".npy":
        return read_line_integrals(path, unsharp_amount), "line_integrals"
    if suffix in (".dcm", ".dicom"):
        return read_dicom_xray(path).display, "dicom"
    raise DataError(f"{path}: unknown input format '{suffix}'; give PNG, .npy line integrals or DICOM (.dcm)")


def read_inputs(paths: Sequence[str | os.PathLike], unsharp_amount: float = 0.0) -> dict[str, dict[str, Any]]:
    """Every input by its stem; one DataError naming every unreadable input and every repeated stem."""
    loaded, problems = {}, []
    for path in map(Path, paths):
        if path.stem in loaded:
            problems.append(f"{path}: its name repeats {loaded[path.stem]['path']} (outputs are named by stem)")
            continue
        try:
            display, kind = read_input(path, unsharp_amount)
        except XRLibError as error:
            problems.append(str(error))
            continue
        loaded[path.stem] = {"path": path, "display": display, "format": kind}
    if problems:
        raise DataError(f"{len(problems)} of {len(paths)} inputs cannot be restored:\n  " + "\n  ".join(problems))
    return loaded


# ----------------------------------------------------------------------------------------------
# The weights


@dataclass
class Restorer:
    """A restorer ready to sample: model, config, the weights' SHA-256 and origin, its sampling defaults."""

    model: torch.nn.Module
    config: dict[str, Any]
    sha256: str
    source: str
    usage: dict[str, Any]
    usage_recorded: bool = True
    """False for a bare weights file: ``usage`` is :data:`DEFAULT_USAGE`, not what its run restored with."""


def check_restorer_config(path: Path, config: Mapping[str, Any]) -> None:
    """A ConfigError unless ``config`` is a restorer's: a conditional UNet with a scale and no mask channel."""
    unet = config.get("unet", {})
    if "scale" not in config or int(unet.get("condition_channels", 0)) < 1:
        what = "MUNIT generators" if "munit" in config else "an unconditional DDPM (DDPM-LQ?)" if unet else "no diffusion model"
        raise CheckpointError(f"{path}: holds {what}, not a restorer (no scale or condition channel); "
                              "give a restorer's weights (outputs/04_restorer/<config>/restorer_ema.safetensors)")
    if int(unet["condition_channels"]) != 1:
        raise CheckpointError(f"{path}: a restorer with a nodule-mask channel; xrlib restore has no masks to give it: "
                              "use a restorer trained without mask_channel")


def load_restorer(weights: str = "released", device: str | torch.device = "cpu", root: Path | None = None) -> Restorer:
    """``released`` (the release's default restorer), ``released:NAME``, a release folder, or a safetensors file."""
    from xrlib.models.unet import load_model

    if weights == "released" or weights.startswith("released:"):
        folder, name = release_folder(root), weights.partition(":")[2] or None
    elif Path(weights).is_dir():
        folder, name = Path(weights), None
    else:
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such weights file; give a restorer's .safetensors, a release folder, or 'released'")
        check_restorer_config(path, read_config(path))
        model, config = load_model(path, device=device)
        return Restorer(model, config, sha256_file(path), str(path), dict(DEFAULT_USAGE), usage_recorded=False)
    model, config, entry = load_released(name, folder, device)
    check_restorer_config(folder / entry["file"], config)
    return Restorer(model, config, entry["sha256"], f"{folder.name}/{entry['file']}", {**DEFAULT_USAGE, **entry.get("usage", {})})


def pick_device(name: str) -> torch.device:
    """auto (CUDA, MPS or CPU), cpu or cuda; a clear error for cuda without a GPU."""
    if name == "auto":
        return select_device("auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU here; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: use auto, cpu or cuda")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------
# Restoring


def _resized(display: np.ndarray, input_px: int | None) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32))[None, None]
    if input_px is None:
        return image
    ratio = input_px / max(image.shape[-2:])
    return resize_bicubic(image, (max(1, round(image.shape[-2] * ratio)), max(1, round(image.shape[-1] * ratio))))


def restore_paths(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    weights: str = "released",
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    input_px: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """Restore ``paths`` into ``out_dir`` (see the module); returns the JSON records written, in input order.

    ``sampler``, ``steps`` and ``input_px`` default to the release's own (those 05_restore used).
    """
    if not paths:
        raise ConfigError("no inputs: name one or more PNG, .npy or DICOM files")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps}: must be at least 1")
    if input_px is not None and input_px < 8:
        raise ConfigError(f"--input-px {input_px}: must be at least 8")
    where = pick_device(device)
    restorer = load_restorer(weights, where, root)
    usage = restorer.usage
    if not restorer.usage_recorded and (steps is None or input_px is None):
        defaults = ([f"--steps {usage['steps']}"] if steps is None else []) + (["each input at its own size"] if input_px is None else [])
        warnings.warn(f"{restorer.source}: a weights file records no sampling settings; using {' and '.join(defaults)}. "
                      "Pass what its run used (its outputs/05_restore/chosen_steps.json and restore.input_px) "
                      "or give a release folder", stacklevel=2)
    sampler, steps = sampler or usage["sampler"], int(steps or usage["steps"])
    input_px = input_px or usage.get("input_px")
    strength = float(usage.get("strength", 1.0))
    process = diffusion_process(restorer.config["schedule"])  # InDI: steps from the input; no sampler, no strength
    inputs = read_inputs(paths, float(usage.get("display_unsharp_amount") or 0.0))
    batch_size = batch_size or (8 if where.type == "cuda" else 1)
    out_dir = Path(out_dir)
    by_size: dict[tuple[int, int], list[str]] = {}
    for stem, item in inputs.items():
        item["image"] = _resized(item["display"], input_px)
        by_size.setdefault(tuple(item["image"].shape[-2:]), []).append(stem)
    records = {}
    with tqdm(total=len(inputs), disable=not progress, desc="restore", unit="image") as bar:
        for stems in by_size.values():
            for start in range(0, len(stems), batch_size):
                chunk = stems[start:start + batch_size]
                batch = torch.cat([inputs[s]["image"] for s in chunk]).to(where)
                seeds = [image_seed(seed, s) for s in chunk]
                generators = [torch.Generator(device=where).manual_seed(s) for s in seeds]
                restored = restore(restorer.model, restorer.config, batch, sampler, steps, generators, strength=strength,
                                   keep_air=True)
                for stem, image, own_seed in zip(chunk, restored.float().cpu().numpy(), seeds):
                    item = inputs[stem]
                    written = save_png16(out_dir / f"{stem}.png", image[0])
                    records[stem] = {
                        "input": str(item["path"]), "input_format": item["format"],
                        "input_sha256": sha256_file(item["path"]), "input_size": list(item["display"].shape),
                        "restorer_input_size": list(item["image"].shape[-2:]), "output_size": list(image[0].shape),
                        "output": written.name, "weights": restorer.source, "weights_sha256": restorer.sha256,
                        "process": process, "sampler": sampler if process == "diffusion" else None, "steps": steps,
                        "strength": strength if process == "diffusion" else None, "seed": seed, "image_seed": own_seed,
                        "scale": int(restorer.config["scale"]), "device": where.type, "xrlib": xrlib.__version__,
                    }
                    if item["format"] == "line_integrals":
                        records[stem]["display_unsharp_amount"] = float(usage.get("display_unsharp_amount") or 0.0)
                    write_json_atomic(out_dir / f"{stem}.json", records[stem])
                bar.update(len(chunk))
    return [records[stem] for stem in inputs]


# ----------------------------------------------------------------------------------------------
# Checking a restored DRR pair (with and without a nodule), as issue 12's acceptance test does

PAIR_BARS = {"high_frequency_fraction": (1e-4, 5e-4), "low_pass_correlation": 0.9, "nodule_contrast_kept": 0.5}
"""Real PA chest X-rays have a high-frequency power fraction of 2.0-2.6e-4 (raw DRRs about 4e-6)."""


def nodule_core(difference: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """The nodule's core in a with-minus-without difference image: where its Gaussian-smoothed version
    (``sigma_px``) exceeds half its maximum, in the connected region holding that maximum.

    Smoothing and connectivity keep it on the nodule when the two renders carry independent
    quantum noise, whose isolated peaks would otherwise count as "nodule" all over the image.
    """
    smoothed = ndimage.gaussian_filter(difference.astype(np.float64), sigma_px)
    labels, _ = ndimage.label(smoothed > 0.5 * smoothed.max())
    return labels == labels[np.unravel_index(np.argmax(smoothed), smoothed.shape)]


def pair_checks(with_nodule: np.ndarray, without_nodule: np.ndarray, restored_with: np.ndarray,
                restored_without: np.ndarray, grid_px: int = 256, sigma_px: float = 4.0) -> pd.DataFrame:
    """Does a restored DRR pair look like an X-ray, keep its anatomy and its nodule? Rows :data:`CHECK_COLUMNS`.

    Every image is brought to one grid (longer side ``grid_px``). 1) the restored DRR's high-frequency
    power fraction (above 0.25 cycles/px) lies in the real-film range of :data:`PAIR_BARS`; 2) its
    Gaussian low-pass (``sigma_px``) correlates with the input's; 3) the nodule's local contrast, the
    mean of (with minus without) over the nodule core (:func:`nodule_core`), is kept by the
    restoration to at least the bar's fraction.
    """
    images = [np.asarray(a, dtype=np.float32) for a in (with_nodule, without_nodule, restored_with, restored_without)]
    aspects = [a.shape[0] / a.shape[1] for a in images]
    if max(aspects) > 1.02 * min(aspects):
        raise DataError(f"the pair's images differ in aspect: {[a.shape for a in images]}; give the inputs and their restorations")
    height, width = _resized(images[0], grid_px).shape[-2:]
    inputs, outputs = [[resize_bicubic(torch.from_numpy(a)[None, None], (height, width)) for a in pair]
                       for pair in (images[:2], images[2:])]
    difference_in = (inputs[0] - inputs[1])[0, 0].numpy()
    difference_out = (outputs[0] - outputs[1])[0, 0].numpy()
    if difference_in.max() <= 0:
        raise DataError("the DRRs with and without the nodule do not differ (or the nodule is darker): no nodule to check")
    core = nodule_core(difference_in)
    fraction = float(high_frequency_power_fraction(outputs[0])[0])
    correlation = float(low_pass_correlation(outputs[0], inputs[0], sigma_px)[0])
    kept = float(difference_out[core].mean() / difference_in[core].mean())
    low, high = PAIR_BARS["high_frequency_fraction"]
    rows = [("restored DRR's high-frequency power fraction (real PA films 2.0-2.6e-4)", fraction, f"{low:g} to {high:g}",
             low <= fraction <= high),
            (f"low-pass correlation with the input (sigma {sigma_px:g} px at {grid_px} px)", correlation,
             f">= {PAIR_BARS['low_pass_correlation']}", correlation >= PAIR_BARS["low_pass_correlation"]),
            (f"nodule's local contrast kept (with minus without, over {int(core.sum())} core px)", kept,
             f">= {PAIR_BARS['nodule_contrast_kept']}", kept >= PAIR_BARS["nodule_contrast_kept"])]
    return pd.DataFrame([dict(zip(CHECK_COLUMNS, (check, "restored_drr", value, bar, bool(passed))))
                         for check, value, bar, passed in rows], columns=list(CHECK_COLUMNS))


def check_restored_pair(records: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> pd.DataFrame:
    """:func:`pair_checks` of two restored inputs (with the nodule first), written to ``out_dir/pair_checks.json``."""
    if len(records) != 2:
        raise ConfigError(f"--check-pair takes two inputs, the DRR with the nodule and without it; got {len(records)}")
    inputs = [read_input(r["input"], r.get("display_unsharp_amount", 0.0))[0] for r in records]
    outputs = [load_png(Path(out_dir) / r["output"]) for r in records]
    table = pair_checks(*inputs, *outputs)
    write_json_atomic(Path(out_dir) / "pair_checks.json", {"with_nodule": records[0]["input"], "without_nodule": records[1]["input"],
                                                           "passed": int(table.passed.sum()), "checks": len(table),
                                                           "rows": table.to_dict(orient="records")})
    return table

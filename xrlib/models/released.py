"""Released models read back: ``models/manifest.json`` and its weights, each checked before use.

A release (made by :mod:`xrlib.models.release`) is ``models/<name>.safetensors`` plus a manifest
with each file's SHA-256 and the config that rebuilds it. :func:`load_released` builds a model from
it; :func:`initial_weights` gives a training run the file it starts from (``train.init_weights``).
Both check the SHA-256 against the manifest and refuse a file made for another architecture, naming
the file and what differs. Nothing here names a pipeline path: training stages can read a release
without depending on the stages a release is made from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

import xrlib
from xrlib.errors import ChecksumError, CheckpointError, ConfigError
from xrlib.io import sha256_file
from xrlib.models.checkpoint import load_weights, read_config
from xrlib.paths import project_root

RELEASE_FOLDER = "models"

MANIFEST_NAME = "manifest.json"

MANIFEST_FORMAT = 1

KINDS = ("restorer", "ddpm_lq", "munit")

MAKE_COMMAND = "xrlib exp {profile} && xrlib release --profile {profile}"
"""How a release is rebuilt from scratch: the seeded pipeline run, then the export."""


def release_folder(root: Path | None = None) -> Path:
    """``models/`` under the project root: the given one, else the working directory's (or ``XRLIB_ROOT``), else
    the clone xrlib itself is installed from (so ``xrlib restore`` works from any folder)."""
    if root is not None:
        return Path(root) / RELEASE_FOLDER
    try:
        return project_root() / RELEASE_FOLDER
    except ConfigError:
        clone = Path(xrlib.__file__).resolve().parents[1]
        if (clone / "dvc.yaml").is_file():
            return clone / RELEASE_FOLDER
        raise ConfigError("no released weights to find: xrlib is not installed from a clone of the compendium and the "
                          "working directory is not inside one; run from the clone, set XRLIB_ROOT, or pass --weights PATH") from None


def build_model(kind: str, config: Mapping[str, Any]) -> torch.nn.Module:
    """An untrained model of ``kind`` (restorer, ddpm_lq: a diffusion UNet; munit: a MUNIT)."""
    if kind in ("restorer", "ddpm_lq"):
        from xrlib.models.unet import build_unet

        return build_unet(config["unet"])
    if kind == "munit":
        from xrlib.models.munit import Munit, MunitConfig

        return Munit(MunitConfig(**config["munit"]))
    raise ConfigError(f"unknown released model kind '{kind}'; kinds are {', '.join(KINDS)}")


def released_part(kind: str, model: torch.nn.Module) -> torch.nn.Module:
    """What a released file holds of ``model``: all of a UNet; MUNIT's two generators, not its discriminators."""
    if kind == "munit":
        return torch.nn.ModuleDict({"gen_a": model.gen_a, "gen_b": model.gen_b})
    return model


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    """``models/manifest.json``; a clear error saying how to make it when there is none."""
    folder = Path(folder) if folder else release_folder()
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"no released weights: {path} is missing. Make them from a finished run: "
                              f"`{MAKE_COMMAND.format(profile='real-data')}`, or pass --weights PATH")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path}: not JSON ({error}); restore it (git checkout {RELEASE_FOLDER}/)") from error
    if manifest.get("format") != MANIFEST_FORMAT or "models" not in manifest:
        raise CheckpointError(f"{path}: manifest format {manifest.get('format')!r}, this xrlib reads {MANIFEST_FORMAT}")
    return manifest


INIT_PREFIX = "released:"


def initial_weights(spec: str, root: Path | None = None) -> tuple[Path, str]:
    """The weights a training run starts from: ``released:NAME`` (model NAME of ``models/manifest.json``, its
    SHA-256 checked against the manifest) or a safetensors path (relative to the project root). Returns
    the file and its SHA-256, which joins the run's identity (other start weights, another run)."""
    root = Path(root) if root else project_root()
    if spec.startswith(INIT_PREFIX):
        name = spec[len(INIT_PREFIX):]
        folder = release_folder(root)
        manifest = read_manifest(folder)
        if name not in manifest["models"]:
            raise CheckpointError(f"init_weights '{spec}': no released model '{name}'; released: {', '.join(manifest['models'])}")
        path, expected = folder / manifest["models"][name]["file"], manifest["models"][name]["sha256"]
    else:
        path, expected = root / spec, None
    if not path.is_file():
        raise CheckpointError(f"init_weights '{spec}': {path} is missing; fix the setting or restore the file")
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise ChecksumError(f"init_weights '{spec}': {path} has SHA-256 {digest[:12]}..., the manifest says "
                            f"{expected[:12]}...; restore it (git checkout {RELEASE_FOLDER}/)")
    return path, digest


def load_released(name: str | None = None, folder: Path | None = None,
                  device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Model ``name`` of the release in ``folder`` (default ``models/``; name default: the default restorer).

    Returns (model in eval mode, its config, its manifest entry). The file's SHA-256 must equal the
    manifest's, its stored config the manifest's, and its tensors the architecture's (names and shapes).
    """
    folder = Path(folder) if folder else release_folder()
    manifest = read_manifest(folder)
    name = name or manifest.get("default_restorer")
    if name is None:
        raise CheckpointError(f"{folder / MANIFEST_NAME}: the release holds no restorer (only {', '.join(manifest['models'])}); "
                              "name a model, or release a restorer")
    if name not in manifest["models"]:
        raise CheckpointError(f"{folder / MANIFEST_NAME}: no released model '{name}'; released: "
                              f"{', '.join(manifest['models'])}")
    entry = manifest["models"][name]
    path = folder / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, though the manifest lists it; restore it (git checkout {RELEASE_FOLDER}/) "
                              "or make the release again")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ChecksumError(f"{path}: SHA-256 {digest[:12]}... differs from the manifest's {entry['sha256'][:12]}...; "
                            f"the file was altered or belongs to another release: restore it (git checkout {RELEASE_FOLDER}/)")
    stored = read_config(path)
    if stored != entry["config"]:
        differing = sorted(k for k in set(stored) | set(entry["config"]) if stored.get(k) != entry["config"].get(k))
        raise CheckpointError(f"{path}: made for another architecture than the manifest states (differs in "
                              f"{', '.join(differing)}); restore the file or make the release again")
    model = build_model(entry["kind"], entry["config"])
    load_weights(path, released_part(entry["kind"], model), entry["config"])
    return model.to(device).eval(), entry["config"], entry

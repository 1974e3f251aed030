"""Making a release: the weights of a finished run exported under ``models/``, with a manifest.

``xrlib release --profile NAME`` (:func:`make_release`) exports, from the checkpoints a finished
run of profile NAME left under ``outputs/`` (:mod:`xrlib.stages` names where), the EMA weights of
every restorer in ``restore.configs``, the DDPM-LQ UNet and the MUNIT generators::

    models/<name>.safetensors   one file per model; its architecture config in the safetensors metadata
    models/manifest.json        SHA-256 and size of each file, the config that rebuilds it, the
                                command and profile that made it, steps, training time and machine
                                (as the checkpoint recorded them), the training data with licences
                                and citations (from the dataset registry), and the run's metrics

All of ``models/`` is at most :data:`MAX_RELEASE_BYTES` (50 MB): a larger release is refused before
anything under ``models/`` changes. Files are written under temporary names and renamed; the
manifest comes last. :func:`xrlib.models.released.load_released` checks a file's SHA-256 against the manifest and refuses
a file made for another architecture (its config, or its tensors: missing, surplus or of another
shape), naming the file and what differs. Nothing in a weights file can run code (safetensors).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import xrlib
from xrlib import stages
from xrlib.data.registry import REGISTRY, DatasetEntry
from xrlib.errors import CheckpointError, ConfigError
from xrlib.io import sha256_file, write_json_atomic
from xrlib.models.checkpoint import TRAINING_STATE, latest_checkpoint, load_weights, verify_checkpoint
from xrlib.models.training import RUN_IDENTITY, TrainConfig
from xrlib.params import check_params, parse
from xrlib.paths import project_root
from xrlib.models.released import (MAKE_COMMAND, MANIFEST_FORMAT, MANIFEST_NAME, RELEASE_FOLDER, build_model,
                                   release_folder, released_part)

MAX_RELEASE_BYTES = 50 * 1000 * 1000
"""The most that all of ``models/`` may hold (50 MB), so a clone stays small."""
DDPM_LQ_NAME, MUNIT_NAME = "ddpm_lq", "munit_lq"
def _json(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------------
# The finished run behind a model


def _training_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = torch.load(checkpoint / TRAINING_STATE, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, FileNotFoundError ...
        raise CheckpointError(f"{checkpoint / TRAINING_STATE}: unreadable ({type(error).__name__}: {error})") from error
    return {"step": int(state["step"]), "extra": json.loads(state.get("extra_json", "{}"))}


def finished_run(checkpoints_root: str | os.PathLike, model_config: Mapping[str, Any], settings: Mapping[str, Any],
                 steps: int, what: str, profile: str) -> dict[str, Any]:
    """The newest checkpoint of the runs under ``checkpoints_root`` made with ``model_config`` and ``settings``
    (the training settings a run's identity records, every one given here must be equal).

    It must have reached ``steps`` (the profile's total) and pass its checksums. Returns
    ``{"checkpoint", "step", "extra"}`` (extra: the training time and machine the run recorded).
    """
    root = Path(checkpoints_root)
    wanted, wanted_settings = _json(dict(model_config)), _json(dict(settings))
    candidates = []
    for identity_file in sorted(root.glob(f"*/{RUN_IDENTITY}")):
        identity = json.loads(identity_file.read_text())
        recorded = identity.get("settings", {})
        if identity.get("model") == wanted and all(recorded.get(k) == v for k, v in wanted_settings.items()):
            found = latest_checkpoint(identity_file.parent)
            if found is not None:
                candidates.append(found)
    if not candidates:
        raise CheckpointError(f"{what}: no checkpoint of this architecture and these training settings under {root}; "
                              f"train profile '{profile}' first: `xrlib exp {profile}`")
    checkpoint = max(candidates, key=lambda folder: (folder / TRAINING_STATE).stat().st_mtime)
    verify_checkpoint(checkpoint)
    state = _training_state(checkpoint)
    if state["step"] != steps:
        raise CheckpointError(f"{what}: its run ({checkpoint}) stopped at step {state['step']} of {steps}; finish "
                              f"it (`xrlib exp {profile}` resumes it) before releasing")
    return {"checkpoint": checkpoint, **state}


# ----------------------------------------------------------------------------------------------
# Building and loading each kind of model


def _run_settings(train: TrainConfig) -> dict[str, Any]:
    """The training settings a diffusion run's identity records (all but the data size)."""
    return {k: v for k, v in train.fingerprint(0).items() if k != "n_items"}


def _export(module: torch.nn.Module, path: Path, config: Mapping[str, Any]) -> Path:
    from xrlib.models.unet import export_weights

    return export_weights(module, path, config)


def export_restorer(settings: Mapping[str, Any], name: str, profile: str, root: Path, folder: Path) -> dict[str, Any]:
    """Restorer configuration ``name``'s EMA weights from its finished run, written to ``folder``."""
    from xrlib.models.restorer import restorer_model_config, restorer_settings

    config_settings = restorer_settings(settings["restorer"], name)
    config = restorer_model_config(config_settings, settings["pairs"].scale)
    checkpoints = stages.path("04_restorer.run", root=root, config=name) / "checkpoints"
    train = parse(TrainConfig, config_settings["train"], f"restorer.configs.{name}.train")
    run = finished_run(checkpoints, config, _run_settings(train), train.steps, f"restorer {name}", profile)
    model = build_model("restorer", config)
    load_weights(run["checkpoint"] / "ema.safetensors", model, config)
    restore = settings["restore"]
    # the steps 05 restored with (InDI: chosen on validation): DRRs' (what xrlib restore uses) and the test pairs'
    chosen = stages.path("05_restore.chosen_steps", root=root)
    steps = json.loads(chosen.read_text()).get(name) if chosen.is_file() else None
    steps = steps or {"drrs": restore.steps, "test_pairs": restore.steps}
    usage = {"sampler": restore.sampler, "steps": int(steps["drrs"]), "test_pair_steps": int(steps["test_pairs"]),
             "strength": restore.strength, "input_px": restore.input_px,
             "display_unsharp_amount": settings["drr"].unsharp_amount}
    return _entry("restorer", name, model, config, run, folder, root, usage, config_settings["train"])


def export_ddpm_lq(settings: Mapping[str, Any], profile: str, root: Path, folder: Path) -> dict[str, Any]:
    """The DDPM-LQ UNet's EMA weights (trained on DRRs by 02) with the SDEdit/ILVR setting 02 chose."""
    section = settings["lq_ddpm"]
    config = {"unet": section.unet, "schedule": section.schedule}
    train = parse(TrainConfig, {**section.train, "seed": section.seed}, "lq_ddpm.train")
    run = finished_run(stages.path("02_lq_ddpm.run", root=root) / "checkpoints", config, _run_settings(train),
                       train.steps, "DDPM-LQ", profile)
    model = build_model("ddpm_lq", config)
    load_weights(run["checkpoint"] / "ema.safetensors", model, config)
    chosen = stages.path("02_lq_ddpm.setting", root=root)
    usage = {"sampler": section.sampler, "steps": section.num_inference_steps, "image_px": section.image_px,
             "chosen_setting": json.loads(chosen.read_text()) if chosen.is_file() else None}
    return _entry("ddpm_lq", DDPM_LQ_NAME, model, config, run, folder, root, usage, {**section.train, "seed": section.seed})


def export_munit(settings: Mapping[str, Any], profile: str, root: Path, folder: Path) -> dict[str, Any]:
    """MUNIT's two generators (HQ content encoder and LQ decoder are what HQ -> LQ translation uses)."""
    from xrlib.models.munit import MunitConfig, MunitTraining

    section = settings["lq_munit"]
    munit_config = MunitConfig(**section.model).to_dict()
    training = MunitTraining(**section.train, seed=section.seed)
    run = finished_run(stages.path("03_lq_munit.run", root=root) / "checkpoints", munit_config,
                       training.identity_settings(), training.steps, "MUNIT-LQ", profile)
    config = {"munit": munit_config}
    model = released_part("munit", build_model("munit", config))
    for part in ("gen_a", "gen_b"):
        load_weights(run["checkpoint"] / f"{part}.safetensors", model[part], munit_config)
    usage = {"image_px": section.image_px, "translate": "xrlib.models.munit.translate_hq_to_lq"}
    return _entry("munit", MUNIT_NAME, model, config, run, folder, root, usage, {**section.train, "seed": section.seed})


def _entry(kind: str, name: str, model: torch.nn.Module, config: Mapping[str, Any], run: Mapping[str, Any],
           folder: Path, root: Path, usage: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, Any]:
    path = _export(model, folder / f"{name}.safetensors", config)
    extra = run["extra"]
    return {"kind": kind, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "config": _json(dict(config)), "steps": run["step"], "train": _json(dict(train)),
            "train_seconds": extra.get("train_seconds"), "machine": extra.get("machine"),
            "source": os.path.relpath(run["checkpoint"], root), "usage": _json(dict(usage))}


# ----------------------------------------------------------------------------------------------
# What the manifest says beside the weights


def training_data(settings: Mapping[str, Any], root: Path) -> list[dict[str, str]]:
    """The registry's datasets present under ``data/`` (the nodule library only where drr.nodule_library uses it),
    with licence and citation; data folders the registry does not know are listed with an unknown licence."""
    data = stages.path("data", root=root)
    library = settings["drr"].nodule_library
    used, covered = [], set()

    def folders(entry: DatasetEntry) -> set[str]:
        if entry.files:
            return {str(Path(f.target).parent) for f in entry.files}
        return {entry.placement.split()[0].removeprefix("data/").rstrip("/")} if entry.placement else set()

    for entry in REGISTRY.values():
        present = sorted(f for f in folders(entry) if (data / f).exists())
        # a nodule library is used only where drr.nodule_library names it (X-rays and CTs under data/ are all read)
        present = [f for f in present if not f.startswith("nodules/")
                   or (library and (root / library).resolve() == (data / f).resolve())]
        if present:
            covered.update(present)
            used.append({"name": entry.name, "description": entry.description, "licence": entry.licence,
                         "citation": entry.citation, "homepage": entry.homepage, "folders": present})
    for kind in ("xray", "ct"):
        for folder in sorted(p for p in (data / kind).glob("*") if p.is_dir()) if (data / kind).is_dir() else []:
            relative = f"{kind}/{folder.name}"
            if not any(relative == c or c.startswith(relative + "/") or relative.startswith(c + "/") for c in covered):
                used.append({"name": relative, "description": "data not in the registry", "folders": [relative],
                             "licence": "unknown: state it before publishing these weights", "citation": "", "homepage": ""})
    return used


def run_metrics(root: Path) -> dict[str, Any]:
    """The metrics files the pipeline's stages wrote (as DVC tracks them), those that exist."""
    found = {}
    for item in stages.STAGES:
        for metric in item.metrics:
            path = root / metric
            if path.is_file():
                found[Path(metric).stem] = json.loads(path.read_text())
    return found


def model_metrics(entry: Mapping[str, Any], name: str, metrics: Mapping[str, Any], settings: Mapping[str, Any]) -> dict:
    """The metrics of one model: a restorer's PSNR/SSIM rows (06), a generator's translation checks (03)."""
    if entry["kind"] == "restorer":
        quality = metrics.get("06_metrics", {}).get("quality", {})
        section = settings["metrics"]
        return {key: value for key, value in quality.items()
                for method, template in section.restored_test.items()
                if key.endswith(f"/{method}") and template.format(generator=key.split("/")[0]) == name}
    generator = "ddpm" if entry["kind"] == "ddpm_lq" else "munit"
    return dict(metrics.get("03_translation_checks", {}).get(generator, {}))


def _git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def check_release_size(sizes: Mapping[str, int], limit: int = MAX_RELEASE_BYTES) -> int:
    """The total of ``sizes`` (file name -> bytes); a ConfigError naming the largest files above ``limit``."""
    total = int(sum(sizes.values()))
    if total > limit:
        largest = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:4])
        raise ConfigError(f"{RELEASE_FOLDER}/ would hold {total / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit "
                          f"({largest}); release fewer models (--models) or smaller ones")
    return total


# ----------------------------------------------------------------------------------------------
# Making a release


def make_release(profile: str, params: Mapping[str, Any], root: Path | None = None, out: Path | None = None,
                 models: Sequence[str] | None = None, limit: int = MAX_RELEASE_BYTES) -> dict[str, Any]:
    """Export profile ``profile``'s finished run (``params``: its merged params) to ``out`` (default ``models/``).

    ``models`` picks some of: the names in ``restore.configs``, ``ddpm_lq``, ``munit_lq`` (default all).
    Returns the manifest written to ``out/manifest.json``; files of an earlier release not in it are removed.
    """
    root = Path(root or project_root())
    out = Path(out) if out else release_folder(root)
    settings = check_params(params)
    restorers = list(settings["restore"].configs)
    known = [*restorers, DDPM_LQ_NAME, MUNIT_NAME]
    chosen = list(models) if models else known
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ConfigError(f"no model {', '.join(unknown)} to release; known: {', '.join(known)}")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".release-", dir=out))
    try:
        entries = {}
        for name in chosen:
            if name == DDPM_LQ_NAME:
                entries[name] = export_ddpm_lq(settings, profile, root, staging)
            elif name == MUNIT_NAME:
                entries[name] = export_munit(settings, profile, root, staging)
            else:
                entries[name] = export_restorer(settings, name, profile, root, staging)
        total = check_release_size({entry["file"]: entry["bytes"] for entry in entries.values()}, limit)
        metrics = run_metrics(root)
        for name, entry in entries.items():
            entry["metrics"] = model_metrics(entry, name, metrics, settings)
        default = settings["metrics"].restored_drr_config
        manifest = {
            "format": MANIFEST_FORMAT,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "profile": profile,
            "command": f"xrlib release --profile {profile}" + (f" --models {' '.join(chosen)}" if models else ""),
            "rebuild": MAKE_COMMAND.format(profile=profile),
            "code": {"xrlib": xrlib.__version__, "git_commit": _git_commit(root)},
            "default_restorer": default if default in entries else next((n for n in chosen if n in restorers), None),
            "total_bytes": total,
            "max_bytes": limit,
            "data": training_data(settings, root),
            "metrics": metrics,
            "models": entries,
        }
        for entry in entries.values():
            os.replace(staging / entry["file"], out / entry["file"])
        keep = {entry["file"] for entry in entries.values()}
        for stale in out.glob("*.safetensors"):
            if stale.name not in keep:
                stale.unlink()
        write_json_atomic(out / MANIFEST_NAME, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# ----------------------------------------------------------------------------------------------
# Loading



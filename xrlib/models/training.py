"""The generic training loop: one process, one GPU or many (torchrun DDP), resumable after any kill.

:func:`train` runs AdamW with linear warm-up and cosine decay of the learning rate, gradient
clipping, an EMA copy of the weights, bf16 autocast on CUDA, a tqdm bar and dvclive logging
(loss, learning rate, sample images). Every ``checkpoint_every`` steps rank 0 writes an atomic
checkpoint (model, EMA, optimizer, LR schedule, RNG states, step; see :mod:`xrlib.models.checkpoint`);
a new run finding one resumes there and continues as if it had never stopped.

A run is identified by what shapes its result (architecture, the data's size and content where the
dataset gives its SHA-256, the training settings except ``steps``); its checkpoints live under ``checkpoints/<identity hash>/``. Changing a setting
starts a new run beside the earlier ones, which are kept, never deleted; raising ``steps``
continues the same run (the cosine decay is then stretched over the new total from the step
reached, so the result differs from a run planned that long from the start).

Exact resumption rests on one rule: nothing random depends on the process's history. The data
order (:class:`SeededBatches`) and each sample's seed are functions of the run's seed and the
global sample number, so step ``s`` sees the same samples (and the loss draws the same noise)
whether the run is fresh, resumed, or split over any number of ranks.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist

from xrlib.models import accel as gpu
from xrlib.models.checkpoint import load_latest_checkpoint, load_weights, remove_staging, save_checkpoint
from xrlib.errors import CheckpointError, ConfigError
from xrlib.io import write_json_atomic, write_text_atomic
from xrlib.params import parse, setting
from xrlib.progress import progress

LossFn = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]


#: The settings that identify a run (``steps`` is not one: more steps continue a run).
RESULT_SETTINGS = ("batch_size", "learning_rate", "weight_decay", "warmup_steps", "grad_clip_norm", "ema_decay", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (the ``train`` part of a params.yaml config); ``batch_size`` is per rank."""

    steps: int = setting(300, low=1)
    batch_size: int = setting(8, low=1)
    learning_rate: float = setting(2e-4, above=0.0)
    weight_decay: float = setting(0.0, low=0.0)
    warmup_steps: int = setting(20, low=0)
    grad_clip_norm: float = setting(1.0, above=0.0)
    ema_decay: float = setting(0.999, low=0.0, below=1.0)
    checkpoint_every: int = setting(100, low=1)
    keep_checkpoints: int = setting(2, low=1)
    log_every: int = setting(10, low=1)
    sample_every: int = setting(0, low=0)
    seed: int = setting(0, low=0)
    num_workers: int = setting(0, low=0)
    bf16: bool = True
    device: str = "auto"
    progress: bool = True
    dvclive: bool = True
    init_weights: Optional[str] = None
    """Start from these weights, not random ones: ``released:NAME`` (``models/``) or a safetensors path (project-relative)."""
    accel: dict[str, Any] = setting({}, schema="xrlib.models.accel.TrainAccel")
    """GPU accelerations (:class:`xrlib.models.accel.TrainAccel`; CUDA only by default)."""

    def fingerprint(self, n_items: int) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint (not steps, logging or workers;
        the start weights by their SHA-256)."""
        settings = {k: v for k, v in asdict(self).items() if k in RESULT_SETTINGS}
        if self.init_weights:
            from xrlib.models.released import initial_weights

            settings["init_weights_sha256"] = initial_weights(self.init_weights)[1]
        return {**settings, "n_items": int(n_items)}



def select_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this rank's CUDA GPU if there is one, else Apple's MPS, else the CPU."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def machine_description(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a run trains on, as a checkpoint records it: device, its name, CPU count, platform, torch."""
    device = torch.device(device) if device is not None else select_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": device.type, "device_name": name, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__}


def training_time_extra(previous: Mapping[str, Any] | None, started: float, device: torch.device) -> dict[str, Any]:
    """A checkpoint's record of its run's cost: training seconds summed over every resumption, and the machine."""
    earlier = float((previous or {}).get("train_seconds", 0.0))
    return {"train_seconds": earlier + time.monotonic() - started, "machine": machine_description(device)}


def init_distributed() -> tuple[int, int, int]:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK); return them.

    NCCL on CUDA, gloo otherwise; single- or multi-node alike (torchrun's rendezvous sets the env).
    Without torchrun (WORLD_SIZE unset or 1) nothing happens and (0, 1, 0) is returned.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return rank, world_size, local_rank


def sample_seed(seed: int, global_sample: int) -> int:
    """The seed of the ``global_sample``-th sample drawn in a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(global_sample)]).generate_state(1)[0])


class SeededBatches(torch.utils.data.Sampler):
    """Batches of ``(index, sample_seed)`` for steps ``start_step`` to ``end_step`` (exclusive).

    The run draws one stream of samples, epoch after epoch, each epoch a permutation seeded by
    (seed, epoch). Step ``s`` takes global samples ``s*B*W`` to ``(s+1)*B*W``; rank ``r`` gets
    the ``r``-th block of ``B``. A step's samples are thus the same for any start and rank split.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world_size = rank, world_size
        self._permutations: dict[int, np.ndarray] = {}

    def _index(self, global_sample: int) -> int:
        epoch, position = divmod(global_sample, self.n_items)
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_items)}
        return int(self._permutations[epoch][position])

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_step = self.batch_size * self.world_size
        for step in range(self.start_step, self.end_step):
            first = step * per_step + self.rank * self.batch_size
            yield [(self._index(g), sample_seed(self.seed, g)) for g in range(first, first + self.batch_size)]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at ``step``: linear warm-up from 0 to 1, then half a cosine down to 0."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up, min(decay, (1 + step) / (10 + step)), so early averages forget the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, as one multi-tensor lerp over the parameters (buffers copied)."""
    torch._foreach_lerp_(list(ema.parameters()), [param.detach() for param in model.parameters()], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def drop_logged_after(live_dir: str | os.PathLike, step: int) -> None:
    """Remove dvclive metric rows past ``step`` (logged by a run killed after its last checkpoint,
    or by an earlier run when this one starts afresh), and rows a kill cut short; tables are
    rewritten atomically."""
    for table in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows, fieldnames = list(reader), reader.fieldnames or []
        kept = [r for r in rows if None not in r.values() and r.get("step", "").isdigit() and int(r["step"]) <= step]
        if len(kept) == len(rows):
            continue
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(table, text.getvalue())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _images_for_log(images: torch.Tensor) -> np.ndarray:
    """(B, 1, H, W) in [0, 1] -> one 8-bit greyscale strip for dvclive."""
    strip = torch.cat(list(images[:, 0].float().clamp(0, 1).cpu()), dim=-1)
    return (strip.numpy() * 255.0 + 0.5).astype(np.uint8)


RUN_IDENTITY = "identity.json"


def data_identity(dataset: torch.utils.data.Dataset) -> dict[str, Any]:
    """What a run's identity records of its data: the item count and, where the dataset can give it
    (``content_sha256()``), the SHA-256 of its content, so other data of the same size start a new run."""
    content = getattr(dataset, "content_sha256", None)
    return {"n_items": len(dataset), **({"sha256": content()} if callable(content) else {})}


def run_checkpoints(checkpoints_root: str | os.PathLike, identity: Mapping[str, Any], record: bool = True) -> Path:
    """The checkpoint folder of one run identity, ``checkpoints_root/<key>``; other runs are kept.

    ``identity`` holds what a resumed run must share (architecture, training settings but not
    the number of steps, data size); its hash is the key, so a run resumes only from its own
    checkpoints. After a change of parameters (``dvc repro`` with ``persist: true`` outputs)
    training starts a new run beside the earlier ones, which stay under their own keys (each
    with its ``identity.json``), so setting a parameter back resumes them. With ``record`` (one
    process only) the identity is written and the earlier runs are named in a warning.
    """
    key = hashlib.sha256(json.dumps(dict(identity), sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = Path(checkpoints_root) / key
    if record:
        others = sorted(p.name for p in folder.parent.iterdir() if p.is_dir() and p != folder) \
            if folder.parent.is_dir() else []
        if others and not folder.is_dir():
            warnings.warn(f"{folder.parent}: starting run {key} with other settings; the earlier runs "
                          f"{', '.join(others)} are kept (see their {RUN_IDENTITY}; delete them to free space)",
                          stacklevel=2)
        write_json_atomic(folder / RUN_IDENTITY, json.loads(json.dumps(dict(identity), default=str)))
    return folder


def check_steps_reached(step: int, steps: int, checkpoint: Path) -> None:
    """Refuse a checkpoint past the requested total of steps (a run cannot be shortened)."""
    if step > steps:
        raise ConfigError(f"{checkpoint}: this run already reached step {step}, past steps = {steps}; set steps "
                          f">= {step} to use or continue it, or move {checkpoint.parent} aside to train a shorter run afresh")


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    dataset: torch.utils.data.Dataset,
    config: TrainConfig | Mapping[str, Any],
    run_dir: str | os.PathLike,
    model_config: Mapping[str, Any],
    sample_fn: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` with ``loss_fn(model, batch)``; resume from ``run_dir/checkpoints``.

    ``model_config`` (JSON-able) is stored with the weights and checked on resume. ``sample_fn``
    maps the EMA model to images (B, 1, H, W) in [0, 1] logged every ``sample_every`` steps;
    ``on_step(step)`` is called after every step (and checkpoint). If a process group is initialised (see
    :func:`init_distributed`) the model is wrapped in DDP, the loss averaged over ranks, and only
    rank 0 writes checkpoints and logs. Returns {"model", "ema", "step", "history"}; history holds
    (step, mean loss of the last ``log_every`` steps, averaged over ranks) for this run.
    """
    cfg = config if isinstance(config, TrainConfig) else parse(TrainConfig, config, "train")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = select_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    run_dir = Path(run_dir)
    fingerprint = cfg.fingerprint(len(dataset))
    checkpoints = run_checkpoints(run_dir / "checkpoints", {"model": model_config, "settings": fingerprint,
                                                            "data": data_identity(dataset)}, rank == 0)
    if rank == 0:
        remove_staging(checkpoints)
    live_dir = run_dir / "dvclive"

    accel = gpu.as_settings(gpu.TrainAccel, cfg.accel, "train.accel")
    torch.manual_seed(cfg.seed)
    model = gpu.prepare_model(model.to(device).train(), accel, device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = gpu.make_adamw(model.parameters(), accel, device, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.warmup_steps, cfg.steps))
    start_step, earlier_extra, started = 0, None, time.monotonic()
    resumed = load_latest_checkpoint(checkpoints, {"model": model, "ema": ema}, {"optimizer": optimizer},
                                     {"lr": lr_schedule}, model_config, move_damaged=rank == 0)
    if resumed is None and cfg.init_weights:
        from xrlib.models.released import initial_weights

        load_weights(initial_weights(cfg.init_weights)[0], model)
        ema.load_state_dict(model.state_dict())
    if resumed is not None:
        found, restored = resumed
        if restored["extra"].get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise CheckpointError(f"{found}: its training settings differ from its folder's; the checkpoint "
                                  f"was moved by hand: move {checkpoints} aside")
        start_step, earlier_extra = restored["step"], restored["extra"]
        check_steps_reached(start_step, cfg.steps, found)
        gpu.after_resume(optimizer, accel, device)
    network = model
    if distributed:
        network = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    network = gpu.compile_for_training(network, accel, device)

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=SeededBatches(len(dataset), cfg.batch_size, cfg.seed, start_step, cfg.steps, rank, world_size),
        **gpu.loader_options(accel, device, cfg.num_workers))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda"
                else contextlib.nullcontext())
    live = None
    if rank == 0 and cfg.dvclive:
        from dvclive import Live

        drop_logged_after(live_dir, start_step)
        live = Live(str(live_dir), resume=start_step > 0, save_dvc_exp=False, dvcyaml=False, report=None)
        live.log_params({f"train.{k}": v for k, v in asdict(cfg).items()})
    history: list[tuple[int, float]] = []
    step = start_step
    interval_loss, interval_steps = torch.zeros((), device=device), 0
    with progress(total=cfg.steps, initial=start_step, disable=rank != 0 or not cfg.progress, desc="train") as bar:
        for step, batch in enumerate(loader, start=start_step + 1):
            with autocast:
                loss = loss_fn(network, _to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            lr_schedule.step()
            update_ema(ema, model, ema_decay_at(step, cfg.ema_decay))
            bar.update(1)
            interval_loss = interval_loss + loss.detach().float()
            interval_steps += 1
            if step % cfg.log_every == 0 or step == cfg.steps:  # the only host sync of a step
                mean_loss = interval_loss / interval_steps
                if distributed:
                    dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
                    mean_loss /= world_size
                loss_float = float(mean_loss)
                interval_loss, interval_steps = torch.zeros((), device=device), 0
                if not math.isfinite(loss_float):
                    raise ConfigError(f"training diverged by step {step} (loss {loss_float}); lower train.learning_rate "
                                      f"(a new run; this run's checkpoints stay in {checkpoints})")
                history.append((step, loss_float))
                bar.set_postfix(loss=f"{loss_float:.4f}", refresh=False)
                if live is not None:
                    live.step = step
                    live.log_metric("train/loss", loss_float)
                    live.log_metric("train/learning_rate", lr_schedule.get_last_lr()[0])
            if live is not None and sample_fn is not None and cfg.sample_every and (
                    step % cfg.sample_every == 0 or step == cfg.steps):
                live.step = step
                live.log_image(f"samples/{step:08d}.png", _images_for_log(sample_fn(ema)))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if rank == 0:
                    save_checkpoint(checkpoints, step, {"model": model, "ema": ema}, {"optimizer": optimizer},
                                    {"lr": lr_schedule}, model_config,
                                    {"fingerprint": fingerprint, **training_time_extra(earlier_extra, started, device)},
                                    keep_last=cfg.keep_checkpoints)
                if distributed:
                    dist.barrier()
            if on_step is not None:
                on_step(step)
    if live is not None:
        live.make_summary()
        live.end()
    return {"model": model, "ema": ema, "step": step, "history": history}

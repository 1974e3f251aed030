"""Diffusion maths apart from the network: schedulers, the training loss, samplers, SDEdit and ILVR.

``schedule`` (a model config's forward process, :func:`make_scheduler`) sets ``beta_schedule``
cosine or linear, ``prediction_type`` epsilon, v_prediction or sample (x0), ``loss`` l1 or l2;
every sampler made from one schedule shares its betas. Images given to the model are in [-1, 1].

``schedule.target`` says what is diffused (:func:`to_diffusion_space`):

- ``image`` (SR3 and Palette, Saharia et al. 2022; the paper's DiffusionXRay): the HQ image itself,
  generated from pure noise with the LQ image as condition.
- ``residual`` (SRDiff, Li et al. 2022, Neurocomputing 479): the HQ image minus the upsampled LQ
  image, divided by ``residual_scale``. The sample is added back to the upsampled input, so the
  input's anatomy is kept by construction and the model only learns the missing detail: far fewer
  training steps reach a usable restorer, which a CPU budget needs. With ``prediction_type: sample``
  the network predicts the clean residual, so an untrained network's small outputs give back the
  upsampled input rather than noise.
"""


from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from xrlib.errors import ConfigError
from xrlib.params import LEAKING_BRIDGE

SAMPLERS = ("ddpm", "ddim", "dpm_solver")
BETA_SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LOSSES = ("l1", "l2")
TARGETS = ("image", "residual")
PROCESSES = ("diffusion", "indi")

Guidance = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]

def make_scheduler(name: str, schedule_config: Mapping[str, Any]):
    """A diffusers scheduler ``name`` (ddpm, ddim, dpm_solver) for the forward process ``schedule_config``.

    Keys: ``num_train_timesteps``, ``beta_schedule`` (cosine: Nichol and Dhariwal 2021; linear:
    Ho et al. 2020 from ``beta_start`` to ``beta_end``), ``prediction_type``. Every sampler made
    from one config shares the same betas, so a model trained once samples with any of them.
    """
    beta_schedule = schedule_config.get("beta_schedule", "cosine")
    prediction_type = schedule_config.get("prediction_type", "epsilon")
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"schedule.beta_schedule '{beta_schedule}' unknown; use one of {sorted(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"schedule.prediction_type '{prediction_type}' unknown; use one of {PREDICTION_TYPES}")
    clip_range = 2.0 / residual_scale(schedule_config) if diffusion_target(schedule_config) == "residual" else 1.0
    common = dict(
        num_train_timesteps=int(schedule_config.get("num_train_timesteps", 1000)),
        beta_start=float(schedule_config.get("beta_start", 1e-4)),
        beta_end=float(schedule_config.get("beta_end", 0.02)),
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        prediction_type=prediction_type,
    )
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=True, clip_sample_range=clip_range)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=True, clip_sample_range=clip_range, timestep_spacing="trailing")
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ConfigError(f"sampler '{name}' unknown; use one of {SAMPLERS}")


def diffusion_target(schedule_config: Mapping[str, Any]) -> str:
    """What the model diffuses: ``image`` (SR3/Palette) or ``residual`` over the upsampled LQ image (SRDiff)."""
    target = schedule_config.get("target", "image")
    if target not in TARGETS:
        raise ConfigError(f"schedule.target '{target}' unknown; use one of {TARGETS}")
    return target


def diffusion_process(schedule_config: Mapping[str, Any]) -> str:
    """How the model reaches the clean image: ``diffusion`` (DDPM from noise) or ``indi`` (a bridge from the input)."""
    process = schedule_config.get("process", "diffusion")
    if process not in PROCESSES:
        raise ConfigError(f"schedule.process '{process}' unknown; use one of {PROCESSES}")
    if process == "indi" and schedule_config.get("prediction_type", "epsilon") != "sample":
        raise ConfigError("schedule.process 'indi' predicts the clean image: set schedule.prediction_type to 'sample'")
    return process


def residual_scale(schedule_config: Mapping[str, Any]) -> float:
    """The residual's divisor (``schedule.residual_scale``, model units), so the diffused residual has about unit spread."""
    scale = float(schedule_config.get("residual_scale", 1.0))
    if not scale > 0:
        raise ConfigError(f"schedule.residual_scale must be positive, got {scale}")
    return scale


def to_diffusion_space(image: torch.Tensor, condition: torch.Tensor | None, schedule_config: Mapping[str, Any]) -> torch.Tensor:
    """HQ images in [-1, 1] -> what the model diffuses (the image, or its scaled residual over ``condition[:, :1]``)."""
    if diffusion_target(schedule_config) == "image":
        return image
    if condition is None:
        raise ConfigError("schedule.target 'residual' needs a condition (the upsampled LQ image)")
    return (image - condition[:, :1].to(image)) / residual_scale(schedule_config)


def from_diffusion_space(sample: torch.Tensor, condition: torch.Tensor | None, schedule_config: Mapping[str, Any]) -> torch.Tensor:
    """The inverse of :func:`to_diffusion_space`, clipped to [-1, 1]."""
    if diffusion_target(schedule_config) == "residual":
        if condition is None:
            raise ConfigError("schedule.target 'residual' needs a condition (the upsampled LQ image)")
        sample = condition[:, :1].to(sample) + sample * residual_scale(schedule_config)
    return sample.clamp(-1.0, 1.0)


def _per_sample_generators(seeds: Sequence[int] | torch.Tensor, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def diffusion_loss(
    model: torch.nn.Module,
    scheduler,
    clean: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    condition: torch.Tensor | None = None,
    loss: str = "l2",
) -> torch.Tensor:
    """Denoising loss (Ho et al. 2020, eq. 14; v-target of Salimans and Ho 2022; x0-target) on ``clean``.

    ``clean`` is what the model diffuses (:func:`to_diffusion_space`).
    Each sample's timestep and noise are drawn from its own generator seeded with ``seeds[i]``,
    so a sample's loss term does not depend on the batch it is in (or on the DDP rank).
    """
    if loss not in LOSSES:
        raise ConfigError(f"schedule.loss '{loss}' unknown; use one of {LOSSES}")
    generators = _per_sample_generators(seeds, clean.device)
    steps = scheduler.config.num_train_timesteps
    timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g, device=clean.device) for g in generators])
    noise = randn_tensor(clean.shape, generator=generators, device=clean.device, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    model_input = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    prediction = model(model_input, timesteps).sample.float()
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    elif scheduler.config.prediction_type == "sample":
        target = clean
    else:
        target = noise
    return F.l1_loss(prediction, target.float()) if loss == "l1" else F.mse_loss(prediction, target.float())


def _indi_timesteps(times: torch.Tensor, schedule_config: Mapping[str, Any]) -> torch.Tensor:
    """Bridge time t in [0, 1] as the UNet's (continuous) timestep, on the scale of ``num_train_timesteps``."""
    return times * (int(schedule_config.get("num_train_timesteps", 1000)) - 1)


def indi_loss(
    model: torch.nn.Module,
    schedule_config: Mapping[str, Any],
    clean: torch.Tensor,
    degraded: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """InDI's training loss (Delbracio and Milanfar 2023, eq. 5): || F(x_t, t) - x || at t ~ U(0, 1].

    x_t = (1 - t) ``clean`` + t ``degraded`` + t ``indi_noise`` n, both in the model's diffusion space
    (:func:`to_diffusion_space`; for a residual target the degraded residual is zero). With a
    ``condition`` (the degraded image given to the network) the noise must be positive
    (:data:`LEAKING_BRIDGE`). Each sample's
    t and noise come from its own generator seeded with ``seeds[i]``, as in :func:`diffusion_loss`.
    """
    loss = schedule_config.get("loss", "l2")
    if loss not in LOSSES:
        raise ConfigError(f"schedule.loss '{loss}' unknown; use one of {LOSSES}")
    if condition is not None and float(schedule_config.get("indi_noise", 0.0)) <= 0:
        raise ConfigError(LEAKING_BRIDGE)
    generators = _per_sample_generators(seeds, clean.device)
    times = torch.cat([1.0 - torch.rand((1,), generator=g, device=clean.device) for g in generators])  # (0, 1]
    noise = randn_tensor(clean.shape, generator=generators, device=clean.device, dtype=clean.dtype)
    t = times.view(-1, *([1] * (clean.dim() - 1))).to(clean.dtype)
    noisy = (1 - t) * clean + t * degraded.to(clean) + t * float(schedule_config.get("indi_noise", 0.0)) * noise
    model_input = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    prediction = model(model_input, _indi_timesteps(times, schedule_config)).sample.float()
    return F.l1_loss(prediction, clean.float()) if loss == "l1" else F.mse_loss(prediction, clean.float())


@torch.no_grad()
def indi_restore(
    model: torch.nn.Module,
    schedule_config: Mapping[str, Any],
    degraded: torch.Tensor,
    steps: int,
    condition: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """InDI's restoration (Delbracio and Milanfar 2023, eq. 7) from ``degraded`` in ``steps`` equal steps.

    x_1 = ``degraded`` (+ ``indi_noise`` n); x_{t-d} = (d / t) F(x_t, t) + (1 - d / t) x_t down to t = 0.
    One step returns F(x_1, 1), the network's estimate of E[x | y]. Returns the raw diffusion-space result.
    """
    if steps < 1:
        raise ConfigError(f"InDI needs at least one step, got {steps}")
    reference = next(model.parameters())
    current = degraded.to(reference.device, torch.float32)
    if condition is not None:
        condition = condition.to(reference.device, current.dtype)
    noise_std = float(schedule_config.get("indi_noise", 0.0))
    if noise_std > 0:
        current = current + noise_std * randn_tensor(current.shape, generator=generator, device=current.device, dtype=current.dtype)
    times = torch.linspace(1.0, 0.0, steps + 1, device=current.device)
    for t, t_next in zip(times[:-1], times[1:]):
        model_input = current if condition is None else torch.cat([current, condition], dim=1)
        estimate = model(model_input, _indi_timesteps(t.expand(current.shape[0]), schedule_config)).sample.to(current.dtype)
        share = (t - t_next) / t
        current = share * estimate + (1 - share) * current
    return current


def _denoise(
    model: torch.nn.Module,
    scheduler,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    condition: torch.Tensor | None,
    generator,
    guidance: Guidance | None,
) -> torch.Tensor:
    for index, timestep in enumerate(timesteps):
        model_input = scheduler.scale_model_input(sample, timestep)
        if condition is not None:
            model_input = torch.cat([model_input, condition.to(model_input.dtype)], dim=1)
        batch_timesteps = timestep.expand(sample.shape[0]).to(sample.device)
        output = model(model_input, batch_timesteps).sample
        sample = scheduler.step(output.to(sample.dtype), timestep, sample, generator=generator).prev_sample
        if guidance is not None:
            sample = guidance(sample, timesteps[index + 1] if index + 1 < len(timesteps) else None)
    return sample


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    scheduler,
    condition: torch.Tensor | None = None,
    steps: int = 50,
    generator: torch.Generator | list[torch.Generator] | None = None,
    shape: Sequence[int] | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """Draw images in [-1, 1] by reverse diffusion with ``scheduler`` in ``steps`` steps.

    ``condition`` (B, C, H, W) in [-1, 1] is concatenated to the noisy input at every step (it
    sets the output shape); an unconditional model needs ``shape``. ``generator`` may be a list
    with one generator per image, which makes each image independent of the batch it is in.
    ``clamp`` False returns the raw sample (e.g. a residual, which may exceed [-1, 1]).
    """
    reference = next(model.parameters())
    if condition is not None:
        condition = condition.to(reference.device)
        shape = (condition.shape[0], model.config.out_channels, *condition.shape[2:])
    if shape is None:
        raise ConfigError("sample() needs a condition or an output shape")
    scheduler.set_timesteps(steps, device=reference.device)
    noise = randn_tensor(tuple(shape), generator=generator, device=reference.device, dtype=torch.float32)
    drawn = _denoise(model, scheduler, noise * scheduler.init_noise_sigma, scheduler.timesteps, condition, generator, None)
    return drawn.clamp(-1.0, 1.0) if clamp else drawn


@torch.no_grad()
def sdedit(
    model: torch.nn.Module,
    scheduler,
    image: torch.Tensor,
    strength: float,
    steps: int = 50,
    generator: torch.Generator | list[torch.Generator] | None = None,
    condition: torch.Tensor | None = None,
    guidance: Guidance | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise ``image`` (in [-1, 1]) to ``strength`` of the schedule, then denoise.

    ``strength`` in (0, 1] is the fraction of the ``steps`` sampling steps that are run again
    (rounded, at least one): the image is noised to the first of those timesteps, so for evenly
    spaced timesteps strength is about t0 / T; 1 starts from (almost) pure noise. ``guidance`` is applied after every step, e.g.
    :func:`ilvr_guidance` to keep the low frequencies of a reference image. ``clamp`` False returns the
    raw sample (e.g. a residual).
    """
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"SDEdit strength must be in (0, 1], got {strength}")
    reference = next(model.parameters())
    image = image.to(reference.device, torch.float32)
    scheduler.set_timesteps(steps, device=reference.device)
    kept = max(1, min(len(scheduler.timesteps), round(len(scheduler.timesteps) * strength)))
    begin = len(scheduler.timesteps) - kept
    timesteps = scheduler.timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    noise = randn_tensor(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    noisy = scheduler.add_noise(image, noise, timesteps[:1].expand(image.shape[0]))
    edited = _denoise(model, scheduler, noisy, timesteps, condition, generator, guidance)
    return edited.clamp(-1.0, 1.0) if clamp else edited


def low_pass(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The ILVR filter phi_N: area downsampling by ``factor`` then bicubic upsampling back."""
    small = F.interpolate(image, scale_factor=1.0 / factor, mode="area")
    return F.interpolate(small, size=image.shape[-2:], mode="bicubic", align_corners=False)


def ilvr_guidance(
    reference: torch.Tensor,
    factor: int,
    scheduler,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> Guidance:
    """ILVR (Choi et al. 2021, eq. 8): x <- x - phi_N(x) + phi_N(y_t), y_t the reference noised to t.

    At the last step (next timestep None) the clean reference is used, so the result's low
    frequencies (below 1/``factor`` of the sampling rate) are the reference's.
    """

    def guide(sample: torch.Tensor, next_timestep: torch.Tensor | None) -> torch.Tensor:
        target = reference.to(sample.device, sample.dtype)
        if next_timestep is not None:
            noise = randn_tensor(target.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            target = scheduler.add_noise(target, noise, next_timestep.expand(target.shape[0]))
        return sample - low_pass(sample, factor) + low_pass(target, factor)

    return guide

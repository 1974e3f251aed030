"""GPU accelerations of the diffusion UNet, as settings that leave the CPU path as it was.

Two settings blocks, each checked by :func:`xrlib.params.parse` (unknown keys, bad types refused):

* ``train.accel`` (:class:`TrainAccel`), read by :func:`xrlib.models.training.train`:
  channels_last memory format, fused AdamW, explicit SDPA attention, cuDNN autotuning,
  ``torch.compile`` of the UNet (``max-autotune-no-cudagraphs`` suits training: the step's
  shapes are fixed, and CUDA graphs would pin the per-sample generators' outputs), and the data
  loader's pinned memory, prefetching and persistent workers (copies to the GPU are
  ``non_blocking``). bf16 autocast is ``train.bf16`` itself.
* ``restore.accel`` (:class:`SamplingAccel`), read by :func:`for_sampling`: the device restoration
  runs on, the UNet replayed from CUDA graphs (static input buffers, one graph per input shape)
  or compiled (``reduce-overhead``: Inductor's CUDA-graph trees), bf16 autocast.

Every setting takes effect on CUDA only, unless ``on_cpu`` is true (tests, or a CPU run that
wants ``torch.compile``); on a CPU the defaults give back exactly the eager, contiguous,
float32 model of before. SDPA is the exception that changes nothing: diffusers' ``Attention``
already picks :class:`~diffusers.models.attention_processor.AttnProcessor2_0`
(``F.scaled_dot_product_attention``) where torch has it; ``attention: sdpa`` makes that explicit,
``classic`` is the softmax(QK^T)V reference.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, NamedTuple

import torch
from xrlib.errors import ConfigError
from xrlib.params import parse, setting

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
#: ``eager`` runs TorchDynamo's tracing only (graph breaks, guards) without code generation: the
#: dry run's backend, since Inductor's C++ compile of even a tiny UNet takes minutes on 2 cores.
CompileBackend = Literal["inductor", "aot_eager", "eager"]


@dataclass(frozen=True, kw_only=True)
class TrainAccel:
    """``train.accel``: how the training step uses a GPU (every key applies on CUDA only unless ``on_cpu``)."""

    channels_last: bool = True
    """Weights (and so activations) in NHWC, the layout cuDNN's tensor-core convolutions use."""
    fused_adamw: bool = True
    """AdamW's fused CUDA kernel (one launch for all parameters); never on a CPU."""
    attention: Literal["sdpa", "classic"] = "sdpa"
    compile: CompileMode = "off"
    compile_backend: CompileBackend = "inductor"
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms once per shape (shapes are fixed in training)."""
    prefetch_factor: int = setting(4, low=1)
    """Batches each loader worker prepares ahead (with ``train.num_workers`` > 0)."""
    persistent_workers: bool = True
    on_cpu: bool = False
    """Apply the settings on a CPU too (tests; torch.compile on a CPU)."""


@dataclass(frozen=True, kw_only=True)
class SamplingAccel:
    """``restore.accel``: where and how restoration runs the UNet (see :func:`for_sampling`)."""

    device: str = "cpu"
    """Where restoration runs: ``cpu`` (as before), ``auto`` (CUDA if present) or a torch device."""
    graph: Literal["off", "cuda_graph", "compile"] = "off"
    """``cuda_graph``: each step replays one captured CUDA graph of the UNet (no launch overhead);
    ``compile``: ``torch.compile`` with ``compile_mode``."""
    compile_mode: CompileMode = "reduce-overhead"
    compile_backend: CompileBackend = "inductor"
    bf16: bool = False
    """Run the UNet under bf16 autocast (the sampler's state stays float32)."""
    channels_last: bool = True
    attention: Literal["sdpa", "classic"] = "sdpa"
    cudnn_benchmark: bool = True
    on_cpu: bool = False


Settings = TrainAccel | SamplingAccel


class UNetOutput(NamedTuple):
    """What diffusers' UNet returns, as far as the samplers read it (``.sample``)."""

    sample: torch.Tensor


def as_settings(cls: type, settings: Settings | Mapping[str, Any] | None, where: str) -> Any:
    """``settings`` as a ``cls`` (a checked mapping, or the defaults for None)."""
    if settings is None:
        return cls()
    if isinstance(settings, cls):
        return settings
    return parse(cls, dict(settings), where)


def active(settings: Settings, device: torch.device | str) -> bool:
    """Whether ``settings`` take effect on ``device`` (CUDA, or any device with ``on_cpu``)."""
    return torch.device(device).type == "cuda" or settings.on_cpu


def set_attention(model: torch.nn.Module, attention: str) -> None:
    """Every diffusers ``Attention`` of ``model`` on SDPA (``sdpa``) or the classic softmax path."""
    if attention not in ("sdpa", "classic"):
        raise ConfigError(f"accel.attention '{attention}' unknown; use sdpa or classic")
    processors = sys.modules.get("diffusers.models.attention_processor")
    if processors is None:  # diffusers not imported: the model has no diffusers attention (nor is diffusers loaded for it)
        return
    for module in model.modules():
        if isinstance(module, processors.Attention):
            module.set_processor(processors.AttnProcessor2_0() if attention == "sdpa" else processors.AttnProcessor())


def prepare_model(model: torch.nn.Module, settings: Settings, device: torch.device | str) -> torch.nn.Module:
    """Attention processor, memory format and cuDNN autotuning for ``model`` (in place; returned)."""
    set_attention(model, settings.attention)
    if not active(settings, device):
        return model
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.cudnn_benchmark and torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def compile_model(model: torch.nn.Module, mode: str, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile(model)`` in ``mode`` (``off``: the model itself). Shapes are static (no dynamic recompiles)."""
    if mode == "off":
        return model
    if mode not in COMPILE_MODES:
        raise ConfigError(f"accel compile mode '{mode}' unknown; use off or one of {COMPILE_MODES}")
    options = {"mode": mode} if backend == "inductor" else {}
    return torch.compile(model, backend=backend, dynamic=False, **options)


def compile_for_training(network: torch.nn.Module, settings: TrainAccel, device: torch.device | str) -> torch.nn.Module:
    """The training forward: ``network`` (the UNet or its DDP wrapper) compiled as ``settings`` say."""
    return compile_model(network, settings.compile, settings.compile_backend) if active(settings, device) else network


def make_adamw(parameters: Iterable[torch.nn.Parameter], settings: TrainAccel, device: torch.device | str,
               **options: Any) -> torch.optim.AdamW:
    """AdamW with ``options`` (lr, weight_decay); its fused CUDA kernel where ``fused_adamw`` and CUDA, else the
    multi-tensor (foreach) kernel, which PyTorch picks by itself only on CUDA: on the CPU it updates the
    real-data restorer's 152 tensors in 3.3 instead of 5.0 ms."""
    fused = settings.fused_adamw and torch.device(device).type == "cuda"
    return torch.optim.AdamW(parameters, **options, **({"fused": True} if fused else {"foreach": True}))


def after_resume(optimizer: torch.optim.AdamW, settings: TrainAccel, device: torch.device | str) -> None:
    """Fit an optimizer state loaded from a checkpoint to this run's settings: ``fused`` or ``foreach`` as
    :func:`make_adamw` chose it (a loaded state brings the writer's), and each state tensor in its
    parameter's memory format (fused and foreach kernels walk parameter and state alike); the fused
    kernel also wants each ``step`` count as float32 on the parameter's device (an unfused state keeps it
    on the CPU)."""
    fused = settings.fused_adamw and torch.device(device).type == "cuda"
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, None) if fused else (None, True)
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
        if fused and torch.is_tensor(state.get("step")):
            state["step"] = state["step"].to(parameter.device, torch.float32)


def loader_options(settings: TrainAccel, device: torch.device | str, num_workers: int) -> dict[str, Any]:
    """DataLoader keywords: pinned memory on CUDA; workers that prefetch and persist where there are workers."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    if num_workers > 0 and active(settings, device):
        options.update(prefetch_factor=settings.prefetch_factor, persistent_workers=settings.persistent_workers)
    return options


def _autocast(device_type: str, bf16: bool):
    # cache_enabled=False: autocast's cast cache must not outlive a CUDA graph capture
    return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False) if bf16 else contextlib.nullcontext()


class SamplingUNet(torch.nn.Module):
    """The UNet as the samplers call it, ``model(x, t).sample``, run eagerly, from CUDA graphs, or compiled.

    ``graph``: ``off`` (eager), ``cuda_graph`` (the first call with a new input shape warms the UNet
    up on a side stream, then captures one forward into a :class:`torch.cuda.CUDAGraph` with static
    input and output buffers; later calls copy their inputs in, replay it and return a copy of the
    output), ``compile`` (``torch.compile`` in ``compile_mode``). ``bf16`` runs the UNet under bf16
    autocast; the output is float32 either way. Off CUDA, ``cuda_graph`` runs eagerly unless
    ``simulate_graph`` (tests): then the same static buffers are filled and read around an eager
    forward on them, so the buffer logic is checked without a GPU. ``config`` and the parameters
    are the wrapped UNet's, so :func:`xrlib.models.sampling.sample` and the restorer take it as is.
    """

    def __init__(self, unet: torch.nn.Module, graph: str = "off", bf16: bool = False,
                 compile_mode: str = "reduce-overhead", compile_backend: str = "inductor", simulate_graph: bool = False):
        super().__init__()
        if graph not in ("off", "cuda_graph", "compile"):
            raise ConfigError(f"accel.graph '{graph}' unknown; use off, cuda_graph or compile")
        self.unet, self.graph, self.bf16, self.simulate_graph = unet, graph, bf16, simulate_graph
        self.compile_mode = compile_mode
        self._compiled = compile_model(unet, compile_mode, compile_backend) if graph == "compile" else None
        self._graphs: dict[tuple, tuple] = {}

    @property
    def config(self):
        return self.unet.config

    def _forward(self, run, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with _autocast(sample.device.type, self.bf16):
            return run(sample, timestep).sample.float()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> UNetOutput:
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        if self.graph == "cuda_graph" and (sample.is_cuda or self.simulate_graph):
            return UNetOutput(sample=self._replay(sample, timestep))
        if self._compiled is not None:
            if sample.is_cuda and self.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            return UNetOutput(sample=self._forward(self._compiled, sample, timestep).clone())
        return UNetOutput(sample=self._forward(self.unet, sample, timestep))

    def _replay(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        key = (tuple(sample.shape), sample.dtype, tuple(timestep.shape), timestep.dtype, str(sample.device))
        if key not in self._graphs:
            self._graphs[key] = self._capture(sample, timestep)
        static_sample, static_timestep, static_output, graph = self._graphs[key]
        static_sample.copy_(sample)
        static_timestep.copy_(timestep)
        if graph is None:  # simulated: the same buffers around an eager forward
            static_output.copy_(self._forward(self.unet, static_sample, static_timestep))
        else:
            graph.replay()
        return static_output.clone()

    @torch.no_grad()
    def _capture(self, sample: torch.Tensor, timestep: torch.Tensor) -> tuple:
        static_sample, static_timestep = sample.clone(), timestep.clone()
        if not sample.is_cuda:
            return static_sample, static_timestep, self._forward(self.unet, static_sample, static_timestep), None
        side = torch.cuda.Stream(device=sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):  # warm-up off the capture: cuDNN autotuning, lazy initialisation
            for _ in range(3):
                self._forward(self.unet, static_sample, static_timestep)
        torch.cuda.current_stream(sample.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = self._forward(self.unet, static_sample, static_timestep)
        return static_sample, static_timestep, static_output, graph

    def release(self) -> None:
        """Drop the captured graphs and their memory."""
        self._graphs.clear()


def sampling_device(settings: SamplingAccel) -> torch.device:
    """``restore.accel.device`` resolved (``auto``: CUDA if present, else the CPU)."""
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(settings.device)
    except RuntimeError as error:
        raise ConfigError(f"restore.accel.device '{settings.device}' is no torch device; use cpu, auto or cuda") from error


def for_sampling(model: torch.nn.Module, settings: SamplingAccel | Mapping[str, Any] | None = None,
                 device: torch.device | str | None = None) -> torch.nn.Module:
    """``model`` moved to ``restore.accel.device`` (or ``device``), in eval mode, wrapped as ``settings``
    say; with the defaults on a CPU it is the model itself, unchanged."""
    settings = as_settings(SamplingAccel, settings, "restore.accel")
    device = torch.device(device) if device is not None else sampling_device(settings)
    model = prepare_model(model.to(device).eval(), settings, device)
    if not active(settings, device) or (settings.graph == "off" and not settings.bf16):
        return model
    return SamplingUNet(model, settings.graph, settings.bf16, settings.compile_mode, settings.compile_backend).eval()

"""Stage parameters from params.yaml, typed and checked before anything is computed.

Every params.yaml section is a dataclass below (:data:`SECTIONS`). :func:`parse` checks a
mapping into one: unknown keys, missing keys, wrong types and values out of range are
ConfigErrors that name the key, the expected type and the allowed range. YAML 1.1 reads ``1e-4``
(no decimal point) as a string; a number-typed key accepts such a string as the number it spells.
Blocks handed on to a model as JSON-able configs (``unet``, ``schedule``, ``train``, MUNIT's
``model``) are checked against their schema and kept as plain dicts of the keys given.

Every notebook's first cell (tagged ``parameters``) names its section, set to ``None``::

    drr = None

``papermill -f params.yaml`` injects each section as a variable of the same name; the next cell
calls :func:`stage_settings` ("drr", drr), which checks it (run interactively, it reads the
section from the project's params.yaml). :func:`check_params` (``xrlib params``) checks every
section and the rules that join sections, e.g. that restored DRRs land on the DRR grid, before
any stage trains.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from xrlib.errors import ConfigError
from xrlib.paths import project_root

# ----------------------------------------------------------------------------------------------
# Reading params files


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read a params file (default: the project's params.yaml) as a dict of sections."""
    params_path = Path(path) if path else project_root() / "params.yaml"
    try:
        loaded = yaml.safe_load(params_path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"{params_path}: parameter file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{params_path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{params_path}: expected a mapping of sections at top level")
    return loaded


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overrides``, recursively (mappings merge, anything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# ----------------------------------------------------------------------------------------------
# Checking a mapping into a dataclass


def setting(default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
            above: float | None = None, below: float | None = None, schema: type | None = None) -> Any:
    """A dataclass field with an allowed range: ``low <= x <= high``, ``above < x < below``.

    ``schema``: the field is a dict (or a dict of dicts) whose keys are checked against this dataclass,
    or against the one named "module.Class" (imported only when a section that has it is checked, so
    that checking the data section does not import the models).
    """
    metadata = {"low": low, "high": high, "above": above, "below": below, "schema": schema}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _type_name(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))


def _check(value: Any, kind: Any, where: str) -> Any:
    """``value`` checked against the annotation ``kind`` (numbers given as strings become numbers)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    wrong = ConfigError(f"{where} = {value!r}: expected {_type_name(kind)}")
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(value, option, where)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value not in args:
            raise wrong
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if kind is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return value
    if kind is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong
        if origin is tuple and Ellipsis not in args and len(value) != len(args):
            raise ConfigError(f"{where} = {value!r}: expected {len(args)} values ({_type_name(kind)})")
        item_types = [args[0]] * len(value) if origin is list or Ellipsis in args else list(args)
        return [_check(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise wrong
        return {k: _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, where)
    raise ConfigError(f"{where}: no check for type {kind!r}")  # a programming error in a settings class


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    values = value if isinstance(value, list) else [value]
    for item in values:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        bounds = [(meta.get("low"), lambda x, b: x >= b, ">="), (meta.get("above"), lambda x, b: x > b, ">"),
                  (meta.get("high"), lambda x, b: x <= b, "<="), (meta.get("below"), lambda x, b: x < b, "<")]
        for bound, ok, sign in bounds:
            if bound is not None and not ok(item, bound):
                allowed = ", ".join(f"{s} {b}" for b, _, s in bounds if b is not None)
                raise ConfigError(f"{where} = {value!r} is out of range: must be {allowed}")


def _check_schema(value: Any, schema: type | str, where: str, partial: bool) -> dict[str, Any]:
    """A dict checked key by key against the fields of dataclass ``schema`` (kept as a dict of the keys given)."""
    if isinstance(schema, str):
        module, _, name = schema.rpartition(".")
        schema = getattr(importlib.import_module(module), name)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} = {value!r}: expected a mapping of {schema.__name__} settings")
    known = {f.name: f for f in dataclasses.fields(schema)}
    _refuse_unknown(value, known, where)
    hints = typing.get_type_hints(schema)
    if not partial:
        missing = [n for n, f in known.items() if n not in value and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}; add them")
    checked = {}
    for key, item in value.items():
        nested = known[key].metadata.get("schema")
        if nested is not None:
            checked[key] = _check_schema(item, nested, f"{where}.{key}", partial)
            continue
        checked[key] = _check(item, hints[key], f"{where}.{key}")
        _check_range(checked[key], known[key].metadata, f"{where}.{key}")
    return checked


def _refuse_unknown(value: Mapping[str, Any], known: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"allowed are {', '.join(sorted(known))}")


def parse(cls: type, values: Any, where: str = "") -> Any:
    """``values`` (a mapping) checked into dataclass ``cls``; ``where`` names it in messages ("drr")."""
    where = where or cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _refuse_unknown(values, known, where)
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, spec in known.items():
        key = f"{where}.{name}"
        if name not in values:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where} lacks '{name}' ({_type_name(hints[name])}); add it")
            continue
        schema = spec.metadata.get("schema")
        if schema is not None and typing.get_origin(hints[name]) is dict and typing.get_args(hints[name])[1] is not Any:
            checked[name] = {k: _check_schema(v, schema, f"{key}.{k}", partial=True) for k, v in values[name].items()}
        elif schema is not None:
            checked[name] = _check_schema(values[name], schema, key, partial=False)
        else:
            checked[name] = _check(values[name], hints[name], key)
            _check_range(checked[name], spec.metadata, key)
    return cls(**checked)


# ----------------------------------------------------------------------------------------------
# Schemas of the blocks handed on to models as JSON-able configs


@dataclass(frozen=True, kw_only=True)
class UnetSchema:
    """Keys of a ``unet`` block (:func:`xrlib.models.unet.build_unet`)."""

    block_out_channels: list[int] = setting(low=1)
    image_channels: int = setting(1, low=1)
    condition_channels: int = setting(0, low=0)
    layers_per_block: int = setting(2, low=1)
    attention_levels: list[bool] = setting([])
    norm_num_groups: int = setting(32, low=1)
    dropout: float = setting(0.0, low=0.0, below=1.0)
    attention_head_dim: int = setting(8, low=1)
    sample_px: int = setting(64, low=8)


LEAKING_BRIDGE = (
    "schedule.process 'indi' with a condition needs schedule.indi_noise > 0: without noise the bridge state "
    "x_t = (1 - t) x + t y and the condition y give x = (x_t - t y) / (1 - t) for every t < 1, so the network "
    "learns that division, not restoration (ResShift, Yue et al. 2023, adds the same noise); try indi_noise "
    "about the residual's standard deviation in diffusion-space units"
)
"""Why a conditioned InDI bridge must carry noise (refused by :func:`xrlib.models.sampling.indi_loss` and the settings check)."""


@dataclass(frozen=True, kw_only=True)
class ScheduleSchema:
    """Keys of a ``schedule`` block (:func:`xrlib.models.sampling.make_scheduler`)."""

    num_train_timesteps: int = setting(1000, low=2)
    beta_schedule: Literal["cosine", "linear"] = "cosine"
    beta_start: float = setting(1e-4, above=0.0, below=1.0)
    beta_end: float = setting(0.02, above=0.0, below=1.0)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    loss: Literal["l1", "l2"] = "l2"
    target: Literal["image", "residual"] = "image"
    residual_scale: float = setting(1.0, above=0.0)
    process: Literal["diffusion", "indi"] = "diffusion"
    """diffusion: a DDPM from noise; indi: a bridge from the input (InDI, Delbracio and Milanfar 2023; predicts x0)."""
    indi_noise: float = setting(0.0, low=0.0)
    """InDI: noise standard deviation at t = 1, in diffusion-space units (0: a deterministic bridge, which a
    conditioned restorer may not use: :data:`LEAKING_BRIDGE`)."""


SAMPLERS = Literal["ddpm", "ddim", "dpm_solver"]
DRR_CROPS = Literal["centre", "body"]
"""How a DRR is cut to a square: its centre square, or the square on its body (:func:`xrlib.lq.pairs.body_square`)."""
LQ_GENERATORS = Literal["bicubic", "ddpm", "munit"]


# ----------------------------------------------------------------------------------------------
# The sections of params.yaml


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """00_data: the manifests of the inputs."""

    seed: int = setting(low=0)
    split_fractions: dict[str, float] = setting(low=0.0, high=1.0)
    max_side_px: int = setting(low=64)
    xray_views: Optional[list[str]] = None


@dataclass(frozen=True, kw_only=True)
class DrrSettings:
    """01_drr: CT -> nodules inserted -> DRRs."""

    seed: int = setting(low=0)
    ct_spacing_mm: Optional[float] = setting(None, above=0.0)
    augmentations_per_ct: int = setting(low=1)
    augment_rotation_deg: float = setting(low=0.0, high=45.0)
    augment_scale: float = setting(low=0.0, below=1.0)
    elastic_displacement_mm: float = setting(low=0.0)
    view: Literal["PA", "AP"] = "PA"
    size_px: int = setting(low=16)
    sid_mm: float = setting(above=0.0)
    detector_mm: float = setting(above=0.0)
    centre_to_detector_mm: float = setting(low=0.0)
    max_rotation_deg: float = setting(low=0.0, high=45.0)
    max_translation_mm: float = setting(low=0.0)
    kvp: float = setting(low=40.0, high=150.0)
    filtration_mm_al: float = setting(low=0.0)
    energy_kev: Optional[float] = setting(None, low=10.0, high=150.0)
    photons_per_pixel: Optional[float] = setting(None, above=0.0)
    blur_sigma_mm: float = setting(low=0.0)
    unsharp_amount: float = setting(low=0.0)
    nodules_per_drr: int = setting(low=0)
    nodule_diameter_mm: tuple[float, float] = setting(above=0.0)
    nodule_types: list[Literal["solid", "part_solid", "ground_glass"]] = setting()
    nodule_margins: list[Literal["smooth", "lobulated", "spiculated"]] = setting()
    nodule_library: Optional[str] = None
    margin_mm: float = setting(low=0.0)
    gallery_size: int = setting(low=1)


@dataclass(frozen=True, kw_only=True)
class LqDdpmSettings:
    """02_lq_ddpm: a DDPM trained on DRRs makes DDPM-LQ twins by SDEdit (+ ILVR)."""

    seed: int = setting(low=0)
    image_px: int = setting(low=8)
    unet: dict[str, Any] = setting(schema=UnetSchema)
    schedule: dict[str, Any] = setting(schema=ScheduleSchema)
    train: dict[str, Any] = setting(schema="xrlib.models.training.TrainConfig")
    sampler: SAMPLERS = "dpm_solver"
    num_inference_steps: int = setting(low=1)
    strength_sweep: list[float] = setting(above=0.0, high=1.0)
    """SDEdit strengths tried; 02 keeps the (strength, ILVR factor) that the twin checks pick."""
    ilvr_sweep: list[int] = setting(low=0)
    """ILVR factors tried (0: no guidance)."""
    gallery_count: int = setting(low=1)
    accel: dict[str, Any] = setting({}, schema="xrlib.models.accel.SamplingAccel")
    """How the UNet runs when it makes twins (:class:`xrlib.models.accel.SamplingAccel`; default: the CPU, eager, float32)."""


@dataclass(frozen=True, kw_only=True)
class LqMunitSettings:
    """03_lq_munit: MUNIT trained on unpaired HQ X-rays and DRRs makes MUNIT-LQ twins."""

    seed: int = setting(low=0)
    image_px: int = setting(low=8)
    model: dict[str, Any] = setting(schema="xrlib.models.munit.MunitConfig")
    train: dict[str, Any] = setting(schema="xrlib.models.munit.MunitTraining")
    style_interpolation_steps: int = setting(low=2)
    low_frequency_anchor_factor: Optional[int] = setting(None, low=2)
    """MUNIT-LQ twins keep their HQ image's low-pass phi_N (:func:`xrlib.lq.twins.anchor_low_frequencies`); null: off."""


@dataclass(frozen=True, kw_only=True)
class PairsSettings:
    """03_lq_munit: the (LQ, HQ) pairs; hq_px / lq_px is the restorer's scale."""

    seed: int = setting(low=0)
    hq_px: int = setting(low=8)
    lq_px: int = setting(low=4)
    tiles_per_side: int = setting(low=1)
    split_fractions: dict[str, float] = setting(low=0.0, high=1.0)
    low_pass_sigma_px: float = setting(above=0.0)
    gallery_count: int = setting(low=1)
    drr_crop: DRR_CROPS = "centre"
    """The DRRs that DDPM-LQ and MUNIT learn and the twin checks compare with: each DRR's centre square, or the
    square on its body (:func:`xrlib.lq.pairs.body_square`: no black frame, no CT field-of-view edge)."""

    @property
    def scale(self) -> int:
        """The restorer's output size over its input size."""
        return self.hq_px // self.lq_px


@dataclass(frozen=True, kw_only=True)
class RestorerConfigSchema:
    """Keys of ``restorer.base`` and of each ``restorer.configs`` entry (which override the base)."""

    generator: LQ_GENERATORS = "bicubic"
    crop_px: Optional[int] = setting(None, low=8)
    flip_left_right: bool = False
    mask_channel: bool = False
    preview_images: int = setting(2, low=1)
    unet: dict[str, Any] = setting({}, schema=UnetSchema)
    schedule: dict[str, Any] = setting({}, schema=ScheduleSchema)
    train: dict[str, Any] = setting({}, schema="xrlib.models.training.TrainConfig")


@dataclass(frozen=True, kw_only=True)
class RestorerSettings:
    """04_restorer: conditional DDPMs on (LQ, HQ) pairs, one per configuration."""

    seed: int = setting(low=0)
    train_configs: list[str] = setting()
    base: dict[str, Any] = setting(schema=RestorerConfigSchema)
    configs: dict[str, dict[str, Any]] = setting(schema=RestorerConfigSchema)


@dataclass(frozen=True, kw_only=True)
class RestoreSettings:
    """05_restore: trained restorers applied to the DRRs and to the held-out test pairs."""

    seed: int = setting(low=0)
    configs: list[str] = setting()
    test_inputs: dict[str, list[LQ_GENERATORS]] = setting()
    sampler: SAMPLERS = "dpm_solver"
    steps: int = setting(low=1)
    strength: float = setting(1.0, above=0.0, high=1.0)
    """1: sample from pure noise; below 1: start from the upsampled input noised that far (CCDF)."""
    indi_steps_sweep: Optional[list[int]] = setting(None, low=1)
    """InDI restorers: step counts tried on validation pairs; the test pairs are restored with the one of highest
    SSIM among those beating the input in PSNR (null: ``steps``)."""
    drr_psnr_budget_db: float = setting(0.0, low=0.0)
    """InDI restorers: DRRs are restored with the most steps of ``indi_steps_sweep`` whose validation PSNR stays
    within this many dB of the test pairs' count (0: the same count)."""
    batch_size: int = setting(low=1)
    input_px: Optional[int] = setting(None, low=8)
    zoom_px: int = setting(low=1)
    gallery_images: int = setting(low=1)
    accel: dict[str, Any] = setting({}, schema="xrlib.models.accel.SamplingAccel")
    """Where and how the UNet runs (:class:`xrlib.models.accel.SamplingAccel`; default: the CPU, eager, float32)."""


@dataclass(frozen=True, kw_only=True)
class RealismSettings:
    size_px: int = setting(low=16)
    max_images: Optional[int] = setting(None, low=2)
    n_bins: int = setting(low=2)
    roi_size_px: int = setting(low=8)
    nps_keep_fraction: float = setting(above=0.0, high=1.0)
    edge_quantile: float = setting(above=0.0, below=1.0)


@dataclass(frozen=True, kw_only=True)
class NoduleRuleSettings:
    n_background: int = setting(low=2)
    min_contrast_ratio: float = setting(low=0.0)
    max_peak_shift_radii: float = setting(above=0.0)


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """06_metrics: the paper's quality table, realism, FID/KID, nodule preservation."""

    seed: int = setting(low=0)
    split: str = "test"
    degradations: list[LQ_GENERATORS] = setting()
    restored_test: dict[str, str] = setting()
    """method -> the restore configuration whose test restorations it scores (may hold {generator})."""
    restored_drr_config: str = setting()
    """The restore configuration whose restored DRRs are scored for realism and nodules."""
    comparisons: list[tuple[str, str]] = setting()
    bootstrap_resamples: int = setting(low=100)
    confidence: float = setting(above=0.0, below=1.0)
    realism: RealismSettings = setting()
    nodules: NoduleRuleSettings = setting()
    fid_weights_path: Optional[str] = None


@dataclass(frozen=True, kw_only=True)
class ChoSettings:
    n_channels: int = setting(low=1)
    width_px: float = setting(above=0.0)
    internal_noise: float = setting(low=0.0)


@dataclass(frozen=True, kw_only=True)
class SyntheticReaderSettings:
    n_cases: int = setting(low=4)
    amplitude_by_condition: dict[str, float] = setting(above=0.0)


@dataclass(frozen=True, kw_only=True)
class ReadersSettings:
    """07_readers: virtual readers (model observers), the reader-study deck, human ratings, MRMC."""

    seed: int = setting(low=0)
    alpha: float = setting(above=0.0, below=1.0)
    conditions: dict[str, Optional[str]] = setting()
    """condition -> restore configuration whose restored DRRs it shows (null: the DRRs themselves)."""
    min_cases_per_condition: int = setting(low=2)
    roi_size_px: int = setting(low=8)
    n_virtual_readers: int = setting(low=1)
    train_fraction: float = setting(above=0.0, below=1.0)
    cho: ChoSettings = setting()
    synthetic: SyntheticReaderSettings = setting()


@dataclass(frozen=True, kw_only=True)
class FiguresSettings:
    """08_figures: the paper's figures and tables."""

    gallery_cases: int = setting(low=1)
    generators: list[LQ_GENERATORS] = setting()
    mrmc_analysis: str = setting()
    labels: dict[str, str] = setting()


SECTIONS: dict[str, type] = {
    "data": DataSettings, "drr": DrrSettings, "lq_ddpm": LqDdpmSettings, "lq_munit": LqMunitSettings,
    "pairs": PairsSettings, "restorer": RestorerSettings, "restore": RestoreSettings, "metrics": MetricsSettings,
    "readers": ReadersSettings, "figures": FiguresSettings,
}
"""params.yaml's sections and the dataclass each is checked into."""


def stage_settings(section: str, injected: Mapping[str, Any] | None = None) -> Any:
    """The checked settings of one section: ``injected`` (from papermill) if given, else params.yaml's."""
    if section not in SECTIONS:
        raise ConfigError(f"no params section '{section}'; sections are {', '.join(SECTIONS)}")
    if injected is None:
        params = load_params()
        if section not in params:
            raise ConfigError(f"params.yaml has no section '{section}'; add it (see README, Profiles)")
        injected = params[section]
    return parse(SECTIONS[section], injected, section)


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every section checked (unknown sections refused), then the rules that join sections.

    Returns the settings by section. Rules: the pair sizes give the restorer an integer scale;
    restored DRRs land on the DRR grid (restore.input_px * scale == drr.size_px); DDPM-LQ works at
    the LQ size; every configuration named elsewhere exists.
    """
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"params: unknown section{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"sections are {', '.join(SECTIONS)}")
    missing = [name for name in SECTIONS if name not in params]
    if missing:
        raise ConfigError(f"params lacks section{'s' if len(missing) > 1 else ''} {', '.join(missing)}; add them")
    settings = {name: parse(cls, params[name], name) for name, cls in SECTIONS.items()}
    pairs, drr, restore = settings["pairs"], settings["drr"], settings["restore"]
    restorer, metrics, readers = settings["restorer"], settings["metrics"], settings["readers"]
    if pairs.hq_px % pairs.lq_px or pairs.scale < 2:
        raise ConfigError(f"pairs.hq_px = {pairs.hq_px} must be an integer multiple (2 or more) of pairs.lq_px = "
                          f"{pairs.lq_px}: their ratio is the restorer's scale")
    check_drr_grid(restore, pairs, drr)
    anchor = settings["lq_munit"].low_frequency_anchor_factor
    if anchor is not None and pairs.lq_px % anchor:
        raise ConfigError(f"lq_munit.low_frequency_anchor_factor = {anchor} must divide pairs.lq_px = {pairs.lq_px} "
                          "(the twins' size)")
    if settings["lq_ddpm"].image_px != pairs.lq_px:
        raise ConfigError(f"lq_ddpm.image_px = {settings['lq_ddpm'].image_px} must equal pairs.lq_px = "
                          f"{pairs.lq_px}: DDPM-LQ twins are made at the restorer's input size")
    for name, overrides in restorer.configs.items():
        schedule = deep_merge(restorer.base, overrides).get("schedule", {})
        if schedule.get("process") == "indi" and schedule.get("prediction_type") != "sample":
            raise ConfigError(f"restorer configuration '{name}': schedule.process 'indi' predicts the clean image; "
                              "set schedule.prediction_type to 'sample'")
        if schedule.get("process") == "indi" and float(schedule.get("indi_noise", 0.0)) <= 0:
            raise ConfigError(f"restorer configuration '{name}': {LEAKING_BRIDGE}")
    crop_px = restorer.base.get("crop_px")
    if crop_px is not None and crop_px > pairs.hq_px:
        raise ConfigError(f"restorer.base.crop_px = {crop_px} exceeds pairs.hq_px = {pairs.hq_px}")
    _known("restorer.train_configs", restorer.train_configs, restorer.configs, "restorer.configs")
    _known("restore.configs", restore.configs, restorer.train_configs, "restorer.train_configs")
    _known("restore.configs", restore.configs, list(restore.test_inputs), "restore.test_inputs (the test sets each restores)")
    named = [c.format(generator=g) for c in metrics.restored_test.values() for g in metrics.degradations]
    _known("metrics.restored_test", named, restore.configs, "restore.configs")
    _known("metrics.restored_drr_config", [metrics.restored_drr_config], restore.configs, "restore.configs")
    _known("readers.conditions", [c for c in readers.conditions.values() if c], restore.configs, "restore.configs")
    return settings


def check_drr_grid(restore: RestoreSettings, pairs: PairsSettings, drr: DrrSettings) -> None:
    """Restored DRRs land on the DRR grid: restore.input_px times the scale (pairs.hq_px / pairs.lq_px) is drr.size_px."""
    if restore.input_px is None or restore.input_px * pairs.scale != drr.size_px:
        raise ConfigError(f"restore.input_px = {restore.input_px} times the restorer's scale {pairs.scale} "
                          f"(pairs.hq_px / pairs.lq_px) must equal drr.size_px = {drr.size_px}, so restored DRRs "
                          "share the DRR grid (readers and nodule metrics compare them pixel for pixel)")


def _known(where: str, names: list[str], known: Any, known_where: str) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"{where} names {', '.join(unknown)}, not in {known_where} ({', '.join(known)})")

"""Typed settings: every params section is checked before compute, with messages that say what to fix."""

import copy

import pytest

from xrlib.errors import ConfigError
from xrlib.params import DrrSettings, check_params, load_params, parse, stage_settings
from xrlib.profiles import profile_params


@pytest.fixture(scope="module")
def params(project_root):
    return load_params(project_root / "params.yaml")


def changed(params, dotted, value):
    """A deep copy of ``params`` with the key at ``dotted`` set to ``value`` (or removed if value is ...)."""
    result = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = result
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return result


@pytest.mark.parametrize("profile", ["smoke", "real-data", "paper"])
def test_every_profile_passes_the_checks(project_root, profile, monkeypatch):
    monkeypatch.setenv("XRLIB_ROOT", str(project_root))
    settings = check_params(profile_params(profile))
    assert settings["pairs"].scale == 2
    assert settings["restore"].input_px * settings["pairs"].scale == settings["drr"].size_px


def test_settings_are_typed_attributes(params):
    drr = parse(DrrSettings, params["drr"], "drr")
    assert drr.kvp == 120.0 and drr.view == "PA" and drr.nodule_library is None
    assert drr.nodule_diameter_mm == [6.0, 25.0]
    restorer = check_params(params)["restorer"]
    assert restorer.base["unet"]["block_out_channels"] == [16, 32, 32]  # model blocks stay JSON-able dicts


@pytest.mark.parametrize("dotted, value, message", [
    ("restore.stepz", 3, "restore: unknown key stepz; allowed are accel, batch_size, configs"),
    ("restorer.base.unet.dropouts", 0.1, "restorer.base.unet: unknown key dropouts"),
    ("restorer.configs.bicubic_baseline.trian", {}, "restorer.configs.bicubic_baseline: unknown key trian"),
    ("lq_ddpm.train.learnig_rate", 1e-3, "lq_ddpm.train: unknown key learnig_rate"),
    ("drr.kvp", "high", "drr.kvp = 'high': expected float"),
    ("drr.size_px", 256.0, "drr.size_px = 256.0: expected int"),
    ("drr.kvp", 300.0, "drr.kvp = 300.0 is out of range: must be >= 40.0, <= 150.0"),
    ("restore.strength", 0.0, "restore.strength = 0.0 is out of range: must be > 0.0"),
    ("restorer.base.schedule.residual_scale", 0.0, "restorer.base.schedule.residual_scale = 0.0 is out of range: must be > 0.0"),
    ("restore.sampler", "euler", "restore.sampler = 'euler': expected one of 'ddpm', 'ddim', 'dpm_solver'"),
    ("drr.nodule_types", ["solid", "glass"], "drr.nodule_types[1] = 'glass': expected one of"),
    ("drr.nodule_diameter_mm", [6.0], "drr.nodule_diameter_mm = [6.0]: expected 2 values"),
    ("metrics.realism.n_bins", ..., "metrics.realism lacks 'n_bins' (int); add it"),
    ("restorer.base.schedule.beta_schedule", "sigmoid", "restorer.base.schedule.beta_schedule = 'sigmoid'"),
    ("readers.cho.width_px", -1.0, "readers.cho.width_px = -1.0 is out of range: must be > 0.0"),
    ("pairs.drr_crop", "middle", "pairs.drr_crop = 'middle': expected one of 'centre', 'body'"),
])
def test_bad_settings_name_the_key_the_type_and_the_range(params, dotted, value, message):
    with pytest.raises(ConfigError) as error:
        check_params(changed(params, dotted, value))
    assert message in str(error.value)


def test_yaml_exponents_without_a_point_are_read_as_numbers(params):
    # YAML 1.1 reads 1e-4 (no decimal point) as the string "1e-4"
    settings = check_params(changed(params, "restorer.base.train.learning_rate", "1e-4"))
    assert settings["restorer"].base["train"]["learning_rate"] == pytest.approx(1e-4)
    assert isinstance(settings["restorer"].base["train"]["learning_rate"], float)
    settings = check_params(changed(params, "drr.sid_mm", "1.8e3"))
    assert settings["drr"].sid_mm == 1800.0
    with pytest.raises(ConfigError, match="learning_rate = '1e-4x': expected float"):
        check_params(changed(params, "restorer.base.train.learning_rate", "1e-4x"))
    with pytest.raises(ConfigError, match="expected int"):
        check_params(changed(params, "drr.size_px", "256"))  # counts are never read from strings


@pytest.mark.parametrize("dotted, value, message", [
    ("restore.input_px", 64, "restore.input_px = 64 times the restorer's scale 2 (pairs.hq_px / pairs.lq_px) "
                             "must equal drr.size_px = 256"),
    ("restore.input_px", None, "must equal drr.size_px"),
    ("pairs.lq_px", 48, "pairs.hq_px = 128 must be an integer multiple (2 or more) of pairs.lq_px = 48"),
    ("lq_ddpm.image_px", 32, "lq_ddpm.image_px = 32 must equal pairs.lq_px = 64"),
    ("restore.configs", ["bicubic_baseline", "unet_xl"], "restore.configs names unet_xl, not in restorer.train_configs"),
    ("metrics.restored_drr_config", "diffusionxray_mnuit", "metrics.restored_drr_config names diffusionxray_mnuit"),
    ("readers.conditions", {"drr": None, "x": "absent"}, "readers.conditions names absent"),
    ("restorer.train_configs", ["bicubic_baseline", "typo"], "restorer.train_configs names typo, not in restorer.configs"),
])
def test_rules_joining_sections_are_checked_before_any_stage_trains(params, dotted, value, message):
    with pytest.raises(ConfigError) as error:
        check_params(changed(params, dotted, value))
    assert message in str(error.value)


def test_unknown_and_missing_sections_are_refused(params):
    with pytest.raises(ConfigError, match="unknown section restorr"):
        check_params({**params, "restorr": {}})
    with pytest.raises(ConfigError, match="lacks section figures"):
        check_params({k: v for k, v in params.items() if k != "figures"})


def test_stage_settings_reads_params_yaml_when_nothing_is_injected(project_root, params, monkeypatch):
    monkeypatch.setenv("XRLIB_ROOT", str(project_root))
    assert stage_settings("pairs").hq_px == params["pairs"]["hq_px"]
    assert stage_settings("pairs", {**params["pairs"], "hq_px": 256}).scale == 4
    with pytest.raises(ConfigError, match="no params section 'pair'"):
        stage_settings("pair")


def test_cli_checks_params_and_names_the_fault(project_root, tmp_path, monkeypatch, capsys):
    from xrlib.cli import main

    monkeypatch.setenv("XRLIB_ROOT", str(project_root))
    assert main(["params"]) == 0
    assert "restorer scale 2" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("restore: {steps: 0}\n")
    assert main(["params", str(bad)]) == 2
    assert "restore.steps = 0 is out of range: must be >= 1" in capsys.readouterr().err

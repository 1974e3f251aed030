"""The GPU check script runs end to end on a CPU in its dry mode and writes a complete report."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_part(project_root, tmp_path):
    report_path = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(project_root / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
                    str(report_path)], cwd=project_root, check=True, capture_output=True, timeout=600)
    report = json.loads(report_path.read_text())
    assert report["dry_run"] is True and report["cuda_tests"]["exit_code"] == 0
    assert report["drr"]["finite"] and report["drr"]["drrs_per_second"] > 0
    training = report["restorer"]["training"][0]
    assert training["images_per_s"] > 0 and training["flop_per_step"] > 0
    assert {s["sampler"] for s in report["restorer"]["sampling"]} == {"ddpm", "ddim", "dpm_solver"}

"""Training curves read back from what dvclive wrote."""

import pytest
from dvclive import Live

from xrlib.errors import DataError
from xrlib.models.logs import read_curves


def test_read_curves_returns_every_logged_scalar_by_step(tmp_path):
    with Live(str(tmp_path / "dvclive"), save_dvc_exp=False, dvcyaml=False) as live:
        for step in range(4):
            live.log_metric("train/loss", 1.0 / (step + 1))
            live.log_metric("train/learning_rate", 0.1 * step)
            if step % 2 == 0:
                live.log_metric("val/psnr_db", 20.0 + step)
            live.next_step()
    curves = read_curves(tmp_path / "dvclive")
    assert sorted(curves["metric"].unique()) == ["train/learning_rate", "train/loss", "val/psnr_db"]
    loss = curves[curves["metric"] == "train/loss"]
    assert loss["step"].tolist() == [0, 1, 2, 3]
    assert loss["value"].tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    psnr = curves[curves["metric"] == "val/psnr_db"]
    assert psnr["step"].tolist() == [0, 2] and psnr["value"].tolist() == [20.0, 22.0]


def test_read_curves_refuses_a_folder_without_curves(tmp_path):
    with pytest.raises(DataError, match="no dvclive curves"):
        read_curves(tmp_path)

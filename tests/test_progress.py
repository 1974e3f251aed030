"""Progress bars: one helper, a widget bar in the Lab, a few plain lines under the pipeline, none when off."""

import io

import numpy as np
import pandas as pd

from xrlib.progress import progress
from xrlib.stats.units import summarise_metrics


def test_pipeline_bars_are_plain_text_and_do_not_flood(monkeypatch):
    monkeypatch.setenv("XRLIB_PROGRESS", "text")
    stream = io.StringIO()
    assert sum(progress(range(5000), "steps", 5000, file=stream)) == sum(range(5000))
    lines = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, lines  # the first and the last state, not one line per step
    assert "steps" in lines[-1] and "5000/5000" in lines[-1]
    assert all(ord(c) < 128 for c in stream.getvalue())  # no block characters in logs


def test_bars_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("XRLIB_PROGRESS", "off")
    stream = io.StringIO()
    with progress(total=3, desc="x", file=stream) as bar:
        bar.update(3)
    assert stream.getvalue() == ""


def test_a_loop_a_user_waits_for_shows_its_bar(monkeypatch, capsys):
    monkeypatch.setenv("XRLIB_PROGRESS", "text")
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"method": ["a", "b"] * 10, "psnr": rng.normal(size=20),
                          "image_id": [f"i{i}" for i in range(20)], "patient_id": [f"p{i % 5}" for i in range(20)]})
    summarise_metrics(table, ["psnr"], ["method"], n_resamples=200)
    assert "bootstrap" in capsys.readouterr().err

"""Atomic writes leave files with the mode a plain write under the umask would give."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from xrlib.io import save_png16, write_csv_atomic, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        paths = [write_text_atomic(tmp_path / "a.txt", "x"), write_json_atomic(tmp_path / "b.json", {"a": 1}),
                 write_csv_atomic(tmp_path / "c.csv", pd.DataFrame({"a": [1]})),
                 save_png16(tmp_path / "d.png", np.zeros((4, 4)))]
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(plain.stat().st_mode) == mode
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.csv", "d.png", "plain.txt"]

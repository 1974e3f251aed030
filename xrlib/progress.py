"""Progress bars for the loops a user waits for: one helper, one policy.

:func:`progress` is ``tqdm`` with the bar chosen by where the code runs:

- in JupyterLab (an IPython kernel) the notebook widget bar (``tqdm.auto``);
- in a terminal the ordinary text bar;
- under the pipeline (``XRLIB_PROGRESS=text``, which the stage runner sets for papermill's kernel)
  or wherever standard error is not a terminal (CI logs), a plain text bar that writes at most once
  every ``XRLIB_PROGRESS_INTERVAL`` seconds (30 by default), so executed notebooks and logs get a
  few lines, never one per step;
- ``XRLIB_PROGRESS=off`` turns every bar off.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable

MODES = ("auto", "text", "off")


def _mode() -> str:
    mode = os.environ.get("XRLIB_PROGRESS", "auto").strip().lower() or "auto"
    return mode if mode in MODES else "auto"


def _in_kernel() -> bool:
    """Whether this runs in an IPython kernel (JupyterLab, or papermill's kernel)."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _interval() -> float:
    try:
        return max(0.1, float(os.environ.get("XRLIB_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


def progress(iterable: Iterable | None = None, desc: str | None = None, total: int | None = None, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), the right kind for where it runs.

    Extra keyword arguments go to tqdm (``initial``, ``leave``, ``unit``, ``disable``...).
    """
    mode = _mode()
    if mode == "off":
        kwargs["disable"] = True
    if mode == "auto" and _in_kernel():
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm

        if mode == "text" or not getattr(sys.stderr, "isatty", lambda: False)():
            kwargs.setdefault("mininterval", _interval())
            kwargs.setdefault("maxinterval", max(_interval(), 10.0))
            kwargs.setdefault("ascii", True)
            kwargs.setdefault("dynamic_ncols", False)
            kwargs.setdefault("ncols", 100)
    return tqdm(iterable, desc=desc, total=total, **kwargs)

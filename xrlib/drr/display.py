"""Display processing: line integrals -> display intensity in [0, 1], bright = attenuating.

A deterministic mapping like a CR console's default chest processing:

1. Window in the log domain (line integrals already are ``-ln(I/I0)``): ``low`` is the
   ``lung_percentile``-th percentile of the line integrals inside the projected lungs (darkest
   lung shows near black), ``high`` the ``body_percentile``-th percentile of all pixels
   (spine and mediastinum near white). Without a lung region, ``low`` is taken over the body
   (pixels above 5% of the maximum).
2. ``d = clip((p - low) / (high - low), 0, 1) ** gamma``.
3. Optional unsharp masking (edge enhancement): ``d + amount * (d - gaussian(d, sigma))``, clipped.

The window is computed once per patient from the nodule-free render and applied to both renders,
so their difference shows only the nodule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from xrlib.drr.physics import gaussian_blur
from xrlib.errors import DataError


@dataclass(frozen=True)
class DisplayWindow:
    """Log-domain window and processing parameters (JSON-ready via ``asdict``)."""

    low: float
    high: float
    gamma: float = 1.0
    unsharp_amount: float = 0.0
    unsharp_sigma_px: float = 8.0

    def to_dict(self) -> dict:
        return asdict(self)


def display_window(line_integrals: torch.Tensor, lung_region: torch.Tensor | None = None,
                   lung_percentile: float = 1.0, body_percentile: float = 99.5, **processing) -> DisplayWindow:
    """The window for one (H, W) line-integral image (see the module's rule)."""
    p = line_integrals.detach().flatten().to(torch.float64)
    if lung_region is not None and bool(lung_region.any()):
        lung_values = line_integrals.detach()[lung_region.bool()].to(torch.float64)
    else:
        lung_values = p[p > 0.05 * p.max()]
    low = float(torch.quantile(lung_values, lung_percentile / 100.0))
    high = float(torch.quantile(p, body_percentile / 100.0))
    if not high > low:
        raise DataError(
            f"degenerate display window (low {low:.4f} >= high {high:.4f}): the radiograph is flat; "
            "check that the CT holds a patient and the geometry points at the lungs"
        )
    return DisplayWindow(low=low, high=high, **processing)


def to_display(line_integrals: torch.Tensor, window: DisplayWindow) -> torch.Tensor:
    """Display intensity in [0, 1] of line integrals of shape (..., H, W)."""
    shape = line_integrals.shape
    image = ((line_integrals - window.low) / (window.high - window.low)).clamp(0.0, 1.0) ** window.gamma
    if window.unsharp_amount > 0:
        flat = image.reshape(-1, 1, *shape[-2:])
        image = (flat + window.unsharp_amount * (flat - gaussian_blur(flat, window.unsharp_sigma_px)))
        image = image.clamp(0.0, 1.0).reshape(shape)
    return image

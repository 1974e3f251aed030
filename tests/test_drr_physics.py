"""Physics against NIST tables and Beer-Lambert identities; display mapping."""

import numpy as np
import pytest
import torch

from xrlib.drr.display import display_window, to_display
from xrlib.drr.physics import (attenuation_per_mm, detector_response, mass_attenuation_cm2_per_g,
                               material_densities, polyenergetic_line_integrals, tube_spectrum)
from xrlib.errors import ConfigError


@pytest.mark.parametrize("material, energy_kev, nist_cm2_per_g", [
    ("soft_tissue", 60.0, 0.2048),   # NIST XCOM/X-ray mass attenuation, Tissue Soft (ICRU-44)
    ("cortical_bone", 60.0, 0.3148), # Bone, Cortical (ICRU-44)
    ("air", 60.0, 0.1875),           # Air, Dry (near sea level)
    ("soft_tissue", 100.0, 0.1695),
])
def test_mass_attenuation_matches_nist(material, energy_kev, nist_cm2_per_g):
    assert mass_attenuation_cm2_per_g(material, energy_kev)[0] == pytest.approx(nist_cm2_per_g, rel=0.02)


def test_hu_to_attenuation_anchors():
    mu = attenuation_per_mm(torch.tensor([-1000.0, 0.0, 1500.0]), 60.0)
    assert mu[0] == pytest.approx(0.001205 * 0.1875 / 10, rel=0.02)  # air
    assert mu[1] == pytest.approx(1.0 * 0.2048 / 10, rel=0.02)  # water-dense soft tissue
    assert mu[2] == pytest.approx(1.92 * 0.3148 / 10, rel=0.02)  # cortical bone
    densities = material_densities(torch.tensor([-500.0]))
    assert densities[1, 0] == pytest.approx(0.5)  # half tissue by volume


def test_polyenergetic_reduces_to_monoenergetic_for_a_single_line():
    spectrum = tube_spectrum(120.0, 2.5)
    assert 50.0 < spectrum.mean_energy_kev < 75.0
    assert spectrum.weights.sum() == pytest.approx(1.0)
    thickness = torch.tensor([0.0, 200.0, 0.0]).view(1, 3, 1, 1)  # 200 mm of tissue (g/cm3 x mm)
    poly = polyenergetic_line_integrals(thickness, spectrum)
    mu = np.array([mass_attenuation_cm2_per_g("soft_tissue", e)[0] / 10 for e in spectrum.energies_kev])
    expected = -np.log(np.sum(spectrum.weights * np.exp(-mu * 200.0)))
    assert float(poly) == pytest.approx(expected, rel=1e-5)
    # Beam hardening: the effective attenuation per mm falls with thickness.
    thin = polyenergetic_line_integrals(thickness / 10, spectrum)
    assert float(poly) / 200.0 < float(thin) / 20.0


def test_noise_follows_poisson_statistics_and_blur_keeps_flat_images():
    line = torch.full((1, 1, 200, 200), 2.0)
    noisy = detector_response(line, 10000.0, 0.0, torch.Generator().manual_seed(0))
    counts = torch.exp(-noisy) * 10000.0
    assert float(counts.mean()) == pytest.approx(10000.0 * np.exp(-2.0), rel=0.01)
    assert float(counts.var()) == pytest.approx(10000.0 * np.exp(-2.0), rel=0.05)
    torch.testing.assert_close(detector_response(line, None, 2.0), line)


def test_spectrum_refuses_absurd_kvp():
    with pytest.raises(ConfigError, match="kvp"):
        tube_spectrum(500.0, 2.5)


def test_display_window_maps_percentiles_to_black_and_white():
    line = torch.linspace(0.0, 4.0, 100 * 100).view(100, 100)
    lungs = line < 1.0
    window = display_window(line, lungs, lung_percentile=0.0, body_percentile=100.0)
    image = to_display(line, window)
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert torch.all(image.flatten().diff() >= 0)  # bright = more attenuation

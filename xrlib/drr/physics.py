"""X-ray physics: HU -> material densities -> attenuation (NIST data via xraydb), tube spectra
(spekpy), polyenergetic Beer-Lambert, quantum noise and detector blur.

Material model (two-component mixtures, density from HU):

* HU <= 0: air + soft tissue. Volume fraction of tissue ``f = (HU + 1000) / 1000``; lung
  parenchyma is this mixture (air in the alveoli, tissue in the walls).
* 0 < HU <= ``BONE_HU``: soft tissue + cortical bone, bone volume fraction ``HU / BONE_HU``.
* HU > ``BONE_HU``: cortical bone with density scaled by ``(HU + 1000) / (BONE_HU + 1000)``.

Each voxel thus holds partial densities (g/cm^3) of three materials (air, soft tissue, cortical
bone; elemental mass fractions from ICRU Report 44, as tabulated by NIST), and
``mu = sum_m rho_m * (mu/rho)_m(E)``, with ``(mu/rho)`` from xraydb's Elam tables. Projecting the
three partial-density volumes gives material mass thicknesses, from which the polyenergetic
detected signal ``I/I0 = sum_E w(E) exp(-sum_m (mu/rho)_m(E) t_m)`` follows exactly; ``w`` is the
tube spectrum weighted by photon energy (energy-integrating detector).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xrlib.errors import ConfigError

#: Elemental mass fractions (ICRU Report 44; NIST X-ray mass attenuation tables) and densities.
MATERIALS = {
    "air": ({"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}, 0.001205),
    "soft_tissue": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003,
                     "S": 0.003, "Cl": 0.002, "K": 0.003}, 1.0),
    "cortical_bone": ({"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002,
                       "P": 0.103, "S": 0.003, "Ca": 0.225}, 1.92),
}
MATERIAL_ORDER = ("air", "soft_tissue", "cortical_bone")
#: HU of pure cortical bone in the mixture model.
BONE_HU = 1500.0
#: Projected densities are g/cm^3 x mm; divide by this to get mass thickness in g/cm^2.
MM_PER_CM = 10.0


def mass_attenuation_cm2_per_g(material: str, energies_kev) -> np.ndarray:
    """Total mass attenuation coefficient (with coherent scattering) of a material, cm^2/g."""
    if material not in MATERIALS:
        raise ConfigError(f"unknown material {material!r}; choose one of {sorted(MATERIALS)}")
    import xraydb

    energies_ev = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64)) * 1000.0
    fractions, _ = MATERIALS[material]
    return sum(w * xraydb.mu_elam(element, energies_ev) for element, w in fractions.items())


def material_densities(hu: torch.Tensor) -> torch.Tensor:
    """Partial densities (g/cm^3) of air, soft tissue and cortical bone, shape (3, *hu.shape)."""
    rho_air = MATERIALS["air"][1]
    rho_tissue = MATERIALS["soft_tissue"][1]
    rho_bone = MATERIALS["cortical_bone"][1]
    hu = hu.to(torch.float32)
    tissue_fraction = ((hu + 1000.0) / 1000.0).clamp(0.0, 1.0)
    bone_fraction = (hu / BONE_HU).clamp(0.0, 1.0)
    bone_scale = ((hu + 1000.0) / (BONE_HU + 1000.0)).clamp(min=1.0)
    air = rho_air * (1.0 - tissue_fraction)
    tissue = rho_tissue * tissue_fraction * (1.0 - bone_fraction)
    bone = rho_bone * bone_fraction * bone_scale
    return torch.stack([air, tissue, bone])


def material_mu_per_mm(energy_kev: float) -> torch.Tensor:
    """(3,) linear attenuation per mm per unit density (g/cm^3) of the three materials at one energy."""
    return torch.tensor(
        [float(mass_attenuation_cm2_per_g(m, energy_kev)[0]) / MM_PER_CM for m in MATERIAL_ORDER]
    )


def attenuation_per_mm(hu: torch.Tensor, energy_kev: float) -> torch.Tensor:
    """Monoenergetic linear attenuation coefficient (1/mm) of every voxel."""
    densities = material_densities(hu)
    return torch.einsum("m,m...->...", material_mu_per_mm(energy_kev).to(densities), densities)


@dataclass(frozen=True)
class Spectrum:
    """A detected X-ray spectrum: bin energies (keV) and weights summing to 1."""

    energies_kev: np.ndarray
    weights: np.ndarray
    kvp: float
    filtration_mm_al: float

    @property
    def mean_energy_kev(self) -> float:
        return float(np.sum(self.energies_kev * self.weights))

    def to_dict(self) -> dict:
        return {"kvp": self.kvp, "filtration_mm_al": self.filtration_mm_al,
                "mean_energy_kev": self.mean_energy_kev, "bins": len(self.energies_kev)}


@functools.lru_cache(maxsize=16)
def tube_spectrum(kvp: float = 120.0, filtration_mm_al: float = 2.5, anode_angle_deg: float = 12.0,
                  bin_kev: float = 2.0) -> Spectrum:
    """Tungsten-anode spectrum from spekpy, filtered by aluminium, energy-weighted, normalised."""
    import spekpy

    if not 40.0 <= kvp <= 150.0:
        raise ConfigError(f"drr.kvp={kvp} is outside the diagnostic range [40, 150] kVp")
    if filtration_mm_al < 0:
        raise ConfigError(f"drr.filtration_mm_al={filtration_mm_al} must not be negative")
    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=bin_kev)
    spek.filter("Al", filtration_mm_al)
    energies, fluence = spek.get_spectrum()
    weights = np.asarray(fluence) * np.asarray(energies)
    keep = weights > 0
    return Spectrum(np.asarray(energies)[keep], weights[keep] / weights[keep].sum(), float(kvp),
                    float(filtration_mm_al))


def polyenergetic_line_integrals(material_projections: torch.Tensor, spectrum: Spectrum) -> torch.Tensor:
    """-ln(I/I0) from material projections (B, 3, H, W) in g/cm^3 x mm; returns (B, 1, H, W)."""
    mu = np.stack([mass_attenuation_cm2_per_g(m, spectrum.energies_kev) for m in MATERIAL_ORDER])
    mu_per_mm = torch.from_numpy(mu / MM_PER_CM).to(material_projections)  # (3, E)
    weights = torch.from_numpy(spectrum.weights).to(material_projections)
    intensity = torch.zeros_like(material_projections[:, :1])
    for energy in range(len(weights)):
        exponent = torch.einsum("m,bmhw->bhw", mu_per_mm[:, energy], material_projections)
        intensity += weights[energy] * torch.exp(-exponent)[:, None]
    return -torch.log(intensity)


def detector_response(line_integrals: torch.Tensor, photons_per_pixel: float | None, blur_sigma_px: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantum noise (Poisson at ``photons_per_pixel`` unattenuated) and Gaussian detector blur.

    Works on intensity ``exp(-p)``: photons are counted, then spread by the scintillator's blur;
    returns line integrals again. ``photons_per_pixel=None`` and ``blur_sigma_px=0`` do nothing.
    """
    intensity = torch.exp(-line_integrals)
    if photons_per_pixel:
        counts = torch.poisson(intensity * photons_per_pixel, generator=generator)
        intensity = counts.clamp(min=0.5) / photons_per_pixel
    if blur_sigma_px > 0:
        intensity = gaussian_blur(intensity, blur_sigma_px)
    return -torch.log(intensity)


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images with reflected borders."""
    radius = max(1, int(np.ceil(3.0 * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)

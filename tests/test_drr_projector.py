"""Projector against exact chord lengths through analytic phantoms; geometry conventions."""

import numpy as np
import pytest
import torch

from xrlib.drr.geometry import chest_geometry, random_pose
from xrlib.drr.projector import ConeBeamProjector, _interpolate_along_v_and_sum, _lerp_rows
from xrlib.errors import ConfigError, GeometryError

SPACING_MM, N = 1.0, 100


def _grid():
    axis = (np.arange(N) - (N - 1) / 2) * SPACING_MM
    affine = np.diag([SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = axis[0]
    return axis, affine


def _partial_volume(inside, supersample=4):
    """Occupancy of each voxel by a region, by supersampling its test function."""
    axis, _ = _grid()
    offsets = (np.arange(supersample) - (supersample - 1) / 2) / supersample * SPACING_MM
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    total = np.zeros_like(x)
    for a in offsets:
        for b in offsets:
            for c in offsets:
                total += inside(x + a, y + b, z + c)
    return torch.tensor(total / supersample**3, dtype=torch.float32)


def _rays(geometry):
    pixels = geometry.pixel_centres_mm().numpy()
    source = np.asarray(geometry.source_mm)
    direction = pixels - source
    return source, direction / np.linalg.norm(direction, axis=-1, keepdims=True)


def _ellipsoid_chords(geometry, centre, semi_axes):
    source, direction = _rays(geometry)
    scale = 1.0 / np.asarray(semi_axes)
    s = (source - centre) * scale
    d = direction * scale
    a = (d * d).sum(-1)
    b = (d * s).sum(-1)
    c = (s * s).sum() - 1.0
    disc = np.clip(b * b - a * c, 0, None)
    return 2.0 * np.sqrt(disc) / a


def _cylinder_chords(geometry, radius, half_height):
    """Chords through a z-axis cylinder centred at the origin (rays clipped by its end caps)."""
    source, direction = _rays(geometry)
    a = direction[..., 0] ** 2 + direction[..., 1] ** 2
    b = source[0] * direction[..., 0] + source[1] * direction[..., 1]
    c = source[0] ** 2 + source[1] ** 2 - radius**2
    disc = np.clip(b * b - a * c, 0, None)
    t0, t1 = (-b - np.sqrt(disc)) / a, (-b + np.sqrt(disc)) / a
    z0, z1 = source[2] + t0 * direction[..., 2], source[2] + t1 * direction[..., 2]
    zmin = np.clip(np.minimum(z0, z1), -half_height, half_height)
    zmax = np.clip(np.maximum(z0, z1), -half_height, half_height)
    return (t1 - t0) * (zmax - zmin) / np.maximum(np.abs(z1 - z0), 1e-12)


def _geometry(view="PA", **kw):
    return chest_geometry((0.0, 0.0, 0.0), view=view, size_px=128, detector_mm=130.0, sid_mm=1000.0,
                          centre_to_detector_mm=100.0, **kw)


def _assert_chords(rendered, chords, tolerance=0.005, fraction=0.5):
    long = chords >= fraction * chords.max()  # grazing rays measure the voxelised boundary, not the projector
    relative = np.abs(rendered[long] - chords[long]) / chords[long]
    assert long.sum() > 500
    assert relative.max() < tolerance, relative.max()


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_sphere_chords(view):
    torch.set_num_threads(1)
    centre = np.array([6.0, -4.0, 3.0])
    phantom = _partial_volume(lambda x, y, z: (x - 6) ** 2 + (y + 4) ** 2 + (z - 3) ** 2 <= 30.0**2)
    geometry = _geometry(view)
    rendered = ConeBeamProjector(phantom, _grid()[1], anti_alias=False)(geometry)[0, 0].numpy()
    _assert_chords(rendered, _ellipsoid_chords(geometry, centre, (30.0, 30.0, 30.0)))


def test_rotated_pose_ellipsoid_chords():
    torch.set_num_threads(1)
    semi = (36.0, 30.0, 26.0)
    phantom = _partial_volume(lambda x, y, z: (x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2 <= 1)
    geometry = _geometry(rotation_deg=(4.0, -3.0, 5.0), translation_mm=(3.0, 0.0, -2.0))
    rendered = ConeBeamProjector(phantom, _grid()[1], anti_alias=False, samples_per_voxel=None)(geometry)[0, 0].numpy()
    # Tilted rays cross the voxelised (partial-volume) rim obliquely: compare the inner rays.
    _assert_chords(rendered, _ellipsoid_chords(geometry, np.zeros(3), semi), fraction=0.7)


def test_cylinder_chords_with_coarse_intermediate_grid():
    torch.set_num_threads(1)
    phantom = _partial_volume(lambda x, y, z: (x**2 + y**2 <= 25.0**2) & (np.abs(z) <= 40.0))
    geometry = _geometry()
    rendered = ConeBeamProjector(phantom, _grid()[1], anti_alias=False)(geometry)[0, 0].numpy()
    chords = _cylinder_chords(geometry, 25.0, 40.0)
    away_from_caps = np.abs(geometry.pixel_centres_mm().numpy()[..., 2]) < 30.0
    _assert_chords(np.where(away_from_caps, rendered, 0), np.where(away_from_caps, chords, 0))


def test_batch_channels_and_anti_aliasing_conserve_the_integral():
    """Batched multi-channel rendering equals single renders; pooling keeps line integrals (slab)."""
    torch.set_num_threads(1)
    axis, affine = _grid()
    slab = torch.zeros(N, N, N)
    slab[:, 40:60, :] = 1.0  # 20 mm thick slab across the beam
    volume = torch.stack([slab, 2 * slab])
    coarse = chest_geometry((0.0, 0.0, 0.0), size_px=128, detector_mm=430.0, sid_mm=1000.0, centre_to_detector_mm=100.0)
    projector = ConeBeamProjector(volume, affine)
    assert max(projector.pool_factors(coarse)) > 1
    batch = projector([coarse, _geometry()])
    assert batch.shape == (2, 2, 128, 128)
    torch.testing.assert_close(batch[1:], projector(_geometry()))
    torch.testing.assert_close(batch[:, 1], 2 * batch[:, 0])
    source, direction = _rays(coarse)
    expected = 20.0 / np.abs(direction[..., 1])
    inner = np.abs(coarse.pixel_centres_mm().numpy()[..., [0, 2]]).max(-1) < 35.0  # rays inside the slab's sides
    np.testing.assert_allclose(batch[0, 0].numpy()[inner], expected[inner], rtol=0.005)


def test_fused_interpolation_and_plane_sum_equals_the_dense_sum():
    """Pass 2 (one CSR product) equals interpolating every plane and summing, outside the volume too."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.pad(torch.rand(5, 2, 7, 9, generator=generator), (0, 0, 1, 1))  # zero rows at each end
    coords = torch.rand(5, 11, generator=generator, dtype=torch.float64).numpy() * 10.0 - 2.0  # from 2 voxels before to 2 after the 7 rows
    dense = _lerp_rows(rows, coords).sum(dim=0)
    torch.testing.assert_close(_interpolate_along_v_and_sum(rows, coords), dense, rtol=1e-5, atol=1e-6)
    assert float(dense.abs().max()) > 1.0


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_detector_inside_the_volume_box_ends_the_rays(view):
    """A tilted detector cutting a uniform block: each ray integrates from where it enters the block
    to its pixel, within one sample plane (the planes it cuts are masked ray by ray)."""
    torch.set_num_threads(1)
    _, affine = _grid()
    block = torch.ones(N, N, N)
    geometry = chest_geometry((0.0, 0.0, 0.0), view=view, size_px=128, detector_mm=60.0, sid_mm=1000.0,
                              centre_to_detector_mm=20.0, rotation_deg=(6.0, 0.0, 4.0))
    projector = ConeBeamProjector(block, affine, anti_alias=False)
    rendered = projector(geometry)[0, 0].numpy()
    source, direction = _rays(geometry)
    pixels = geometry.pixel_centres_mm().numpy()
    entry_y = (-1 if view == "PA" else 1) * N * SPACING_MM / 2  # the face nearer the source
    entry = source + direction * ((entry_y - source[1]) / direction[..., 1])[..., None]
    expected = np.linalg.norm(pixels - entry, axis=-1)
    plane_step_mm = projector.planes_per_sample * SPACING_MM / np.abs(direction[..., 1])
    assert np.ptp(pixels[..., 1]) > 4 * SPACING_MM  # the detector crosses several planes
    assert (np.abs(rendered - expected) <= 0.5 * plane_step_mm + 0.01).all()


def test_a_batch_of_poses_shares_the_volume_set_up():
    torch.set_num_threads(1)
    phantom = _partial_volume(lambda x, y, z: x**2 + y**2 + z**2 <= 30.0**2)
    projector = ConeBeamProjector(phantom, _grid()[1])
    rng = np.random.default_rng(0)
    poses = [_geometry(**random_pose(rng, 2.0, 5.0)) for _ in range(3)]
    first = projector(poses[:1])
    (slices, _, _), = projector._slices_cache.values()
    batch = projector(poses)
    (slices_after, _, _), = projector._slices_cache.values()
    assert slices_after is slices
    torch.testing.assert_close(batch[:1], first)
    assert not torch.allclose(batch[1], batch[2])


def test_radiological_convention_and_projection_of_points():
    geometry = chest_geometry((0.0, 0.0, 0.0), size_px=256)
    right, left = geometry.world_to_pixel(np.array([[50.0, 0, 0], [-50.0, 0, 0]]))
    assert right[1] < 127.5 < left[1]  # patient's right on the image's left
    head, feet = geometry.world_to_pixel(np.array([[0, 0, 50.0], [0, 0, -50.0]]))
    assert head[0] < 127.5 < feet[0]
    ap = chest_geometry((0.0, 0.0, 0.0), view="AP", size_px=256)
    assert ap.world_to_pixel(np.array([[50.0, 0, 0]]))[0, 1] < 127.5
    # Magnification: a point 100 mm right at the lung centre lands at 100 * SID / SOD mm.
    column = geometry.world_to_pixel(np.array([[100.0, 0, 0]]))[0, 1]
    assert abs((127.5 - column) * geometry.pixel_mm - 100.0 * geometry.magnification) < 1e-6


def test_bad_geometry_is_refused():
    with pytest.raises(ConfigError, match="size_px"):
        chest_geometry((0, 0, 0), size_px=64)
    with pytest.raises(ConfigError, match="view"):
        chest_geometry((0, 0, 0), view="lateral")
    _, affine = _grid()
    inside = chest_geometry((0.0, 0.0, 0.0), size_px=128, sid_mm=60.0, centre_to_detector_mm=10.0)
    with pytest.raises(GeometryError, match="inside the CT"):
        ConeBeamProjector(torch.ones(N, N, N), affine)(inside)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    phantom = _partial_volume(lambda x, y, z: x**2 + y**2 + z**2 <= 30.0**2)
    geometry = _geometry()
    cpu = ConeBeamProjector(phantom, _grid()[1])(geometry)
    gpu = ConeBeamProjector(phantom, _grid()[1]).to("cuda")(geometry).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-3)

"""Cone-beam line-integral projector: a torch module for CPU and CUDA, batched, chunked, anti-aliased.

Method: Joseph's ray-driven projector (Joseph 1982, IEEE TMI 1:192) evaluated in the shear-warp
factorisation (Lacroute and Levoy 1994). Each ray is sampled where it crosses the planes of voxel
centres perpendicular to the volume axis it runs most along (the *principal axis*, A-P for a
chest PA), by bilinear interpolation within that slice; a sample counts the ray's length between
neighbouring planes, ``|A d| / |d_a|`` mm (A the affine, d the ray in index units).
``planes_per_sample`` neighbouring voxel planes are first summed into one (along the rays, where
nothing is blurred across rays): bilinear interpolation is linear, so sampling the sum at the
planes' mean position differs from summing the samples only by the rays' sideways drift between
those planes, a small fraction of a voxel for chest cone angles.

Rays are parametrised by their slopes ``(d_u / d_a, d_v / d_a)`` on a regular intermediate grid
(as many slopes per axis as detector pixels, spanning the detector). From a point source, a plane
of constant ``a`` meets that grid in an axis-aligned, scaled and shifted lattice, so its bilinear
samples are *separable*, and the sum over planes is linear. The line integrals of the
intermediate rays are therefore two passes of 1-D linear interpolation:

1. along u (the slices' longer axis), all planes at once: one ``grid_sample`` call on the planes
   seen as one-row images whose channels are the v rows (weights computed once per ray column);
2. along v *and* summed over the planes: one sparse (CSR) matrix holding the two weights of every
   plane for every intermediate row, times the stacked pass-1 rows. No (planes x rays) array is made.

The intermediate image is finally warped onto the detector pixels with one bilinear
``grid_sample`` (exact, sample-on-node, for an untilted detector; for rotated poses the
intermediate grid is twice as fine as the pixels). Planes that a tilted detector cuts through
are summed ray by ray, masked beyond the detector. Planes are processed in chunks that fit a
memory budget. The prepared slices are cached, so a batch of poses shares the volume's set-up.
The small index and weight arrays are computed with numpy (no hand-offs between threads); torch
runs only the heavy steps, two per chunk and the warp.

Anti-aliasing across rays: when a detector pixel, scaled back to the lungs, is wider than the
voxels, the volume is first box-averaged by the integer factor that makes the voxels as wide as
that footprint, so no voxel is skipped between neighbouring rays.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from xrlib.drr.geometry import ProjectionGeometry
from xrlib.errors import GeometryError


class ConeBeamProjector(torch.nn.Module):
    """Line integrals (volume units x mm) of a C-channel volume for a batch of cone-beam geometries.

    ``volume`` has shape (C, I, J, K) or (I, J, K), ``affine`` maps voxel indices to RAS mm.
    Buffers move with ``.to(device)``. ``memory_budget_mb`` bounds the working memory of a chunk.
    ``samples_per_voxel``: the intermediate grid samples each slice axis at least this often per
    voxel at the lung centre (never more often than the detector's pixels; None: as often as the
    pixels); along coarse axes (2.5 mm slices) it is then coarser than the detector, and the final
    warp interpolates. ``empty_below``: crop the volume to the box of voxels above this value
    (skipping empty space; the error is at most this value times the cropped path length).
    ``planes_per_sample``: voxel planes along the principal axis summed into one sample plane (2:
    the analytic-chord errors of tests/test_drr_projector.py stay those of 1, 0.41 %; 4: 0.55 %).
    """

    def __init__(
        self,
        volume: torch.Tensor,
        affine: np.ndarray,
        memory_budget_mb: float = 256.0,
        anti_alias: bool = True,
        samples_per_voxel: float | None = 2.0,
        empty_below: float | None = None,
        planes_per_sample: int = 2,
    ):
        super().__init__()
        if volume.ndim == 3:
            volume = volume[None]
        if volume.ndim != 4:
            raise GeometryError(f"volume must be (C, I, J, K) or (I, J, K), got shape {tuple(volume.shape)}")
        if int(planes_per_sample) < 1:
            raise GeometryError(f"planes_per_sample must be a positive integer, got {planes_per_sample}")
        self.register_buffer("volume", volume.to(torch.float32).contiguous(), persistent=False)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.memory_budget_mb = float(memory_budget_mb)
        self.anti_alias = anti_alias
        self.samples_per_voxel = samples_per_voxel
        self.empty_below = empty_below
        self.planes_per_sample = int(planes_per_sample)
        self._slices_cache: dict = {}

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @staticmethod
    def spacing_mm_of(affine: np.ndarray) -> np.ndarray:
        return np.linalg.norm(affine[:3, :3], axis=0)

    def pool_factors(self, geometry: ProjectionGeometry) -> tuple[int, int, int]:
        """Box-filter factors per axis: pixel footprint at the lung centre / voxel spacing, floored."""
        if not self.anti_alias:
            return (1, 1, 1)
        footprint_mm = geometry.pixel_mm / geometry.magnification
        return tuple(max(1, int(math.floor(footprint_mm / s + 1e-6))) for s in self.spacing_mm)

    def _cropped(self) -> tuple[torch.Tensor, np.ndarray]:
        """The volume cropped to the box of voxels above ``empty_below`` (all of it when None), and its affine."""
        volume, affine = self.volume, self.affine.copy()
        if self.empty_below is None:
            return volume, affine
        occupied = (volume > self.empty_below).any(dim=0)
        if not bool(occupied.any()):
            return volume, affine
        bounds = [torch.nonzero(occupied.any(dim=tuple(d for d in range(3) if d != a))).flatten() for a in range(3)]
        low = [int(b[0]) for b in bounds]
        high = [int(b[-1]) + 1 for b in bounds]
        affine[:3, 3] = affine[:3, :3] @ np.asarray(low, dtype=np.float64) + affine[:3, 3]
        return volume[:, low[0]:high[0], low[1]:high[1], low[2]:high[2]], affine

    def _slices(self, axis: int, factors: tuple[int, int, int]):
        """The (cropped, pooled) volume as zero-padded slices across ``axis``, (N_axis, N_u + 2, C, N_v + 2)
        with u the longer in-plane axis, its affine and (u, v); cached for the last axis and pooling.
        u outermost within a slice: pass 1 reads each u column's rows as one contiguous run."""
        factors = tuple(max(f, self.planes_per_sample) if a == axis else f for a, f in enumerate(factors))
        key = (axis, factors, self.volume.device, self.volume.dtype)
        if key not in self._slices_cache:
            volume, affine = self._cropped()
            if factors != (1, 1, 1):
                volume, affine = _box_sum_mean(volume, affine, factors)
            u_axis, v_axis = sorted((a for a in range(3) if a != axis), key=lambda a: -volume.shape[1 + a])
            slices = F.pad(volume.permute(1 + axis, 1 + u_axis, 0, 1 + v_axis), (1, 1, 0, 0, 1, 1)).contiguous()
            self._slices_cache = {key: (slices, affine, (u_axis, v_axis))}
        return self._slices_cache[key]

    def forward(self, geometries: list[ProjectionGeometry] | ProjectionGeometry) -> torch.Tensor:
        """Render line integrals, shape (B, C, H, W), one image per geometry."""
        if isinstance(geometries, ProjectionGeometry):
            geometries = [geometries]
        return torch.stack([self._render_one(g) for g in geometries])

    def _render_one(self, geometry: ProjectionGeometry) -> torch.Tensor:
        device = self.volume.device
        source_world = np.asarray(geometry.source_mm, dtype=np.float64)
        central = np.linalg.inv(self.affine)[:3, :3] @ (np.asarray(geometry.detector_centre_mm) - source_world)
        axis = int(np.argmax(np.abs(central) * self.spacing_mm))
        padded, affine, (u_axis, v_axis) = self._slices(axis, self.pool_factors(geometry))
        n_planes, n_u, channels, n_v = padded.shape[0], padded.shape[1] - 2, padded.shape[2], padded.shape[3] - 2
        to_index = np.linalg.inv(affine)
        linear, shift = to_index[:3, :3], to_index[:3, 3]
        source = linear @ source_world + shift
        box_high = {u_axis: n_u, v_axis: n_v, axis: n_planes}
        if all(-0.5 <= source[a] <= box_high[a] - 0.5 for a in range(3)):
            raise GeometryError(
                f"the X-ray source {np.round(geometry.source_mm, 1).tolist()} mm lies inside the CT volume; "
                "increase sid_mm"
            )
        # The ray to detector pixel (r, c), in index units, is first + r * row_step + c * col_step.
        size = geometry.size_px
        row_step = linear @ np.asarray(geometry.row_dir) * geometry.pixel_mm
        col_step = linear @ np.asarray(geometry.col_dir) * geometry.pixel_mm
        first = linear @ np.asarray(geometry.detector_centre_mm) + shift - source - (size - 1) / 2 * (row_step + col_step)
        corners = np.stack([first + r * row_step + c * col_step for r in (0, size - 1) for c in (0, size - 1)])
        sign = 1.0 if corners[:, axis].mean() > 0 else -1.0
        if (corners[:, axis] * sign <= 1e-9).any():  # d_a is linear in (r, c): its extremes are at the corners
            raise GeometryError("some rays run parallel to the slices of the CT; reduce the cone angle")
        corner_slopes = corners / corners[:, axis:axis + 1]  # slopes are monotone along lines: extremes at corners
        lung = linear @ np.asarray(geometry.lung_centre_mm) + shift
        voxel_slope = 1.0 / abs(float(lung[axis] - source[axis]))  # one voxel at the lungs
        # Off-node warps (detector tilted against the slices) interpolate between intermediate rays:
        # sample those twice as finely as the pixels.
        tilted = not all(np.isclose(np.abs(np.asarray(d) @ affine[:3, :3] / self.spacing_mm_of(affine)).max(), 1.0)
                         for d in (geometry.row_dir, geometry.col_dir))
        n_detector = size * (2 if tilted else 1)
        grid_u = self._slope_grid(corner_slopes[:, u_axis], voxel_slope, n_detector)
        grid_v = self._slope_grid(corner_slopes[:, v_axis], voxel_slope, n_detector)
        n_gu, n_gv = len(grid_u), len(grid_v)
        # Intermediate rays (grid_u, grid_v, 1 along a): mm per plane step, and the plane where each meets the detector.
        matrix = affine[:3, :3]
        ray_mm = grid_v[:, None, None] * matrix[:, v_axis] + grid_u[None, :, None] * matrix[:, u_axis] + matrix[:, axis]
        step_mm = np.linalg.norm(ray_mm, axis=-1)
        normal = matrix.T @ np.cross(geometry.row_dir, geometry.col_dir)  # detector normal, index space
        centre = linear @ np.asarray(geometry.detector_centre_mm) + shift

        def stop_plane(gu, gv):
            return source[axis] + ((centre - source) @ normal) / (gu * normal[u_axis] + gv * normal[v_axis] + normal[axis])

        stops = [stop_plane(gu, gv) for gu in (grid_u[0], grid_u[-1]) for gv in (grid_v[0], grid_v[-1])]
        full, partial = _plane_ranges(float(source[axis]), sign, min(stops), max(stops), n_planes)

        def ray_coords(low, high):  # where the rays cross planes low..high-1, along u and v (index units)
            offset = np.arange(low, high, dtype=np.float64)[:, None] - source[axis]
            return source[u_axis] + offset * grid_u, source[v_axis] + offset * grid_v

        parts = []
        bytes_per_plane = channels * (n_v + 2) * n_gu * 4 * 2
        for low, high in _chunks(*full, max(1, int(self.memory_budget_mb * 2**20 // bytes_per_plane))):
            coord_u, coord_v = ray_coords(low, high)
            parts.append(_interpolate_along_v_and_sum(_interpolate_along_u(padded[low:high], coord_u), coord_v))
        if partial[1] > partial[0]:
            stop = torch.from_numpy(stop_plane(grid_u[None, :], grid_v[:, None])).to(device, torch.float32)
            bytes_per_plane += channels * n_gv * n_gu * 4 * 3
            for low, high in _chunks(*partial, max(1, int(self.memory_budget_mb * 2**20 // bytes_per_plane))):
                coord_u, coord_v = ray_coords(low, high)
                samples = _lerp_rows(_interpolate_along_u(padded[low:high], coord_u), coord_v)  # (K, C, n_gv, n_gu)
                planes = torch.arange(low, high, device=device, dtype=torch.float32)[:, None, None]
                keep = (planes <= stop) if sign > 0 else (planes >= stop)
                parts.append((samples * keep[:, None]).sum(dim=0))
        if not parts:
            return torch.zeros(channels, size, size, device=device)
        total = sum(parts[1:], parts[0])  # (C, n_gv, n_gu)
        intermediate = (total * torch.from_numpy(step_mm).to(device, torch.float32))[None]
        # Warp onto the detector: each pixel's slopes, normalised to the intermediate grid.
        rows = np.arange(size, dtype=np.float64)[:, None]
        columns = np.arange(size, dtype=np.float64)[None, :]
        along = first[axis] + rows * row_step[axis] + columns * col_step[axis]

        def normalised_slope(a, grid):
            slope = (first[a] + rows * row_step[a] + columns * col_step[a]) / along
            span = grid[-1] - grid[0]
            return 2.0 * (slope - grid[0]) / span - 1.0 if span > 0 else np.zeros_like(slope)

        warp = np.stack([normalised_slope(u_axis, grid_u), normalised_slope(v_axis, grid_v)], axis=-1)
        warp = torch.from_numpy(warp.astype(np.float32)).to(device)[None]
        return F.grid_sample(intermediate, warp, mode="bilinear", padding_mode="border", align_corners=True)[0]

    def _slope_grid(self, corner_slopes: np.ndarray, voxel_slope: float, n_detector: int) -> np.ndarray:
        """Regular slopes spanning the detector: as many as detector pixels, or fewer (samples_per_voxel)."""
        low, high = float(corner_slopes.min()), float(corner_slopes.max())
        count = n_detector
        if self.samples_per_voxel:
            count = min(n_detector, int(math.ceil((high - low) / voxel_slope * self.samples_per_voxel)) + 1)
        return np.linspace(low, high, max(count, 2))


def _box_sum_mean(volume: torch.Tensor, affine: np.ndarray, factors: tuple[int, int, int]):
    """Box-average (C, I, J, K) by integer factors (zero-padded to whole boxes, so sums are kept) and the new affine."""
    padding = [(-n) % f for n, f in zip(volume.shape[1:], factors)]
    if any(padding):
        volume = F.pad(volume, (0, padding[2], 0, padding[1], 0, padding[0]))
    pooled = F.avg_pool3d(volume[None], kernel_size=factors, stride=factors)[0]
    scale = np.diag([*factors, 1.0]).astype(np.float64)
    scale[:3, 3] = (np.asarray(factors) - 1) / 2.0
    return pooled, affine @ scale


def _plane_ranges(source_plane: float, sign: float, stop_min: float, stop_max: float, n_planes: int):
    """Planes [low, high) that every ray crosses before the detector, and those only some rays do (a tilted
    detector cuts them); the rays run from the source plane towards increasing (sign > 0) or decreasing planes."""
    if sign > 0:
        low = max(0, math.ceil(source_plane))
        full_high = max(low, min(n_planes, math.floor(stop_min) + 1))
        return (low, full_high), (full_high, max(full_high, min(n_planes, math.floor(stop_max) + 1)))
    high = max(0, min(n_planes, math.floor(source_plane) + 1))
    full_low = min(high, max(0, math.ceil(stop_max)))
    return (full_low, high), (min(full_low, max(0, math.ceil(stop_min))), full_low)


def _chunks(low: int, high: int, size: int):
    """Consecutive [start, stop) ranges of at most ``size`` covering [low, high)."""
    return [(start, min(start + size, high)) for start in range(low, high, size)]


def _lerp_rows(values: torch.Tensor, coords: np.ndarray) -> torch.Tensor:
    """Linear interpolation of ``values`` (K, C, A + 2, B) along A at ``coords`` (K, n): (K, C, n, B).

    Whole rows are copied with ``index_select`` (contiguous, fast on CPU and CUDA). ``values``
    carries one zero row of padding at each end, so coordinates are shifted by one and clamped
    there: samples outside the volume are zero, as with zero padding.
    """
    planes, channels, rows, columns = values.shape
    lower, weight = _lerp_lower_and_weight(coords, rows - 2)
    index = (np.arange(planes * channels).reshape(planes, channels, 1) * rows + lower[:, None, :]).reshape(-1)
    index = torch.from_numpy(index).to(values.device)
    flat = values.reshape(planes * channels * rows, columns)
    low = flat.index_select(0, index).view(planes, channels, -1, columns)
    high = flat.index_select(0, index + 1).view(planes, channels, -1, columns)
    return torch.lerp(low, high, torch.from_numpy(weight).to(values)[:, None, :, None])


def _lerp_lower_and_weight(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For coordinates along an axis of ``size`` voxels padded by one zero voxel at each end: the padded
    index of the lower neighbour (int64) and the weight of the upper one."""
    position = np.clip(coords + 1.0, 0.0, size + 1.0)
    lower = np.minimum(np.floor(position), size)
    return lower.astype(np.int64), position - lower


def _interpolate_along_u(block: torch.Tensor, coord_u: np.ndarray) -> torch.Tensor:
    """Pass 1: linear interpolation of padded slices ``block`` (K, n_u + 2, C, A + 2) along u at
    ``coord_u`` (K, m), one set of coordinates per slice: (K, C, A + 2, m).

    Each slice is a one-row image whose channels are its (c, v) rows, stored channels-last, so one
    ``grid_sample`` call computes the weights once per coordinate and reads contiguous runs of
    rows, and the result keeps the rows outermost, as pass 2 needs them. Outside the volume the
    samples are zero (zero padding)."""
    planes, columns, channels, rows = block.shape
    grid = np.zeros((planes, 1, coord_u.shape[1], 2), dtype=np.float32)
    grid[:, 0, :, 0] = 2.0 * (coord_u + 1.0) / (columns - 1) - 1.0  # the padded index coord_u + 1, normalised
    images = block.reshape(planes, columns, channels * rows).permute(0, 2, 1)[:, :, None, :]  # channels-last view
    samples = F.grid_sample(images, torch.from_numpy(grid).to(block.device), mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    return samples.reshape(planes, channels, rows, -1)


def _interpolate_along_v_and_sum(rows: torch.Tensor, coord_v: np.ndarray) -> torch.Tensor:
    """Pass 2: linear interpolation of ``rows`` (K, C, A + 2, B) along A at ``coord_v`` (K, n), summed
    over the K slices: (C, n, B).

    Interpolation and sum are one sparse matrix product: row (c, i) of the CSR matrix holds, for
    every slice k, the two weights of coordinate coord_v[k, i] on the rows of slice k (padded as in
    :func:`_lerp_rows`), in increasing column order."""
    planes, channels, padded_rows, columns = rows.shape
    lower, weight = _lerp_lower_and_weight(coord_v, padded_rows - 2)  # (K, n)
    n = lower.shape[1]
    first_row = np.arange(planes * channels).reshape(planes, channels).T * padded_rows  # (C, K)
    column = first_row[:, None, :, None] + lower.T[None, :, :, None] + np.arange(2)  # (C, n, K, 2)
    value = np.broadcast_to(np.stack([1.0 - weight.T, weight.T], axis=-1), (channels, n, planes, 2))
    row_start = np.arange(channels * n + 1) * (2 * planes)
    device = rows.device
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        matrix = torch.sparse_csr_tensor(torch.from_numpy(row_start).to(device),
                                         torch.from_numpy(column.reshape(-1)).to(device),
                                         torch.from_numpy(value.reshape(-1).astype(np.float32)).to(device),
                                         size=(channels * n, planes * channels * padded_rows), check_invariants=False)
    return (matrix @ rows.reshape(-1, columns)).view(channels, n, columns)

"""Shape from silhouettes: a voxel field that tolerates views that disagree by a few pixels.

Each view's mask becomes a signed distance in pixels (positive inside). A voxel's score
combines the views so that one view disagreeing by a few pixels (generated views are
never exactly consistent) cannot carve away what the others agree on, while consistent
silhouettes are followed exactly. The field is smooth, so marching cubes places the
surface with sub-voxel accuracy. ``recon.stereo`` then takes away what silhouettes cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage
from skimage import measure

from recon.camera import PinholeCamera
from recon.device import current_device
from recon.render import MeshRenderer

OUTSIDE_IMAGE = -1e3  # signed distance (pixels) for voxels projecting outside a view
# Marching cubes makes about three triangles per voxel face's worth of surface area
# (2.9 to 3.4 measured on the hulls of the benchmark meshes).
TRIANGLES_PER_VOXEL_AREA = 3.0
# Pixels: a gap in a silhouette this narrow counts as a hole (see silhouette_field). On the
# benchmark's realistic striped can, two closed 1 px lines cut from stripe edges (CD 0.032 ->
# 0.027); four pixels also closed gaps between the armadillo's limbs (0.0074 -> 0.0091).
NARROW_GAP_PX = 2


@dataclass
class VoxelField:
    """Signed distances in voxels (positive inside) on a regular grid: ``values[i, j, k]``
    at ``origin + voxel_size * (i, j, k)``."""

    values: np.ndarray
    origin: np.ndarray
    voxel_size: float

    def centres(self) -> np.ndarray:
        """World positions of every voxel, shape ``values.shape + (3,)``, float32."""
        centres = np.empty(self.values.shape + (3,), np.float32)
        for axis, count in enumerate(self.values.shape):
            coordinates = self.origin[axis] + self.voxel_size * np.arange(count, dtype=np.float32)
            centres[..., axis] = coordinates.reshape([-1 if a == axis else 1 for a in range(3)])
        return centres


def working_volume(cameras: list[PinholeCamera]) -> tuple[np.ndarray, float]:
    """Centre and half-size of the cube every camera sees whole: the sphere inscribed in
    the narrowest view cone, around the point the cameras look at (the origin)."""
    radii = []
    for camera in cameras:
        k = camera.intrinsics
        half_angle = np.arctan(min(k[0, 2] / k[0, 0], k[1, 2] / k[1, 1]))
        radii.append(np.linalg.norm(camera.position) * np.sin(half_angle))
    return np.zeros(3), float(min(radii))


@dataclass
class CoarseHull:
    """What a coarse look at the silhouettes tells about the object before the fine field:
    the corners of a box around everything the views may hold, and the hull's area."""

    low: np.ndarray
    high: np.ndarray
    area: float


def coarse_hull(
    distances: np.ndarray, cameras: list[PinholeCamera], tolerance_px: float, cells: int = 64
) -> CoarseHull:
    """The tolerant hull of the silhouettes (signed distances in pixels, one map per view) on
    a coarse grid over the working volume: its box, padded by a cell, and its area."""
    centre, half = working_volume(cameras)
    grid = VoxelField(np.zeros((cells,) * 3, np.float32), centre - half, 2 * half / (cells - 1))
    points = grid.centres().reshape(-1, 3)
    _, tolerant = _hull_scores(distances, cameras, points, tolerance_px)
    grid.values = tolerant.reshape(grid.values.shape)
    area = float(extract_surface(grid, process=False).area)
    cell_px = grid.voxel_size / _pixel_footprint(cameras)
    occupied = points[grid.values.reshape(-1) > -cell_px]  # with thin parts the cells' centres miss
    low = np.maximum(occupied.min(axis=0) - grid.voxel_size, centre - half)
    high = np.minimum(occupied.max(axis=0) + grid.voxel_size, centre + half)
    return CoarseHull(low, high, area)


def _hull_scores(
    distances: np.ndarray, cameras: list[PinholeCamera], points: np.ndarray, tolerance_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """The exact hull's score of ``points`` (the smallest signed distance over the views,
    ``d1``) and the tolerant one, ``max(d1, min(d1 + tol, d2))``, in pixels."""
    ordered = np.sort(sample_views(distances, cameras, points, OUTSIDE_IMAGE), axis=0)
    return ordered[0], np.maximum(ordered[0], np.minimum(ordered[0] + tolerance_px, ordered[1]))


def _pixel_footprint(cameras: list[PinholeCamera]) -> float:
    """World size of a pixel at the distance of the point the cameras look at."""
    return float(np.mean([np.linalg.norm(c.position) / c.intrinsics[0, 0] for c in cameras]))


def lattice(stride: int, shape: tuple[int, int]) -> np.ndarray:
    """A mask of every ``stride``-th row and column: a sparse, even sample of an image."""
    every = np.zeros(shape, bool)
    every[::stride, ::stride] = True
    return every


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Pixels to the silhouette boundary, positive inside ``mask``."""
    return (ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)).astype(np.float32)


def sample_views(maps: np.ndarray, cameras: list[PinholeCamera], points: np.ndarray, outside: float) -> np.ndarray:
    """Bilinear samples of per-view maps (V, H, W[, C]) at the projections of ``points`` (N, 3).

    Returns (V, N[, C]) float32; points projecting outside a view or behind it get
    ``outside``. All views are projected and sampled in one batched torch call, on the
    device ``on_device`` chose (the CPU by default).
    """
    device = current_device()
    channels_last = maps.ndim == 4
    stack = torch.from_numpy(np.ascontiguousarray(maps if channels_last else maps[..., None], np.float32))
    stack = stack.to(device).permute(0, 3, 1, 2)  # V, C, H, W
    projections = torch.from_numpy(np.stack([_grid_projection(camera) for camera in cameras])).to(device)
    world = torch.from_numpy(np.ascontiguousarray(points, np.float32)).to(device)
    projected = torch.einsum("vij,nj->vni", projections[:, :, :3], world) + projections[:, None, :, 3]
    depth = projected[..., 2]
    grid = projected[..., :2] / torch.where(depth > 1e-9, depth, 1e-9)[..., None]
    sampled = F.grid_sample(stack, grid[:, None], mode="bilinear", align_corners=False)[:, :, 0].permute(0, 2, 1)
    inside = (grid.abs() <= 1.0).all(dim=-1) & (depth > 0)
    sampled = torch.where(inside[..., None], sampled, torch.tensor(outside, dtype=sampled.dtype, device=device))
    sampled = sampled.cpu().numpy()
    return sampled if channels_last else sampled[..., 0]


def surface_depths(surface: trimesh.Trimesh, cameras: list[PinholeCamera]) -> np.ndarray:
    """Ray-cast depth (along each view axis, 0 where missed) of ``surface`` in every view, (V, H, W)."""
    renderer = MeshRenderer(surface)
    return np.stack([renderer.depth(camera) for camera in cameras])


def covisible_colours(
    depths: np.ndarray, colours: np.ndarray, cameras: list[PinholeCamera], usable: list[np.ndarray],
    others_of: Callable[[int], list[int]], tolerances: np.ndarray, stride: int,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Pairs of views looking at the same surface points: for each view, the points of the
    surface (``depths``, from ``surface_depths``) at its ``usable`` pixels on a ``stride``
    lattice, and for each of ``others_of(view)`` that sees them too (its depth there within
    ``tolerances[other]``) the view's index, the other's, and both views' ``colours`` (V, H,
    W, 3) of the points it sees. What views agree on about a surface (its colours, their
    exposures) is read from these pairs."""
    maps = np.concatenate([depths[..., None], colours], axis=-1).astype(np.float32)
    for view, camera in enumerate(cameras):
        others = others_of(view)
        if not others:
            continue
        seen = usable[view] & (depths[view] > 0) & lattice(stride, depths[view].shape)
        origins, directions = camera.rays()
        distance = depths[view][seen] / (directions[seen] @ camera.view_axis())
        points = (origins[seen] + directions[seen] * distance[:, None]).astype(np.float32)
        own = colours[view][seen]
        for other, sample in zip(others, sample_views(maps[others], [cameras[i] for i in others], points, 0.0)):
            _, depth = cameras[other].project(points)
            visible = (sample[:, 0] > 0) & (np.abs(sample[:, 0] - depth) < tolerances[other])
            yield view, other, own[visible], sample[visible, 1:]


def _grid_projection(camera: PinholeCamera) -> np.ndarray:
    """The 3x4 matrix taking a homogeneous world point to ``(u * w, v * w, w)``: ``u, v`` in
    grid_sample's [-1, 1] image coordinates (align_corners=False), ``w`` the depth."""
    k, width, height = camera.intrinsics, camera.width, camera.height
    to_grid = np.array([
        [2 * k[0, 0] / width, 0.0, -(2 * k[0, 2] / width - 1)],
        [0.0, -2 * k[1, 1] / height, -(2 * k[1, 2] / height - 1)],
        [0.0, 0.0, -1.0],
    ])
    world_to_camera = np.linalg.inv(camera.camera_to_world)[:3]
    return (to_grid @ world_to_camera).astype(np.float32)


def silhouette_field(
    masks: list[np.ndarray],
    cameras: list[PinholeCamera],
    resolution: int = 128,
    tolerance_px: float = 3.0,
    max_surface_faces: int | None = None,
) -> VoxelField:
    """Score voxels by their silhouettes, in voxels (a pixel's footprint at the object's
    distance), positive inside, on a grid with ``resolution`` voxels along the longest side
    of the object's bounding box (a long, flat object gets the same fine voxels as a round
    one, and fewer of them). ``max_surface_faces`` coarsens the grid of an object with a
    large surface (gear teeth, foliage) until its hull's iso-surface has about that many
    faces: clean-up and decimation take time in proportion, and a mesh decimated to a few
    times fewer faces cannot keep finer detail. The voxels grow at most twofold, so the
    shape of a very large surface keeps ``resolution / 2`` voxels along its longest side.

    The score is the exact visual hull's, ``d1``: the smallest signed distance in pixels
    over the views, so consistent silhouettes are followed to the pixel. Generated views
    disagree by a few pixels, though, and then one view's too-small silhouette carves away
    what the other views show: some of their foreground pixels are left with nothing on
    their rays. Along those rays only, the score becomes ``max(d1, min(d1 + tol, d2))``
    (``d2`` the second smallest distance): a voxel that every view but one sees inside
    survives when that one misses it by less than ``tol`` pixels. Relaxing everywhere
    instead would dilate every silhouette by ``tol``. Along the same rays, a voxel with no
    inside neighbour whose footprint overlaps every silhouette is inside too: it stands for
    a part thinner than a voxel that fell between the voxel centres. Holes inside a
    silhouette, and gaps in it at most ``NARROW_GAP_PX`` wide, carve where at least two
    views see through them.
    """
    filled = [_without_holes_or_narrow_gaps(mask) for mask in masks]
    filled_distances = np.stack([signed_distance(mask) for mask in filled])
    coarse = coarse_hull(filled_distances, cameras, tolerance_px)
    extent = coarse.high - coarse.low
    voxel_size = float(extent.max()) / (resolution - 1)
    if max_surface_faces:
        budget_size = float(np.sqrt(TRIANGLES_PER_VOXEL_AREA * coarse.area / max_surface_faces))
        voxel_size = min(max(voxel_size, budget_size), 2 * voxel_size)
    shape = tuple(int(np.ceil(length / voxel_size)) + 1 for length in extent)
    origin = (coarse.low + coarse.high) / 2 - voxel_size * (np.array(shape) - 1) / 2
    field = VoxelField(np.zeros(shape, np.float32), origin, voxel_size)
    centres = field.centres().reshape(-1, 3)
    exact, tolerant = _hull_scores(filled_distances, cameras, centres, tolerance_px)
    has_holes = [bool((whole != mask).any()) for whole, mask in zip(filled, masks)]
    if any(has_holes):
        # A hole through the object (background seen through it) empties space only where
        # a second view sees through it too: one view's hole may be a background-coloured
        # patch on the object, and carving by it alone would bore a tunnel. So may a
        # narrow gap: a stripe of the background's grey, or a line of pixels mixed half
        # and half between a black and a white stripe, which is grey too, would slice it.
        inside = tolerant > 0
        distances = np.stack([signed_distance(mask) if holes else distance
                              for mask, holes, distance in zip(masks, has_holes, filled_distances)])
        seen_through = np.partition(sample_views(distances, cameras, centres[inside], OUTSIDE_IMAGE), 1, axis=0)[1]
        exact[inside] = np.minimum(exact[inside], seen_through)
        tolerant[inside] = np.minimum(tolerant[inside], seen_through)
    to_voxels = _pixel_footprint(cameras) / voxel_size
    field.values = (exact * to_voxels).astype(np.float32).reshape(field.values.shape)
    # A part thinner than a voxel (a sword's blade seen edge-on, a line two pixels wide)
    # can lie between two layers of voxel centres that each miss its silhouette by a
    # fraction of a pixel: no voxel is inside, and the part is lost whole. A voxel whose
    # footprint (half a voxel about its centre) every silhouette overlaps may stand for
    # it. Beside a voxel that is inside, the part is already there and would only grow.
    covering = exact + 0.5 / to_voxels
    beside_inside = ndimage.binary_dilation(field.values > 0).reshape(-1)
    restorable = np.maximum(tolerant, np.where(beside_inside, -np.inf, covering))
    tolerated = np.flatnonzero(restorable > np.maximum(exact, 0.0))
    return restore_unexplained(field, masks, cameras, tolerated, restorable[tolerated] * to_voxels)


def _without_holes_or_narrow_gaps(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled and its gaps at most ``NARROW_GAP_PX`` wide closed."""
    radius = NARROW_GAP_PX // 2
    padded = np.pad(mask, radius + 1)  # so the closing is not cut off at the image's edge
    closed = ndimage.binary_closing(padded, ndimage.generate_binary_structure(2, 1), iterations=radius)
    return ndimage.binary_fill_holes(mask | closed[radius + 1:-radius - 1, radius + 1:-radius - 1])


def restore_unexplained(field: VoxelField, masks: list[np.ndarray], cameras: list[PinholeCamera],
                        candidates: np.ndarray, replacements: np.ndarray, min_views: int = 1) -> VoxelField:
    """``field`` with the ``candidates`` (flat voxel indices) set to their ``replacements``
    where they lie on the ray of a foreground pixel that misses ``field``'s surface: the
    shape must cover every silhouette, so what was taken from such a ray is given back, and
    nothing elsewhere. Voxels are on a ray when their footprint covers its pixel."""
    if not len(candidates):
        return field
    unexplained = _unexplained_distances(extract_surface(field, process=False), masks, cameras)
    half_voxel_px = 0.5 * field.voxel_size / _pixel_footprint(cameras)
    centres = field.centres().reshape(-1, 3)[candidates]
    on_ray = (sample_views(unexplained, cameras, centres, np.inf) <= half_voxel_px).sum(axis=0) >= min_views
    values = field.values.reshape(-1).copy()
    values[candidates[on_ray]] = replacements[on_ray]
    return VoxelField(values.reshape(field.values.shape), field.origin, field.voxel_size)


def _unexplained_distances(hull: trimesh.Trimesh, masks: list[np.ndarray], cameras: list[PinholeCamera]) -> np.ndarray:
    """Per view, each pixel's distance to the nearest foreground pixel whose ray misses
    ``hull``: the foreground that the other views' silhouettes have carved away."""
    renderer = MeshRenderer(hull)
    distances = []
    for mask, camera in zip(masks, cameras):
        origins, directions = camera.rays()
        missed = np.zeros_like(mask)
        missed[mask] = ~np.isfinite(renderer.cast(origins[mask], directions[mask])["t_hit"])
        distances.append(ndimage.distance_transform_edt(~missed).astype(np.float32))
    return np.stack(distances)


def extract_surface(field: VoxelField, process: bool = True) -> trimesh.Trimesh:
    """The zero level set of ``field`` as a mesh with outward normals.

    ``process=False`` skips vertex merging and the orientation check: enough for the ray
    casting that stereo does against the hull.
    """
    values = np.pad(field.values, 1, constant_values=min(field.values.min(), -1.0))
    if values.max() <= 0:
        raise ValueError("the views share no common foreground: nothing to reconstruct")
    vertices, faces, _, _ = measure.marching_cubes(values, level=0.0, spacing=(field.voxel_size,) * 3)
    mesh = trimesh.Trimesh(vertices + field.origin - field.voxel_size, faces[:, ::-1], process=process)
    if process and mesh.volume < 0:
        mesh.invert()
    return mesh

"""Shape from six views: a tolerant silhouette field refined by photo-consistency carving.

1. **Silhouette field.** Each view's mask becomes a signed distance in pixels (positive
   inside). A voxel's score combines the views so that one view disagreeing by a few pixels
   (generated views are never exactly consistent) cannot carve away what the others agree
   on, while consistent silhouettes are followed exactly. The field is smooth, so marching
   cubes places the surface with sub-voxel accuracy.
2. **Photo-consistency carving.** Six silhouettes leave phantom volume (concavities, and
   regions no view looks across). Surface voxels are carved when the views that see them
   (visibility by ray casting the current surface) disagree on their colour: space carving
   after Kutulakos and Seitz. A voxel that is the last material along a silhouette pixel's
   ray is protected, so carving never changes a silhouette. Written by hand: no library
   here does voxel carving against calibrated images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage
from skimage import measure

from recon.camera import PinholeCamera
from recon.render import MeshRenderer

OUTSIDE_IMAGE = -1e3  # signed distance (pixels) for voxels projecting outside a view


@dataclass
class VoxelField:
    """Scores on a regular grid: ``values[i, j, k]`` at ``origin + voxel_size * (i, j, k)``."""

    values: np.ndarray
    origin: np.ndarray
    voxel_size: float

    def centres(self) -> np.ndarray:
        n = self.values.shape
        index = np.stack(np.meshgrid(*(np.arange(s) for s in n), indexing="ij"), axis=-1)
        return (self.origin + self.voxel_size * index).astype(np.float32)


def working_volume(cameras: list[PinholeCamera]) -> tuple[np.ndarray, float]:
    """Centre and half-size of the cube every camera sees whole: the sphere inscribed in
    the narrowest view cone, around the point the cameras look at (the origin)."""
    radii = []
    for camera in cameras:
        k = camera.intrinsics
        half_angle = np.arctan(min(k[0, 2] / k[0, 0], k[1, 2] / k[1, 1]))
        radii.append(np.linalg.norm(camera.position) * np.sin(half_angle))
    return np.zeros(3), float(min(radii))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Pixels to the silhouette boundary, positive inside ``mask``."""
    return (ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)).astype(np.float32)


def sample_views(maps: np.ndarray, cameras: list[PinholeCamera], points: np.ndarray, outside: float) -> np.ndarray:
    """Bilinear samples of per-view maps (V, H, W[, C]) at the projections of ``points`` (N, 3).

    Returns (V, N[, C]); points projecting outside a view or behind it get ``outside``.
    """
    channels_last = maps.ndim == 4
    stack = torch.from_numpy(np.ascontiguousarray(maps if channels_last else maps[..., None])).float()
    stack = stack.permute(0, 3, 1, 2)  # V, C, H, W
    height, width = stack.shape[-2:]
    results = []
    for view, camera in enumerate(cameras):
        pixels, depth = camera.project(points)
        grid = torch.from_numpy(
            np.stack([pixels[:, 0] / width * 2 - 1, pixels[:, 1] / height * 2 - 1], axis=-1)
        ).float()[None, None]
        sampled = F.grid_sample(stack[view:view + 1], grid, mode="bilinear", align_corners=False)[0, :, 0].T
        inside = (np.abs(pixels[:, 0] - width / 2) <= width / 2) & (np.abs(pixels[:, 1] - height / 2) <= height / 2) & (depth > 0)
        sampled = sampled.numpy()
        sampled[~inside] = outside
        results.append(sampled)
    stacked = np.stack(results)
    return stacked if channels_last else stacked[..., 0]


def silhouette_field(
    masks: list[np.ndarray], cameras: list[PinholeCamera], resolution: int = 128, tolerance_px: float = 3.0
) -> VoxelField:
    """Score voxels by their silhouettes: ``max(d1, min(d1 + tol, d2 - tol))``.

    ``d1 <= d2`` are the two smallest signed distances over the views. Where views agree,
    ``d1`` decides (the plain visual hull). A voxel outside a single view by less than
    ``tol`` pixels survives when the others see it inside by more than ``tol``.
    """
    centre, half = working_volume(cameras)
    voxel_size = 2 * half / (resolution - 1)
    field = VoxelField(np.zeros((resolution,) * 3, np.float32), centre - half, voxel_size)
    distances = np.stack([signed_distance(mask) for mask in masks])
    samples = sample_views(distances, cameras, field.centres().reshape(-1, 3), OUTSIDE_IMAGE)
    ordered = np.sort(samples, axis=0)
    d1, d2 = ordered[0], ordered[1]
    field.values = np.maximum(d1, np.minimum(d1 + tolerance_px, d2 - tolerance_px)).reshape(field.values.shape)
    return field


def extract_surface(field: VoxelField, process: bool = True) -> trimesh.Trimesh:
    """The zero level set of ``field`` as a mesh with outward normals.

    ``process=False`` skips vertex merging and the orientation check: enough for ray
    casting, which carving does once per pass.
    """
    values = np.pad(field.values, 1, constant_values=min(field.values.min(), -1.0))
    if values.max() <= 0:
        raise ValueError("the views share no common foreground: nothing to reconstruct")
    vertices, faces, _, _ = measure.marching_cubes(values, level=0.0, spacing=(field.voxel_size,) * 3)
    mesh = trimesh.Trimesh(vertices + field.origin - field.voxel_size, faces[:, ::-1], process=process)
    if process and mesh.volume < 0:
        mesh.invert()
    return mesh


def visibility_and_thickness(
    renderer: MeshRenderer, camera: PinholeCamera, points: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """For rays from the camera through ``points``: whether each point is the first surface
    the ray meets (within ``tolerance``), and the length between the ray's first and last
    surface crossings (how much material lies along it)."""
    offsets = points - camera.position
    distance = np.linalg.norm(offsets, axis=-1)
    directions = offsets / distance[:, None]
    origins = np.broadcast_to(camera.position, points.shape)
    front = renderer.cast(origins, directions)["t_hit"]
    reach = 2.0 * float(distance.max()) + 1.0
    back = reach - renderer.cast(origins + directions * reach, -directions)["t_hit"]
    visible = np.abs(front - distance) < tolerance
    thickness = np.where(np.isfinite(front) & np.isfinite(back), back - front, 0.0)
    return visible, thickness


def carve_photo_inconsistent(
    field: VoxelField,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    cameras: list[PinholeCamera],
    iterations: int = 32,
    colour_threshold: float = 0.05,
) -> VoxelField:
    """Carve surface voxels that the views seeing them disagree about (colour 0..1).

    Each pass carves at most one layer of the current surface. A voxel is judged only when
    at least two views see it (ray-cast visibility against the current surface). It is
    protected where carving it could empty a silhouette pixel: in a view where it projects
    inside the silhouette and the ray there crosses less than two voxels of material.
    """
    values = field.values.copy()
    colours = np.stack(images).astype(np.float32)
    inside_masks = np.stack(masks).astype(np.float32)
    centres = field.centres()
    for _ in range(iterations):
        occupied = values > 0
        surface = occupied & ~ndimage.binary_erosion(occupied)
        index = np.argwhere(surface)
        if len(index) == 0:
            break
        points = centres[surface]
        renderer = MeshRenderer(extract_surface(VoxelField(values, field.origin, field.voxel_size), process=False))
        visible = np.zeros((len(cameras), len(points)), bool)
        protected = np.zeros(len(points), bool)
        in_silhouette = sample_views(inside_masks, cameras, points, 0.0) > 0.5
        for view, camera in enumerate(cameras):
            visible[view], thickness = visibility_and_thickness(renderer, camera, points, 1.5 * field.voxel_size)
            protected |= in_silhouette[view] & (thickness < 2.0 * field.voxel_size)
        seen = sample_views(colours, cameras, points, 0.0)  # V, N, 3
        count = visible.sum(axis=0)
        mean = (seen * visible[..., None]).sum(axis=0) / np.maximum(count, 1)[:, None]
        deviation = (np.abs(seen - mean[None]).max(axis=-1) * visible).max(axis=0)
        carve = (count >= 2) & (deviation > colour_threshold) & ~protected
        if not carve.any():
            break
        i, j, k = index[carve].T
        values[i, j, k] = -0.5
    return VoxelField(values, field.origin, field.voxel_size)

"""Pinhole cameras as plain data: what every part of reconstruction agrees on.

``camera_to_world`` is a 4x4 matrix in the glTF/OpenGL camera convention (+X right, +Y up,
the camera looks down -Z); ``intrinsics`` is the pixel matrix K with the origin at the
image's top-left corner and y pointing down. World frame: +Y up, metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    camera_to_world: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        c2w = np.asarray(self.camera_to_world, dtype=np.float64)
        k = np.asarray(self.intrinsics, dtype=np.float64)
        if c2w.shape != (4, 4) or k.shape != (3, 3):
            raise ValueError(f"camera needs a 4x4 camera_to_world and 3x3 intrinsics, got {c2w.shape} and {k.shape}")
        if not (np.isfinite(c2w).all() and np.isfinite(k).all()):
            raise ValueError("camera has NaN or infinite values")
        if self.width <= 0 or self.height <= 0 or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError("camera needs a positive image size and focal length")
        object.__setattr__(self, "camera_to_world", c2w)
        object.__setattr__(self, "intrinsics", k)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PinholeCamera":
        """From a ``cameras.json`` view entry (``camera_to_world``, ``intrinsics``, ``width``, ``height``)."""
        return cls(np.array(data["camera_to_world"], dtype=np.float64), np.array(data["intrinsics"], dtype=np.float64),
                   int(data["width"]), int(data["height"]))

    @property
    def position(self) -> np.ndarray:
        return self.camera_to_world[:3, 3]

    def scaled(self, width: int, height: int) -> "PinholeCamera":
        """The same camera for an image resized to ``width`` x ``height``."""
        scale = np.diag([width / self.width, height / self.height, 1.0])
        return PinholeCamera(self.camera_to_world, scale @ self.intrinsics, width, height)

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space origins and unit directions through every pixel centre, (H, W, 3) each."""
        k = self.intrinsics
        xs, ys = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        camera_dirs = np.stack([(xs - k[0, 2]) / k[0, 0], -(ys - k[1, 2]) / k[1, 1], -np.ones_like(xs)], axis=-1)
        directions = camera_dirs @ self.camera_to_world[:3, :3].T
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        return np.broadcast_to(self.position, directions.shape), directions

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (x right, y down) and depth along the view axis of world points.

        Computed in the points' own float precision (float32 halves the cost on large grids).
        """
        dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.float64
        world_to_camera = np.linalg.inv(self.camera_to_world).astype(dtype)
        p = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
        depth = -p[..., 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        k = self.intrinsics.astype(dtype)
        pixels = np.stack([k[0, 2] + k[0, 0] * p[..., 0] / safe, k[1, 2] - k[1, 1] * p[..., 1] / safe], axis=-1)
        return pixels, depth

    def view_axis(self) -> np.ndarray:
        """Unit vector the camera looks along (world)."""
        return -self.camera_to_world[:3, 2]


def orbit_camera(
    azimuth_deg: float, elevation_deg: float, distance: float, fov_deg: float, size: int,
    target: np.ndarray | None = None,
) -> PinholeCamera:
    """A square camera on a sphere around ``target``, looking at it, world +Y kept up.

    Azimuth 0 / elevation 0 is the front (+Z); positive azimuth turns towards +X, positive
    elevation looks down from above. The orientation is two axis rotations (yaw, then pitch),
    so it is defined at every elevation short of the poles.
    """
    yaw, pitch = np.radians(azimuth_deg), np.radians(elevation_deg)
    yaw_matrix = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    pitch_matrix = np.array([[1, 0, 0], [0, np.cos(pitch), np.sin(pitch)], [0, -np.sin(pitch), np.cos(pitch)]])
    rotation = yaw_matrix @ pitch_matrix
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = rotation
    camera_to_world[:3, 3] = (np.zeros(3) if target is None else target) + rotation[:, 2] * distance
    focal = 0.5 * size / np.tan(np.radians(fov_deg) / 2)
    intrinsics = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    return PinholeCamera(camera_to_world, intrinsics, size, size)

"""Shapes built in code that reconstruction has failed on, or that stand for a kind of asset
the thirteen shared meshes do not: ``bench/recon_quality.py --procedural`` runs them.

Each is in the unit sphere and carries its own colour (a texture, or one colour per mesh):

- ``sword``: a blade thinner than a voxel, a line two pixels wide seen edge-on (the hull
  lost it whole until the silhouette field kept sub-voxel parts);
- ``needle``: a line in every view, lying along the depth axis;
- ``striped_can``: stripes along the views' epipolar lines, which stereo matches a period off;
- ``checker_ball``: a high-contrast repeating pattern on a convex object, the issue's ball;
- ``black_ball``: every colour channel dark (de-lighting failed with no channel to read hue);
- ``white_box``: flat faces of one plain colour, which only the silhouettes can place;
- ``two_balls``: two separate parts;
- ``flat_ring``: a ring lying flat, its hole seen only at a slant;
- ``coin``: a thin disc lying flat, nearly edge-on to the views from below.
"""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image


def procedural_meshes() -> dict[str, trimesh.Trimesh]:
    """The shapes above by name, each in the unit sphere with its colour."""
    guard = trimesh.creation.box((0.4, 0.05, 0.05))
    guard.apply_translation([0.0, -0.6, 0.0])
    sword = trimesh.util.concatenate([trimesh.creation.box((0.06, 1.8, 0.015)), guard])
    two_balls = trimesh.util.concatenate([trimesh.creation.icosphere(3, radius=0.3).apply_translation([x, 0.0, 0.0])
                                          for x in (-0.6, 0.6)])
    lying = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # a z-axis solid turned to lie flat
    meshes = {
        "sword": _painted(sword, (0.7, 0.7, 0.75)),
        "needle": _painted(trimesh.creation.cylinder(0.02, 2.0), (0.9, 0.1, 0.1)),
        "striped_can": _textured(*_cylinder(0.6, 1.6), _checker(24, 1)),
        "checker_ball": _textured(*_uv_sphere(), _checker(16, 8)),
        "black_ball": _painted(trimesh.creation.icosphere(4), (0.04, 0.04, 0.04)),
        "white_box": _painted(trimesh.creation.box((1.0, 0.6, 0.8)), (0.98, 0.98, 0.98)),
        "two_balls": _painted(two_balls, (0.8, 0.3, 0.2)),
        "flat_ring": _painted(trimesh.creation.annulus(0.6, 1.0, 0.1, transform=lying), (0.2, 0.5, 0.9)),
        "coin": _painted(trimesh.creation.cylinder(1.0, 0.04, transform=lying), (0.85, 0.7, 0.2)),
    }
    for mesh in meshes.values():
        mesh.apply_translation(-(mesh.bounds[0] + mesh.bounds[1]) / 2)
        mesh.apply_scale(1.0 / np.linalg.norm(mesh.vertices, axis=1).max())
    return meshes


def _painted(mesh: trimesh.Trimesh, colour: tuple[float, float, float]) -> trimesh.Trimesh:
    rgba = np.append(np.round(np.array(colour) * 255), 255).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(rgba, (len(mesh.vertices), 1)))
    return mesh


def _textured(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, image: Image.Image) -> trimesh.Trimesh:
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return mesh


def _checker(across: int, down: int, size: int = 512) -> Image.Image:
    """Near-black and near-white squares, ``across`` by ``down``."""
    texel = (np.arange(size) + 0.5) / size
    odd = (np.floor(texel[None, :] * across) + np.floor(texel[:, None] * down)) % 2 > 0
    return Image.fromarray(np.where(odd[..., None], 235, 20).astype(np.uint8).repeat(3, axis=2))


def _grid_faces(rows: int, columns: int) -> np.ndarray:
    """Two triangles per cell of a (rows + 1) x (columns + 1) vertex grid, wound outwards
    for the parametrisations below."""
    corner = (np.arange(rows)[:, None] * (columns + 1) + np.arange(columns)[None]).reshape(-1)
    below, right = corner + columns + 1, corner + 1
    return np.concatenate([np.stack([corner, right, below], 1), np.stack([right, below + 1, below], 1)])


def _uv_sphere(rows: int = 64, columns: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    polar, around = np.meshgrid(np.linspace(0, np.pi, rows + 1), np.linspace(0, 2 * np.pi, columns + 1), indexing="ij")
    vertices = np.stack([np.sin(polar) * np.cos(around), np.cos(polar), np.sin(polar) * np.sin(around)], -1)
    uv = np.stack([around / (2 * np.pi), 1 - polar / np.pi], -1)
    return vertices.reshape(-1, 3), _grid_faces(rows, columns), uv.reshape(-1, 2)


def _cylinder(radius: float, height: float, columns: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A closed cylinder about y: its side and two caps are one grid of four rings (cap
    centre, rim, rim, cap centre), the texture's u running around it."""
    ring_radius = np.array([0.0, radius, radius, 0.0])
    ring_height = np.array([0.5, 0.5, -0.5, -0.5]) * height
    around = np.linspace(0, 2 * np.pi, columns + 1)
    vertices = np.stack([ring_radius[:, None] * np.cos(around)[None], np.broadcast_to(ring_height[:, None], (4, columns + 1)),
                         ring_radius[:, None] * np.sin(around)[None]], -1)
    uv = np.stack(np.broadcast_arrays(around[None] / (2 * np.pi), np.array([1.0, 0.9, 0.1, 0.0])[:, None]), -1)
    return vertices.reshape(-1, 3), _grid_faces(3, columns), uv.reshape(-1, 2)

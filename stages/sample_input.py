"""A built-in input image, so the product runs on a fresh machine with nothing to hand."""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image


def draw_sample_object(size: int = 512) -> Image.Image:
    """A shaded potion bottle (round body, neck, cork) on a transparent background.

    Shading follows a light from the upper left, so views of it are not flat colour.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgba = np.zeros((size, size, 4), dtype=np.float32)

    def paint(mask: np.ndarray, colour: tuple[float, float, float], normal_x: np.ndarray, normal_y: np.ndarray) -> None:
        light = np.clip(0.55 - 0.45 * normal_x - 0.35 * normal_y, 0.15, 1.0)
        rgba[mask, :3] = np.array(colour)[None] * light[mask][:, None]
        rgba[mask, 3] = 1.0

    # body: a sphere of radius 0.3 at (0.5, 0.62)
    dx, dy = (xs - 0.5) / 0.3, (ys - 0.62) / 0.3
    body = dx**2 + dy**2 <= 1.0
    paint(body, (70, 170, 110), dx, dy)
    # neck: a cylinder
    neck_x = (xs - 0.5) / 0.09
    neck = (np.abs(neck_x) <= 1.0) & (ys >= 0.2) & (ys <= 0.36)
    paint(neck, (150, 205, 180), neck_x, np.zeros_like(neck_x))
    # cork
    cork_x = (xs - 0.5) / 0.065
    cork = (np.abs(cork_x) <= 1.0) & (ys >= 0.12) & (ys < 0.2)
    paint(cork, (160, 110, 60), cork_x, np.zeros_like(cork_x))
    return Image.fromarray(np.round(np.clip(rgba * [1, 1, 1, 255], 0, 255)).astype(np.uint8), "RGBA")


def draw_sample_blockout() -> trimesh.Trimesh:
    """A blockout of the same bottle (sphere body, cylinder neck, cork) in metres, +Y up:
    what a studio hands to the retexture flow."""
    body = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    neck = trimesh.creation.cylinder(radius=0.09, height=0.2, sections=24)
    cork = trimesh.creation.cylinder(radius=0.065, height=0.08, sections=24)
    upright = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # cylinders are built along +Z
    for part, height in ((neck, 0.35), (cork, 0.49)):
        part.apply_transform(upright)
        part.apply_translation([0, height, 0])
    return trimesh.util.concatenate([body, neck, cork])

"""Previews of a finished asset: a contact sheet PNG and a turntable GIF, ray-cast.

Reviewers judge an asset at a glance in the Prefect UI or a review tool: the contact sheet
shows the textured asset from eight sides above a row of clay renders (shape alone, which
is where reconstruction faults show), and the turntable spins it once.
"""

from __future__ import annotations

import io

import numpy as np
import trimesh
from PIL import Image

from recon.camera import PinholeCamera, orbit_camera
from recon.render import MeshRenderer, RenderResult

BACKGROUND = (0.5, 0.5, 0.5)
FOV_DEG = 30.0
LIGHT = np.array([0.4, 0.8, 0.6]) / np.linalg.norm([0.4, 0.8, 0.6])  # key light from the upper front right


def framing_cameras(mesh: trimesh.Trimesh, azimuths: list[float], elevation: float, size: int) -> list[PinholeCamera]:
    """Orbit cameras around the mesh's bounding-box centre, far enough that it fills the frame."""
    bounds = np.asarray(mesh.bounds)
    centre = bounds.mean(axis=0)
    radius = float(np.linalg.norm(bounds[1] - bounds[0])) / 2
    distance = 1.08 * radius / np.sin(np.radians(FOV_DEG) / 2)
    return [orbit_camera(azimuth, elevation, distance, FOV_DEG, size, centre) for azimuth in azimuths]


def shaded(result: RenderResult, view_axis: np.ndarray, clay: bool = False) -> np.ndarray:
    """Albedo (or light clay) lit by a fixed key light plus a headlight fill, on grey."""
    base = np.full_like(result.albedo, 0.75) if clay else result.albedo
    normals = result.normals
    key = np.clip(normals @ LIGHT, 0.0, 1.0)[..., None]
    fill = np.clip(normals @ -view_axis, 0.0, 1.0)[..., None]
    light = 0.35 + 0.45 * key + 0.35 * fill if clay else 0.55 + 0.3 * key + 0.25 * fill
    colour = np.clip(base * light, 0.0, 1.0)
    return np.where(result.mask[..., None], colour, np.asarray(BACKGROUND, np.float32))


def _frame(renderer: MeshRenderer, camera: PinholeCamera, clay: bool = False) -> Image.Image:
    pixels = shaded(renderer.render(camera), camera.view_axis(), clay)
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "RGB")


def contact_sheet(mesh: trimesh.Trimesh, tile: int = 256, elevation: float = 15.0) -> Image.Image:
    """Eight textured views (every 45 degrees) over the same eight in clay: a 4x4 grid of tiles."""
    renderer = MeshRenderer(mesh)
    cameras = framing_cameras(mesh, [45.0 * index for index in range(8)], elevation, tile)
    textured = [_frame(renderer, camera) for camera in cameras]
    clay = [_frame(renderer, camera, clay=True) for camera in cameras]
    sheet = Image.new("RGB", (4 * tile, 4 * tile))
    for index, image in enumerate(textured + clay):
        sheet.paste(image, ((index % 4) * tile, (index // 4) * tile))
    return sheet


def turntable_gif(mesh: trimesh.Trimesh, frames: int = 36, size: int = 256, elevation: float = 15.0,
                  seconds: float = 3.0) -> bytes:
    """One full turn of the textured asset as a looping GIF."""
    renderer = MeshRenderer(mesh)
    cameras = framing_cameras(mesh, [360.0 * index / frames for index in range(frames)], elevation, size)
    images = [_frame(renderer, camera).quantize(colors=255, method=Image.Quantize.MEDIANCUT) for camera in cameras]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=round(1000 * seconds / frames), disposal=2)
    return buffer.getvalue()

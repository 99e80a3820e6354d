"""Preview stage: a finished GLB to a contact sheet PNG and a turntable GIF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trimesh
from PIL import Image

from recon.preview import contact_sheet, turntable_gif


@dataclass
class Previews:
    contact_sheet: Image.Image
    turntable_gif: bytes


def load_asset_mesh(glb: str | Path) -> trimesh.Trimesh:
    """The single textured mesh of one of our GLBs (or any one-mesh GLB), as trimesh loads it."""
    try:
        mesh = trimesh.load(str(glb), force="mesh")
    except Exception as error:  # trimesh raises many types for bad files
        raise ValueError(f"{glb}: not a readable GLB ({error})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{glb}: holds no triangles")
    return mesh


def render_previews(mesh: trimesh.Trimesh, tile: int = 256, frames: int = 36) -> Previews:
    """Contact sheet (eight textured views over eight clay views) and a one-turn GIF."""
    return Previews(contact_sheet(mesh, tile=tile), turntable_gif(mesh, frames=frames, size=tile))

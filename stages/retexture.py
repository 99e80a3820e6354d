"""Retexture stage: a studio's blockout mesh, kept as it is, textured from six generated views.

The mesh is moved into Zero123++'s frame (centred, inside the unit sphere) only to render
its depth at the six poses and to bake; the baked asset goes back to the studio's own
coordinates, so positions and faces are exactly the ones supplied (only UVs are new).
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from recon.render import MeshRenderer, depth_condition_grid
from recon.surface import repair_mesh
from recon.texture import TexturedMesh, bake_base_colour
from stages.bounds import MESH_FORMATS
from stages.reconstruct import to_pinhole
from zero123pp import view_cameras
from zero123pp.views import NUM_VIEWS, Version

MAX_FACES = 2_000_000
MAX_BYTES = 256 * 2**20

logger = logging.getLogger(__name__)


def load_blockout(source: str | Path | bytes, file_type: str | None = None, name: str | None = None,
                  max_bytes: int = MAX_BYTES) -> trimesh.Trimesh:
    """One triangle mesh from a file path or bytes (GLB, glTF, OBJ, PLY, OFF, STL).

    Scenes are flattened into one mesh in scene coordinates. Raises ``ValueError`` naming
    the problem (and ``name``, the origin of bytes) for unreadable files, unknown formats,
    files over ``max_bytes`` (a path is refused from its size, unread), headers that
    declare more than the file holds, empty meshes and meshes whose vertices all coincide.
    Degenerate and duplicate faces, and faces on edges shared by more than two, are removed
    with a warning naming them; ``mesh.metadata["repairs"]`` counts what went.
    """
    name = name or ("mesh" if isinstance(source, bytes) else str(source))
    file_type = (file_type or Path(name).suffix.lstrip(".")).lower()
    if file_type not in MESH_FORMATS:
        raise ValueError(f"{name}: unsupported mesh format {file_type!r}; use one of {', '.join(MESH_FORMATS)}")
    data = source if isinstance(source, bytes) else _read(Path(source), max_bytes)
    if len(data) > max_bytes:
        raise ValueError(f"{name}: {len(data):,} bytes; a blockout may have at most {max_bytes:,}")
    try:
        # Unprocessed first: processing drops NaN vertices and their faces, hiding the reason.
        mesh = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    except Exception as error:  # trimesh raises many types for malformed files
        raise ValueError(f"{name}: not a readable {file_type} mesh ({error})") from None
    if isinstance(mesh, trimesh.Trimesh) and file_type in ("off", "ply"):
        _check_declared_counts(*_declared_counts(data, file_type, name), mesh, name)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{name}: holds no triangles")
    if len(mesh.faces) > MAX_FACES:
        raise ValueError(f"{name}: {len(mesh.faces)} faces; a blockout may have at most {MAX_FACES}")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"{name}: vertex positions contain NaN or infinity")
    mesh.process()
    if np.ptp(mesh.vertices, axis=0).max() <= 0:
        raise ValueError(f"{name}: all vertices coincide")
    repaired, removed = repair_mesh(mesh)
    if len(repaired.faces) == 0:
        raise ValueError(f"{name}: every face is degenerate")
    if removed:
        logger.warning("%s: repaired the blockout, removing %s", name,
                       ", ".join(f"{count} {what}" for what, count in removed.items()))
    repaired.metadata["repairs"] = removed
    return repaired


def _declared_counts(data: bytes, file_type: str, name: str) -> tuple[int, int]:
    """The vertex and face counts an OFF or PLY header declares."""
    head = data[:4096].split(b"end_header", 1)[0] if file_type == "ply" else data[:4096]
    lines = [line.split(b"#", 1)[0].strip() for line in head.splitlines()]
    if file_type == "ply":
        elements = {words[1]: words[2] for words in (line.split() for line in lines)
                    if len(words) == 3 and words[0] == b"element"}
        counts = elements.get(b"vertex"), elements.get(b"face")
    else:
        words = b" ".join(lines[:64]).split()
        counts = (words[1], words[2]) if len(words) > 2 else (None, None)
    try:
        return int(counts[0]), int(counts[1])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        expected = "'element vertex N' and 'element face M'" if file_type == "ply" else "'OFF' and its vertex and face counts"
        raise ValueError(f"{name}: a {file_type.upper()} header needs {expected}") from None


def _check_declared_counts(vertices: int, faces: int, mesh: trimesh.Trimesh, name: str) -> None:
    """Refuse a file whose header declares more vertices or faces than it holds (trimesh
    reads what is there and says nothing): a truncated or corrupt file. Quads become two
    triangles, so a whole file holds at least what it declares."""
    if vertices > len(mesh.vertices) or faces > len(mesh.faces):
        raise ValueError(f"{name}: the header declares {vertices} vertices and {faces} faces; "
                         f"the file holds {len(mesh.vertices)} and {len(mesh.faces)}")


def _read(path: Path, max_bytes: int) -> bytes:
    if not path.is_file():
        raise ValueError(f"{path}: no such mesh file")
    if (size := path.stat().st_size) > max_bytes:
        raise ValueError(f"{path}: {size:,} bytes; a blockout may have at most {max_bytes:,}")
    return path.read_bytes()


def unit_sphere_frame(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    """Centre (of the bounding box) and scale that put ``mesh`` inside the unit sphere."""
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    centre = (low + high) / 2
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max())
    return centre, 1.0 / radius


def _normalised(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    centre, scale = unit_sphere_frame(mesh)
    return trimesh.Trimesh((mesh.vertices - centre) * scale, mesh.faces, process=False)


def blockout_depth_grid(mesh: trimesh.Trimesh, version: Version = "v1.1", tile_size: int = 320) -> Image.Image:
    """The depth ControlNet's condition grid of ``mesh`` at the version's six poses."""
    cameras = [to_pinhole(camera) for camera in view_cameras(version, tile_size)]
    return depth_condition_grid(_normalised(mesh), cameras)


def retexture(mesh: trimesh.Trimesh, views: list[Image.Image], version: Version = "v1.1",
              texture_size: int = 1024) -> TexturedMesh:
    """Bake a base-colour texture onto ``mesh`` from six views generated at its poses.

    Where the object is in each view comes from the mesh itself (its silhouette at that
    pose), not from matting the generated image: the depth ControlNet drew the views to
    that silhouette, and the mesh is the ground truth being textured. The result has the
    mesh's own vertex positions and faces.
    """
    if len(views) != NUM_VIEWS:
        raise ValueError(f"retexturing needs {NUM_VIEWS} views, got {len(views)}")
    tile = views[0].size[0]
    cameras = [to_pinhole(camera) for camera in view_cameras(version, tile)]
    centre, scale = unit_sphere_frame(mesh)
    normalised = _normalised(mesh)
    renderer = MeshRenderer(normalised)
    images = []
    for view, camera in zip(views, cameras):
        rgb = np.asarray(view.convert("RGB"), np.float32) / 255.0
        mask = renderer.render(camera).mask.astype(np.float32)
        images.append(np.dstack([rgb, mask]))
    baked = bake_base_colour(normalised, images, cameras, texture_size)
    return replace(baked, vertices=baked.vertices / scale + centre)

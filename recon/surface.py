"""Mesh clean-up and decimation with pymeshlab: what turns an iso-surface into an asset."""

from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

import numpy as np
import pymeshlab
import trimesh

# decimation keeps the surface's topology only while its handles, at four faces each, would
# take at most this share of the face budget: an object has a few (the cow 10, a mug one),
# a sponge-like fused field thousands
HANDLE_SHARE = 0.05

# pymeshlab's filters are not thread-safe: two running at once in one process crash it
# (seen with a batch running assets on a thread pool), so every call here takes this lock.
_MESHLAB = threading.Lock()
Function = TypeVar("Function", bound=Callable)


def _one_at_a_time(function: Function) -> Function:
    @functools.wraps(function)
    def locked(*args, **kwargs):
        with _MESHLAB:
            return function(*args, **kwargs)

    return locked  # type: ignore[return-value]


def _to_meshset(mesh: trimesh.Trimesh) -> pymeshlab.MeshSet:
    meshset = pymeshlab.MeshSet()
    meshset.add_mesh(pymeshlab.Mesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32)))
    return meshset


def _from_meshset(meshset: pymeshlab.MeshSet) -> trimesh.Trimesh:
    current = meshset.current_mesh()
    return trimesh.Trimesh(current.vertex_matrix(), current.face_matrix(), process=True)


@_one_at_a_time
def clean_surface(
    mesh: trimesh.Trimesh, smoothing_steps: int = 1, min_component_fraction: float = 0.1
) -> trimesh.Trimesh:
    """Remove floating fragments, repair non-manifold parts, close small holes, smooth lightly.

    Components smaller than ``min_component_fraction`` of the largest one's bounding-box
    diagonal go. The iso-surface of a signed-distance field has no voxel stair-steps, so
    one Taubin step is enough; more thin legs and horns (eight steps cost the bull 0.02
    held-out IoU).
    """
    meshset = _to_meshset(mesh)
    meshset.meshing_remove_duplicate_vertices()
    meshset.meshing_remove_duplicate_faces()
    meshset.meshing_remove_connected_component_by_diameter(
        mincomponentdiag=pymeshlab.PercentageValue(100 * min_component_fraction)
    )
    meshset.meshing_repair_non_manifold_edges()
    meshset.meshing_repair_non_manifold_vertices()
    meshset.meshing_close_holes(maxholesize=100)
    meshset.meshing_remove_unreferenced_vertices()
    if smoothing_steps:
        meshset.apply_coord_taubin_smoothing(stepsmoothnum=smoothing_steps)
    cleaned = _from_meshset(meshset)
    if cleaned.volume < 0:
        cleaned.invert()
    return cleaned


@_one_at_a_time
def repair_mesh(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, dict[str, int]]:
    """Remove what no texture bake or engine import should meet: zero-area faces, repeated
    faces, and the faces that make an edge non-manifold (pymeshlab keeps the two largest at
    each such edge); then unreferenced vertices. Returns the mesh and how many of each went,
    keyed by what they were; a mesh with nothing to remove comes back as it was, its
    vertex and face order untouched."""
    meshset = _to_meshset(mesh)
    removed: dict[str, int] = {}
    steps = (("degenerate faces", meshset.meshing_remove_null_faces),
             ("duplicate faces", meshset.meshing_remove_duplicate_faces),
             ("faces on non-manifold edges", meshset.meshing_repair_non_manifold_edges))
    for what, step in steps:
        before = meshset.current_mesh().face_number()
        step()
        if count := before - meshset.current_mesh().face_number():
            removed[what] = count
    if not removed:
        return mesh, {}
    meshset.meshing_remove_unreferenced_vertices()
    current = meshset.current_mesh()
    return trimesh.Trimesh(current.vertex_matrix(), current.face_matrix(), process=False), removed


@_one_at_a_time
def decimate(mesh: trimesh.Trimesh, target_faces: int, keep_bounds: bool = False) -> trimesh.Trimesh:
    """Quadric edge collapse to at most ``target_faces`` faces, keeping boundaries.

    Topology is kept (no collapse may pinch the surface) when its handles would take a
    small share of the budget (``HANDLE_SHARE``) and the budget is still met; otherwise the
    collapse starts again without that condition. A fused field can be a sponge of tunnels
    (the reconstructed globe, radius 1: genus 1666): each handle costs at least four faces
    (Euler: F = 2V + 4g - 4), and keeping them all stalls the collapse or spends the budget
    on them while the outer surface caves in (for 8,000 faces the globe kept 16,218 at a
    mean distance of 0.014 from the dense surface; 8,000 at 0.0045 without the condition).

    ``keep_bounds`` (for LODs): surviving vertices stay where they were and the faces at
    the vertices that span the bounding box are kept, so every level has the bounds of the
    first, and the pivot and the height the export normalised to do not jump between levels.
    LODs do not keep topology: kept, the 5,000-face LOD2 of the reconstructed globe rendered
    at 25-27 dB PSNR against LOD0 (silhouette IoU 0.98) instead of 31-35 dB (0.995), the
    mug's at 24-28 dB instead of 26-31 dB.
    """
    if len(mesh.faces) <= target_faces:
        return mesh
    handles = max(0, mesh.body_count - mesh.euler_number // 2)  # summed genus of closed components
    if not keep_bounds and 4 * handles <= HANDLE_SHARE * target_faces:
        kept = _collapse(mesh, target_faces, keep_bounds, preserve_topology=True)
        if kept.current_mesh().face_number() <= target_faces:
            return _from_meshset(kept)
    return _from_meshset(_collapse(mesh, target_faces, keep_bounds, preserve_topology=False))


def _collapse(
    mesh: trimesh.Trimesh, target_faces: int, keep_bounds: bool, preserve_topology: bool
) -> pymeshlab.MeshSet:
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32)
    meshset = pymeshlab.MeshSet()
    if keep_bounds:
        extremes = np.concatenate([np.flatnonzero(vertices[:, axis] == bound) for axis in range(3)
                                   for bound in (vertices[:, axis].min(), vertices[:, axis].max())])
        free = ~np.isin(faces, extremes).any(axis=1)
        meshset.add_mesh(pymeshlab.Mesh(vertices, faces, f_scalar_array=free.astype(np.float64)))
        meshset.compute_selection_by_condition_per_face(condselect="fq > 0")
        # the collapse counts only the selected faces towards its target: the kept ones are
        # taken off, or every level comes out that many faces over budget
        target_faces = max(target_faces - int((~free).sum()), 1)
    else:
        meshset.add_mesh(pymeshlab.Mesh(vertices, faces))
    meshset.meshing_decimation_quadric_edge_collapse(
        targetfacenum=int(target_faces), qualitythr=0.5, preserveboundary=True, preservenormal=True,
        preservetopology=preserve_topology, optimalplacement=not keep_bounds, planarquadric=True, autoclean=True,
        selected=keep_bounds,
    )
    return meshset

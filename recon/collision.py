"""Collision shapes for engines: convex pieces that together cover a render mesh.

Engines collide against convex shapes; a concave asset (a chair, a mug) gets several.
CoACD (approximate convex decomposition by collision-aware cutting) splits the mesh into
parts whose convex hulls differ from them by at most ``threshold`` (its concavity metric),
and merges parts down to ``max_hulls``. A small or thin asset gets one convex hull: CoACD's
cuts on a leaf or a coin give slivers no engine needs. Every piece returned is the convex
hull of its points, so it is convex and watertight whatever CoACD returned.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d
import trimesh
from scipy.spatial import ConvexHull

from recon.surface import decimate

# CoACD's cost grows with the faces it cuts and its tree search; collision needs neither the
# render mesh's detail nor CoACD's defaults. On the reconstructed mug (20,000 faces), CoACD's
# defaults on the full mesh ran for minutes; on 2,000 faces with defaults 210 CPU s; with this
# search and no remeshing of the closed surface 35 CPU s, 16 pieces covering 99.5 % of the
# render mesh's volume.
COACD_FACES = 2000
MCTS_ITERATIONS = 60
MCTS_NODES = 10


def convex_pieces(
    mesh: trimesh.Trimesh, threshold: float = 0.05, max_hulls: int = 16, min_size: float = 0.05,
    thin_ratio: float = 0.05, seed: int = 0,
) -> list[trimesh.Trimesh]:
    """Convex, watertight pieces covering ``mesh``.

    One convex hull when the asset's largest extent is under ``min_size`` (in the mesh's
    units: metres for an exported asset) or its smallest extent is under ``thin_ratio`` of
    its largest; otherwise CoACD with ``threshold`` (0.01 tight .. 1 coarse) and at most
    ``max_hulls`` pieces.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"collision threshold must be in (0, 1], got {threshold}")
    if max_hulls < 1:
        raise ValueError(f"collision max hull count must be at least 1, got {max_hulls}")
    extent = np.ptp(mesh.vertices, axis=0)
    if extent.max() < min_size or extent.min() < thin_ratio * extent.max() or max_hulls == 1:
        return [_hull(mesh.vertices)]
    import coacd  # imported here: loading its native library logs a banner

    coacd.set_log_level("error")
    coarse = decimate(mesh, COACD_FACES)
    parts = coacd.run_coacd(
        coacd.Mesh(np.asarray(coarse.vertices, np.float64), np.asarray(coarse.faces, np.int32)),
        threshold=threshold, max_convex_hull=max_hulls, seed=seed, mcts_iterations=MCTS_ITERATIONS,
        mcts_nodes=MCTS_NODES, preprocess_mode="off" if coarse.is_watertight else "auto")
    pieces = [_hull(vertices) for vertices, _ in parts if len(vertices) >= 4]
    return pieces or [_hull(mesh.vertices)]


def _hull(points: np.ndarray) -> trimesh.Trimesh:
    """The convex hull of ``points`` as a closed, outward-facing triangle mesh."""
    hull = trimesh.convex.convex_hull(np.asarray(points, np.float64))
    if not hull.is_watertight or hull.volume <= 0:
        raise ValueError("a collision piece is degenerate (flat): no convex volume to collide with")
    return hull


def volume_coverage(mesh: trimesh.Trimesh, pieces: list[trimesh.Trimesh], samples: int = 20000, seed: int = 0) -> float:
    """Share of ``mesh``'s volume inside at least one piece, from points drawn uniformly in
    its bounding box and kept where inside ``mesh`` (open3d's ray-parity occupancy: ``mesh``
    should be closed).

    Measured by sampling because the volume of a union of overlapping hulls has no simple
    closed form; the standard error at 20000 samples is under half a percent.
    """
    rng = np.random.default_rng(seed)
    low, high = mesh.bounds
    points = rng.uniform(low, high, size=(samples, 3))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(mesh.faces, np.uint32)))
    inside = points[scene.compute_occupancy(o3d.core.Tensor(points.astype(np.float32))).numpy() > 0.5]
    if len(inside) == 0:
        raise ValueError("the mesh encloses no volume to cover (is it closed?)")
    covered = np.zeros(len(inside), bool)
    for piece in pieces:
        equations = ConvexHull(piece.vertices).equations  # outward normals n and offsets d: n.x + d <= 0 inside
        scale = max(float(np.ptp(piece.vertices, axis=0).max()), 1e-12)
        covered |= (inside @ equations[:, :3].T + equations[:, 3] <= 1e-9 * scale).all(axis=1)
    return float(covered.mean())

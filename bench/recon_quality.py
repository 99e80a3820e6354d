"""Reconstruction quality on real meshes, against a naive baseline; prints JSON.

    python bench/recon_quality.py [--meshes DIR] [--only NAME ...]

Protocol: normalise each mesh into the unit sphere; render its Zero123++ v1.2 six-view grid
(unlit albedo: the mesh's texture, or for untextured meshes a smooth albedo from position)
on 50 % grey; reconstruct with ``text-to-3d reconstruct``; normalise ground truth and result
alike (bounding-box bottom centre to the origin, diagonal to 1, orientation untouched);
report Chamfer distance (mean of both directions), F-score at 0.02 and 0.05, and at four
held-out views the albedo PSNR over the union of both masks and the silhouette IoU, plus
seconds per asset. The naive baseline (visual hull of the six masks, marching cubes,
per-vertex colour from the best-facing view) runs in the same process for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from skimage import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.camera import PinholeCamera  # noqa: E402
from recon.geometry import sample_views, signed_distance, working_volume  # noqa: E402
from recon.render import MeshRenderer  # noqa: E402
from stages.reconstruct import to_pinhole  # noqa: E402
from zero123pp import Camera, join_views, view_cameras  # noqa: E402

GREY = (0.5, 0.5, 0.5)
HELD_OUT = [(0.0, 0.0), (180.0, 0.0), (90.0, 45.0), (300.0, -30.0)]
SAMPLES = 100_000


def load_ground_truth(path: Path) -> trimesh.Trimesh:
    """The mesh in the unit sphere, with its texture or a smooth colour from position."""
    mesh = trimesh.load(path, force="mesh")
    centre = (mesh.bounds[0] + mesh.bounds[1]) / 2
    mesh.apply_translation(-centre)
    mesh.apply_scale(1.0 / np.linalg.norm(mesh.vertices, axis=1).max())
    if not isinstance(mesh.visual, trimesh.visual.TextureVisuals) or mesh.visual.uv is None:
        p = mesh.vertices
        colour = 0.5 + 0.35 * np.stack([np.sin(3.1 * p[:, 0] + 0.3), np.sin(2.3 * p[:, 1] + 1.7),
                                        np.cos(2.7 * p[:, 2] + 0.9)], axis=1)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.round(colour * 255).astype(np.uint8))
    return mesh


def render_grid(mesh: trimesh.Trimesh) -> tuple:
    renderer = MeshRenderer(mesh)
    cameras = [to_pinhole(c) for c in view_cameras("v1.2")]
    renders = [renderer.render(camera) for camera in cameras]
    return join_views([r.rgba(GREY) for r in renders]), cameras


def normalise(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Bounding-box bottom centre to the origin, diagonal to 1, orientation untouched."""
    mesh = mesh.copy()
    low, high = mesh.bounds
    mesh.apply_translation(-np.array([(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2]))
    mesh.apply_scale(1.0 / np.linalg.norm(high - low))
    return mesh


def geometry_metrics(truth: trimesh.Trimesh, result: trimesh.Trimesh) -> dict:
    a, _ = trimesh.sample.sample_surface(truth, SAMPLES, seed=0)
    b, _ = trimesh.sample.sample_surface(result, SAMPLES, seed=1)
    to_truth = cKDTree(a).query(b)[0]
    to_result = cKDTree(b).query(a)[0]
    metrics = {"chamfer": float((to_truth.mean() + to_result.mean()) / 2)}
    for tau in (0.02, 0.05):
        precision, recall = (to_truth < tau).mean(), (to_result < tau).mean()
        metrics[f"f_score@{tau}"] = float(2 * precision * recall / max(precision + recall, 1e-12))
    return metrics


def view_metrics(truth: trimesh.Trimesh, result: trimesh.Trimesh) -> dict:
    centre = (truth.bounds[0] + truth.bounds[1]) / 2
    renderers = [MeshRenderer(m.copy().apply_translation(-centre)) for m in (truth, result)]
    psnrs, ious = [], []
    for azimuth, elevation in HELD_OUT:
        camera = to_pinhole(Camera(azimuth, elevation, 30.0, 2.2, 320, 320))
        a, b = (renderer.render(camera) for renderer in renderers)
        union, intersection = a.mask | b.mask, a.mask & b.mask
        ious.append(intersection.sum() / max(union.sum(), 1))
        composite = [r.albedo * r.mask[..., None] + np.array(GREY) * ~r.mask[..., None] for r in (a, b)]
        mse = ((composite[0] - composite[1]) ** 2)[union].mean()
        psnrs.append(10 * np.log10(1.0 / max(mse, 1e-10)))
    return {"psnr_db": float(np.mean(psnrs)), "iou": float(np.mean(ious))}


def naive_baseline(grid_views: list, cameras: list[PinholeCamera], resolution: int = 128) -> trimesh.Trimesh:
    """Visual hull of the six masks, marching cubes, vertex colour from the best-facing view."""
    images = [np.asarray(view, np.float32) / 255 for view in grid_views]
    masks = [np.abs(image - 0.5).max(axis=-1) > 2 / 255 for image in images]
    centre, half = working_volume(cameras)
    size = 2 * half / (resolution - 1)
    axis = np.arange(resolution) * size + centre[0] - half
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    inside = sample_views(np.stack([signed_distance(m) for m in masks]), cameras, points, -1e3).min(axis=0) > 0
    volume = np.pad(inside.reshape((resolution,) * 3).astype(np.float32), 1)
    vertices, faces, _, _ = measure.marching_cubes(volume, 0.5, spacing=(size,) * 3)
    mesh = trimesh.Trimesh(vertices + (centre - half - size), faces[:, ::-1])
    normals = mesh.vertex_normals
    facing = np.stack([normals @ (c.position / np.linalg.norm(c.position)) for c in cameras])
    best = facing.argmax(axis=0)
    colours = sample_views(np.stack(images), cameras, mesh.vertices, 0.5)[best, np.arange(len(best))]
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.round(np.clip(colours, 0, 1) * 255).astype(np.uint8))
    return mesh


def load_result(path: Path) -> trimesh.Trimesh:
    return trimesh.load(path, force="mesh")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"))
    parser.add_argument("--only", nargs="*", help="mesh names to run (default: all)")
    args = parser.parse_args()
    folder = Path(args.meshes)
    if not folder.is_dir():
        print(json.dumps({"benchmark": "recon_quality", "skipped": f"no meshes at {folder} (../shared absent)"}))
        return
    paths = sorted(p for p in folder.glob("*.off")) + sorted(folder.glob("*/*.obj"))
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
    cli = Path(sys.executable).with_name("text-to-3d")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in paths:
            truth = load_ground_truth(path)
            grid, cameras = render_grid(truth)
            grid_path = Path(scratch) / f"{path.stem}.png"
            grid.save(grid_path)
            output = Path(scratch) / f"{path.stem}.glb"
            start = time.perf_counter()
            subprocess.run([cli, "reconstruct", grid_path, "-o", output, "--lods", "1"], check=True,
                           capture_output=True)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            from zero123pp import split_grid

            baseline = naive_baseline(split_grid(grid), cameras)
            baseline_seconds = time.perf_counter() - start
            truth_n = normalise(truth)
            ours_n, base_n = normalise(load_result(output)), normalise(baseline)
            rows.append({
                "mesh": path.stem,
                "ours": {**geometry_metrics(truth_n, ours_n), **view_metrics(truth_n, ours_n), "seconds": seconds},
                "naive": {**geometry_metrics(truth_n, base_n), **view_metrics(truth_n, base_n),
                          "seconds": baseline_seconds},
            })
    summary = {
        method: {key: float(np.mean([row[method][key] for row in rows])) for key in rows[0][method]}
        for method in ("ours", "naive")
    }
    print(json.dumps({"benchmark": "recon_quality", "meshes": rows, "mean": summary}, indent=2))


if __name__ == "__main__":
    main()

"""Reconstruction quality on real meshes, against a naive baseline; prints JSON.

    python bench/recon_quality.py [--protocol perfect|realistic|both] [--only NAME ...]
                                  [--seed N] [--meshes DIR | --procedural] [--save-grids DIR] [--markdown]
    python bench/recon_quality.py --from-json run.json --markdown

Meshes: every ``*.off`` and ``*.ply`` in ``--meshes`` and every folder there holding an
``.obj`` (with its ``.mtl`` and texture, if any), plus ``cow_grey``: the cow with a uniform
albedo equal to the 50 % background grey (8-bit), reported apart from the mean. It runs
under ``realistic`` only: unlit, it matches the background pixel for pixel, so there is
nothing to reconstruct (the CLI refuses it: "no foreground"). ``--procedural`` runs the
shapes of ``bench/shapes.py`` instead (built in code, so no ``../shared`` is needed).

Each mesh is normalised into the unit sphere and given an albedo: its texture, or for
untextured meshes a smooth colour from position. Two protocols make its Zero123++ v1.2
six-view grid (320 px tiles on 50 % grey, 8-bit PNG):

- ``perfect``: unlit albedo from the nominal cameras.
- ``realistic``: the appearance is albedo times Lambertian shading under fixed world lights
  (ambient plus three directional lights, on the ground truth's face normals, two-sided),
  so the shading is the same in every view. Each view is then wrong in its own way, as
  generated views are: rendered from a camera off the nominal one (azimuth and elevation
  within +-1.5 degrees, distance within +-3 %), and its composite on grey given a
  per-channel gain within +-5 %, a Gaussian blur of sigma 0.8 px and Gaussian noise of
  sigma 0.01. Draws are seeded by ``--seed`` and the mesh's name, so one mesh's grid is
  the same whether it runs alone or with the others.

Both reconstructions get the grid and the nominal cameras: ``text-to-3d reconstruct``
(``--lods 1``, timed as a whole process) and the naive baseline (visual hull of the six
mattes, marching cubes, per-vertex colour from the best-facing view), in this process.
Ground truth and result are normalised alike (bounding-box bottom centre to the origin,
diagonal to 1, orientation untouched). Metrics: Chamfer distance (mean of both
directions), F-score at 0.02 and 0.05, and at four held-out views the PSNR of the result's
albedo against the ground truth's appearance (unlit albedo for ``perfect``, shaded for
``realistic``) over the union of both masks, and the silhouette IoU; seconds per asset and
the output's face count. ``checks`` compares the means with the targets of issue 15.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from skimage import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.shapes import procedural_meshes  # noqa: E402
from recon.camera import PinholeCamera  # noqa: E402
from recon.geometry import sample_views, signed_distance, working_volume  # noqa: E402
from recon.render import MeshRenderer, RenderResult  # noqa: E402
from stages.reconstruct import to_pinhole  # noqa: E402
from zero123pp import Camera, join_views, matte_view, split_grid, view_cameras  # noqa: E402

GREY = (0.5, 0.5, 0.5)
HELD_OUT = [(0.0, 0.0), (180.0, 0.0), (90.0, 45.0), (300.0, -30.0)]
SAMPLES = 100_000
PROTOCOLS = ("perfect", "realistic")
GREY_CASE = ("cow", "cow_grey")  # (source mesh, case name)

# Realistic views: world lights as (unit direction towards the light, intensity), and the
# per-view error ranges of issue 15.
AMBIENT = 0.3
LIGHTS = [(np.array(d) / np.linalg.norm(d), w) for d, w in
          [((0.4, 0.8, 0.6), 0.55), ((-0.7, 0.3, -0.4), 0.3), ((0.2, -0.5, -0.8), 0.15)]]
ANGLE_ERROR_DEG, DISTANCE_ERROR, GAIN_ERROR, BLUR_SIGMA_PX, NOISE_SIGMA = 1.5, 0.03, 0.05, 0.8, 0.01

TARGETS = {  # metric: (mean at most / at least, perfect, realistic)
    "chamfer": ("max", 0.006, 0.009),
    "f_score@0.02": ("min", 0.93, 0.88),
    "iou": ("min", 0.95, 0.93),
    "psnr_db": ("min", 23.0, 20.0),
    "seconds": ("max", 10.0, 10.0),
}
WORST_SECONDS, GREY_IOU = 15.0, 0.90


def find_meshes(folder: Path) -> dict[str, Path]:
    """Mesh files by name: ``*.off`` and ``*.ply`` files, and folders holding an ``.obj``."""
    paths = [*folder.glob("*.off"), *folder.glob("*.ply"), *folder.glob("*/*.obj")]
    return {path.stem: path for path in sorted(paths, key=lambda p: p.stem)}


def load_ground_truth(path: Path, grey: bool = False) -> trimesh.Trimesh:
    """The mesh in the unit sphere, with its texture, a smooth colour from position, or
    (``grey``) the background's grey."""
    mesh = trimesh.load(path, force="mesh")
    centre = (mesh.bounds[0] + mesh.bounds[1]) / 2
    mesh.apply_translation(-centre)
    mesh.apply_scale(1.0 / np.linalg.norm(mesh.vertices, axis=1).max())
    if grey:
        colour = np.broadcast_to(np.array(GREY), mesh.vertices.shape)
    elif has_texture(mesh):
        return mesh
    else:
        p = mesh.vertices
        colour = 0.5 + 0.35 * np.stack([np.sin(3.1 * p[:, 0] + 0.3), np.sin(2.3 * p[:, 1] + 1.7),
                                        np.cos(2.7 * p[:, 2] + 0.9)], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.round(colour * 255).astype(np.uint8))
    return mesh


def has_texture(mesh: trimesh.Trimesh) -> bool:
    """UVs and an image to look them up in (an OBJ without its texture file has neither)."""
    visual = mesh.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.uv is None:
        return False
    return (getattr(visual.material, "baseColorTexture", None) or getattr(visual.material, "image", None)) is not None


def appearance(result: RenderResult, camera: PinholeCamera, shaded: bool) -> np.ndarray:
    """The view's colours on grey: albedo, or (``shaded``) albedo under the world lights.

    Lambertian on the hit face's normal, turned towards the viewer so that both sides of an
    open surface (a mug's inside) are lit; a closed, outward-wound mesh never needs the turn.
    """
    colour = result.albedo
    if shaded:
        normals = result.normals
        _, directions = camera.rays()
        normals = np.where(((normals * directions).sum(-1) > 0)[..., None], -normals, normals)
        shading = AMBIENT + sum(w * np.clip(normals @ d, 0.0, None) for d, w in LIGHTS)
        colour = colour * shading[..., None]
    alpha = result.mask[..., None]
    return np.where(alpha, np.clip(colour, 0.0, 1.0), np.asarray(GREY, np.float32)).astype(np.float32)


def render_grid(mesh: trimesh.Trimesh, protocol: str, rng: np.random.Generator) -> Image.Image:
    """The six-view grid of ``mesh`` under ``protocol`` (the module docstring)."""
    return render_views(mesh, protocol, rng)[0]


def render_views(mesh: trimesh.Trimesh, protocol: str,
                 rng: np.random.Generator) -> tuple[Image.Image, list[PinholeCamera]]:
    """The six-view grid of ``mesh`` under ``protocol`` and the cameras it was rendered
    from (the nominal ones for ``perfect``)."""
    renderer = MeshRenderer(mesh)
    views, cameras = [], []
    for camera in view_cameras("v1.2"):
        realistic = protocol == "realistic"
        if realistic:
            azimuth, elevation = rng.uniform(-ANGLE_ERROR_DEG, ANGLE_ERROR_DEG, 2)
            camera = replace(camera, azimuth_deg=camera.azimuth_deg + azimuth,
                             elevation_deg=camera.elevation_deg + elevation,
                             distance=camera.distance * (1 + rng.uniform(-DISTANCE_ERROR, DISTANCE_ERROR)))
        pinhole = to_pinhole(camera)
        cameras.append(pinhole)
        image = appearance(renderer.render(pinhole), pinhole, shaded=realistic)
        if realistic:
            image = image * (1 + rng.uniform(-GAIN_ERROR, GAIN_ERROR, 3))
            image = gaussian_filter(image, sigma=(BLUR_SIGMA_PX, BLUR_SIGMA_PX, 0))
            image = image + rng.normal(0.0, NOISE_SIGMA, image.shape)
        views.append(Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)))
    return join_views(views), cameras


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


def view_metrics(truth: trimesh.Trimesh, result: trimesh.Trimesh, shaded: bool) -> dict:
    """Held-out PSNR of the result's albedo against the truth's appearance, and IoU."""
    centre = (truth.bounds[0] + truth.bounds[1]) / 2
    renderers = [MeshRenderer(m.copy().apply_translation(-centre)) for m in (truth, result)]
    psnrs, ious = [], []
    for azimuth, elevation in HELD_OUT:
        camera = to_pinhole(Camera(azimuth, elevation, 30.0, 2.2, 320, 320))
        a, b = (renderer.render(camera) for renderer in renderers)
        union, intersection = a.mask | b.mask, a.mask & b.mask
        ious.append(intersection.sum() / max(union.sum(), 1))
        mse = ((appearance(a, camera, shaded) - appearance(b, camera, shaded=False)) ** 2)[union].mean()
        psnrs.append(10 * np.log10(1.0 / max(mse, 1e-10)))
    return {"psnr_db": float(np.mean(psnrs)), "iou": float(np.mean(ious))}


def naive_baseline(grid_views: list, cameras: list[PinholeCamera], resolution: int = 128) -> trimesh.Trimesh:
    """Visual hull of the six mattes, marching cubes, vertex colour from the best-facing view."""
    images = [np.asarray(view.convert("RGB"), np.float32) / 255 for view in grid_views]
    masks = [np.asarray(matte_view(view).getchannel("A")) > 127 for view in grid_views]
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


def run_case(truth: trimesh.Trimesh, name: str, protocol: str, seed: int, scratch: Path,
             save_grids: Path | None, extra_args: tuple[str, ...] = ()) -> dict:
    """One mesh under one protocol: both reconstructions and their metrics."""
    grid = render_grid(truth, protocol, np.random.default_rng([seed, zlib.crc32(name.encode())]))
    grid_path = scratch / f"{name}_{protocol}.png"
    grid.save(grid_path)
    if save_grids is not None:
        grid.save(save_grids / grid_path.name)
    output = scratch / f"{name}_{protocol}.glb"
    cli = Path(sys.executable).with_name("text-to-3d")
    start = time.perf_counter()
    process = subprocess.run([cli, "reconstruct", grid_path, "-o", output, "--lods", "1", *extra_args],
                             capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shaded = protocol == "realistic"
    truth_n = normalise(truth)
    row = {"mesh": name}
    if process.returncode == 0:
        ours = trimesh.load(output, force="mesh")
        ours_n = normalise(ours)
        row["ours"] = {**geometry_metrics(truth_n, ours_n), **view_metrics(truth_n, ours_n, shaded),
                       "seconds": seconds, "faces": len(ours.faces)}
    else:
        row["ours"] = {"error": (process.stderr.strip().splitlines() or ["no message"])[-1], "seconds": seconds}
    start = time.perf_counter()
    cameras = [to_pinhole(c) for c in view_cameras("v1.2")]
    try:
        baseline = naive_baseline(split_grid(grid), cameras)
    except (ValueError, RuntimeError) as error:  # an empty hull: marching cubes finds no surface
        row["naive"] = {"error": str(error), "seconds": time.perf_counter() - start}
        return row
    baseline_seconds = time.perf_counter() - start
    base_n = normalise(baseline)
    row["naive"] = {**geometry_metrics(truth_n, base_n), **view_metrics(truth_n, base_n, shaded),
                    "seconds": baseline_seconds, "faces": len(baseline.faces)}
    return row


def summarise(protocol: str, rows: list[dict], grey: dict | None) -> dict:
    """Means over the meshes both methods reconstructed, worst seconds, and the targets."""
    done = [row for row in rows if "error" not in row["ours"] and "error" not in row["naive"]]
    summary: dict = {"meshes": rows, "failed": [row["mesh"] for row in rows if row not in done]}
    if grey is not None:
        summary["grey"] = grey
    if not done:
        return summary
    mean = {method: {key: float(np.mean([row[method][key] for row in done])) for key in done[0][method]}
            for method in ("ours", "naive")}
    worst = max(row["ours"]["seconds"] for row in rows)
    column = PROTOCOLS.index(protocol) + 1
    checks = {}
    for key, target in TARGETS.items():
        value, limit = mean["ours"][key], target[column]
        checks[f"mean {key} {'<=' if target[0] == 'max' else '>='} {limit}"] = (
            value <= limit if target[0] == "max" else value >= limit)
    checks[f"worst seconds <= {WORST_SECONDS}"] = worst <= WORST_SECONDS
    worse = [row["mesh"] for row in done if row["ours"]["chamfer"] > row["naive"]["chamfer"]]
    checks["no mesh's chamfer worse than naive"] = not worse and not summary["failed"]
    if grey is not None:
        checks[f"grey iou >= {GREY_IOU}"] = grey["ours"].get("iou", 0.0) >= GREY_IOU
    summary.update({"mean": mean, "worst_seconds": worst, "chamfer_worse_than_naive": worse, "checks": checks})
    return summary


def markdown(report: dict) -> str:
    """Per-protocol tables in docs/benchmarks.md's layout, ready to paste."""
    columns = [("CD", "chamfer", "{:.4f}"), ("F@0.02", "f_score@0.02", "{:.3f}"), ("F@0.05", "f_score@0.05", "{:.3f}"),
               ("PSNR dB", "psnr_db", "{:.1f}"), ("IoU", "iou", "{:.3f}")]
    ours = columns + [("faces", "faces", "{:.0f}"), ("s", "seconds", "{:.1f}")]
    header = [f"ours {title}" for title, _, _ in ours] + [f"naive {title}" for title, _, _ in columns]

    def cells(metrics: dict, spec: list, bold: bool = False) -> list[str]:
        if "error" in metrics:
            return [f"failed: {metrics['error']}"] + [""] * (len(spec) - 1)
        return [(f"**{form}**" if bold else form).format(metrics[key]) for _, key, form in spec]

    lines = []
    for protocol, summary in report["protocols"].items():
        lines += [f"{protocol} (seed {report['seed']}):", "", "| mesh | " + " | ".join(header) + " |",
                  "| --- " * (len(header) + 1) + "|"]
        for row in summary["meshes"]:
            lines.append("| " + " | ".join([row["mesh"], *cells(row["ours"], ours), *cells(row["naive"], columns)])
                         + " |")
        if "mean" in summary:
            lines.append("| " + " | ".join(["**mean**", *cells(summary["mean"]["ours"], ours, bold=True),
                                            *cells(summary["mean"]["naive"], columns)]) + " |")
        if "grey" in summary:
            grey = summary["grey"]
            lines.append("| " + " | ".join([f"{grey['mesh']} (not in the mean)", *cells(grey["ours"], ours),
                                            *cells(grey["naive"], columns)]) + " |")
        if "checks" in summary:
            lines += ["", f"worst seconds {summary['worst_seconds']:.1f}; targets: "
                      + "; ".join(f"{check} {'pass' if ok else 'FAIL'}" for check, ok in summary["checks"].items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"))
    parser.add_argument("--procedural", action="store_true",
                        help="run the shapes built in bench/shapes.py instead of the meshes folder")
    parser.add_argument("--only", nargs="*", help=f"mesh names to run, {GREY_CASE[1]} included (default: all)")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both")
    parser.add_argument("--seed", type=int, default=0, help="seed of the realistic views' errors")
    parser.add_argument("--save-grids", type=Path, help="also write each input grid PNG to this folder")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables instead of JSON")
    parser.add_argument("--from-json", type=Path, help="a previous run's JSON to print (with --markdown)")
    parser.add_argument("--keep-lighting", action="store_true",
                        help="reconstruct with --keep-lighting: the lit bake, for PSNR against the shaded appearance")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        print(markdown(report) if args.markdown else json.dumps(report, indent=2))
        return
    if args.procedural:
        shapes = procedural_meshes()
        loaders = {name: (lambda mesh=mesh: mesh) for name, mesh in shapes.items()}
        where = "bench/shapes.py"
    else:
        folder = Path(args.meshes)
        if not folder.is_dir():
            print(json.dumps({"benchmark": "recon_quality", "skipped": f"no meshes at {folder} (../shared absent)"}))
            return
        meshes = find_meshes(folder)
        loaders = {name: (lambda path=path: load_ground_truth(path)) for name, path in meshes.items()}
        if GREY_CASE[0] in meshes:  # the grey case paints one of the shared meshes
            loaders[GREY_CASE[1]] = lambda: load_ground_truth(meshes[GREY_CASE[0]], grey=True)
        where = str(folder)
    wanted = set(args.only) if args.only else set(loaders)
    unknown = wanted - set(loaders)
    if unknown:
        parser.error(f"no mesh named {', '.join(sorted(unknown))} in {where}; have {', '.join(sorted(loaders))}")
    cases = [(name, load, name == GREY_CASE[1]) for name, load in loaders.items() if name in wanted]
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    if args.save_grids:
        args.save_grids.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {protocol: [] for protocol in protocols}
    grey: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, load, is_grey in cases:
            truth = load()
            for protocol in protocols:
                if is_grey and protocol == "perfect":
                    continue
                row = run_case(truth, name, protocol, args.seed, Path(scratch), args.save_grids,
                               ("--keep-lighting",) if args.keep_lighting else ())
                if is_grey:
                    grey[protocol] = row
                else:
                    rows[protocol].append(row)
    summaries = {protocol: summarise(protocol, rows[protocol], grey.get(protocol)) for protocol in protocols}
    report = {"benchmark": "recon_quality", "seed": args.seed, "keep_lighting": args.keep_lighting,
              "protocols": summaries}
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Matting of the six views by colour alone against colour with u2netp; prints JSON.

    python bench/view_matting.py [--only NAME ...] [--meshes DIR | --procedural] [--u2netp FILE] [--repeats N]

Each mesh of recon_quality is rendered from the six nominal Zero123++ v1.2 cameras (320 px
tiles on 50 % grey) the way recon_quality's ``realistic`` protocol renders it (albedo times
Lambertian shading under its world lights, then a per-channel gain, a blur and noise; the
camera errors are left out, since matting looks at one view at a time), twice: with its own
albedo, and with the background's grey as albedo (``grey``). Each view is matted by
``matte_view`` (colour) and by ``learned_matte`` (colour and u2netp); the score is the IoU of
alpha >= 0.5 with the render's mask, averaged over the six views, and over the meshes in
``mean``. Timing: u2netp alone and the whole learned matte of six tiles, in seconds, the
median of ``--repeats`` runs after a warm-up, with this machine's CPU count. ``checks``:
the grey mean IoU at least 0.90 (issue 15), the coloured mean not below colour alone.
``--procedural`` mats the shapes built in ``bench/shapes.py`` instead (a striped can, a
white box: faces and stripes that shading brings to the background's grey).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/, whose zero123pp.py is a script

from recon.render import MeshRenderer  # noqa: E402
import trimesh  # noqa: E402
from recon_quality import (  # noqa: E402
    BLUR_SIGMA_PX,
    GAIN_ERROR,
    GREY,
    NOISE_SIGMA,
    appearance,
    find_meshes,
    load_ground_truth,
)
from bench.shapes import procedural_meshes  # noqa: E402
from stages.cutout import coarse_foreground  # noqa: E402
from stages.reconstruct import to_pinhole  # noqa: E402
from stages.view_matting import learned_matte  # noqa: E402
from zero123pp import matte_view, view_cameras  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GREY_IOU = 0.90


def painted_grey(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of ``mesh`` in the background's grey."""
    grey = mesh.copy()
    colour = np.append(np.round(np.array(GREY) * 255), 255).astype(np.uint8)
    grey.visual = trimesh.visual.ColorVisuals(grey, vertex_colors=np.tile(colour, (len(grey.vertices), 1)))
    return grey


def render_views(mesh: trimesh.Trimesh, rng: np.random.Generator) -> list[tuple[Image.Image, np.ndarray]]:
    """The six shaded, degraded views of a mesh and their true masks."""
    renderer = MeshRenderer(mesh)
    views = []
    for camera in view_cameras("v1.2"):
        pinhole = to_pinhole(camera)
        result = renderer.render(pinhole)
        image = appearance(result, pinhole, shaded=True) * (1 + rng.uniform(-GAIN_ERROR, GAIN_ERROR, 3))
        image = gaussian_filter(image, sigma=(BLUR_SIGMA_PX, BLUR_SIGMA_PX, 0))
        image = image + rng.normal(0.0, NOISE_SIGMA, image.shape)
        views.append((Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)), result.mask))
    return views


def iou(alpha: Image.Image, mask: np.ndarray) -> float:
    matted = np.asarray(alpha.getchannel("A")) >= 128
    return float((matted & mask).sum() / max((matted | mask).sum(), 1))


def median_seconds(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", default=str(SHARED / "meshes"))
    parser.add_argument("--procedural", action="store_true",
                        help="mat the shapes built in bench/shapes.py instead of the meshes folder")
    parser.add_argument("--only", nargs="*", help="mesh names to run (default: all)")
    parser.add_argument("--u2netp", default=str(SHARED / "u2netp.onnx"), help="u2netp.onnx (models fetch u2netp)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder, model = Path(args.meshes), Path(args.u2netp)
    if (not args.procedural and not folder.is_dir()) or not model.is_file():
        print(json.dumps({"benchmark": "view_matting", "skipped": f"needs {folder} and {model} (../shared absent)"}))
        return
    import onnxruntime

    u2net = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    if args.procedural:
        loaders = {name: (lambda grey, mesh=mesh: painted_grey(mesh) if grey else mesh)
                   for name, mesh in procedural_meshes().items()}
    else:
        loaders = {name: (lambda grey, path=path: load_ground_truth(path, grey=grey))
                   for name, path in find_meshes(folder).items()}
    names = [name for name in loaders if not args.only or name in args.only]
    rows = []
    for name in names:
        row = {"mesh": name}
        for kind, grey in (("coloured", False), ("grey", True)):
            views = render_views(loaders[name](grey), np.random.default_rng([args.seed, grey]))
            row[kind] = {"colour": round(float(np.mean([iou(matte_view(v), m) for v, m in views])), 4),
                         "learned": round(float(np.mean([iou(learned_matte(v, u2net), m) for v, m in views])), 4)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    mean = {kind: {method: round(float(np.mean([row[kind][method] for row in rows])), 4)
                   for method in ("colour", "learned")} for kind in ("coloured", "grey")}
    tiles = [view for view, _ in render_views(loaders[names[0]](True), np.random.default_rng(args.seed))]
    seconds = {
        "u2netp_six_tiles": median_seconds(lambda: [coarse_foreground(t, u2net, stretch=False) for t in tiles],
                                           args.repeats),
        "learned_matte_six_tiles": median_seconds(lambda: [learned_matte(t, u2net) for t in tiles], args.repeats),
        "colour_matte_six_tiles": median_seconds(lambda: [matte_view(t) for t in tiles], args.repeats),
        "cpus": os.cpu_count(),
    }
    checks = {"grey_iou>=0.90": mean["grey"]["learned"] >= GREY_IOU,
              "coloured_not_worse": mean["coloured"]["learned"] >= mean["coloured"]["colour"]}
    print(json.dumps({"benchmark": "view_matting", "seed": args.seed, "rows": rows, "mean": mean,
                      "seconds": seconds, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()

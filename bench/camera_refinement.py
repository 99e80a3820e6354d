"""How close camera refinement brings the views' cameras to the true ones; prints JSON.

    python bench/camera_refinement.py [--seed N] [--meshes DIR] [--only NAME ...]

On the realistic grids of ``bench/recon_quality.py`` (same meshes, seed and draws), whose
views were rendered from cameras off the nominal ones by up to 1.5 degrees and 3 %, it
compares the nominal cameras and ``recon.calibration.refine_cameras``'s corrections of them
(from the views' mattes, as reconstruction runs it) with the cameras the views came from.
Silhouettes cannot tell a turn or a scaling of the whole set of cameras (the object turned
or scaled instead), so the error is measured between views: for every pair of views, the
angle between their relative rotation and the true one, and the error of their distance
ratio. Means over the pairs and the meshes.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recon.calibration import refine_cameras  # noqa: E402
from recon.camera import PinholeCamera  # noqa: E402
from recon_quality import find_meshes, load_ground_truth, render_views  # noqa: E402
from stages.reconstruct import to_pinhole  # noqa: E402
from stages.view_matting import to_rgba_views  # noqa: E402
from zero123pp import split_grid, view_cameras  # noqa: E402


def relative_errors(cameras: list[PinholeCamera], truth: list[PinholeCamera]) -> tuple[float, float]:
    """Mean over view pairs of the relative rotation's error (degrees) and of the distance
    ratio's error (absolute log)."""
    angles, ratios = [], []
    for i, j in combinations(range(len(cameras)), 2):
        def relative(c: list[PinholeCamera]) -> np.ndarray:
            return c[i].camera_to_world[:3, :3].T @ c[j].camera_to_world[:3, :3]

        residual = relative(cameras).T @ relative(truth)
        angles.append(np.degrees(np.arccos(np.clip((np.trace(residual) - 1) / 2, -1.0, 1.0))))
        ratio = [np.linalg.norm(c[i].position) / np.linalg.norm(c[j].position) for c in (cameras, truth)]
        ratios.append(abs(np.log(ratio[0] / ratio[1])))
    return float(np.mean(angles)), float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--meshes", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes")
    parser.add_argument("--only", nargs="*", help="mesh names")
    args = parser.parse_args()
    meshes = find_meshes(args.meshes)
    if not meshes:
        print(json.dumps({"benchmark": "camera_refinement", "skipped": f"no meshes at {args.meshes}"}))
        return
    nominal = [to_pinhole(camera) for camera in view_cameras("v1.2", 320)]
    rows = []
    for name in args.only or sorted(meshes):
        rng = np.random.default_rng([args.seed, zlib.crc32(name.encode())])
        grid, truth = render_views(load_ground_truth(meshes[name]), "realistic", rng)
        masks = [image[..., 3] > 0.5 for image in to_rgba_views(split_grid(grid))]
        refined, report = refine_cameras(masks, nominal)
        (nominal_deg, nominal_log), (refined_deg, refined_log) = (relative_errors(c, truth) for c in (nominal, refined))
        rows.append({"mesh": name, "nominal_deg": round(nominal_deg, 3), "refined_deg": round(refined_deg, 3),
                     "nominal_distance_log": round(nominal_log, 4), "refined_distance_log": round(refined_log, 4),
                     "applied": bool(report.applied)})
    mean = {key: round(float(np.mean([row[key] for row in rows])), 4)
            for key in ("nominal_deg", "refined_deg", "nominal_distance_log", "refined_distance_log")}
    print(json.dumps({"benchmark": "camera_refinement", "seed": args.seed, "meshes": rows, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()

"""Delivery packages of real meshes' reconstructions, checked against issue 19; prints JSON.

    python bench/package.py [--only NAME ...] [--meshes DIR] [--engine unreal] [--work DIR]

Each mesh gets the ``perfect`` six-view grid of ``bench/recon_quality.py`` (unlit albedo,
nominal cameras), ``text-to-3d reconstruct`` (``--lods 1``, default 1024 texture) and then
``text-to-3d package --engine ENGINE --collision --compress --usdz``, both as processes.
Reported per mesh from the package's manifest and the files: validator errors and
warnings over every GLB, the USD ARKit compliance verdict, collision pieces and their share
of the volume (re-measured here on 50,000 points), the compressed GLB's share of the base
GLB's bytes, texture PSNR of the KTX2 textures, and the package's seconds. ``checks``
holds the targets: every GLB validator-clean, USDZ compliant, coverage >= 95 %,
compressed <= 33 %.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recon.collision import volume_coverage  # noqa: E402
from recon.gltf_validation import validate_glb  # noqa: E402
from recon.usdz import compliance_errors  # noqa: E402
from recon_quality import find_meshes, load_ground_truth, render_grid  # noqa: E402


def package_one(name: str, path: Path, engine: str, work: Path) -> dict:
    cli = Path(sys.executable).with_name("text-to-3d")
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / "grid.png"
    render_grid(load_ground_truth(path), "perfect", np.random.default_rng(0)).save(grid)
    glb = folder / f"{name}.glb"
    done = subprocess.run([cli, "reconstruct", grid, "-o", glb, "--lods", "1"], capture_output=True, text=True)
    if done.returncode != 0:
        return {"mesh": name, "error": f"reconstruct: {done.stderr.strip()[-300:]}"}
    started = time.perf_counter()
    done = subprocess.run([cli, "package", glb, "-o", folder / "package", "--engine", engine, "--collision",
                           "--compress", "--usdz"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"mesh": name, "error": f"package: {done.stderr.strip()[-300:]}"}
    manifest = json.loads((folder / "package" / "manifest.json").read_text())
    files = {file_name: folder / "package" / file_name for file_name in manifest["files"]}
    reports = {file_name: validate_glb(file)["issues"] for file_name, file in files.items() if file_name.endswith(".glb")}
    base = files[f"{manifest['asset']}.glb"]
    scene = trimesh.load(base)
    render = scene.geometry[manifest["asset"]]
    hulls = [geometry for geometry_name, geometry in scene.geometry.items() if geometry_name.startswith("UCX_")
             or geometry_name.endswith("-convcolonly") or "_collision_" in geometry_name]
    if not hulls and f"{manifest['asset']}_collision.glb" in files:
        hulls = list(trimesh.load(files[f"{manifest['asset']}_collision.glb"]).geometry.values())
    solid = trimesh.Trimesh(render.vertices, render.faces)
    usdz = next(file for file_name, file in files.items() if file_name.endswith(".usdz"))
    details = manifest["details"]
    return {
        "mesh": name, "faces": details["faces"], "package_seconds": round(seconds, 1),
        "validator_errors": sum(report["numErrors"] for report in reports.values()),
        "validator_warnings": sum(report["numWarnings"] for report in reports.values()),
        "usdz_compliance_errors": compliance_errors(usdz),
        "collision_pieces": len(hulls), "all_convex_watertight": all(h.is_watertight and h.is_convex for h in hulls),
        "volume_coverage": round(volume_coverage(solid, hulls, samples=50000, seed=1), 4),
        "compressed_ratio": details["compressed"]["ratio"],
        "texture_psnr_db": details["compressed"]["texture_psnr_db"],
        "bytes": {file_name: entry["bytes"] for file_name, entry in manifest["files"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"))
    parser.add_argument("--only", nargs="*", help="mesh names to run (default: all)")
    parser.add_argument("--engine", choices=["generic", "unreal", "unity", "godot"], default="unreal")
    parser.add_argument("--work", type=Path, help="keep grids, GLBs and packages here (default: a temporary folder)")
    args = parser.parse_args()
    meshes = find_meshes(Path(args.meshes))
    names = args.only or list(meshes)
    unknown = [name for name in names if name not in meshes]
    if unknown:
        raise SystemExit(f"unknown meshes: {', '.join(unknown)}; known: {', '.join(meshes)}")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        rows = [package_one(name, meshes[name], args.engine, work) for name in names]
    done = [row for row in rows if "error" not in row]
    checks = {
        "validator_clean": all(row["validator_errors"] == 0 for row in done),
        "usdz_compliant": all(not row["usdz_compliance_errors"] for row in done),
        "coverage>=0.95": all(row["volume_coverage"] >= 0.95 for row in done),
        "compressed<=0.33": all(row["compressed_ratio"] <= 0.33 for row in done),
        "no_failures": len(done) == len(rows),
    }
    print(json.dumps({"engine": args.engine, "meshes": rows, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()

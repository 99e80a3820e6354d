"""De-lit against lit base colour, each against the true albedo; prints JSON.

    python bench/delight.py [--protocol realistic|perfect|both] [--only NAME ...] [--seed N]
                            [--meshes DIR] [--markdown]

Each mesh's six-view grid is rendered as ``bench/recon_quality.py`` renders it
(``realistic``: the albedo under Lambertian shading from fixed world lights, plus each view's
pose, gain, blur and noise errors; ``perfect``: the unlit albedo) and reconstructed twice in
this process, as ``text-to-3d reconstruct --lods 1`` does (u2netp matting when it is
fetched): with the lighting divided out (the default) and with ``--keep-lighting``. Both
are scored against the ground truth's *unlit* albedo: at recon_quality's four held-out
views, the PSNR of the result's texture rendered unlit, over the union of both masks.
Under ``realistic`` the de-lit texture should come closer; under ``perfect`` (flat-lit
views) de-lighting should change nothing. ``lighting`` is what reconstruction recorded
(``recon.lighting.Lighting``): whether the shading was divided out, its estimated spread
over the surface (``variation``), the share of texture that follows the normal (``noise``)
and the part of the fit that no change of hue explains (``achromatic``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.recon_quality import (  # noqa: E402
    PROTOCOLS, find_meshes, load_ground_truth, normalise, render_grid, view_metrics,
)
from stages.reconstruct import export_asset, reconstruct_views  # noqa: E402
from stages.view_matting import view_matting_model  # noqa: E402
from stages.settings import load_settings  # noqa: E402


def run_case(truth: trimesh.Trimesh, name: str, protocol: str, seed: int, scratch: Path, u2net) -> dict:
    """One mesh under one protocol: the de-lit and the lit reconstruction's held-out PSNR."""
    grid = render_grid(truth, protocol, np.random.default_rng([seed, zlib.crc32(name.encode())]))
    grid_path = scratch / f"{name}_{protocol}.png"
    grid.save(grid_path)
    truth_n = normalise(truth)
    row: dict = {"mesh": name}
    for label, delight in (("delit", True), ("lit", False)):
        phases: dict[str, float] = {}
        start = time.perf_counter()
        try:
            asset = reconstruct_views(grid_path, "v1.2", u2net=u2net, delight=delight,
                                      progress=lambda phase, seconds: phases.__setitem__(phase, seconds))
        except ValueError as error:
            row[label] = {"error": str(error)}
            continue
        seconds = time.perf_counter() - start
        output = scratch / f"{name}_{protocol}_{label}.glb"
        export_asset(asset, output, lods=1)
        result = normalise(trimesh.load(output, force="mesh"))
        row[label] = {"psnr_db": view_metrics(truth_n, result, shaded=False)["psnr_db"], "seconds": seconds}
        if delight:
            row["lighting"] = {**asset.details["lighting"], "seconds": phases.get("lighting estimate", 0.0)}
    return row


def summarise(rows: list[dict]) -> dict:
    """Means over the meshes both reconstructions finished, and how many de-lit beat lit."""
    done = [row for row in rows if "error" not in row["delit"] and "error" not in row["lit"]]
    summary: dict = {"meshes": rows, "failed": [row["mesh"] for row in rows if row not in done]}
    if done:
        summary["mean"] = {label: float(np.mean([row[label]["psnr_db"] for row in done])) for label in ("delit", "lit")}
        summary["delit_better"] = sum(row["delit"]["psnr_db"] > row["lit"]["psnr_db"] for row in done)
        summary["applied"] = sum(bool(row["lighting"]["applied"]) for row in done)
    return summary


def markdown(report: dict) -> str:
    lines = []
    for protocol, summary in report["protocols"].items():
        lines += [f"{protocol} (seed {report['seed']}):", "",
                  "| mesh | de-lit PSNR dB | lit PSNR dB | gain dB | applied | variation | noise | achromatic |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in summary["meshes"]:
            if "error" in row["delit"] or "error" in row["lit"]:
                lines.append(f"| {row['mesh']} | failed: {row['delit'].get('error') or row['lit'].get('error')} |"
                             " | | | | | |")
                continue
            light = row["lighting"]
            lines.append(f"| {row['mesh']} | {row['delit']['psnr_db']:.2f} | {row['lit']['psnr_db']:.2f} | "
                         f"{row['delit']['psnr_db'] - row['lit']['psnr_db']:+.2f} | "
                         f"{'yes' if light['applied'] else 'no'} | {light['variation']:.3f} | {light['noise']:.3f} | "
                         f"{light['achromatic']:.3f} |")
        if "mean" in summary:
            mean = summary["mean"]
            lines.append(f"| **mean** | **{mean['delit']:.2f}** | **{mean['lit']:.2f}** | "
                         f"**{mean['delit'] - mean['lit']:+.2f}** | {summary['applied']} of "
                         f"{len(summary['meshes']) - len(summary['failed'])} | | | |")
            lines += ["", f"de-lit better on {summary['delit_better']} meshes"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"))
    parser.add_argument("--only", nargs="*", help="mesh names to run (default: all)")
    parser.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="realistic")
    parser.add_argument("--seed", type=int, default=0, help="seed of the realistic views' errors")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables instead of JSON")
    args = parser.parse_args()
    folder = Path(args.meshes)
    if not folder.is_dir():
        print(json.dumps({"benchmark": "delight", "skipped": f"no meshes at {folder} (../shared absent)"}))
        return
    meshes = find_meshes(folder)
    unknown = set(args.only or ()) - set(meshes)
    if unknown:
        parser.error(f"no mesh named {', '.join(sorted(unknown))} in {folder}; have {', '.join(meshes)}")
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    u2net = view_matting_model(load_settings())
    rows: dict[str, list] = {protocol: [] for protocol in protocols}
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in meshes.items():
            if args.only and name not in args.only:
                continue
            truth = load_ground_truth(path)
            for protocol in protocols:
                rows[protocol].append(run_case(truth, name, protocol, args.seed, Path(scratch),
                                               u2net.model if u2net else None))
                print(json.dumps(rows[protocol][-1]), file=sys.stderr, flush=True)
    report = {"benchmark": "delight", "seed": args.seed,
              "protocols": {protocol: summarise(rows[protocol]) for protocol in protocols}}
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

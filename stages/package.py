"""Package stage: one finished GLB to a delivery set for an engine.

- ``<asset>.glb``: the render mesh with an explicit metallic-roughness material (metallic 0,
  roughness 0.9 unless the GLB sets them; Unreal also gets an ORM texture), plus, with
  collision, the convex pieces named by the engine's convention: ``UCX_<asset>_NN``
  meshes for Unreal, ``<asset>_hull_NN-convcolonly`` nodes for Godot. Generic and Unity
  get them in ``<asset>_collision.glb`` instead.
- ``<asset>_compressed.glb``: the same with KTX2 textures and meshopt geometry.
- ``<asset>.usdz``: the render mesh for USD and AR Quick Look (LOD0 only).
- ``manifest.json``: every file with its size and checksum, and what was measured: the
  collision pieces' share of the volume, the compressed size and texture PSNR, the
  validator's and USD compliance checker's verdicts, and the models' licences.

Every file is checked before any is written (glTF validator, ARKit compliance), and all
are renamed into place together, so a failure leaves no partial delivery.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trimesh

from recon.collision import convex_pieces, volume_coverage
from recon.compress import compress_glb
from recon.export import METALLIC, ROUGHNESS, bake_occlusion, pbr_material
from recon.files import write_set_atomically
from recon.usdz import compliance_errors, write_usdz
from stages.preview import load_asset_mesh
from stages.reconstruct import validate_exports

Engine = Literal["generic", "unreal", "unity", "godot"]
ENGINES: tuple[str, ...] = ("generic", "unreal", "unity", "godot")
# Collision pieces must cover at least this share of the render mesh's volume.
MIN_COVERAGE = 0.95


@dataclass
class Package:
    """The files written (by role) and what the manifest records of them."""

    files: dict[str, Path]
    manifest: dict


def asset_name(path: str | Path) -> str:
    """An engine-safe name from a file name: letters, digits and underscores."""
    name = re.sub(r"\W+", "_", Path(path).stem).strip("_") or "asset"
    return f"_{name}" if name[0].isdigit() else name


def package_asset(
    glb: str | Path, output_dir: str | Path, engine: Engine = "generic", collision: bool = False,
    compress: bool = False, usdz: bool = False, name: str | None = None, licences: dict | None = None,
    collision_threshold: float = 0.05, collision_max_hulls: int = 16,
) -> Package:
    """Write the delivery set of ``glb`` into ``output_dir``; see the module docstring.

    ``name`` (default: from the file name) names the files and meshes; ``licences`` (see
    ``stages.registry.licence_summary``) goes into the manifest as it is, ``unknown`` when
    not given.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} is a file; -o names the output folder")
    name = asset_name(name or glb)
    render, metallic, roughness = _render_mesh(load_asset_mesh(glb), engine)
    material = render.visual.material
    details: dict = {"engine": engine, "faces": int(len(render.faces)),
                     "texture_size": list(material.baseColorTexture.size), "metallic": metallic, "roughness": roughness}
    scene = trimesh.Scene()
    scene.add_geometry(render, geom_name=name, node_name=name)
    blobs = {}
    if collision:
        solid = trimesh.Trimesh(render.vertices, render.faces)  # welded: UV seams split no volume
        pieces = convex_pieces(solid, collision_threshold, collision_max_hulls)
        coverage = volume_coverage(solid, pieces)
        if coverage < MIN_COVERAGE:
            raise RuntimeError(f"collision pieces cover {coverage:.1%} of {name}'s volume, under {MIN_COVERAGE:.0%}")
        details["collision"] = {"pieces": len(pieces), "volume_coverage": round(coverage, 4),
                                "threshold": collision_threshold, "max_hulls": collision_max_hulls}
        separate = engine in ("generic", "unity")  # engines without an in-file naming convention
        collision_scene = trimesh.Scene() if separate else scene
        for number, piece in enumerate(pieces):
            piece_name = {"unreal": f"UCX_{name}_{number:02d}", "godot": f"{name}_hull_{number:02d}-convcolonly"
                          }.get(engine, f"{name}_collision_{number:02d}")
            collision_scene.add_geometry(piece, geom_name=piece_name, node_name=piece_name)
        if separate:
            blobs[f"{name}_collision.glb"] = _glb(collision_scene)
    blobs = {f"{name}.glb": _glb(scene), **blobs}
    if compress:
        compressed = compress_glb(blobs[f"{name}.glb"])
        blobs[f"{name}_compressed.glb"] = compressed.data
        details["compressed"] = {"bytes": len(compressed.data),
                                 "ratio": round(len(compressed.data) / len(blobs[f"{name}.glb"]), 4),
                                 "texture_psnr_db": compressed.texture_psnr, "geometry": "EXT_meshopt_compression",
                                 "textures": "KHR_texture_basisu (ETC1S)"}
    with tempfile.TemporaryDirectory() as scratch:
        paths = {}
        for file_name, data in blobs.items():
            paths[file_name] = Path(scratch) / file_name
            paths[file_name].write_bytes(data)
        details["validation"] = validate_exports(list(paths.values()))
        if usdz:
            usdz_path = Path(scratch) / f"{name}.usdz"
            write_usdz(usdz_path, name, render.vertices, render.faces, render.visual.uv, render.vertex_normals,
                       material.baseColorTexture, normal_map=material.normalTexture, metallic=metallic, roughness=roughness)
            errors = compliance_errors(usdz_path)
            if errors:
                raise RuntimeError(f"{usdz_path.name} fails USD's ARKit compliance: {'; '.join(errors[:3])}")
            details["usdz"] = {"compliance": "passed (UsdUtils.ComplianceChecker, arkit)"}
            paths[usdz_path.name] = usdz_path
        files = {file_name: path.read_bytes() for file_name, path in paths.items()}
    manifest = {
        "asset": name, "source": Path(glb).name, "engine": engine,
        "files": {file_name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for file_name, data in files.items()},
        "details": details,
        "licences": licences or {"commercial_use": "unknown", "models": {}},
    }
    files["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    written = {file_name: output_dir / file_name for file_name in files}
    write_set_atomically({written[file_name]: data for file_name, data in files.items()})
    return Package(written, manifest)


def _render_mesh(mesh: trimesh.Trimesh, engine: Engine) -> tuple[trimesh.Trimesh, float, float]:
    """``mesh`` with the delivery material, and its metallic and roughness: its base colour
    and normal map, its own factors or the defaults, and for Unreal an ORM texture with
    baked ambient occlusion."""
    visual = mesh.visual
    source = getattr(visual, "material", None)
    base = getattr(source, "baseColorTexture", None)
    if getattr(visual, "uv", None) is None or base is None:
        raise ValueError("the GLB's mesh has no base-colour texture with UVs to package")
    metallic = METALLIC if source.metallicFactor is None else float(source.metallicFactor)
    roughness = ROUGHNESS if source.roughnessFactor is None else float(source.roughnessFactor)
    occlusion = bake_occlusion(mesh, visual.uv, mesh.vertex_normals) if engine == "unreal" else None
    material = pbr_material(base, source.normalTexture, metallic, roughness, occlusion)
    render = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_normals=mesh.vertex_normals,
                             visual=trimesh.visual.TextureVisuals(uv=visual.uv, material=material), process=False)
    return render, metallic, roughness


def _glb(scene: trimesh.Scene) -> bytes:
    # NORMAL is written explicitly: without it, glTF viewers shade every face flat
    return scene.export(file_type="glb", include_normals=True)

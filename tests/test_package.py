"""Delivery packages of small meshes built here: collision, compressed GLB, USDZ, materials,
licences, and a real client (Blender's ``bpy``) importing what was written."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from flows.cli import main
from recon.collision import convex_pieces
from recon.compress import read_glb
from recon.export import export_glb
from recon.gltf_validation import validate_glb
from recon.texture import TexturedMesh
from recon.usdz import compliance_errors
from stages.package import package_asset
from stages.registry import check_licence_policy, licence_line, licence_summary
from stages.settings import load_settings

REPOSITORY = Path(__file__).resolve().parents[1]
BLENDER_PYTHON = Path(os.environ.get("TEXT_TO_3D_BLENDER_PYTHON", REPOSITORY / ".venv-blender" / "bin" / "python"))
RING_RADIUS, TUBE_RADIUS = 0.35, 0.15


def textured(mesh: trimesh.Trimesh, size: int) -> TexturedMesh:
    """``mesh`` with planar UVs and a detailed, noisy texture, as reconstructions have."""
    rng = np.random.default_rng(0)
    low, high = mesh.bounds
    uv = (mesh.vertices[:, [0, 2]] - low[[0, 2]]) / (high - low)[[0, 2]]
    rows, columns = np.mgrid[0:size, 0:size] / size
    texture = 0.5 + 0.3 * np.dstack([np.sin(40 * columns), np.cos(31 * rows), np.sin(23 * (rows + columns))])
    texture = np.clip(texture + rng.normal(0, 0.03, texture.shape), 0, 1)
    return TexturedMesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), uv, texture,
                        np.asarray(mesh.vertex_normals))


def ring(size: int = 256) -> TexturedMesh:
    """A torus standing on the floor at the origin, 1 m wide: concave, closed."""
    mesh = trimesh.creation.torus(RING_RADIUS, TUBE_RADIUS, major_sections=48, minor_sections=24)
    mesh.apply_translation([0, 0, TUBE_RADIUS])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # Z up -> Y up
    return textured(mesh, size)


@pytest.fixture(scope="module")
def ring_glb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ring") / "ring.glb"
    export_glb(ring(), path, lods=1)
    return path


@pytest.fixture(scope="module")
def unreal(ring_glb, tmp_path_factory):
    return package_asset(ring_glb, tmp_path_factory.mktemp("unreal"), engine="unreal", collision=True, compress=True,
                         usdz=True)


def inside_ring(points: np.ndarray) -> np.ndarray:
    """The torus's own inside test, independent of any mesh: distance to its centre circle."""
    centre = np.array([0.0, TUBE_RADIUS, 0.0])
    p = points - centre
    radial = np.hypot(p[:, 0], p[:, 2]) - RING_RADIUS
    return radial**2 + p[:, 1] ** 2 < (0.97 * TUBE_RADIUS) ** 2  # the mesh's polygons lie inside the true tube


def gltf_tree(path: Path) -> dict:
    return read_glb(path.read_bytes())[0]


# ------------------------------------------------------------------ collision


def test_unreal_collision_pieces_are_convex_watertight_ucx_meshes_covering_the_volume(unreal):
    base = unreal.files["ring.glb"]
    names = [node.get("name") for node in gltf_tree(base)["nodes"]]
    pieces = [name for name in names if name.startswith("UCX_")]
    assert "ring" in names and len(names) == 1 + len(pieces) and len(pieces) >= 2  # a ring needs several
    assert all(name == f"UCX_ring_{number:02d}" for number, name in enumerate(sorted(pieces)))
    scene = trimesh.load(base)
    hulls = [scene.geometry[name] for name in pieces]
    assert all(hull.is_watertight and hull.is_convex for hull in hulls)
    # points inside the true torus, each inside some hull (halfspace test of the hull's faces)
    rng = np.random.default_rng(3)
    points = rng.uniform([-0.5, 0, -0.5], [0.5, 2 * TUBE_RADIUS, 0.5], size=(40000, 3))
    points = points[inside_ring(points)]
    covered = np.zeros(len(points), bool)
    for hull in hulls:
        normals, origins = hull.face_normals, hull.triangles[:, 0]
        covered |= (np.einsum("fk,pk->pf", normals, points) - (normals * origins).sum(1) <= 1e-9).all(axis=1)
    assert covered.mean() >= 0.95
    assert unreal.manifest["details"]["collision"]["volume_coverage"] >= 0.95


def test_a_thin_or_small_asset_gets_one_convex_hull():
    plate = trimesh.creation.box([1.0, 0.01, 0.6])
    pebble = trimesh.creation.icosphere(radius=0.01)
    for mesh in (plate, pebble):
        [hull] = convex_pieces(mesh)
        assert hull.is_convex and hull.is_watertight


def test_godot_names_collision_nodes_convcolonly_and_generic_writes_a_separate_collision_glb(ring_glb, tmp_path):
    godot = package_asset(ring_glb, tmp_path / "godot", engine="godot", collision=True)
    names = [node["name"] for node in gltf_tree(godot.files["ring.glb"])["nodes"]]
    assert names[0] == "ring" and all(name.endswith("-convcolonly") for name in names[1:]) and len(names) > 2
    generic = package_asset(ring_glb, tmp_path / "generic", engine="generic", collision=True)
    assert set(generic.files) == {"ring.glb", "ring_collision.glb", "manifest.json"}
    assert [node["name"] for node in gltf_tree(generic.files["ring.glb"])["nodes"]] == ["ring"]
    assert all(validate_glb(path)["issues"]["numErrors"] == 0 for name, path in generic.files.items()
               if name.endswith(".glb"))


# ------------------------------------------------------------------ compression, USDZ, materials


def test_the_compressed_glb_is_meshopt_and_ktx2_validator_clean_and_a_third_of_the_base_at_1024(tmp_path):
    glb = tmp_path / "ring.glb"
    export_glb(ring(1024), glb, lods=1)
    package = package_asset(glb, tmp_path / "out", compress=True)
    compressed, base = package.files["ring_compressed.glb"], package.files["ring.glb"]
    report = validate_glb(compressed)
    assert report["issues"]["numErrors"] == 0
    assert {"EXT_meshopt_compression", "KHR_texture_basisu"} <= set(gltf_tree(compressed)["extensionsUsed"])
    assert compressed.stat().st_size <= base.stat().st_size / 3
    details = package.manifest["details"]["compressed"]
    assert details["ratio"] == round(compressed.stat().st_size / base.stat().st_size, 4)
    assert details["texture_psnr_db"]["baseColorTexture"] > 30


def test_the_usdz_is_y_up_in_metres_with_a_preview_surface_and_passes_the_arkit_checker(unreal):
    from pxr import Usd, UsdGeom, UsdShade

    path = unreal.files["ring.usdz"]
    assert compliance_errors(path) == []
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == "Y" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    meshes = [prim for prim in stage.Traverse() if prim.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 1  # LOD0 only, no collision
    material, _ = UsdShade.MaterialBindingAPI(meshes[0]).ComputeBoundMaterial()
    surface = material.ComputeSurfaceSource()[0]
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    texture = surface.GetInput("diffuseColor").GetConnectedSources()[0][0].source
    file = UsdShade.Shader(texture).GetInput("file").Get().path
    assert file.endswith("base_colour.png") and file in zipfile.ZipFile(path).namelist()  # inside the package
    extent = np.array(UsdGeom.Mesh(meshes[0]).GetExtentAttr().Get())
    assert np.allclose(extent[0][1], 0, atol=1e-6) and np.allclose(extent[1][1], 2 * TUBE_RADIUS, atol=1e-3)


def test_materials_have_explicit_factors_and_unreal_an_orm_texture(ring_glb, unreal):
    [material] = gltf_tree(ring_glb)["materials"]
    pbr = material["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 0.9
    tree = gltf_tree(unreal.files["ring.glb"])
    [material] = tree["materials"]

    def view_of(slot: dict) -> int:  # one image: trimesh writes two image entries on one buffer view
        return tree["images"][tree["textures"][slot["index"]]["source"]]["bufferView"]

    assert view_of(material["occlusionTexture"]) == view_of(material["pbrMetallicRoughness"]["metallicRoughnessTexture"])
    image = trimesh.load(unreal.files["ring.glb"]).geometry["ring"].visual.material.occlusionTexture
    r, g, b = np.moveaxis(np.asarray(image.convert("RGB"), float) / 255, 2, 0)
    assert np.allclose(g, 0.9, atol=0.005) and (b == 0).all()
    # baked occlusion: open outside, darker where the ring faces itself across its hole
    assert r.max() == 1.0 and r.min() < 0.9


def test_the_manifest_lists_every_file_with_its_checksum_and_the_licences(unreal):
    written = json.loads(unreal.files["manifest.json"].read_text())
    assert set(written["files"]) == {"ring.glb", "ring_compressed.glb", "ring.usdz"}
    for name, entry in written["files"].items():
        assert entry["bytes"] == unreal.files[name].stat().st_size
    assert written["licences"]["commercial_use"] == "unknown"
    assert written["details"]["validation"]["validator"] == "passed"


# ------------------------------------------------------------------ command line, bad input


def test_the_package_command_writes_the_set_and_refuses_bad_input(ring_glb, tmp_path, capsys):
    assert main(["package", str(ring_glb), "-o", str(tmp_path / "out"), "--engine", "unity", "--collision"]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["manifest.json", "ring.glb",
                                                                          "ring_collision.glb"]
    assert main(["package", str(tmp_path / "missing.glb"), "-o", str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    untextured = tmp_path / "grey.glb"
    trimesh.creation.box().export(untextured)
    assert main(["package", str(untextured), "-o", str(tmp_path / "grey")]) == 2
    assert "no base-colour texture" in capsys.readouterr().err and not (tmp_path / "grey").exists()
    with pytest.raises(SystemExit):
        main(["package", str(ring_glb), "-o", str(tmp_path / "y"), "--engine", "cryengine"])


# ------------------------------------------------------------------ licences


def test_licence_summary_flags_non_commercial_models_and_the_policy_refuses_them(caplog):
    summary = licence_summary(["sdxl-base", "u2netp", "sam-vit-huge", "zero123plus-v1.2"], load_settings())
    assert summary["commercial_use"] == "restricted"
    assert summary["models"]["zero123plus-v1.2"]["commercial_use"] == "restricted"
    assert {summary["models"][name]["commercial_use"] for name in ("sdxl-base", "u2netp", "sam-vit-huge")} == {"allowed"}
    assert licence_line(summary).startswith("commercial use restricted: zero123plus-v1.2 (CC-BY-NC-4.0")
    assert licence_summary(["zero123plus-v1.1", "controlnet-zp11-depth-v1"], load_settings())["commercial_use"] == "allowed"
    with caplog.at_level(logging.WARNING):
        check_licence_policy(["zero123plus-v1.2"], load_settings())
    assert "zero123plus-v1.2" in caplog.text
    with pytest.raises(ValueError, match=r"refusing zero123plus-v1\.2 \(CC-BY-NC-4\.0"):
        check_licence_policy(["sdxl-base", "zero123plus-v1.2"], load_settings(licence_policy="refuse-non-commercial"))
    check_licence_policy(["sdxl-base", "zero123plus-v1.1"], load_settings(licence_policy="refuse-non-commercial"))


def test_a_request_for_a_non_commercial_model_is_refused_up_front(monkeypatch):
    from flows.requests import AssetOptions, TextTo3DRequest, request_asset_id

    monkeypatch.setenv("TEXT_TO_3D_LICENCE_POLICY", "refuse-non-commercial")
    with pytest.raises(ValueError, match="zero123plus-v1.2"):
        request_asset_id(TextTo3DRequest(prompt="a chair"))
    with pytest.raises(ValueError, match="sdxl-turbo"):
        request_asset_id(TextTo3DRequest(prompt="a chair", options=AssetOptions(image_model="sdxl-turbo",
                                                                                version="v1.1")))


def test_the_package_option_takes_json_text_and_changes_the_asset_id_only_when_given():
    from flows.requests import AssetOptions, TextTo3DRequest, request_asset_id

    options = AssetOptions(package='{"engine": "unreal", "collision": true}')
    assert options.package.engine == "unreal" and options.package.collision and not options.package.usdz
    with pytest.raises(ValueError, match="as JSON"):
        AssetOptions(package="unreal")
    plain = request_asset_id(TextTo3DRequest(prompt="a chair"))
    assert request_asset_id(TextTo3DRequest(prompt="a chair", options=options)) != plain


def test_every_asset_manifest_carries_the_licences_of_the_models_its_stages_used():
    from datetime import datetime, timezone

    from flows.assets import StageRecord, build_manifest

    views = StageRecord("completed", 1.0, {}, [{"name": "zero123plus-v1.2"}])
    cutout = StageRecord("completed", 1.0, {}, [{"name": "u2netp"}, {"name": "sam-vit-huge"}])
    manifest = build_manifest("chair-1", {"prompt": "a chair"}, {"cutout": cutout, "views": views},
                              datetime.now(timezone.utc))
    assert manifest["licences"]["commercial_use"] == "restricted"
    assert set(manifest["licences"]["models"]) == {"zero123plus-v1.2", "u2netp", "sam-vit-huge"}


def test_the_plans_run_the_package_stage_last_with_the_requested_switches():
    from flows.plans import plan_for
    from flows.requests import AssetOptions, ImageTo3DRequest
    from flows.tasks import package_stage

    request = ImageTo3DRequest(image="photo.png", options=AssetOptions(package={"engine": "godot", "usdz": True}))
    asset = "photo-0123"
    outputs = {name: {"uri": f"s3://bucket/{asset}/stage/{name}"} for name in ("image", "reframed", "grid", "asset")}
    plan = plan_for(request, asset)
    task, arguments = next(plan)
    while task is not package_stage:
        task, arguments = plan.send({"outputs": outputs})
    # the collision settings are arguments, so the stage's cache key holds them
    assert arguments == dict(asset=asset, glb_key=f"{asset}/stage/asset", engine="godot", collision=False,
                             compress=False, usdz=True, models=["u2netp", "sam-vit-huge", "zero123plus-v1.2"],
                             collision_threshold=0.05, collision_max_hulls=16)
    with pytest.raises(StopIteration) as done:
        plan.send({"outputs": {}})
    assert list(done.value.value)[-1] == "package"
    without = plan_for(ImageTo3DRequest(image="photo.png"), asset)
    task, _ = next(without)
    with pytest.raises(StopIteration):
        while True:
            assert task is not package_stage
            task, _ = without.send({"outputs": outputs})


# ------------------------------------------------------------------ a real client: Blender


def blender_report(paths: list[Path]) -> dict:
    """What Blender (the ``bpy`` module in its own environment: it needs numpy < 2) sees when
    it imports each file: see ``tests/blender_client.py``."""
    if not BLENDER_PYTHON.is_file():
        pytest.skip(f"Blender's bpy is not installed at {BLENDER_PYTHON} (`make blender-client` installs it)")
    done = subprocess.run([str(BLENDER_PYTHON), str(REPOSITORY / "tests" / "blender_client.py"), *map(str, paths)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_blender_imports_every_glb_with_floor_pivot_named_collision_texture_and_uvs(ring_glb, unreal, tmp_path):
    generic = package_asset(ring_glb, tmp_path, engine="generic", collision=True)
    files = [unreal.files["ring.glb"], generic.files["ring.glb"], generic.files["ring_collision.glb"],
             unreal.files["ring_compressed.glb"]]
    report = blender_report(files)
    for path in files[:2]:
        seen = report[str(path)]
        assert seen["error"] is None, seen
        [render] = [item for item in seen["objects"] if item["name"] == "ring"]
        # Blender is Z up: glTF's +Y height becomes Z, the floor pivot the origin
        assert np.allclose(render["dimensions"], [1.0, 1.0, 2 * TUBE_RADIUS], atol=0.01), render
        assert abs(render["min"][2]) < 1e-3 and np.allclose(render["centre"][:2], 0, atol=1e-3)
        assert render["base_colour_image"] and render["uv_layers"] >= 1
    unreal_names = {item["name"] for item in report[str(files[0])]["objects"]}
    assert unreal_names == {"ring"} | {f"UCX_ring_{n:02d}" for n in range(len(unreal_names) - 1)}
    assert len(unreal_names) > 2
    assert {item["name"] for item in report[str(files[1])]["objects"]} == {"ring"}
    collision = report[str(files[2])]["objects"]
    assert collision and all(item["name"].startswith("ring_collision_") for item in collision)
    # Blender 5.0's glTF importer has no meshopt decoder: the compressed variant is for engines
    # and web viewers (three.js, Babylon.js, Unity's glTFast), checked here by the validator only
    assert "EXT_meshopt_compression" in report[str(files[3])]["error"]

"""The flows on tiny models, a real Prefect test server and moto's S3 HTTP server, reached
through a real TCP proxy that can drop connections."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import trimesh

from bench.batch_soak import FAST
from tests.conftest import free_port
from tests.fault_proxy import FaultProxy


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A blockout (a capsule on a box, as a studio's GLB), a reference photo and a broken photo."""
    from stages.sample_input import draw_sample_object

    folder = tmp_path_factory.mktemp("inputs")
    body = trimesh.creation.capsule(height=0.8, radius=0.35)
    body.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    base = trimesh.creation.box([0.9, 0.2, 0.9])
    base.apply_translation([0, -0.75, 0])
    blockout = trimesh.util.concatenate([body, base])
    blockout.apply_translation([3.0, 1.0, -2.0])  # studio coordinates, not centred
    paths = {"mesh": folder / "blockout.glb", "image": folder / "reference.png", "corrupt": folder / "corrupt.png"}
    blockout.export(paths["mesh"])
    draw_sample_object(256).save(paths["image"])
    paths["corrupt"].write_bytes(paths["image"].read_bytes()[:200])
    return paths


@pytest.fixture
def s3(prefect_server, tiny_models_file, u2netp_file, s3_endpoint, monkeypatch):
    """A fresh bucket behind a fault proxy, and the settings that point every flow at it."""
    from flows.store import open_store
    from stages.settings import CONFIG_ENV

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket = f"flows-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    settings = {CONFIG_ENV: str(tiny_models_file),
                "TEXT_TO_3D_MODELS__U2NETP__SOURCE": str(u2netp_file),
                "TEXT_TO_3D_STORE": f"s3://{bucket}/assets", "TEXT_TO_3D_S3_ENDPOINT_URL": proxy.url,
                # one attempt per request: a dropped connection reaches the stage's own retry
                "TEXT_TO_3D_S3_MAX_ATTEMPTS": "1"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    yield type("S3", (), {"store": open_store(f"s3://{bucket}/assets", endpoint_url=s3_endpoint),
                          "proxy": proxy, "env": settings})()
    proxy.close()


def _task_runs(flow_state) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run for run in runs}


def _states(flow_state) -> dict[str, str]:
    return {name: run.state.name for name, run in _task_runs(flow_state).items()}


def _retexture(inputs, seed: int = 0):
    from flows.mesh_to_3d import mesh_to_3d
    from flows.requests import AssetOptions, MeshTo3DRequest, request_asset_id

    arguments = dict(mesh=str(inputs["mesh"]), image=str(inputs["image"]), seed=seed, options=AssetOptions(**FAST))
    return request_asset_id(MeshTo3DRequest(**arguments)), mesh_to_3d(**arguments, return_state=True)


def test_mesh_to_3d_writes_every_stage_and_a_complete_manifest_and_a_rerun_recomputes_none(s3, inputs, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.assets import read_manifest
    from recon.gltf_validation import validate_glb

    asset, state = _retexture(inputs)
    assert state.is_completed(), state.result(raise_on_failure=False)
    manifest = read_manifest(s3.store, asset)
    assert set(manifest["stages"]) == {"input_image", "cutout", "input_mesh", "depth", "views", "recon", "previews"}
    for record in manifest["stages"].values():
        for stored in record["outputs"].values():
            key = stored["uri"].split("/assets/", 1)[1]
            assert s3.store.exists(key), key
    assert manifest["stages"]["recon"]["details"]["validator"] == "passed"
    assert {m["name"] for m in manifest["models"]["views"]} == {"zero123plus-v1.1", "controlnet-zp11-depth-v1"}

    glb = tmp_path / "asset.glb"
    glb.write_bytes(s3.store.get(f"{asset}/recon/asset.glb"))
    assert validate_glb(glb)["issues"]["numErrors"] == 0
    baked = trimesh.load(glb, force="mesh")
    original = trimesh.load(inputs["mesh"], force="mesh")
    # the studio's geometry is kept: same place, same size, same faces
    assert np.allclose(baked.bounds, original.bounds, atol=1e-5) and len(baked.faces) == len(original.faces)

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"{asset}-summary", f"{asset}-stages", f"{asset}-glb"])))}
    assert keys == {f"{asset}-summary", f"{asset}-stages", f"{asset}-glb"}

    again, rerun = _retexture(inputs)
    assert again == asset and rerun.is_completed()
    states = _states(rerun)
    assert {name: value for name, value in states.items() if name != "manifest"} == {
        name: "Cached" for name in ["ingest-image", "cutout", "ingest-mesh", "depth-grid", "six-views", "retexture",
                                    "previews"]}, states


def test_text_to_3d_stores_each_finished_stage_and_resumes_from_them(s3):
    from flows.requests import AssetOptions, TextTo3DRequest, request_asset_id
    from flows.text_to_3d import text_to_3d

    options = AssetOptions(image_size=128, image_steps=3, view_steps=1, preview_size=32)
    asset = request_asset_id(TextTo3DRequest(prompt="a red chair", seed=2, options=options))
    first = text_to_3d("a red chair", seed=2, options=options, return_state=True)
    # Random tiny models draw noise, so reconstruction refuses the views (foreground on every
    # border); everything before it is stored and the asset stays incomplete.
    assert first.is_failed()
    assert "foreground touches the border" in str(first.result(raise_on_failure=False))
    for key in ["image/image.png", "cutout/cutout.png", "cutout/reframed.png", "views/grid.png",
                "views/view_5.png", "views/cameras.json"]:
        assert s3.store.exists(f"{asset}/{key}"), key
    assert not s3.store.exists(f"{asset}/manifest.json")

    second = text_to_3d("a red chair", seed=2, options=options, return_state=True)
    states = _states(second)
    assert states["text-to-image"] == states["cutout"] == states["six-views"] == "Cached", states
    assert states["reconstruct"] == "Failed" and "manifest" not in states


def test_the_normal_map_option_reaches_the_reconstruct_stage_and_its_glbs(s3, inputs, tmp_path):
    """``normal_map`` is a request option like ``texture_size``: recorded in the request
    (so in the manifest and the asset id), and the reconstruct stage, run on six rendered
    views of a capsule, stores GLBs that carry a normal texture at every level, and records
    how reconstruction made the mesh in its details."""
    from flows.requests import AssetOptions, ImageTo3DRequest, request_asset_id
    from flows.tasks import key_of, reconstruct_stage
    from recon.render import MeshRenderer
    from stages.reconstruct import to_pinhole
    from zero123pp import join_views, view_cameras

    plain, mapped = (ImageTo3DRequest(image=str(inputs["image"]), options=AssetOptions(**FAST, normal_map=flag))
                     for flag in (False, True))
    assert mapped.model_dump()["options"]["normal_map"] is True
    assert request_asset_id(mapped) != request_asset_id(plain)

    capsule = trimesh.creation.capsule(height=0.9, radius=0.35, count=[48, 48])
    capsule.visual = trimesh.visual.ColorVisuals(capsule, vertex_colors=np.round(
        255 * (0.5 + 0.4 * np.sin(4 * capsule.vertices))).astype(np.uint8))
    renderer = MeshRenderer(capsule)
    grid = join_views([renderer.render(to_pinhole(camera)).rgba((0.5, 0.5, 0.5))
                       for camera in view_cameras("v1.2", 160)])
    png = io.BytesIO()
    grid.save(png, format="PNG")
    asset = request_asset_id(mapped)
    grid_key = f"{asset}/views/grid.png"
    s3.store.put(grid_key, png.getvalue())
    result = reconstruct_stage(asset=asset, grid_key=grid_key, version="v1.2", target_faces=2000, texture_size=64,
                               lods=2, height=1.0, normal_map=True)
    assert result["details"]["validator"] == "passed"
    # how the mesh was made reaches the stage's details: one camera correction per view
    assert len(result["details"]["camera_refinement"]["corrections"]) == 6
    assert {"kept", "hull_inconsistency", "fused_inconsistency"} <= set(result["details"]["stereo"])
    assert {"applied", "log_sh_coefficients"} <= set(result["details"]["lighting"])
    for name in ("asset", "asset_LOD1"):
        glb = tmp_path / f"{name}.glb"
        glb.write_bytes(s3.store.get(key_of(result, name, asset)))
        assert trimesh.load(glb, force="mesh").visual.material.normalTexture.size == (64, 64)


def test_a_dropped_s3_connection_is_retried_and_the_flow_completes(s3, inputs):
    s3.proxy.drop(2)  # the HTTP client silently reconnects once; the second drop reaches the stage
    asset, state = _retexture(inputs, seed=5)
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert s3.proxy.faulted == 2
    retried = [name for name, run in _task_runs(state).items() if run.run_count > 1]
    assert retried == ["ingest-image"]
    assert s3.store.exists(f"{asset}/manifest.json")


def test_an_unreachable_s3_endpoint_is_retried_then_fails_clearly_with_no_manifest(s3, inputs):
    s3.proxy.drop_all()
    asset, state = _retexture(inputs, seed=6)
    s3.proxy.heal()
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "ingest-image failed" in message and f"S3 endpoint {s3.proxy.url} unreachable" in message
    assert _task_runs(state)["ingest-image"].run_count == 3  # first try and two retries
    assert not s3.store.exists(f"{asset}/manifest.json")


def test_bad_input_fails_at_once_without_retries(s3, inputs):
    from flows.image_to_3d import image_to_3d
    from flows.text_to_3d import text_to_3d

    state = text_to_3d("   ", return_state=True)
    assert state.is_failed() and "prompt is empty" in str(state.result(raise_on_failure=False))
    state = image_to_3d(str(inputs["corrupt"]), options={"segmenter": "u2net"}, return_state=True)
    assert state.is_failed() and "corrupt.png" in str(state.result(raise_on_failure=False))
    state = image_to_3d(str(inputs["image"].with_name("missing.png")), return_state=True)
    assert state.is_failed() and "missing.png: no such input file" in str(state.result(raise_on_failure=False))


def test_a_killed_flow_run_resumes_without_recomputing_finished_stages(s3, inputs, tmp_path):
    from prefect.settings import get_current_settings

    from flows.requests import AssetOptions, MeshTo3DRequest, request_asset_id

    arguments = dict(mesh=str(inputs["mesh"]), image=str(inputs["image"]), seed=7, options=FAST)
    asset = request_asset_id(MeshTo3DRequest(mesh=arguments["mesh"], image=arguments["image"], seed=7,
                                             options=AssetOptions(**FAST)))
    current = get_current_settings()
    env = {**os.environ, **s3.env, "PREFECT_API_URL": str(current.api.url),
           "PREFECT_LOCAL_STORAGE_PATH": str(current.results.local_storage_path)}
    script = f"from flows.mesh_to_3d import mesh_to_3d; mesh_to_3d(**{json.dumps(arguments)})"
    worker = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=Path(__file__).parents[1],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not s3.store.exists(f"{asset}/views/grid.png"):
            assert worker.poll() is None and time.monotonic() < deadline, "the run ended before the views"
            time.sleep(0.2)
    finally:
        worker.kill()  # SIGKILL mid-run: nothing gets to clean up
        worker.wait()
    assert not s3.store.exists(f"{asset}/manifest.json")

    from flows.mesh_to_3d import mesh_to_3d

    state = mesh_to_3d(**{**arguments, "options": AssetOptions(**FAST)}, return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    states = _states(state)
    assert all(states[name] == "Cached" for name in ["ingest-image", "cutout", "ingest-mesh", "depth-grid"]), states
    assert states["retexture"] == "Completed"


def test_a_batch_of_twenty_completes_and_its_bad_rows_fail_alone(s3, inputs, tmp_path):
    """bench/batch_soak.py's check on 20 rows, three of them bad (a line that is not JSON, a
    blank prompt, a corrupt photo): every good row complete with outputs that verify, every
    bad row failed alone with its reason, nothing partial; a rerun skips the complete rows."""
    from bench.batch_soak import check_batch, write_batch
    from flows.batch import batch_text_to_3d

    manifest = tmp_path / "nightly.jsonl"
    expected = write_batch(manifest, inputs, rows=20, bad=3)
    state = batch_text_to_3d(str(manifest), concurrency=2, defaults=FAST, return_state=True)
    table = state.result(raise_on_failure=False)
    assert state.is_failed() and "20 rows: 17 complete or skipped, 3 failed" in state.message
    assert check_batch(s3.store, table, 20, expected) == []
    assert [row["failed_stage"] for row in table if row["status"] == "failed"] == ["request", "request", "ingest-image"]

    rerun = batch_text_to_3d(str(manifest), concurrency=2, defaults=FAST, return_state=True)
    assert sum(row["status"] == "skipped" for row in rerun.result(raise_on_failure=False)) == 17
    s3.store.client.delete_object(Bucket=s3.store.bucket, Key=f"{s3.store.prefix}/{table[0]['asset']}/views/grid.png")
    assert [problem.split(":")[0] for problem in check_batch(s3.store, table, 20, expected)] == ["row 1"]


def test_a_batch_stage_starts_the_next_asset_as_soon_as_a_slot_frees(prefect_server):
    """Two slots, a slow asset and two quick ones at one stage: the third starts when the
    second quick one is done, not when the slow one of its wave of two is."""
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.caching import PLAIN_JSON
    from flows.runner import Job, run_jobs

    started: dict[str, float] = {}

    @task(name="reconstruct", persist_result=False, result_serializer=PLAIN_JSON)
    def stage(asset: str, seconds: float) -> dict:
        started[asset] = time.perf_counter()
        time.sleep(seconds)
        raise RuntimeError(f"{asset} ends here")  # no manifest to write: the stage is all there is

    def plan(asset: str, seconds: float):
        yield stage, dict(asset=asset, seconds=seconds)
        return {}

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=False)
    def batch() -> list:
        return [(outcome.asset, outcome.failed_stage) for outcome in run_jobs(
            [Job(name, None, plan(name, seconds)) for name, seconds in (("slow", 3.0), ("quick", 0.2), ("third", 0.2))],
            concurrency=2)]

    assert batch() == [("slow", "reconstruct"), ("quick", "reconstruct"), ("third", "reconstruct")]
    assert started["third"] - started["slow"] < 1.5, started


def test_the_dask_runner_runs_every_stage_on_a_local_cluster(s3, inputs, monkeypatch):
    pytest.importorskip("prefect_dask", reason="the dask extra is not installed")
    from flows.mesh_to_3d import mesh_to_3d
    from flows.requests import AssetOptions, MeshTo3DRequest, request_asset_id
    from flows.runner import make_task_runner

    monkeypatch.setenv("TEXT_TO_3D_TASK_RUNNER", "dask")
    monkeypatch.setenv("TEXT_TO_3D_MAX_WORKERS", "1")  # one worker process: its models load once
    runner = make_task_runner()
    assert type(runner).__name__ == "DaskTaskRunner"
    arguments = dict(mesh=str(inputs["mesh"]), image=str(inputs["image"]), seed=9, options=AssetOptions(**FAST))
    state = mesh_to_3d.with_options(task_runner=runner)(**arguments, return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert set(_states(state).values()) == {"Completed"}
    assert s3.store.exists(f"{request_asset_id(MeshTo3DRequest(**arguments))}/manifest.json")


def test_the_package_stage_stores_the_delivery_set_under_the_asset_and_its_manifest_lists_it(s3, tmp_path):
    """The ``package`` option's stage, on a textured sphere's GLB in the store: every file
    lands under ``{asset}/package/``, and the package manifest lists them and the licences
    of the models the asset used."""
    from flows.tasks import key_of, package_stage
    from recon.export import export_glb
    from recon.texture import TexturedMesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    sphere.apply_translation([0, 0.5, 0])
    uv = (sphere.vertices[:, [0, 2]] + 0.5).clip(0, 1)
    texture = np.random.default_rng(0).uniform(0, 1, (64, 64, 3))
    [glb, _] = export_glb(TexturedMesh(sphere.vertices, sphere.faces, uv, texture, sphere.vertex_normals),
                          tmp_path / "asset.glb", lods=1)
    asset = "sphere-0123456789ab"
    s3.store.put(f"{asset}/recon/asset.glb", glb.read_bytes())
    result = package_stage(asset=asset, glb_key=f"{asset}/recon/asset.glb", engine="unreal", collision=True,
                           compress=False, usdz=True, models=["u2netp", "zero123plus-v1.2"],
                           collision_threshold=0.05, collision_max_hulls=16)
    name = "sphere_0123456789ab"
    assert set(result["outputs"]) == {f"{name}.glb", f"{name}.usdz", "manifest.json"}
    for output in result["outputs"]:
        assert key_of(result, output, asset) == f"{asset}/package/{output}"
    manifest = json.loads(s3.store.get(f"{asset}/package/manifest.json"))
    assert set(manifest["files"]) == {f"{name}.glb", f"{name}.usdz"}
    assert manifest["licences"]["commercial_use"] == "restricted"
    assert result["details"]["collision"]["volume_coverage"] >= 0.95

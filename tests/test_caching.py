"""Stage caching a studio can trust, on tiny models and a real Prefect test server: each
ingredient of a stage's key recomputes exactly the stages it affects, a result whose stored
outputs are gone or altered is recomputed, results are plain JSON, two runs of one request
compute each stage once, and the failure semantics around a stage (timeouts, the glTF
validator, the nerfstudio export)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_flows import FAST, _states, _task_runs, inputs  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


# ---- the key, one ingredient at a time -------------------------------------------------------

@pytest.fixture
def stage_calls(tiny_models_file, tmp_path, monkeypatch):
    """Arguments for one call of every stage task, their stored inputs, and settings on tiny
    models and a local store. u2netp here is a placeholder file: keys hash it, nothing loads it."""
    from flows.store import LocalStore
    from flows import tasks
    from stages.settings import CONFIG_ENV

    u2netp = tmp_path / "u2netp.onnx"
    u2netp.write_bytes(b"u2netp placeholder, hashed only")
    monkeypatch.setenv(CONFIG_ENV, str(tiny_models_file))
    monkeypatch.setenv("TEXT_TO_3D_MODELS__U2NETP__SOURCE", str(u2netp))
    monkeypatch.setenv("TEXT_TO_3D_STORE", str(tmp_path / "assets"))
    asset = "chest-0123456789ab"
    store = LocalStore(tmp_path / "assets")
    keys = {name: f"{asset}/{name}" for name in ("image/image.png", "cutout/reframed.png", "depth/depth_grid.png",
                                                 "views/grid.png", "input/blockout.glb", "recon/asset.glb")}
    for key in keys.values():
        store.put(key, f"stored bytes of {key}".encode())
    photo, mesh = tmp_path / "photo.png", tmp_path / "blockout.glb"
    photo.write_bytes(b"photo"), mesh.write_bytes(b"mesh")
    calls = {
        tasks.ingest_image: dict(asset=asset, location=str(photo)),
        tasks.ingest_mesh: dict(asset=asset, location=str(mesh)),
        tasks.image_stage: dict(asset=asset, prompt="a chest", seed=0, model="sdxl-turbo", steps=None, size=None),
        tasks.cutout_stage: dict(asset=asset, image_key=keys["image/image.png"], segmenter="u2net"),
        tasks.depth_grid_stage: dict(asset=asset, mesh_key=keys["input/blockout.glb"], version="v1.1"),
        tasks.six_views_stage: dict(asset=asset, reframed_key=keys["cutout/reframed.png"], version="v1.1", steps=1,
                                    seed=0, depth_key=keys["depth/depth_grid.png"], conditioning_scale=1.0),
        tasks.reconstruct_stage: dict(asset=asset, grid_key=keys["views/grid.png"], version="v1.2", target_faces=2000,
                                      texture_size=64, lods=2, height=1.0, normal_map=False),
        tasks.retexture_stage: dict(asset=asset, mesh_key=keys["input/blockout.glb"], grid_key=keys["views/grid.png"],
                                    version="v1.1", texture_size=64, lods=2),
        tasks.preview_stage: dict(asset=asset, glb_key=keys["recon/asset.glb"], size=32),
    }
    return type("Calls", (), {"calls": calls, "store": store, "keys": keys, "u2netp": u2netp,
                              "models": Path(tiny_models_file).parent})()


def _keys(calls: dict) -> dict[str, str]:
    from prefect.utilities.hashing import hash_objects

    return {task.name: hash_objects(task.cache_policy.ingredients(task, arguments)) for task, arguments in calls.items()}


def _changed(before: dict[str, str], calls: dict) -> set[str]:
    after = _keys(calls)
    return {name for name in after if after[name] != before[name]}


def test_each_ingredient_changes_the_keys_of_exactly_the_stages_it_affects(stage_calls, tmp_path, monkeypatch):
    from flows import tasks

    calls = stage_calls.calls
    baseline = _keys(calls)
    assert _changed(baseline, calls) == set()  # stable

    # the stage's arguments, and the bytes of the stored objects it reads
    calls[tasks.preview_stage] = dict(calls[tasks.preview_stage], size=64)
    assert _changed(baseline, calls) == {"previews"}
    calls[tasks.preview_stage] = dict(calls[tasks.preview_stage], size=32)
    stage_calls.store.put(stage_calls.keys["views/grid.png"], b"other views")
    assert _changed(baseline, calls) == {"reconstruct", "retexture"}
    baseline = _keys(calls)

    # a model's files: where they are is not part of the key, what they hold is
    views_model = tmp_path / "zero123plus-v1.1"
    shutil.copytree(stage_calls.models / "zero123plus-v1.1", views_model)
    monkeypatch.setenv("TEXT_TO_3D_MODELS__ZERO123PLUS_V1_1__SOURCE", str(views_model))
    assert _changed(baseline, calls) == set()
    config = views_model / "model_index.json"
    config.write_text(config.read_text() + "\n")
    assert _changed(baseline, calls) == {"six-views"}
    baseline = _keys(calls)
    stage_calls.u2netp.write_bytes(b"another u2netp")
    assert _changed(baseline, calls) == {"cutout", "reconstruct"}
    baseline = _keys(calls)

    # dtype reaches the stages that run torch models (u2netp runs in onnxruntime)
    monkeypatch.setenv("TEXT_TO_3D_DTYPE", "bfloat16")
    assert _changed(baseline, calls) == {"text-to-image", "six-views"}
    monkeypatch.delenv("TEXT_TO_3D_DTYPE")

    # the device is the one resolved ("auto" is the CPU on a machine without CUDA), for the
    # stages that work on it
    on_device = {task.name for task, arguments in calls.items()
                 if task.cache_policy.ingredients(task, arguments)["device"] is not None}
    assert on_device == {"text-to-image", "cutout", "six-views", "reconstruct"}
    monkeypatch.setenv("TEXT_TO_3D_DEVICE", "cpu")
    assert _changed(baseline, calls) == (on_device if torch.cuda.is_available() else set())
    monkeypatch.delenv("TEXT_TO_3D_DEVICE")

    # the store's root
    monkeypatch.setenv("TEXT_TO_3D_STORE", str(tmp_path / "another-store"))
    assert _changed(baseline, calls) == {task.name for task in calls}


def test_the_code_version_covers_every_source_file_of_the_stage_packages(stage_calls, tmp_path):
    from flows.caching import CODE_PACKAGES, code_version, source_digest

    copies = [tmp_path / name for name in CODE_PACKAGES]
    for name, copy in zip(CODE_PACKAGES, copies):
        shutil.copytree(ROOT / name, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(copies)
    assert before == code_version()["sources"]
    module = tmp_path / "recon" / "texture.py"
    module.write_text(module.read_text() + "\n# a fix\n")
    assert source_digest(copies) != before
    assert set(code_version()["versions"]) >= {"torch", "diffusers", "transformers", "pymeshlab"}
    # every stage's key holds it
    for task, arguments in stage_calls.calls.items():
        assert task.cache_policy.ingredients(task, arguments)["code"] == code_version()


def test_a_hub_model_is_keyed_on_its_snapshot_commit_never_its_branch(tmp_path):
    from stages.registry import ModelSpec, ResolvedModel, content_revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--owner--name" / "snapshots" / commit
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "weights.safetensors").write_bytes(b"weights")
    spec = ModelSpec("m", "sdxl", "owner/name", "licence", revision="main")
    assert content_revision(ResolvedModel(spec, snapshot, "main")) == commit
    assert content_revision(ResolvedModel(spec, snapshot, "main", weights=snapshot / "unet" / "weights.safetensors")) \
        == f"{commit}+{commit}"
    local = tmp_path / "mirror"
    shutil.copytree(snapshot, local)
    first = content_revision(ResolvedModel(spec, local, "local"))
    assert first.startswith("sha256:")
    (local / "unet" / "weights.safetensors").write_bytes(b"retrained")
    assert content_revision(ResolvedModel(spec, local, "local")) != first


# ---- flows on a local store ---------------------------------------------------------------------

@pytest.fixture
def local(prefect_server, tiny_models_file, tmp_path, monkeypatch):
    """Settings that point every flow at tiny models and a fresh local store."""
    from flows.store import LocalStore
    from stages.settings import CONFIG_ENV

    settings = {CONFIG_ENV: str(tiny_models_file), "TEXT_TO_3D_STORE": str(tmp_path / "assets")}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return type("Local", (), {"store": LocalStore(tmp_path / "assets"), "env": settings})()


@pytest.fixture
def with_u2netp(local, u2netp_file, monkeypatch):
    """The local store, and the real u2netp the cutout stage runs."""
    local.env["TEXT_TO_3D_MODELS__U2NETP__SOURCE"] = str(u2netp_file)
    monkeypatch.setenv("TEXT_TO_3D_MODELS__U2NETP__SOURCE", local.env["TEXT_TO_3D_MODELS__U2NETP__SOURCE"])
    return local


def _mesh_request(inputs, seed: int):
    from flows.requests import AssetOptions, MeshTo3DRequest, request_asset_id

    arguments = dict(mesh=str(inputs["mesh"]), image=str(inputs["image"]), seed=seed, options=AssetOptions(**FAST))
    return request_asset_id(MeshTo3DRequest(**arguments)), arguments


def _run(arguments):
    from flows.mesh_to_3d import mesh_to_3d

    state = mesh_to_3d(**arguments, return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return state


def _assert_manifest_matches_the_store(store, asset: str) -> dict:
    from flows.assets import read_manifest
    from flows.store import sha256_of

    manifest = read_manifest(store, asset)
    for record in manifest["stages"].values():
        for stored in record["outputs"].values():
            key = stored["uri"][stored["uri"].index(f"{asset}/"):]
            assert sha256_of(store.get(key)) == stored["sha256"], key
    return manifest


def _pickled_record(path: Path, canary: Path) -> bytes:
    """A result record in Prefect's format whose pickled result, if anything unpickled it,
    would create ``canary``: what a writer of a shared result bucket could plant."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    class Planted:
        def __reduce__(self):
            return open, (str(canary), "w")

    return ResultRecord(result=Planted(), metadata=ResultRecordMetadata(
        serializer=PickleSerializer(), storage_key=str(path))).serialize()


@pytest.fixture
def result_storage(tmp_path):
    """A folder of its own for Prefect's persisted results (the harness shares ~/.prefect's)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        yield tmp_path / "results"


def test_results_are_plain_json_and_a_missing_altered_or_planted_result_is_recomputed(with_u2netp, result_storage,
                                                                                     inputs, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.caching import PLAIN_JSON

    local, storage = with_u2netp, result_storage
    asset, arguments = _mesh_request(inputs, seed=11)
    first = _run(arguments)
    manifest = _assert_manifest_matches_the_store(local.store, asset)
    manifest_path = local.store.root / asset / "manifest.json"

    # the artifacts went out before the manifest, the asset's last write
    with get_client(sync_client=True) as client:
        [summary] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[f"{asset}-summary"])))
    assert summary.created.timestamp() <= manifest_path.stat().st_mtime

    # every persisted result, task and flow, is plain JSON written by the plain serializer: a
    # task's record names it beside the result, a flow's metadata is its state's on the server
    with get_client(sync_client=True) as client:
        flow_result = client.read_flow_run(first.state_details.flow_run_id).state.data
    assert flow_result.serializer == PLAIN_JSON
    records = [path for path in storage.rglob("*") if path.is_file() and "locks" not in path.parts]
    assert len(records) == 9  # seven stages, the manifest task and the flow
    for path in records:
        raw = path.read_bytes()
        assert not raw.startswith(b"\x80"), path
        if str(path) == flow_result.storage_key:
            assert json.loads(raw) == first.result()
            continue
        record = json.loads(raw)
        assert record["metadata"]["serializer"] == PLAIN_JSON.model_dump(mode="json"), path
        json.loads(record["result"])

    # a planted pickle under the previews key is never decoded, and a deleted grid is remade
    previews_record = Path(_task_runs(first)["previews"].state.data.storage_key)
    assert previews_record.parent == storage
    canary = tmp_path / "unpickled"
    previews_record.write_bytes(_pickled_record(previews_record, canary))
    grid = local.store.root / asset / "views" / "grid.png"
    grid_bytes = grid.read_bytes()
    grid.unlink()
    states = _states(_run(arguments))
    assert not canary.exists()
    assert states.pop("six-views") == "Completed" and states.pop("previews") == "Completed", states
    assert grid.read_bytes() == grid_bytes  # the tiny views are reproducible, so the rest reused them
    assert {name: state for name, state in states.items() if name != "manifest"} == {
        name: "Cached" for name in ["ingest-image", "cutout", "ingest-mesh", "depth-grid", "retexture"]}

    # an output whose bytes no longer match their checksum, or whose checksum no longer
    # matches the record, is a miss
    contact = local.store.root / asset / "previews" / "contact.png"
    contact.write_bytes(b"not the contact sheet")
    local.store.put(f"{asset}/depth/depth_grid.png", b"another depth grid")
    states = _states(_run(arguments))
    assert states["depth-grid"] == states["previews"] == "Completed", states
    assert states["six-views"] == states["retexture"] == states["cutout"] == "Cached", states
    assert _assert_manifest_matches_the_store(local.store, asset)["stages"]["previews"]["outputs"] == \
        manifest["stages"]["previews"]["outputs"]

    # another store root computes everything again, there
    monkeypatch.setenv("TEXT_TO_3D_STORE", str(tmp_path / "another-store"))
    states = _states(_run(arguments))
    assert {name: state for name, state in states.items() if name != "manifest"} == {
        name: "Completed" for name in ["ingest-image", "cutout", "ingest-mesh", "depth-grid", "six-views",
                                       "retexture", "previews"]}, states


def test_two_concurrent_runs_of_one_request_compute_each_stage_once(with_u2netp, inputs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import get_current_settings

    local = with_u2netp

    asset, arguments = _mesh_request(inputs, seed=12)
    current = get_current_settings()
    env = {**os.environ, **local.env, "PREFECT_API_URL": str(current.api.url),
           "PREFECT_LOCAL_STORAGE_PATH": str(current.results.local_storage_path)}
    plain = {**arguments, "options": FAST}
    script = f"from flows.mesh_to_3d import mesh_to_3d; mesh_to_3d(**{json.dumps(plain)})"
    workers = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, errors = worker.communicate(timeout=600)
        assert worker.returncode == 0, errors[-2000:]

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[asset])))
    assert len(runs) == 2
    states = [_states(run.state) for run in runs]
    for stage in ["ingest-image", "cutout", "ingest-mesh", "depth-grid", "six-views", "retexture", "previews"]:
        assert sorted(run[stage] for run in states) == ["Cached", "Completed"], (stage, states)
    _assert_manifest_matches_the_store(local.store, asset)


# ---- failure semantics -------------------------------------------------------------------------

def test_a_stage_that_overruns_its_time_limit_is_not_retried_but_network_timeouts_are(local, inputs):
    from botocore.exceptions import ReadTimeoutError
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Failed
    from prefect.task_engine import TaskRunTimeoutError

    from flows.tasks import depth_grid_stage, is_transient

    local.store.put("overrun-0123456789ab/input/blockout.glb", inputs["mesh"].read_bytes())

    @flow
    def overrun() -> tuple[str, str]:
        state = depth_grid_stage.with_options(timeout_seconds=0.001)(
            asset="overrun-0123456789ab", mesh_key="overrun-0123456789ab/input/blockout.glb", version="v1.1",
            return_state=True)
        return state.name, str(state.state_details.task_run_id)

    name, task_run = overrun()
    assert name == "TimedOut"
    with get_client(sync_client=True) as client:
        assert client.read_task_run(task_run).run_count == 1

    def transient(error: BaseException) -> bool:
        return is_transient(None, None, Failed(data=error))

    assert not transient(TaskRunTimeoutError("Scope timed out after 3600 second(s)."))
    assert transient(socket.timeout("timed out")) and transient(TimeoutError("read timed out"))
    assert transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:9000/bucket/key"))


def test_a_validator_crash_fails_with_its_message_and_only_a_missing_validator_is_unavailable(tmp_path,
                                                                                             monkeypatch):
    from stages.reconstruct import validate_exports

    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed here")
    empty = tmp_path / "empty.glb"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeError, match="could not detect glTF format"):
        validate_exports([empty])
    monkeypatch.setenv("PATH", str(tmp_path))
    assert validate_exports([empty])["validator"].startswith("unavailable: glTF validation needs Node.js")


def _dataset(frames: int, size: int = 8):
    from recon.camera import PinholeCamera

    intrinsics = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], dtype=float)
    images = [np.full((size, size, 4), 0.5) for _ in range(frames)]
    return images, [PinholeCamera(np.eye(4), intrinsics, size, size) for _ in range(frames)]


def test_the_nerfstudio_export_swaps_a_whole_dataset_in_and_a_failed_one_leaves_the_old(tmp_path):
    from recon.nerfstudio import export_nerfstudio

    folder = tmp_path / "dataset"
    export_nerfstudio(*_dataset(3), folder)
    export_nerfstudio(*_dataset(2), folder)
    assert sorted(path.name for path in (folder / "images").iterdir()) == ["frame_00000.png", "frame_00001.png"]
    assert len(json.loads((folder / "transforms.json").read_text())["frames"]) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["dataset"]  # nothing left beside it

    images, cameras = _dataset(4)
    images[3] = "not an image"  # the export fails on the fourth frame
    with pytest.raises(TypeError):
        export_nerfstudio(images, cameras, folder)
    assert len(json.loads((folder / "transforms.json").read_text())["frames"]) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["dataset"]

"""The stage tasks every flow is wired from.

Each task loads its inputs from the artifact store by key, calls one stage function, stores
its outputs under ``{asset_id}/{stage}/`` and returns a small dict of plain JSON: the stored
objects (uri, sha256, bytes), the models used, seconds and details. Results are persisted as
JSON and cached on everything that decides them (``flows/caching.py``), so a rerun of the
same request skips every finished stage whose outputs are still intact, and two runs of one
request take turns on each stage. Only transient failures are retried: out of GPU memory,
S3 throttling, connection errors and network timeouts. Bad input, and a stage that overran
its own time limit, fail at once.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from prefect import task

from flows.caching import PLAIN_JSON, ModelsOf, stage_cache
from flows.store import ArtifactStore, input_version, open_store, read_input, sha256_of

TRANSIENT_S3_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "InternalError",
                      "ServiceUnavailable", "503", "500"}


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry out-of-memory, network, throttling and network-timeout failures; never bad input,
    and never a stage that overran its own time limit (it would overrun again, twice)."""
    import torch
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError
    from prefect.task_engine import TaskRunTimeoutError

    error = state.result(raise_on_failure=False)
    if isinstance(error, TaskRunTimeoutError):
        return False
    # socket and urllib3 read timeouts are TimeoutErrors; botocore's are HTTPClientErrors
    if isinstance(error, (torch.OutOfMemoryError, BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code")) in TRANSIENT_S3_CODES
    return False


class _ThreadTimeoutNotice(logging.Filter):
    """Drop Prefect's per-task notice that a timeout cannot interrupt a worker thread.

    Stages run in threads on purpose (GPU work releases the GIL; models are shared in one
    process), and the timeout still fails a stage that overran once its call returns.
    Prefect repeats the notice on every task run, which buries the log lines that matter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout of %s seconds configured for this task, but the task is "
                                              "running in a worker thread")


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())

RETRIES = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=is_transient)


def stage(models: ModelsOf | None = None, gpu: bool = False) -> dict[str, Any]:
    """A stage task's options. ``models`` names the registry models a call runs, from its
    arguments: such a stage works on the settings' device. ``gpu`` stages take a GPU slot."""
    return dict(RETRIES, cache_policy=stage_cache(models, on_device=models is not None), persist_result=True,
                result_serializer=PLAIN_JSON, timeout_seconds=3600, tags=["gpu"] if gpu else [])


def settings() -> Any:
    from stages.settings import load_settings

    return load_settings()


@functools.cache
def _gpu_semaphore(slots: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(slots)


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold one of this process's GPU slots (``gpu_slots`` in the settings) for a GPU stage's
    work; no-op when unset. In ``serve``'s resident worker every flow run's stages run in one
    process, so a semaphore here is exact and costs no server round trip, unlike the Prefect
    server's 'gpu' tag limit (see ``flows.runner._as_submitted``)."""
    slots = settings().gpu_slots
    if slots is None:
        yield
        return
    with _gpu_semaphore(slots):
        yield


def store() -> ArtifactStore:
    current = settings()
    return open_store(current.store, current.s3_endpoint_url, current.s3_max_attempts, current.link_seconds)


def _stage_result(outputs: dict, started: float, models: list | None = None, details: dict | None = None) -> dict:
    """A stage's result as plain JSON data (numpy numbers become Python's), so a run gets
    the same value whether the stage ran or its stored result was reused."""
    result = {"outputs": outputs, "models": models or [], "seconds": time.perf_counter() - started,
              "details": details or {}}
    return json.loads(json.dumps(result, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"a stage result holds a {type(value).__name__}, which is not plain JSON data")


def _put_png(target: ArtifactStore, key: str, image: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return target.put(key, buffer.getvalue()).to_dict()


def _get_image(source: ArtifactStore, key: str) -> Any:
    from stages.image_input import open_image

    return open_image(source.get(key))


def key_of(stage_result: dict, output: str, asset: str) -> str:
    """The store key of one output, from the URI a task returned (or a manifest records)."""
    uri = stage_result["outputs"][output]["uri"]
    return uri[uri.index(f"{asset}/"):]


def input_digest(location: str) -> str:
    """SHA-256 of a user's input file (local path or S3 URI): part of the asset id, so a
    changed file is a new asset. Memoised on the file's version stamp, so naming the flow
    run and running it read a large S3 mesh once, not twice."""
    endpoint = settings().s3_endpoint_url
    return _digest_of_version(input_version(location, endpoint), location, endpoint)


@functools.lru_cache(maxsize=256)
def _digest_of_version(version: tuple, location: str, endpoint: str | None) -> str:
    return sha256_of(read_user_file(location))


def read_user_file(location: str) -> bytes:
    """A user's input file, a mesh refused from its size alone when over ``max_mesh_bytes``."""
    from stages.bounds import MESH_FORMATS

    current = settings()
    if Path(location).suffix.lstrip(".").lower() in MESH_FORMATS:
        return read_input(location, current.s3_endpoint_url, current.max_mesh_bytes, "TEXT_TO_3D_MAX_MESH_BYTES")
    return read_input(location, current.s3_endpoint_url)


@task(name="ingest-image", **stage())
def ingest_image(asset: str, location: str) -> dict:
    """Copy a user's photo into the asset, checked: PNG, JPEG or WebP, within size limits."""
    from stages.image_input import open_image

    target, started = store(), time.perf_counter()
    data = read_user_file(location)
    open_image(data, name=location)
    return _stage_result({"image": target.put(f"{asset}/input/{Path(location).name}", data).to_dict()}, started)


@task(name="ingest-mesh", **stage())
def ingest_mesh(asset: str, location: str) -> dict:
    """Copy a user's blockout mesh into the asset, checked to be a readable triangle mesh."""
    from stages.retexture import load_blockout

    target, started = store(), time.perf_counter()
    data = read_user_file(location)
    mesh = load_blockout(data, Path(location).suffix.lstrip("."), name=location)
    details = {"faces": int(len(mesh.faces)), "vertices": int(len(mesh.vertices)),
               "repairs": mesh.metadata.get("repairs", {})}
    return _stage_result({"mesh": target.put(f"{asset}/input/{Path(location).name}", data).to_dict()}, started,
                         details=details)


@task(name="text-to-image", **stage(lambda arguments: [arguments["model"]], gpu=True))
def image_stage(asset: str, prompt: str, seed: int, model: str, steps: int | None, size: int | None) -> dict:
    from stages.model_cache import get_model
    from stages.text_to_image import text_to_image

    target, started = store(), time.perf_counter()
    loaded = get_model(model, settings())
    with gpu_slot(), loaded.lock:
        [result] = text_to_image(prompt, loaded, seeds=seed, steps=steps, size=size)
    details = {k: v for k, v in result.metadata.items() if k not in ("model", "refiner")}
    return _stage_result({"image": _put_png(target, f"{asset}/image/image.png", result.image)}, started,
                         [loaded.record()], details)


@task(name="cutout", **stage(lambda arguments: ["u2netp"] + (["sam-vit-huge"] if arguments["segmenter"] == "sam"
                                                             else []), gpu=True))
def cutout_stage(asset: str, image_key: str, segmenter: str) -> dict:
    from stages.cutout import cut_out
    from stages.model_cache import get_model

    target, current, started = store(), settings(), time.perf_counter()
    u2net = get_model("u2netp", current)
    sam = get_model("sam-vit-huge", current) if segmenter == "sam" else None
    image = _get_image(target, image_key)
    with gpu_slot(), u2net.lock, (sam.lock if sam else contextlib.nullcontext()):
        result = cut_out(image, u2net.model, sam.model if sam else None, segmenter=segmenter)
    outputs = {
        "cutout": _put_png(target, f"{asset}/cutout/cutout.png", result.cutout),
        "reframed": _put_png(target, f"{asset}/cutout/reframed.png", result.reframed),
    }
    return _stage_result(outputs, started, [m.record() for m in (u2net, sam) if m],
                         {"warnings": result.warnings, **result.metadata})


@task(name="depth-grid", **stage())
def depth_grid_stage(asset: str, mesh_key: str, version: str) -> dict:
    """The depth ControlNet's condition: the blockout's depth at the six poses."""
    from stages.retexture import blockout_depth_grid, load_blockout

    target, started = store(), time.perf_counter()
    mesh = load_blockout(target.get(mesh_key), Path(mesh_key).suffix.lstrip("."))
    grid = blockout_depth_grid(mesh, version)
    return _stage_result({"depth_grid": _put_png(target, f"{asset}/depth/depth_grid.png", grid)}, started)


@task(name="six-views", **stage(lambda arguments: [f"zero123plus-{arguments['version']}"] + (
    ["controlnet-zp11-depth-v1"] if arguments.get("depth_key") else []), gpu=True))
def six_views_stage(asset: str, reframed_key: str, version: str, steps: int, seed: int,
                    depth_key: str | None = None, conditioning_scale: float = 1.0) -> dict:
    from stages.model_cache import get_model
    from stages.six_views import generate_six_views

    target, started = store(), time.perf_counter()
    controlnet = "controlnet-zp11-depth-v1" if depth_key else None
    loaded = get_model(f"zero123plus-{version}", settings(), controlnet=controlnet)
    depth = _get_image(target, depth_key) if depth_key else None
    reference = _get_image(target, reframed_key)
    with gpu_slot(), loaded.lock:
        result = generate_six_views(reference, loaded.model, version=version, num_inference_steps=steps, seed=seed,
                                    depth_grid=depth, controlnet_conditioning_scale=conditioning_scale)
    with tempfile.TemporaryDirectory() as scratch:
        outputs = {path.stem: target.put(f"{asset}/views/{path.name}", path.read_bytes()).to_dict()
                   for path in result.write_to(scratch)}
    models = [loaded.record()] + ([{"name": controlnet}] if controlnet else [])
    return _stage_result(outputs, started, models)


def _export(target: ArtifactStore, asset: str, mesh: Any, lods: int, height: float | None, started: float,
            texture_size: int, models: list | None = None) -> dict:
    """Write the LOD GLBs, validate them and store them under ``{asset}/recon/``."""
    from stages.reconstruct import export_asset, validate_exports

    with tempfile.TemporaryDirectory() as scratch:
        paths = export_asset(mesh, Path(scratch) / "asset.glb", lods=lods, height=height)
        validation = validate_exports(paths)
        outputs = {path.stem: target.put(f"{asset}/recon/{path.name}", path.read_bytes()).to_dict() for path in paths}
    # how reconstruction made the mesh (camera corrections, exposure gains, the stereo
    # check) goes into the manifest with the stage
    details = {"faces": int(len(mesh.faces)), "texture_size": texture_size, **validation, **mesh.details}
    return _stage_result(outputs, started, models, details)


@task(name="package", **stage())
def package_stage(asset: str, glb_key: str, engine: str, collision: bool, compress: bool, usdz: bool,
                  models: list[str], collision_threshold: float, collision_max_hulls: int) -> dict:
    """The engine delivery set of the asset's GLB (``stages.package``) under ``{asset}/package/``;
    ``models`` (registry names) give its manifest's licence summary. The collision settings
    are arguments so that the cache key holds them."""
    from stages.package import package_asset
    from stages.registry import licence_summary

    target, current, started = store(), settings(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        glb = Path(scratch) / "asset.glb"
        glb.write_bytes(target.get(glb_key))
        result = package_asset(glb, Path(scratch) / "package", engine=engine, collision=collision, compress=compress,
                               usdz=usdz, name=asset, licences=licence_summary(models, current),
                               collision_threshold=collision_threshold, collision_max_hulls=collision_max_hulls)
        outputs = {path.name: target.put(f"{asset}/package/{path.name}", path.read_bytes()).to_dict()
                   for path in result.files.values()}
    return _stage_result(outputs, started, details=result.manifest["details"])


@task(name="reconstruct", **stage(lambda arguments: ["u2netp"]))
def reconstruct_stage(asset: str, grid_key: str, version: str, target_faces: int, texture_size: int,
                      lods: int, height: float, normal_map: bool = False, keep_lighting: bool = False) -> dict:
    from stages.reconstruct import reconstruct_views
    from stages.view_matting import view_matting_model

    target, current, started = store(), settings(), time.perf_counter()
    u2net = view_matting_model(current)
    with tempfile.TemporaryDirectory() as scratch:
        grid = Path(scratch) / "grid.png"
        grid.write_bytes(target.get(grid_key))
        # No lock: an onnxruntime session runs concurrent calls safely.
        mesh = reconstruct_views(grid, version, target_faces=target_faces, texture_size=texture_size,
                                 normal_map=normal_map, u2net=u2net.model if u2net else None, device=current.device,
                                 delight=not keep_lighting)
    return _export(target, asset, mesh, lods, height, started, texture_size, [u2net.record()] if u2net else [])


@task(name="retexture", **stage())
def retexture_stage(asset: str, mesh_key: str, grid_key: str, version: str, texture_size: int, lods: int) -> dict:
    """Bake the views onto the studio's mesh; its coordinates are kept (no engine normalisation)."""
    from stages.retexture import load_blockout, retexture
    from zero123pp import split_grid

    target, started = store(), time.perf_counter()
    mesh = load_blockout(target.get(mesh_key), Path(mesh_key).suffix.lstrip("."))
    textured = retexture(mesh, split_grid(_get_image(target, grid_key)), version, texture_size)
    return _export(target, asset, textured, lods, None, started, texture_size)


@task(name="previews", **stage())
def preview_stage(asset: str, glb_key: str, size: int) -> dict:
    from stages.preview import load_asset_mesh, render_previews

    target, started = store(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        glb = Path(scratch) / "asset.glb"
        glb.write_bytes(target.get(glb_key))
        previews = render_previews(load_asset_mesh(glb), tile=size)
    outputs = {
        "contact_sheet": _put_png(target, f"{asset}/previews/contact.png", previews.contact_sheet),
        "turntable": target.put(f"{asset}/previews/turntable.gif", previews.turntable_gif).to_dict(),
    }
    return _stage_result(outputs, started)

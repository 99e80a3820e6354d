"""The ``text-to-3d`` flow: prompt -> image -> cutout -> six views -> reconstruction -> previews.

Wiring only: each task loads its inputs from the artifact store, calls one stage function,
stores the outputs under ``{asset_id}/{stage}/`` and returns small references (keys and
checksums). Tasks are cached on their inputs and source code with persisted results, so a
rerun of the same request skips every finished stage; transient failures (out of GPU
memory, S3 throttling or connection errors, timeouts) are retried, bad input never is.
The manifest is written last, only when every stage has finished.
"""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import BaseModel, Field

from flows.assets import StageRecord, asset_id, write_manifest
from flows.store import ArtifactStore, StoredObject, open_store

TRANSIENT_S3_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "InternalError",
                      "ServiceUnavailable", "503", "500"}


class TextTo3DRequest(BaseModel):
    """Parameters of one text-to-3d asset (rendered as a form in the Prefect UI)."""

    prompt: str = Field(description="what to make, for example 'a mossy treasure chest'")
    seed: int = 0
    image_model: str = Field("sdxl-base", description="sdxl-base, sdxl-turbo or sdxl-lightning")
    image_steps: int | None = None
    image_size: int | None = None
    segmenter: Literal["sam", "u2net"] = "sam"
    version: Literal["v1.2", "v1.1"] = "v1.2"
    view_steps: int = 28
    target_faces: int = 20000
    texture_size: int = 1024
    lods: int = 3


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry out-of-memory, network, throttling and timeout failures; never bad input."""
    import torch
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError

    error = state.result(raise_on_failure=False)
    if isinstance(error, (torch.OutOfMemoryError, BotoConnectionError, ConnectionError, TimeoutError)):
        return True
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code")) in TRANSIENT_S3_CODES
    return False


STAGE = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=is_transient,
             cache_policy=INPUTS + TASK_SOURCE, persist_result=True, timeout_seconds=3600)
GPU_STAGE = dict(STAGE, tags=["gpu"])


def _store() -> ArtifactStore:
    from stages.settings import load_settings

    settings = load_settings()
    return open_store(settings.store, settings.s3_endpoint_url)


def _put_png(store: ArtifactStore, key: str, image: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return store.put(key, buffer.getvalue()).to_dict()


def _get_image(store: ArtifactStore, key: str) -> Any:
    from stages.image_input import open_image

    return open_image(store.get(key))


@task(name="text-to-image", **GPU_STAGE)
def image_stage(asset: str, prompt: str, seed: int, model: str, steps: int | None, size: int | None) -> dict:
    from stages.model_cache import get_model
    from stages.settings import load_settings
    from stages.text_to_image import text_to_image

    store, started = _store(), time.perf_counter()
    loaded = get_model(model, load_settings())
    [result] = text_to_image(prompt, loaded, seeds=seed, steps=steps, size=size)
    outputs = {"image": _put_png(store, f"{asset}/image/image.png", result.image)}
    return {"outputs": outputs, "models": [loaded.record()], "seconds": time.perf_counter() - started,
            "details": {k: v for k, v in result.metadata.items() if k not in ("model", "refiner")}}


@task(name="cutout", **GPU_STAGE)
def cutout_stage(asset: str, image_key: str, segmenter: str) -> dict:
    from stages.cutout import cut_out
    from stages.model_cache import get_model
    from stages.settings import load_settings

    store, settings, started = _store(), load_settings(), time.perf_counter()
    u2net = get_model("u2netp", settings)
    sam = get_model("sam-vit-huge", settings) if segmenter == "sam" else None
    result = cut_out(_get_image(store, image_key), u2net.model, sam.model if sam else None, segmenter=segmenter)
    outputs = {
        "cutout": _put_png(store, f"{asset}/cutout/cutout.png", result.cutout),
        "reframed": _put_png(store, f"{asset}/cutout/reframed.png", result.reframed),
    }
    return {"outputs": outputs, "models": [m.record() for m in (u2net, sam) if m],
            "seconds": time.perf_counter() - started, "details": {"warnings": result.warnings, **result.metadata}}


@task(name="six-views", **GPU_STAGE)
def six_views_stage(asset: str, reframed_key: str, version: str, steps: int, seed: int) -> dict:
    from stages.model_cache import get_model
    from stages.settings import load_settings
    import tempfile

    from stages.six_views import generate_six_views

    store, started = _store(), time.perf_counter()
    loaded = get_model(f"zero123plus-{version}", load_settings())
    result = generate_six_views(_get_image(store, reframed_key), loaded.model, version=version,
                                num_inference_steps=steps, seed=seed)
    with tempfile.TemporaryDirectory() as scratch:
        outputs = {path.stem: store.put(f"{asset}/views/{path.name}", path.read_bytes()).to_dict()
                   for path in result.write_to(scratch)}
    return {"outputs": outputs, "models": [loaded.record()], "seconds": time.perf_counter() - started}


@task(name="reconstruct", **STAGE)
def reconstruct_stage(asset: str, grid_key: str, version: str, target_faces: int, texture_size: int,
                      lods: int) -> dict:
    import tempfile
    from pathlib import Path

    from stages.reconstruct import export_asset, reconstruct_views

    store, started = _store(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        grid = Path(scratch) / "grid.png"
        grid.write_bytes(store.get(grid_key))
        mesh = reconstruct_views(grid, version, target_faces=target_faces, texture_size=texture_size)
        paths = export_asset(mesh, Path(scratch) / "asset.glb", lods=lods)
        outputs = {path.stem: store.put(f"{asset}/recon/{path.name}", path.read_bytes()).to_dict() for path in paths}
    return {"outputs": outputs, "seconds": time.perf_counter() - started,
            "details": {"faces": int(len(mesh.faces)), "texture_size": texture_size}}


@task(name="previews", **STAGE)
def preview_stage(asset: str, glb_key: str) -> dict:
    import tempfile
    from pathlib import Path

    from stages.preview import load_asset_mesh, render_previews

    store, started = _store(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        glb = Path(scratch) / "asset.glb"
        glb.write_bytes(store.get(glb_key))
        previews = render_previews(load_asset_mesh(glb))
    outputs = {
        "contact_sheet": _put_png(store, f"{asset}/previews/contact.png", previews.contact_sheet),
        "turntable": store.put(f"{asset}/previews/turntable.gif", previews.turntable_gif).to_dict(),
    }
    return {"outputs": outputs, "seconds": time.perf_counter() - started}


def _key(stage_result: dict, output: str, asset: str) -> str:
    """The store key of one output, from the URI a task returned."""
    uri = stage_result["outputs"][output]["uri"]
    return uri[uri.index(f"{asset}/"):]


def _record(stage_result: dict) -> StageRecord:
    outputs = {name: StoredObject(**value) for name, value in stage_result["outputs"].items()}
    return StageRecord("completed", stage_result["seconds"], outputs, stage_result.get("models", []),
                       details=stage_result.get("details", {}))


def request_asset_id(request: TextTo3DRequest) -> str:
    """The asset id of a request: the prompt's slug and a hash of every parameter and model."""
    from stages.registry import registry
    from stages.settings import load_settings
    from stages.text_to_image import prompt_words

    prompt_words(request.prompt)  # bad input fails before anything runs
    models = registry(load_settings())
    used = [request.image_model, "u2netp", f"zero123plus-{request.version}"]
    used += ["sam-vit-huge"] if request.segmenter == "sam" else []
    revisions = {name: f"{models[name].source}@{models[name].revision}" for name in used}
    return asset_id(request.prompt, {"request": request.model_dump(), "models": revisions})


@flow(name="text-to-3d", flow_run_name="{request.prompt}", validate_parameters=True)
def text_to_3d(request: TextTo3DRequest) -> str:
    """Prompt to a validated, previewed GLB with LODs in the store; returns the manifest URI."""
    asset = request_asset_id(request)
    started = datetime.now(timezone.utc)
    image = image_stage(asset, request.prompt, request.seed, request.image_model, request.image_steps,
                        request.image_size)
    cutout = cutout_stage(asset, _key(image, "image", asset), request.segmenter)
    views = six_views_stage(asset, _key(cutout, "reframed", asset), request.version, request.view_steps,
                            request.seed)
    mesh = reconstruct_stage(asset, _key(views, "grid", asset), request.version, request.target_faces,
                             request.texture_size, request.lods)
    previews = preview_stage(asset, _key(mesh, "asset", asset))
    stages = {"image": image, "cutout": cutout, "views": views, "recon": mesh, "previews": previews}
    manifest = write_manifest(_store(), asset, request.model_dump(),
                              {name: _record(result) for name, result in stages.items()}, started)
    print(json.dumps({"asset_id": asset, "manifest": manifest.uri}))
    return manifest.uri

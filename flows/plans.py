"""The stages of each kind of asset, written once as a plan.

A plan is a generator that yields ``(task, arguments)`` for the next stage, receives that
stage's result and finally returns every stage's result by name. The one-asset flows run a
plan stage after stage; the batch flow advances many plans in lock-step, one stage at a
time across all assets, so each model is loaded once per batch (``flows/runner.py``).
"""

from __future__ import annotations

from typing import Any, Generator

from flows.requests import AssetRequest, ImageTo3DRequest, MeshTo3DRequest, TextTo3DRequest, models_used
from flows.tasks import (
    cutout_stage,
    depth_grid_stage,
    image_stage,
    ingest_image,
    ingest_mesh,
    key_of,
    package_stage,
    preview_stage,
    reconstruct_stage,
    retexture_stage,
    settings,
    six_views_stage,
)

Step = tuple[Any, dict[str, Any]]
Results = dict[str, dict]
Plan = Generator[Step, dict, Results]

# Batch order: every asset's stage of one name runs before any asset's next stage.
STAGE_ORDER = ("ingest-image", "ingest-mesh", "text-to-image", "cutout", "depth-grid", "six-views", "reconstruct",
               "retexture", "previews", "package")


def _reference(request: AssetRequest, asset: str) -> Generator[Step, dict, Results]:
    """The object image Zero123++ starts from: the user's photo or SDXL's render, cut out."""
    if getattr(request, "image", None):
        source = yield ingest_image, dict(asset=asset, location=request.image)
        results, image_key = {"input_image": source}, key_of(source, "image", asset)
    else:
        options = request.options
        image = yield image_stage, dict(asset=asset, prompt=request.prompt, seed=request.seed,
                                        model=options.image_model, steps=options.image_steps, size=options.image_size)
        results, image_key = {"image": image}, key_of(image, "image", asset)
    results["cutout"] = yield cutout_stage, dict(asset=asset, image_key=image_key, segmenter=request.options.segmenter)
    return results


def _views(request: AssetRequest, asset: str, results: Results) -> Generator[Step, dict, Results]:
    """Zero123++'s six views, steered by the depth of the request's mesh when it has one."""
    depth_key = None
    if request.depth_mesh:
        results["input_mesh"] = yield ingest_mesh, dict(asset=asset, location=request.depth_mesh)
        results["depth"] = yield depth_grid_stage, dict(asset=asset, mesh_key=key_of(results["input_mesh"], "mesh", asset),
                                                        version=request.version)
        depth_key = key_of(results["depth"], "depth_grid", asset)
    results["views"] = yield six_views_stage, dict(
        asset=asset, reframed_key=key_of(results["cutout"], "reframed", asset), version=request.version,
        steps=request.options.view_steps, seed=request.seed, depth_key=depth_key,
        conditioning_scale=request.options.conditioning_scale)
    return results


def generated_shape_plan(request: TextTo3DRequest | ImageTo3DRequest, asset: str) -> Plan:
    """text-to-3d and image-to-3d: reference image, views, reconstruction, previews."""
    options = request.options
    results = yield from _reference(request, asset)
    results = yield from _views(request, asset, results)
    results["recon"] = yield reconstruct_stage, dict(
        asset=asset, grid_key=key_of(results["views"], "grid", asset), version=request.version,
        target_faces=options.target_faces, texture_size=options.texture_size, normal_map=options.normal_map,
        keep_lighting=options.keep_lighting, lods=options.lods, height=options.height)
    results["previews"] = yield from _previews(request, asset, results)
    results.update((yield from _package(request, asset, results)))
    return results


def retexture_plan(request: MeshTo3DRequest, asset: str) -> Plan:
    """mesh-to-3d: reference image, depth-steered views, texture baked onto the given mesh."""
    results = yield from _reference(request, asset)
    results = yield from _views(request, asset, results)
    results["recon"] = yield retexture_stage, dict(
        asset=asset, mesh_key=key_of(results["input_mesh"], "mesh", asset),
        grid_key=key_of(results["views"], "grid", asset), version=request.version,
        texture_size=request.options.texture_size, lods=request.options.lods)
    results["previews"] = yield from _previews(request, asset, results)
    results.update((yield from _package(request, asset, results)))
    return results


def _previews(request: AssetRequest, asset: str, results: Results) -> Generator[Step, dict, dict]:
    previews = yield preview_stage, dict(asset=asset, glb_key=key_of(results["recon"], "asset", asset),
                                         size=request.options.preview_size)
    return previews


def _package(request: AssetRequest, asset: str, results: Results) -> Generator[Step, dict, Results]:
    """The engine delivery set, when the request asks for one."""
    package = request.options.package
    if package is None:
        return {}
    current = settings()
    packaged = yield package_stage, dict(asset=asset, glb_key=key_of(results["recon"], "asset", asset),
                                         models=models_used(request), collision_threshold=current.collision_threshold,
                                         collision_max_hulls=current.collision_max_hulls, **package.model_dump())
    return {"package": packaged}


def plan_for(request: AssetRequest, asset: str) -> Plan:
    return retexture_plan(request, asset) if isinstance(request, MeshTo3DRequest) else generated_shape_plan(request, asset)

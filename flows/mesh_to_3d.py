"""``mesh-to-3d`` (retexture): a studio's blockout mesh plus a prompt or photo -> depth grid
of the mesh at the six poses -> Zero123++ v1.1 with the depth ControlNet -> texture baked
onto the studio's own mesh (its geometry kept) -> LOD GLBs -> previews. Wiring only."""

from __future__ import annotations

from prefect import flow

from flows.caching import PLAIN_JSON
from flows.requests import AssetOptions, MeshTo3DRequest
from flows.runner import make_task_runner, run_name, run_one


@flow(name="mesh-to-3d", flow_run_name=run_name, task_runner=make_task_runner(), validate_parameters=True,
      result_serializer=PLAIN_JSON)
def mesh_to_3d(mesh: str, prompt: str | None = None, image: str | None = None, seed: int = 0,
               options: AssetOptions = AssetOptions()) -> str:
    """Texture a blockout mesh from generated views; returns the manifest URI.

    Args:
        mesh: blockout mesh (GLB, OBJ, PLY, OFF, STL): a local path or s3://bucket/key
        prompt: what it should look like (or give image)
        image: a reference photo (path or s3:// URI) instead of a prompt
        seed: seed of every generative stage
        options: stage options (steps, texture size, LODs, previews)
    """
    return run_one(MeshTo3DRequest(mesh=mesh, prompt=prompt, image=image, seed=seed, options=options))

"""``mesh-to-3d`` (retexture): a studio's blockout mesh plus a prompt or photo -> depth grid
of the mesh at the six poses -> Zero123++ v1.1 with the depth ControlNet -> texture baked
onto the studio's own mesh (its geometry kept) -> LOD GLBs -> previews. Wiring only."""

from __future__ import annotations

from prefect import flow

from flows.requests import MeshTo3DRequest
from flows.runner import make_task_runner, run_name, run_one


@flow(name="mesh-to-3d", flow_run_name=run_name, task_runner=make_task_runner(), validate_parameters=True)
def mesh_to_3d(request: MeshTo3DRequest) -> str:
    """Texture a blockout mesh from generated views; returns the manifest URI."""
    return run_one(request)

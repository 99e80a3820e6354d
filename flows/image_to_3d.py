"""``image-to-3d``: a photo (local path or S3 URI) -> cutout -> six views -> reconstruction
-> LOD GLBs -> previews -> manifest. Wiring only."""

from __future__ import annotations

from prefect import flow

from flows.requests import ImageTo3DRequest
from flows.runner import make_task_runner, run_name, run_one


@flow(name="image-to-3d", flow_run_name=run_name, task_runner=make_task_runner(), validate_parameters=True)
def image_to_3d(request: ImageTo3DRequest) -> str:
    """A photo of one object to a validated, previewed GLB with LODs; returns the manifest URI."""
    return run_one(request)

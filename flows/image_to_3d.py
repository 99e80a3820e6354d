"""``image-to-3d``: a photo (local path or S3 URI) -> cutout -> six views -> reconstruction
-> LOD GLBs -> previews -> manifest. Wiring only."""

from __future__ import annotations

from prefect import flow

from flows.caching import PLAIN_JSON
from flows.requests import AssetOptions, ImageTo3DRequest
from flows.runner import make_task_runner, run_name, run_one


@flow(name="image-to-3d", flow_run_name=run_name, task_runner=make_task_runner(), validate_parameters=True,
      result_serializer=PLAIN_JSON)
def image_to_3d(image: str, seed: int = 0, blockout: str | None = None,
                options: AssetOptions = AssetOptions()) -> str:
    """A photo of one object to a validated, previewed GLB with LODs; returns the manifest URI.

    Args:
        image: PNG, JPEG or WebP photo of one object: a local path or s3://bucket/key
        seed: seed of every generative stage
        blockout: optional mesh (path or s3:// URI) whose depth steers the six views
        options: stage options (steps, faces, texture size, LODs, previews)
    """
    return run_one(ImageTo3DRequest(image=image, seed=seed, blockout=blockout, options=options))

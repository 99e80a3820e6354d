"""``text-to-3d``: prompt -> image -> cutout -> six views (optionally steered by a blockout's
depth) -> reconstruction -> LOD GLBs -> previews -> manifest. Wiring only: the stages are
in ``flows/plans.py`` and ``flows/tasks.py``."""

from __future__ import annotations

from prefect import flow

from flows.caching import PLAIN_JSON
from flows.requests import AssetOptions, TextTo3DRequest
from flows.runner import make_task_runner, run_name, run_one


@flow(name="text-to-3d", flow_run_name=run_name, task_runner=make_task_runner(), validate_parameters=True,
      result_serializer=PLAIN_JSON)
def text_to_3d(prompt: str, seed: int = 0, blockout: str | None = None,
               options: AssetOptions = AssetOptions()) -> str:
    """A prompt to a validated, previewed GLB with LODs in the store; returns the manifest URI.

    Args:
        prompt: what to make, for example "a mossy treasure chest"
        seed: seed of every generative stage
        blockout: optional mesh (path or s3:// URI) whose depth steers the six views
        options: stage options (models, steps, faces, texture size, LODs, previews)
    """
    return run_one(TextTo3DRequest(prompt=prompt, seed=seed, blockout=blockout, options=options))

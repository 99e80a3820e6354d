"""Zero123++ six-view diffusion, exact to the published v1.1 and v1.2 checkpoints.

A standalone library: it knows nothing of the product's stages, flows or storage. The
pipeline (diffusers, transformers: seconds to import) loads on first use, so code that only
needs the cameras and grid helpers, such as reconstruction, starts fast.
"""

from typing import Any

from zero123pp.views import (
    Camera,
    join_views,
    matte_view,
    read_cameras_json,
    split_grid,
    view_cameras,
    write_cameras_json,
)

_PIPELINE_NAMES = ("Zero123PlusPipeline", "load_controlnet")


def __getattr__(name: str) -> Any:
    if name in _PIPELINE_NAMES:
        from zero123pp import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'zero123pp' has no attribute {name!r}")


__all__ = [
    "Camera",
    "Zero123PlusPipeline",
    "join_views",
    "load_controlnet",
    "matte_view",
    "read_cameras_json",
    "split_grid",
    "view_cameras",
    "write_cameras_json",
]

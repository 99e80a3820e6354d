"""Zero123++ six-view diffusion, exact to the published v1.1 and v1.2 checkpoints.

A standalone library: it knows nothing of the product's stages, flows or storage.
"""

from zero123pp.pipeline import Zero123PlusPipeline, load_controlnet
from zero123pp.views import (
    Camera,
    join_views,
    matte_view,
    read_cameras_json,
    split_grid,
    view_cameras,
    write_cameras_json,
)

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

"""Six-view stage: one object image to Zero123++'s six views and their cameras."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.cutout import MIN_OBJECT_SHARE, CutoutError
from stages.runtime import resolve_device, resolve_dtype
from zero123pp import Camera, Zero123PlusPipeline, split_grid, view_cameras, write_cameras_json
from zero123pp.views import Version


@dataclass
class SixViews:
    """A generated grid, its six tiles in grid order and the camera of each tile."""

    grid: Image.Image
    views: list[Image.Image]
    cameras: list[Camera]
    version: Version

    def write_to(self, folder: str | Path) -> list[Path]:
        """Write ``grid.png``, ``view_0.png`` .. ``view_5.png`` and ``cameras.json``.

        Everything is written to a scratch folder first and moved into place only once all
        files exist, so a failure never leaves a partial set behind.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".partial-") as scratch:
            scratch_path = Path(scratch)
            self.grid.save(scratch_path / "grid.png")
            for index, view in enumerate(self.views):
                view.save(scratch_path / f"view_{index}.png")
            write_cameras_json(self.cameras, scratch_path / "cameras.json", self.version)
            names = sorted(path.name for path in scratch_path.iterdir())
            for name in names:
                os.replace(scratch_path / name, folder / name)
        return [folder / name for name in names]


def require_object(image: Image.Image) -> None:
    """Refuse, as the cutout stage does, an image with no object to turn around: nearly
    all transparent, or one flat colour. Zero123++ would draw six views of nothing."""
    if image.mode == "RGBA":
        share = float((np.asarray(image.getchannel("A")) >= 128).mean())
        if share < MIN_OBJECT_SHARE:
            raise CutoutError(f"no object found: {share:.2%} of the image is opaque")
    elif all(low == high for low, high in image.getextrema()):
        raise CutoutError("no object found: the image is one flat colour")


def load_six_view_pipeline(
    model: str | Path,
    controlnet: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    offload: bool = False,
) -> Zero123PlusPipeline:
    """Load Zero123++ (folder or hub id) onto a device, or with model CPU offload."""
    target = resolve_device(device)
    pipeline = Zero123PlusPipeline.from_pretrained(model, controlnet=controlnet, torch_dtype=resolve_dtype(dtype, target))
    if offload and target.type == "cuda":
        pipeline.enable_model_cpu_offload(device=target)
    else:
        pipeline.to(target)
    return pipeline


def generate_six_views(
    image: Image.Image,
    pipeline: Zero123PlusPipeline,
    version: Version = "v1.2",
    num_inference_steps: int = 28,
    guidance_scale: float = 4.0,
    seed: int = 0,
    depth_grid: Image.Image | None = None,
    controlnet_conditioning_scale: float = 1.0,
) -> SixViews:
    """Run Zero123++ on one object image (RGBA, or RGB on grey) and split the result.

    The seed drives a dedicated generator, so concurrent work cannot change the result.
    Raises ``CutoutError`` for an image with no object (see ``require_object``).
    """
    require_object(image)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    grid = pipeline(
        image,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        depth_image=depth_grid,
        controlnet_conditioning_scale=controlnet_conditioning_scale,
    ).images[0]
    views = split_grid(grid)
    return SixViews(grid, views, view_cameras(version, tile_size=views[0].size[0]), version)

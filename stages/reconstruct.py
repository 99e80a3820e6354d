"""Reconstruction stage: a six-view grid (or six view files) to engine-ready GLBs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from recon.camera import PinholeCamera
from recon.export import export_glb, normalise_for_engine
from recon.gltf_validation import validate_glb
from recon.nerfstudio import export_nerfstudio
from recon.reconstruct import Progress, ReconstructionOptions, reconstruct
from recon.texture import TexturedMesh
from stages.image_input import open_image
from zero123pp import Camera, matte_view, split_grid, view_cameras
from zero123pp.views import NUM_VIEWS, Version


def open_views(source: str | Path) -> list[Image.Image]:
    """Six views from a grid image or from a folder holding ``view_0.png`` .. ``view_5.png``."""
    source = Path(source)
    if source.is_dir():
        paths = [source / f"view_{index}.png" for index in range(NUM_VIEWS)]
        missing = [path.name for path in paths if not path.is_file()]
        if missing:
            raise ValueError(f"{source}: a view folder needs view_0.png .. view_5.png; missing {', '.join(missing)}")
        return [open_image(path) for path in paths]
    if not source.is_file():
        raise ValueError(f"{source}: no such file or folder")
    return split_grid(open_image(source))


def to_rgba_views(views: list[Image.Image]) -> list[np.ndarray]:
    """Float RGBA views: alpha when the image has a meaningful one, else matted from the
    flat background colour (soft edges kept)."""
    arrays = []
    for view in views:
        has_alpha = view.mode in ("RGBA", "LA") and np.asarray(view.getchannel("A")).min() < 255
        rgba = view.convert("RGBA") if has_alpha else matte_view(view)
        arrays.append(np.asarray(rgba, np.float32) / 255.0)
    return arrays


def to_pinhole(camera: Camera) -> PinholeCamera:
    """A Zero123++ view camera as the plain pinhole data reconstruction takes."""
    return PinholeCamera(camera.camera_to_world, camera.intrinsics, camera.width, camera.height)


def six_view_cameras(version: Version, tile_size: int, cameras_json: Path | None = None) -> list[PinholeCamera]:
    """Cameras of the six views: from a ``cameras.json`` beside them, else the version's table."""
    if cameras_json is not None and cameras_json.is_file():
        views = json.loads(cameras_json.read_text())["views"]
        return [PinholeCamera.from_dict(view).scaled(tile_size, tile_size) for view in views]
    return [to_pinhole(camera) for camera in view_cameras(version, tile_size)]


def reconstruct_views(
    source: str | Path,
    version: Version = "v1.2",
    target_faces: int = 20000,
    texture_size: int = 1024,
    progress: Progress | None = None,
    nerfstudio_dir: str | Path | None = None,
    normal_map: bool = False,
) -> TexturedMesh:
    """Load, mat and reconstruct six views; the mesh is in the cameras' world frame.

    ``nerfstudio_dir`` also writes the matted views, masks and cameras in nerfstudio's format;
    ``normal_map`` also bakes a tangent-space normal map from the dense surface.
    """
    source = Path(source)
    images = to_rgba_views(open_views(source))
    cameras_json = source / "cameras.json" if source.is_dir() else None
    cameras = six_view_cameras(version, images[0].shape[1], cameras_json)
    options = ReconstructionOptions(target_faces=target_faces, texture_size=texture_size, normal_map=normal_map)
    asset = reconstruct(images, cameras, options, progress)
    if nerfstudio_dir is not None:
        export_nerfstudio(images, cameras, nerfstudio_dir)
    return asset


def export_asset(asset: TexturedMesh, output: str | Path, lods: int = 3, height: float | None = 1.0) -> list[Path]:
    """Write the LOD GLBs, normalised for engines (bottom-centre pivot, ``height`` metres);
    ``height=None`` keeps the coordinates as they are (a studio's own retextured mesh)."""
    if height is not None:
        asset = replace(asset, vertices=normalise_for_engine(asset.vertices, height))
    return export_glb(asset, output, lods)


def validate_exports(paths: list[Path]) -> dict[str, int | str]:
    """Run the Khronos glTF-Validator on every GLB; raise if any has an error.

    Returns the summed error and warning counts, or ``{"validator": "unavailable: ..."}``
    where Node.js or the validator is not installed (a worker image without it).
    """
    errors = warnings = 0
    for path in paths:
        try:
            report = validate_glb(path)
        except RuntimeError as error:
            return {"validator": f"unavailable: {error}"}
        errors += report["issues"]["numErrors"]
        warnings += report["issues"]["numWarnings"]
        if report["issues"]["numErrors"]:
            messages = "; ".join(issue["message"] for issue in report["issues"]["messages"][:3])
            raise ValueError(f"{path.name}: the glTF validator found {report['issues']['numErrors']} errors: {messages}")
    return {"validator": "passed", "errors": errors, "warnings": warnings}

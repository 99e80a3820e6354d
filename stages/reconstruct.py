"""Reconstruction stage: a six-view grid (or six view files) to engine-ready GLBs."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recon.camera import PinholeCamera
from recon.export import export_glb, normalise_for_engine
from recon.gltf_validation import ValidatorUnavailable, validate_glb
from recon.nerfstudio import export_nerfstudio
from recon.reconstruct import Progress, ReconstructionOptions, reconstruct
from recon.texture import TexturedMesh
from stages.view_matting import open_views, to_rgba_views
from zero123pp import Camera, view_cameras
from zero123pp.views import Version

logger = logging.getLogger(__name__)


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
    u2net: Any | None = None,
    device: str = "auto",
    delight: bool = True,
    matted: list[np.ndarray] | None = None,
) -> TexturedMesh:
    """Load, mat and reconstruct six views; the mesh is in the cameras' world frame.

    ``nerfstudio_dir`` also writes the matted views, masks and cameras in nerfstudio's format;
    ``normal_map`` also bakes a tangent-space normal map from the dense surface; ``u2net``
    (an onnxruntime session of u2netp, see :mod:`stages.view_matting`) mats the views by
    colour and u2netp together, ``None`` by colour alone. ``device`` runs reconstruction's
    torch work (the settings' device, read as every stage reads it). ``delight=False`` keeps
    the views' lighting in the base colour instead of dividing it out. ``matted`` are the
    views of ``source`` already matted (:func:`stages.view_matting.to_rgba_views`, which the
    CLI runs while this module imports); then ``u2net`` is not used.
    """
    source = Path(source)
    images = to_rgba_views(open_views(source), u2net) if matted is None else matted
    cameras_json = source / "cameras.json" if source.is_dir() else None
    cameras = six_view_cameras(version, images[0].shape[1], cameras_json)
    options = ReconstructionOptions(target_faces=target_faces, texture_size=texture_size, normal_map=normal_map,
                                    device=device, delight=delight)
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
    where Node.js or the validator is not installed (a worker image without it). A validator
    that fails on a file raises its message: that file was not shown to be valid.
    """
    errors = warnings = 0
    for path in paths:
        try:
            report = validate_glb(path)
        except ValidatorUnavailable as error:
            return {"validator": f"unavailable: {error}"}
        errors += report["issues"]["numErrors"]
        warnings += report["issues"]["numWarnings"]
        if report["issues"]["numErrors"]:
            messages = "; ".join(issue["message"] for issue in report["issues"]["messages"][:3])
            raise ValueError(f"{path.name}: the glTF validator found {report['issues']['numErrors']} errors: {messages}")
    return {"validator": "passed", "errors": errors, "warnings": warnings}

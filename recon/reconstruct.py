"""Six views with known cameras to a clean, UV-textured mesh: the whole method in order."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import trimesh

from recon.calibration import exposure_gains, refine_cameras
from recon.camera import PinholeCamera
from recon.device import on_device
from recon.geometry import VoxelField, extract_surface, restore_unexplained, silhouette_field
from recon.lighting import estimate_lighting
from recon.normal_map import bake_normal_map
from recon.stereo import DepthMap, fuse_depth_maps, photo_inconsistency, sweep_depths
from recon.surface import clean_surface, decimate
from recon.texture import TexturedMesh, bake_base_colour

logger = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ReconstructionOptions:
    """``resolution`` voxels along the longest side of the object's bounding box;
    ``surface_faces_per_target`` caps the hull's iso-surface at about that many times
    ``target_faces`` faces, coarsening the field of an object with a large surface;
    ``refine_cameras`` first corrects each view's small pose and distance error from the
    silhouettes (``recon.calibration``) and reconstructs with the corrected cameras;
    ``exposure_compensation`` brings the views to one exposure and tint before stereo
    (gains from the surface of a quick sweep in views ``exposure_stereo_size`` pixels
    across, ``exposure_depth_samples`` steps per ray) and again before the bake;
    ``tolerance_px`` how far one view may disagree with the others' silhouettes; ``stereo``
    sweeps depths inside the hull (in views at most ``stereo_size`` pixels across, ``depth_samples``
    coarse steps per ray; a match is a
    summed squared RGB difference under ``match_threshold``, beaten by ``distinctness``
    everywhere farther than ``ambiguity_voxels`` along its ray) and fuses them with
    ``truncation_voxels``, smoothing what they carved over ``fusion_smoothing_voxels``.
    ``normal_map`` also bakes a tangent-space normal map carrying the dense surface's
    detail onto the decimated one. ``device`` runs the torch parts (view
    sampling in the field, stereo and bake; camera refinement) on ``"cpu"``, ``"cuda"``,
    or with ``"auto"`` on a CUDA device when there is one. ``delight`` estimates the views'
    lighting (``recon.lighting``) and divides it out of the base colour, so engines do not
    light the shading a second time; off, the texture keeps the lighting it was seen in."""

    refine_cameras: bool = True
    exposure_compensation: bool = True
    exposure_stereo_size: int = 100
    exposure_depth_samples: int = 12
    resolution: int = 128
    surface_faces_per_target: float = 4.0
    tolerance_px: float = 3.0
    stereo: bool = True
    depth_samples: int = 32
    stereo_size: int = 320
    match_threshold: float = 0.004
    ambiguity_voxels: float = 9.0
    distinctness: float = 0.001
    truncation_voxels: float = 4.0
    target_faces: int = 20000
    texture_size: int = 1024
    normal_map: bool = False
    delight: bool = True
    fusion_smoothing_voxels: float = 0.7
    device: str = "auto"


def check_views(images: list[np.ndarray], cameras: list[PinholeCamera], expected: int = 6) -> list[np.ndarray]:
    """Refuse inputs reconstruction cannot use, naming the view and the problem."""
    if len(images) < expected:
        raise ValueError(f"reconstruction needs {expected} views, got {len(images)}")
    if len(cameras) != len(images):
        raise ValueError(f"{len(images)} views but {len(cameras)} cameras")
    checked = []
    for index, (image, camera) in enumerate(zip(images, cameras)):
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[2] != 4:
            raise ValueError(f"view {index}: expected an RGBA image (alpha = foreground), got shape {image.shape}")
        if image.shape[:2] != (camera.height, camera.width):
            raise ValueError(f"view {index}: image is {image.shape[1]}x{image.shape[0]} but its camera is "
                             f"{camera.width}x{camera.height}")
        mask = image[..., 3] > 0.5
        if not mask.any():
            raise ValueError(f"view {index}: no foreground (alpha is empty)")
        if mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any():
            raise ValueError(f"view {index}: the foreground touches the border on all sides; "
                             "the object must be whole inside the view")
        checked.append(image)
    return checked


def reconstruct(
    images: list[np.ndarray],
    cameras: list[PinholeCamera],
    options: ReconstructionOptions = ReconstructionOptions(),
    progress: Progress | None = None,
) -> TexturedMesh:
    """Reconstruct a textured mesh from RGBA views (float 0..1, alpha = soft foreground)."""
    images = check_views(images, cameras)
    report = progress or (lambda phase, seconds: logger.info("%s: %.2f s", phase, seconds))
    with on_device(options.device):
        return _reconstruct(images, cameras, options, report)


def _reconstruct(images: list[np.ndarray], cameras: list[PinholeCamera], options: ReconstructionOptions,
                 report: Progress) -> TexturedMesh:
    masks = [image[..., 3] > 0.5 for image in images]
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report(name, now - clock)
        clock = now

    details = {}
    if options.refine_cameras:
        cameras, calibration = refine_cameras(masks, cameras)
        details["camera_refinement"] = calibration.to_dict()
        phase("camera refinement")
    field = silhouette_field(masks, cameras, options.resolution, options.tolerance_px,
                             round(options.surface_faces_per_target * options.target_faces))
    phase("silhouette field")
    gains = np.ones((len(images), 3))
    if options.stereo:
        hull = extract_surface(field, process=False)
        if options.exposure_compensation:
            # Stereo reads the views' exposure differences (a few per cent in generated
            # views) as colour mismatches, so the views are brought to one exposure before
            # the sweep. Gains need a surface near the object's: the hull's are biased by
            # several per cent where it leaves the surface (a mug's cup, between legs), up to
            # twice the differences themselves on the benchmark's realistic views. A quick
            # coarse sweep's surface gives them to within 2.6 % (the residual the dense
            # surface measures below), for about a third of the full sweep's time.
            quick = _sweep(hull, field.voxel_size, images, cameras, options, options.exposure_stereo_size,
                           options.exposure_depth_samples)
            rough = fuse_depth_maps(field, quick, options.truncation_voxels)
            gains = exposure_gains(extract_surface(rough, process=False), images, cameras)
            images = _compensated(images, gains)
            phase("exposure from a coarse sweep")
        field, details["stereo"] = _carve(field, hull, images, masks, cameras, options)
        phase("multi-view stereo and fusion")
    dense = clean_surface(extract_surface(field))
    phase("iso-surface and clean-up")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # pymeshlab lets go of the GIL, so the collapse (up to 1.5 s on one core) runs on the
        # other core beside the exposure and lighting estimates, which only read the dense
        # surface; it gets a copy of its own, so no trimesh cache is filled by two threads
        decimating = pool.submit(decimate, dense.copy(), options.target_faces)
        if options.exposure_compensation:
            # what the coarse surface left for the bake, where view boundaries would show it
            residual = exposure_gains(dense, images, cameras)
            images = _compensated(images, residual)
            details["exposure_gains"] = np.round(gains * residual, 4).tolist()
            phase("exposure compensation")
        lighting = None
        if options.delight:
            estimate = estimate_lighting(dense, images, cameras)
            details["lighting"] = estimate.to_dict()
            lighting = estimate if estimate.applied else None
            phase("lighting estimate")
        surface = decimating.result()
        phase("decimation (what outlasted the estimates)")
    textured = bake_base_colour(surface, images, cameras, options.texture_size, lighting=lighting)
    phase("UV unwrap and texture bake")
    if options.normal_map:
        textured = replace(textured, normal_texture=bake_normal_map(textured, dense))
        phase("normal map")
    return replace(textured, details=details)


def _compensated(images: list[np.ndarray], gains: np.ndarray) -> list[np.ndarray]:
    """The views' colours divided by their per-channel ``gains`` (V, 3), alpha kept."""
    return [np.dstack([image[..., :3] / gain, image[..., 3:]]) for image, gain in zip(images, gains)]


def _sweep(hull: trimesh.Trimesh, voxel_size: float, images: list[np.ndarray], cameras: list[PinholeCamera],
           options: ReconstructionOptions, size: int, samples: int) -> list[DepthMap]:
    """Depth maps swept through ``hull`` in views at most ``size`` pixels across,
    ``samples`` coarse steps per ray."""
    return sweep_depths(
        hull, images, cameras, samples, match_threshold=options.match_threshold,
        ambiguity=options.ambiguity_voxels * voxel_size, distinctness=options.distinctness, voxel_size=voxel_size,
        working_size=size,
    )


def _carve(field: VoxelField, hull: trimesh.Trimesh, images: list[np.ndarray], masks: list[np.ndarray],
           cameras: list[PinholeCamera], options: ReconstructionOptions) -> tuple[VoxelField, dict]:
    """The hull ``field`` (its surface ``hull``) carved by multi-view stereo, or the hull
    itself when the views agree on its colours better than on the carved surface's: stereo
    must never leave the object worse than its hull. Returns the field and the verdict."""
    depth_maps = _sweep(hull, field.voxel_size, images, cameras, options, options.stereo_size, options.depth_samples)
    fused = fuse_depth_maps(field, depth_maps, options.truncation_voxels, options.fusion_smoothing_voxels)
    # A wrong depth on a thin part (a leg one or two pixels wide, matched on the body behind
    # it), or the fusion's smoothing, empties its voxels, and then no view's ray through it
    # meets the shape. Every silhouette pixel must still see the object, so the hull comes
    # back where the rays of three views' such pixels cross: one view's ray alone would
    # restore a fin of hull along it wherever the fused outline is a pixel short (on the
    # benchmark's realistic views, two views still did on the airplane's wings).
    hull_values = field.values.reshape(-1)
    carved = np.flatnonzero(fused.values.reshape(-1) < hull_values)
    fused = restore_unexplained(fused, masks, cameras, carved, hull_values[carved], min_views=3)
    hull_score = photo_inconsistency(hull, images, cameras)
    fused_score = photo_inconsistency(extract_surface(fused, process=False), images, cameras)
    kept = fused_score <= hull_score
    verdict = {"kept": kept, "hull_inconsistency": round(hull_score, 6), "fused_inconsistency": round(fused_score, 6)}
    return (fused if kept else field), verdict

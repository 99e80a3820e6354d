"""Multi-view stereo inside the silhouette hull: a depth per pixel, fused into the field.

Six silhouettes bound the shape but cannot see into concavities, through holes no view
looks along, or across the wide gaps between the views. Colour can: the views show the
same surface colour wherever they see the same point. So:

1. **Sweep.** Each foreground pixel's ray crosses the hull between an entry and an exit
   distance, and the true surface lies on that stretch. Candidate points along it are
   projected into the neighbouring views (those facing the same side of the object).
   A candidate's cost is its colour difference to the best-agreeing close neighbour, or
   to the second best of all of them, so a point hidden from one neighbour is still
   judged by another, but a view from far round the object never decides alone. A
   coarse sweep over the whole stretch and a fine one around its best sample give the
   depth. A pixel gets none when its best match is poor or not unique along the ray
   (plain colour matches everywhere). Choosing the best match, not the first one under
   a threshold, places surfaces of smooth colour as well as textured ones.
2. **Fusion.** The depth maps are fused as a truncated signed distance (after Curless and
   Levoy, 1996): each view votes that voxels in front of its surface are empty and those
   just behind it are full (a vote fading out deeper behind), and the votes are averaged
   by weight. Voxels no view votes on (deep inside, or behind every surface seen) keep
   the hull's verdict, and nothing more than half a voxel outside the hull is ever added,
   so a wrong depth can only dent the shape where the other views do not outvote it.

Written by hand: no library here sweeps depths against calibrated images, and open3d's
TSDF integration cannot start from the hull or leave unseen voxels to it.
"""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import trimesh
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from recon.camera import PinholeCamera
from recon.geometry import VoxelField, covisible_colours, sample_views, surface_depths
from recon.render import MeshRenderer


UNMATCHABLE = 10.0  # colour given to pixels that must never match (real colours are 0..1)


@dataclass
class DepthMap:
    """Per-pixel distance along the camera's rays to the surface; NaN where unknown."""

    distance: np.ndarray
    camera: PinholeCamera
    entry: np.ndarray  # distance to where the ray enters the hull; NaN where it misses


def neighbours(cameras: list[PinholeCamera], reference: int, max_angle_deg: float = 135.0) -> list[int]:
    """Views whose viewing direction is within ``max_angle_deg`` of the reference's: the
    ones that can see the same side of the object (never the view from opposite)."""
    axis = cameras[reference].view_axis()
    limit = np.cos(np.radians(max_angle_deg))
    return [index for index, camera in enumerate(cameras)
            if index != reference and camera.view_axis() @ axis > limit]


def hull_intervals(renderer: MeshRenderer, camera: PinholeCamera, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Origins, directions and the entry and exit distances of the rays of the ``mask``
    pixels through the hull (NaN-free rows only: rays that miss the hull are dropped),
    with the flat pixel index of each kept ray."""
    origins, directions = camera.rays()
    pixels = np.flatnonzero(mask)
    origins = origins.reshape(-1, 3)[pixels].astype(np.float32)
    directions = directions.reshape(-1, 3)[pixels].astype(np.float32)
    near = renderer.cast(origins, directions)["t_hit"]
    reach = 2.0 * float(np.linalg.norm(camera.position)) + 10.0  # beyond the whole working volume
    far = reach - renderer.cast(origins + directions * reach, -directions)["t_hit"]
    hit = np.isfinite(near) & np.isfinite(far)
    return origins[hit], directions[hit], near[hit], far[hit], pixels[hit]


def sweep_depths(
    hull: trimesh.Trimesh,
    images: list[np.ndarray],
    cameras: list[PinholeCamera],
    samples: int = 32,
    refinement: int = 8,
    match_threshold: float = 0.004,
    ambiguity: float = 0.15,
    distinctness: float = 0.001,
    voxel_size: float = 0.015,
    hull_trust: float = 3.0,
    confirm_voxels: float = 2.0,
    working_size: int = 320,
    max_rays: int = 40000,
    close_angle_deg: float = 90.0,
    neighbour_angle_deg: float = 135.0,
    rays_per_batch: int = 8192,
) -> list[DepthMap]:
    """A depth map per view (at most ``working_size`` pixels across, and at most
    ``max_rays`` foreground pixels) by sweeping each
    foreground ray through ``hull``: ``samples`` coarse steps over the ray's stretch inside
    the hull, then ``2 * refinement + 1`` fine ones across the best coarse step.
    A depth is kept when its summed squared RGB difference (colour 0..1) is under
    ``match_threshold`` and every coarse candidate farther than ``ambiguity`` (world
    units) along the ray matches worse by more than ``distinctness``.

    Stereo must never leave a mesh worse than its hull, and a repeating texture (a
    patterned ball) matches well at wrong depths. So the hull's own surface (its first
    two ``voxel_size`` steps) is kept wherever it matches within ``hull_trust`` times the
    best match: a tight hull already looks the same from the neighbours. And a depth that
    cuts more than ``confirm_voxels`` into the hull stands only where another view's
    depth map finds the same surface point; otherwise its ray keeps the hull's verdict.
    """
    renderer = MeshRenderer(hull)
    colours = np.stack([_foreground_blur(image) for image in images])
    # A silhouette's edge pixel shows a different surface point in every view (and mixes
    # in the background): it is never matched.
    interior = np.stack([ndimage.binary_erosion(image[..., 3] > 0.5) for image in images])
    colours = np.where(interior[..., None], colours, UNMATCHABLE).astype(np.float32)

    def sweep_view(reference: int) -> DepthMap:
        camera = cameras[reference]
        # a large object is swept at a lower resolution: at most ``max_rays`` rays per view
        scale = min(1.0, working_size / max(camera.width, camera.height),
                    float(np.sqrt(max_rays / max(interior[reference].sum(), 1))))
        working = camera.scaled(max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))
        coverage = Image.fromarray(interior[reference].astype(np.float32), "F")
        mask = np.asarray(coverage.resize((working.width, working.height), Image.Resampling.BOX)) > 0.5
        origins, directions, near, far, pixels = hull_intervals(renderer, working, mask)
        entry_points = origins + directions * near[:, None]
        reference_colour = sample_views(colours[reference:reference + 1], [camera], entry_points, 0.0)[0]
        others = neighbours(cameras, reference, neighbour_angle_deg)
        close = np.isin(others, neighbours(cameras, reference, close_angle_deg))
        neighbour_colours, neighbour_cameras = colours[others], [cameras[i] for i in others]

        def cost(rays: slice, distances: np.ndarray) -> np.ndarray:
            """Squared colour difference at each distance: the best close neighbour's, or the
            second best of all. A view from far round the object sees it so differently
            that it may agree by chance (a mirror-symmetric object shows it a mirror image
            of the reference), so it never decides alone."""
            points = (origins[rays, None] + directions[rays, None] * distances[..., None]).reshape(-1, 3)
            seen = sample_views(neighbour_colours, neighbour_cameras, points, np.inf)
            seen = seen.reshape(len(others), *distances.shape, 3)
            difference = ((seen - reference_colour[None, rays, None]) ** 2).sum(-1)
            # running lowest and second lowest over the few neighbours: np.partition along
            # so short an axis was a third of the sweep's time
            best_close = lowest = second = np.full(distances.shape, np.inf, np.float32)
            for view, is_close in zip(difference, close):
                if is_close:
                    best_close = np.minimum(best_close, view)
                second = np.minimum(second, np.maximum(lowest, view))
                lowest = np.minimum(lowest, view)
            return np.minimum(best_close, second)

        distance = np.full(working.height * working.width, np.nan, np.float32)
        entry = np.full(working.height * working.width, np.nan, np.float32)
        entry[pixels] = near
        for start in range(0, len(pixels), rays_per_batch):  # batches keep the sample arrays in cache
            rays = slice(start, start + rays_per_batch)
            index = np.arange(len(pixels[rays]))
            step = (far[rays] - near[rays]) / (samples - 1)
            coarse = near[rays, None] + step[:, None] * np.arange(samples, dtype=np.float32)[None]
            coarse_cost = cost(rays, coarse)
            lowest = coarse_cost.min(axis=1)
            lowest_at = coarse[index, coarse_cost.argmin(axis=1)]
            # Unambiguous: every candidate farther than ``ambiguity`` matches clearly worse.
            # Plain colour matches everywhere along its ray; such rays get no depth.
            elsewhere = np.where(np.abs(coarse - lowest_at[:, None]) > ambiguity, coarse_cost, np.inf).min(axis=1)
            distinct = elsewhere > lowest + distinctness
            # Within the best match's basin (a colour that stays the same along the
            # neighbour's epipolar line leaves a flat one) the nearest candidate is taken:
            # it empties only space that is certainly empty.
            best = coarse[index, (coarse_cost <= lowest[:, None] + 0.5 * distinctness).argmax(axis=1)]
            fine = best[:, None] + step[:, None] * np.linspace(-1.0, 1.0, 2 * refinement + 1, dtype=np.float32)[None]
            fine_cost = cost(rays, fine)
            choice = fine_cost.argmin(axis=1)
            matched = (fine_cost[index, choice] < match_threshold) & distinct
            found = np.where(matched, fine[index, choice], np.nan)
            # Where the hull's own surface already looks the same from the neighbours, it
            # stays: on a tight hull a deeper best match is a texture matched off by a period
            at_entry = near[rays, None] + voxel_size * np.linspace(0.0, 2.0, 5, dtype=np.float32)[None]
            entry_cost = cost(rays, at_entry)
            entry_choice = entry_cost.argmin(axis=1)
            trusted = entry_cost[index, entry_choice] <= hull_trust * np.minimum(fine_cost[index, choice], match_threshold)
            distance[pixels[rays]] = np.where(trusted, at_entry[index, entry_choice], found)
        return DepthMap(fill_depth_gaps(distance.reshape(working.height, working.width), mask), working,
                        entry.reshape(working.height, working.width))

    # The views are swept independently, and numpy's and open3d's loops let go of the GIL:
    # on two cores, two threads sweep in 0.64 to 0.70 of one's time, the depths the same.
    # Each runs in a copy of this context, which holds the device ``on_device`` chose.
    with ThreadPoolExecutor(max_workers=min(len(cameras), os.cpu_count() or 1)) as pool:
        sweeps = [pool.submit(contextvars.copy_context().run, sweep_view, view) for view in range(len(cameras))]
        depth_maps = [sweep.result() for sweep in sweeps]
    band = confirm_voxels * voxel_size
    return [_deep_cuts_confirmed(depth_map, depth_maps, band, band) for depth_map in depth_maps]


def _deep_cuts_confirmed(depth_map: DepthMap, depth_maps: list[DepthMap], band: float, margin: float) -> DepthMap:
    """``depth_map`` without the depths that cut deeper than ``band`` into the hull unless
    another view's depth map puts a surface within ``margin`` of the same point.

    One other view suffices: a concavity is often seen from two views only."""
    camera = depth_map.camera
    origins, directions = camera.rays()
    deep = np.isfinite(depth_map.distance) & (depth_map.distance > depth_map.entry + band)
    points = (origins[deep] + directions[deep] * depth_map.distance[deep][:, None]).astype(np.float32)
    confirmed = np.zeros(len(points), bool)
    for other in depth_maps:
        if other is depth_map:
            continue
        pixels, _ = other.camera.project(points)
        column, row = np.floor(pixels[:, 0]).astype(np.int64), np.floor(pixels[:, 1]).astype(np.int64)
        inside = (column >= 0) & (column < other.camera.width) & (row >= 0) & (row < other.camera.height)
        seen = np.full(len(points), np.nan, np.float32)
        seen[inside] = other.distance[row[inside], column[inside]]
        confirmed |= np.abs(seen - np.linalg.norm(points - other.camera.position, axis=1)) < margin
    rows, columns = np.nonzero(deep)
    distance = depth_map.distance.copy()
    distance[rows[~confirmed], columns[~confirmed]] = np.nan
    return DepthMap(distance, camera, depth_map.entry)


def fill_depth_gaps(distance: np.ndarray, swept: np.ndarray, window: int = 5) -> np.ndarray:
    """Give a ``swept`` pixel left without a depth the median of its ``window`` x
    ``window`` neighbours when at least half of them have one.

    Such a pixel (a poor or ambiguous match amid good ones) votes on nothing, so its ray
    would keep the hull's verdict: a thin column left standing in carved space, which the
    surface wraps as a handle. Larger gaps, where no depth is trustworthy, stay unknown.
    """
    pad = window // 2
    windows = sliding_window_view(np.pad(distance, pad, constant_values=np.nan), (window, window))
    rows, columns = np.nonzero(swept & np.isnan(distance))
    neighbourhoods = windows[rows, columns].reshape(len(rows), window * window)
    fillable = np.isfinite(neighbourhoods).sum(axis=1) * 2 >= window * window
    filled = distance.copy()
    filled[rows[fillable], columns[fillable]] = np.nanmedian(neighbourhoods[fillable], axis=1)
    return filled


def _foreground_blur(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The foreground's colour blurred by ``sigma`` pixels, the background left out (a
    normalised convolution), so edge pixels keep the object's colour. A pixel's blur makes
    the matching cost smooth in depth, so the coarse sweep cannot step over a minimum."""
    alpha = image[..., 3:4]
    weight = ndimage.gaussian_filter(alpha, (sigma, sigma, 0.0))
    blurred = ndimage.gaussian_filter(image[..., :3] * alpha, (sigma, sigma, 0.0))
    return blurred / np.maximum(weight, 1e-6)


def fuse_depth_maps(field: VoxelField, depth_maps: list[DepthMap], truncation_voxels: float = 4.0,
                    smoothing_voxels: float = 0.0, hull_slack_voxels: float = 0.5) -> VoxelField:
    """The hull ``field`` cut by the depth maps' truncated signed distances (both in
    voxels, positive inside), what they carved smoothed by a Gaussian of ``smoothing_voxels``.

    The hull bounds the fused surface only to within ``hull_slack_voxels``: where the hull
    lies within the depths' own noise of the surface (much of a sphere's), a hard bound
    cuts off every vote that errs outward and keeps every one that errs inward, so the
    surface sits inside the object (by 0.10 voxels for noisy depths of a sphere whose hull
    is its own surface; 0.002 with half a voxel of slack), and the surface still never
    grows further than that, under the field's own resolution, beyond the hull. On the
    perfect globe's views the Chamfer distance went from 0.0055, over its naive hull's
    0.0054, to 0.0052; the thirteen meshes' means moved by at most 0.0001."""
    hull = field.values
    candidates = hull > -1.0  # the fused surface never leaves the hull by more than its slack
    points = field.centres()[candidates]
    truncation = truncation_voxels * field.voxel_size
    total = np.zeros(len(points), np.float32)
    votes = np.zeros(len(points), np.float32)
    for depth_map in depth_maps:
        camera = depth_map.camera
        known = np.isfinite(depth_map.distance)
        _, directions = camera.rays()
        surface_depth = np.where(known, depth_map.distance * (directions @ camera.view_axis()), 0.0).astype(np.float32)
        pixel, depth = camera.project(points)
        column = np.clip(np.floor(pixel[:, 0]).astype(np.int64), 0, camera.width - 1)
        row = np.clip(np.floor(pixel[:, 1]).astype(np.int64), 0, camera.height - 1)
        # Interpolate depth where the surface is continuous (slanted surfaces seen at a
        # grazing angle change depth quickly across a pixel); take the nearest pixel's
        # depth across discontinuities, where interpolation would invent a surface.
        spread = (ndimage.maximum_filter(np.where(known, surface_depth, np.inf), size=3)
                  - ndimage.minimum_filter(np.where(known, surface_depth, -np.inf), size=3))
        smooth = spread[row, column] < truncation
        interpolated = sample_views(surface_depth[None], [camera], points, 0.0)[0]
        observed = np.where(smooth, interpolated, surface_depth[row, column])
        reliable = known[row, column]
        in_front = observed - depth  # positive: the voxel lies between the camera and the surface
        # A view's say fades out over the back half of the truncation band, as in Curless
        # and Levoy: a vote that stopped dead would step the average wherever one view's
        # band ends, and the surface would follow the steps.
        weight = np.where(reliable, np.clip((in_front + truncation) / (0.5 * truncation), 0.0, 1.0), 0.0)
        total += weight * np.clip(in_front, -truncation, truncation)
        votes += weight
    fused = np.divide(-total, votes * field.voxel_size, out=np.full_like(total, np.inf), where=votes > 0)
    bound = hull + hull_slack_voxels
    values = hull.copy()
    values[candidates] = np.where(votes > 0, np.minimum(bound[candidates], fused), hull[candidates])
    # Space the depths emptied but that no view can see into, a cavity sealed inside the
    # object, is a wrong depth whose mouth the other views' votes closed again (a repeating
    # texture matched deep on a ball): the views say nothing against the hull there.
    sealed = ndimage.binary_fill_holes(values > 0) & (values <= 0)
    values[sealed] = hull[sealed]
    if smoothing_voxels:
        # Each voxel's votes carry their depth maps' pixel noise, so the carved surface is
        # rough at the voxel scale, worst where the colour is plain (a yellow duck under
        # blurred, noisy views was bumpy all over, twice its hull's error away from the
        # truth). Only carved voxels are smoothed, and never beyond the bound; the thin parts
        # this erodes come back in ``recon.reconstruct`` with the silhouettes.
        carved = values < hull
        values = np.where(carved, np.minimum(ndimage.gaussian_filter(values, smoothing_voxels), bound), values)
    return VoxelField(values.astype(np.float32), field.origin, field.voxel_size)


def photo_inconsistency(surface: trimesh.Trimesh, images: list[np.ndarray], cameras: list[PinholeCamera],
                        close_angle_deg: float = 90.0, stride: int = 3) -> float:
    """How much the views disagree about the colour of ``surface``: the mean squared RGB
    difference between each view's colour at a visible surface point and the colour of
    every close neighbour that also sees it (visibility by ray casting ``surface``).

    The right surface is the one the views agree on; a wrong depth that carved a pit shows
    each view a different part of the pit."""
    colours = np.stack([_foreground_blur(image) for image in images])
    interior = [ndimage.binary_erosion(image[..., 3] > 0.5, iterations=2) for image in images]
    tolerances = np.array([0.01 * np.linalg.norm(camera.position) for camera in cameras])
    total, count = 0.0, 0
    for _, _, own, seen in covisible_colours(surface_depths(surface, cameras), colours, cameras, interior,
                                             lambda view: neighbours(cameras, view, close_angle_deg), tolerances,
                                             stride):
        matchable = np.abs(seen).max(axis=1) < UNMATCHABLE
        total += float(((seen[matchable] - own[matchable]) ** 2).sum())
        count += int(matchable.sum())
    return total / max(count, 1)

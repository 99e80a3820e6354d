"""Robust reconstruction: camera refinement from silhouettes, and stereo that never does
worse than the hull."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from recon.calibration import refine_cameras
from recon.camera import PinholeCamera
from recon.device import current_device, on_device, resolve_device
from recon.geometry import VoxelField, extract_surface, restore_unexplained, sample_views, silhouette_field
from recon.reconstruct import ReconstructionOptions, reconstruct
from recon.render import MeshRenderer
from stages.reconstruct import to_pinhole
from zero123pp import Camera, view_cameras


def bumpy_shape() -> trimesh.Trimesh:
    """An asymmetric object with a limb and a horn: outlines that pin down every view."""
    body = trimesh.creation.capsule(height=0.8, radius=0.3, count=[24, 24])
    body.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 0, 1]))
    leg = trimesh.creation.cylinder(radius=0.08, height=0.6, sections=16)
    leg.apply_translation([0.3, -0.4, 0.1])
    horn = trimesh.creation.cone(radius=0.07, height=0.45, sections=16)
    horn.apply_transform(trimesh.transformations.rotation_matrix(-0.6, [0, 0, 1]))
    horn.apply_translation([-0.35, 0.2, -0.1])
    return trimesh.util.concatenate([body, leg, horn])


def gauge_free_error_px(cameras: list[PinholeCamera], truth: list[PinholeCamera], points: np.ndarray) -> float:
    """Mean reprojection error of ``points`` after taking out the rig's common rotation and
    scale, which silhouettes cannot tell (the whole scene turned or scaled)."""
    turn = Rotation.from_rotvec(np.mean([
        Rotation.from_matrix(t.camera_to_world[:3, :3] @ c.camera_to_world[:3, :3].T).as_rotvec()
        for c, t in zip(cameras, truth)], axis=0)).as_matrix()
    scale = np.exp(np.mean([np.log(np.linalg.norm(t.position) / np.linalg.norm(c.position))
                            for c, t in zip(cameras, truth)]))
    errors = []
    for camera, true in zip(cameras, truth):
        moved = camera.camera_to_world.copy()
        moved[:3, :3], moved[:3, 3] = turn @ moved[:3, :3], scale * turn @ moved[:3, 3]
        aligned = PinholeCamera(moved, camera.intrinsics, camera.width, camera.height)
        errors.append(np.linalg.norm(aligned.project(points)[0] - true.project(points)[0], axis=1).mean())
    return float(np.mean(errors))


def test_refinement_recovers_a_known_pose_error():
    shape = bumpy_shape()
    rng = np.random.default_rng(3)
    nominal, truth = [], []
    for camera in view_cameras("v1.2", 320):
        nominal.append(to_pinhole(camera))
        truth.append(to_pinhole(Camera(camera.azimuth_deg + rng.uniform(-1.5, 1.5),
                                       camera.elevation_deg + rng.uniform(-1.5, 1.5), camera.fov_deg,
                                       camera.distance * (1 + rng.uniform(-0.03, 0.03)), 320, 320)))
    renderer = MeshRenderer(shape)
    masks = [renderer.render(camera).mask for camera in truth]

    refined, report = refine_cameras(masks, nominal)

    points = shape.sample(2000, seed=0)
    before, after = gauge_free_error_px(nominal, truth, points), gauge_free_error_px(refined, truth, points)
    assert before > 0.8
    assert after < 0.7 * before, (before, after)
    assert report.shortfall_after_px < report.shortfall_before_px
    assert len(report.corrections) == 6 and all(abs(a) < 3.0 for c in report.corrections for a in c.rotation_deg)


def test_consistent_views_are_left_alone():
    shape = bumpy_shape()
    cameras = [to_pinhole(camera) for camera in view_cameras("v1.2", 320)]
    renderer = MeshRenderer(shape)
    refined, report = refine_cameras([renderer.render(camera).mask for camera in cameras], cameras)
    points = shape.vertices
    assert gauge_free_error_px(refined, cameras, points) < 0.3
    assert report.shortfall_before_px < 0.05


# ------------------------------------------------------------------ stereo on a patterned ball


def patterned_ball(radius: float = 0.8) -> trimesh.Trimesh:
    """A sphere painted with a high-contrast repeating pattern: the case where a plane
    sweep finds good matches a period away from the surface."""
    ball = trimesh.creation.icosphere(subdivisions=6, radius=radius)
    p = ball.vertices / radius
    checker = (np.sign(np.sin(9 * np.arctan2(p[:, 2], p[:, 0])) * np.sin(9 * np.arcsin(p[:, 1]))) > 0)
    colour = np.where(checker[:, None], [0.95, 0.95, 0.9], [0.08, 0.08, 0.1])
    ball.visual = trimesh.visual.ColorVisuals(ball, vertex_colors=np.round(colour * 255).astype(np.uint8))
    return ball


def test_stereo_never_carves_a_patterned_ball_below_its_hull():
    radius = 0.8
    ball = patterned_ball(radius)
    cameras = [to_pinhole(camera) for camera in view_cameras("v1.2", 320)]
    renderer = MeshRenderer(ball)
    images = []
    for camera in cameras:
        result = renderer.render(camera)
        images.append(np.dstack([result.albedo, result.mask.astype(np.float32)]))
    options = ReconstructionOptions(resolution=96, target_faces=4000, texture_size=256, refine_cameras=False)

    def mean_radial_error(stereo: bool) -> float:
        mesh = reconstruct(images, cameras, replace(options, stereo=stereo))
        return float(np.abs(np.linalg.norm(mesh.vertices, axis=1) - radius).mean())

    hull_error, stereo_error = mean_radial_error(False), mean_radial_error(True)
    assert stereo_error <= 1.15 * hull_error, (hull_error, stereo_error)


def test_a_carved_thin_leg_comes_back_and_an_explained_carve_stays():
    """Stereo that empties a thin leg (matched on the body behind it) leaves silhouette
    pixels whose rays meet nothing; the hull comes back there. A dent whose rays still meet
    the body behind it is what stereo is for, and stays."""
    body = trimesh.creation.box([0.9, 0.45, 0.45])
    leg = trimesh.creation.cylinder(radius=0.035, height=0.5, sections=12)
    leg.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    leg.apply_translation([0.3, -0.45, 0.0])
    shape = trimesh.util.concatenate([body, leg])
    cameras = [to_pinhole(camera) for camera in view_cameras("v1.2", 320)]
    renderer = MeshRenderer(shape)
    masks = [renderer.render(camera).mask for camera in cameras]
    hull = silhouette_field(masks, cameras, resolution=96)
    centres = hull.centres()
    in_leg = centres[..., 1] < -0.25
    in_dent = (centres[..., 2] > 0.1) & (np.abs(centres[..., 0]) < 0.15) & (np.abs(centres[..., 1]) < 0.1)
    assert (hull.values[in_leg] > 0).sum() > 20 and (hull.values[in_dent] > 0).sum() > 20
    carved_values = np.where(in_leg | in_dent, -1.0, hull.values).astype(np.float32)
    carved = VoxelField(carved_values, hull.origin, hull.voxel_size)
    candidates = np.flatnonzero((in_leg | in_dent).reshape(-1))

    restored = restore_unexplained(carved, masks, cameras, candidates, hull.values.reshape(-1)[candidates], min_views=3)

    def unexplained_pixels(field: VoxelField) -> int:
        surface = MeshRenderer(extract_surface(field, process=False))
        return sum(int((mask & ~surface.render(camera).mask).sum()) for mask, camera in zip(masks, cameras))

    before, after = unexplained_pixels(carved), unexplained_pixels(restored)
    assert before > 300 and after < 0.1 * before, (before, after)
    assert not (restored.values[in_dent] > 0).any()


def test_view_sampling_runs_on_the_chosen_device_and_restores_the_callers():
    maps = np.random.default_rng(0).random((6, 32, 32, 3)).astype(np.float32)
    cameras = [to_pinhole(camera) for camera in view_cameras("v1.2", 32)]
    points = np.random.default_rng(1).uniform(-0.5, 0.5, (100, 3))
    on_cpu = sample_views(maps, cameras, points, 0.0)
    with on_device("auto") as device:
        assert device == resolve_device("auto") and current_device() == device
        np.testing.assert_allclose(sample_views(maps, cameras, points, 0.0), on_cpu, atol=1e-5)
    assert current_device() == torch.device("cpu")


def test_the_sweeps_threads_sample_on_the_callers_device():
    """The views are swept on worker threads, which must take the device the caller chose:
    on torch's data-less "meta" device the first sample cannot be copied back, so a sweep
    that ran there raises, and one that fell back to the CPU would not."""
    from recon.stereo import sweep_depths

    ball = patterned_ball()
    cameras = [to_pinhole(camera) for camera in view_cameras("v1.2", 64)]
    renderer = MeshRenderer(ball)
    images = [np.dstack([r.albedo, r.mask.astype(np.float32)]) for r in map(renderer.render, cameras)]
    hull = trimesh.creation.icosphere(subdivisions=3, radius=0.85)
    sweep_depths(hull, images, cameras, samples=8)  # runs on the CPU
    with on_device("meta"), pytest.raises(NotImplementedError):
        sweep_depths(hull, images, cameras, samples=8)


# ------------------------------------------------------------------ exposure before stereo


def test_views_exposed_differently_are_compensated_before_stereo():
    """Per-view gains of up to 8 % (generated views differ so) are recovered (to a third of
    their spread on this grid), and the full sweep already sees the compensated views: its
    surface's colours disagree between views about as little as under one exposure."""
    shape = bumpy_shape()
    p = shape.vertices
    colour = 0.5 + 0.35 * np.stack([np.sin(7 * p[:, 0] + 2 * p[:, 1]), np.sin(5 * p[:, 1] - 3 * p[:, 2]),
                                    np.sin(6 * p[:, 2] + 4 * p[:, 0])], axis=1)
    shape.visual = trimesh.visual.ColorVisuals(shape, vertex_colors=np.round(colour * 255).astype(np.uint8))
    cameras = [to_pinhole(camera) for camera in view_cameras("v1.2", 320)]
    renderer = MeshRenderer(shape)
    gains = 1 + np.random.default_rng(5).uniform(-0.08, 0.08, (6, 3))
    gains /= np.exp(np.log(gains).mean(axis=0))  # only the views' differences can be told
    options = ReconstructionOptions(resolution=80, target_faces=6000, texture_size=256, refine_cameras=False)

    def details(view_gains: np.ndarray) -> dict:
        images = []
        for camera, gain in zip(cameras, view_gains):
            result = renderer.render(camera)
            images.append(np.dstack([np.clip(result.albedo * gain, 0, 1), result.mask.astype(np.float32)]))
        return reconstruct(images, cameras, options).details

    exposed = details(gains)
    error = np.abs(np.log(np.array(exposed["exposure_gains"]) / gains)).mean()
    assert error < np.abs(np.log(gains)).mean() / 3, exposed["exposure_gains"]
    even = details(np.ones((6, 3)))
    assert exposed["stereo"]["fused_inconsistency"] < 1.5 * even["stereo"]["fused_inconsistency"], (exposed, even)


def test_fusion_is_not_pulled_inside_a_tight_hull_by_its_noise():
    """Where the hull lies on the surface (a sphere's own signed distance here), bounding
    the fused depths by it exactly would drop every vote that errs outward and keep those
    that err inward: the surface would sit inside the object. The half-voxel slack keeps
    the noisy depths' surface centred on the truth."""
    from recon.stereo import DepthMap, fuse_depth_maps

    radius, voxel = 0.8, 0.025
    axis = np.arange(-1.0, 1.0 + voxel / 2, voxel, dtype=np.float32)
    centres = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    hull = VoxelField(((radius - np.linalg.norm(centres, axis=-1)) / voxel).astype(np.float32),
                      np.full(3, -1.0), voxel)
    rng = np.random.default_rng(0)
    depth_maps = []
    for camera in (to_pinhole(c) for c in view_cameras("v1.2", 160)):
        origins, directions = camera.rays()
        along = -(origins * directions).sum(-1)  # nearest approach of each ray to the centre
        miss = np.linalg.norm(origins + directions * along[..., None], axis=-1)
        distance = along - np.sqrt(np.maximum(radius**2 - miss**2, 0.0))
        distance = np.where(miss < radius, distance + rng.normal(0.0, 0.4 * voxel, distance.shape), np.nan)
        depth_maps.append(DepthMap(distance.astype(np.float32), camera, distance.astype(np.float32)))

    def mean_radial_error(slack: float) -> float:
        fused = fuse_depth_maps(hull, depth_maps, hull_slack_voxels=slack)
        return float((np.linalg.norm(extract_surface(fused).vertices, axis=1) - radius).mean())

    assert mean_radial_error(0.0) < -0.07 * voxel  # the exact bound's bias (-0.10 measured)
    assert abs(mean_radial_error(0.5)) < 0.03 * voxel  # (-0.002 measured)

"""Per-view camera refinement from silhouettes: generated views are never posed exactly.

A multi-view diffusion model draws each view as if from its nominal camera, but every view
is off by a little: a degree or two of rotation, a few per cent of distance. Left alone,
each such error makes one view's silhouette carve away what the others show, and the hull,
the stereo and the bake all inherit it.

The views themselves say how each camera is off. With correct cameras, every foreground
pixel's ray passes through the object, and the object lies inside every other view's
silhouette cone: somewhere along the ray, all other views see foreground (the silhouettes
are *coherent*, after Hernandez, Schmitt and Cipolla, 2007). A mis-posed view has rays that
miss the others' cones near its outline, and its own cone cuts away rays of the others. So
each view gets a small correction, a rotation about the point the cameras look at and a
scale of its distance, chosen by gradient descent so that the outline rays of every view
find a point inside all the other silhouettes. A weak prior keeps the corrections small;
it also fixes what silhouettes cannot tell (a rotation or scale of the whole rig).

Written by hand: no library refines cameras against silhouettes alone; the silhouettes'
signed distances are sampled with torch's ``grid_sample`` so the objective has gradients.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage

from recon.camera import PinholeCamera
from recon.device import current_device
from recon.geometry import covisible_colours, signed_distance, surface_depths, working_volume

# The prior's weight against the outline shortfall (pixels). Silhouettes of a smooth blob
# (a duck) or a block (the fandisk) leave directions along which many poses explain them
# equally well; at 0.01 the optimiser drifted along them (the duck's relative rotation
# error rose from 1.91 to 3.25 degrees). On the realistic views of the thirteen shared
# meshes (bench/camera_refinement.py) the mean relative rotation error is 1.65 degrees with
# the nominal cameras, 1.66 after refinement at 0.01 and 1.52 at 0.05.
PRIOR_WEIGHT = 0.05
NOISE_ROTATION_DEG = 0.4  # a corner of the unit sphere moves about a pixel at the v1.2 cameras' distance
NOISE_DISTANCE_CHANGE = 0.005


@dataclass(frozen=True)
class CameraCorrection:
    """How one view's camera was moved: a rotation about the look-at point (``rotation_deg``
    about world X, Y, Z) and a factor on its distance."""

    rotation_deg: tuple[float, float, float]
    distance_scale: float

    def to_dict(self) -> dict:
        return {"rotation_deg": [round(a, 3) for a in self.rotation_deg],
                "distance_scale": round(self.distance_scale, 5)}


@dataclass(frozen=True)
class CalibrationReport:
    """The corrections found, whether they were ``applied`` (not when all lie within the
    outlines' noise), and the outline rays left unexplained before and after (the mean
    shortfall in pixels, 0 when every outline ray finds the others' hull)."""

    corrections: list[CameraCorrection]
    shortfall_before_px: float
    shortfall_after_px: float
    applied: bool = True

    def to_dict(self) -> dict:
        return {"applied": self.applied, "corrections": [c.to_dict() for c in self.corrections],
                "shortfall_before_px": round(self.shortfall_before_px, 4),
                "shortfall_after_px": round(self.shortfall_after_px, 4)}


def refine_cameras(
    masks: list[np.ndarray],
    cameras: list[PinholeCamera],
    band_px: float = 8.0,
    rays_per_view: int = 384,
    rounds: int = 3,
    steps_per_round: int = 30,
    max_rotation_deg: float = 3.0,
    max_distance_change: float = 0.06,
) -> tuple[list[PinholeCamera], CalibrationReport]:
    """Cameras corrected so the views' silhouettes agree (see the module's docstring).

    ``band_px``: the outline band whose rays are checked (pixels inside the silhouette, at
    most that far from its edge: deeper rays cross the others' cones whatever the error).
    ``max_rotation_deg`` and ``max_distance_change`` set the prior's scale: corrections of
    that size cost as much as one pixel of shortfall on every outline ray. Each round finds
    the deepest point along every ray under the current cameras, then moves the cameras
    for ``steps_per_round`` steps with those points riding on their rays. Runs on the
    device ``recon.device.on_device`` chose.
    """
    with _few_threads():
        return _refine(_CoherenceProblem(masks, cameras, band_px, rays_per_view, current_device()), cameras,
                       rounds, steps_per_round, float(np.radians(max_rotation_deg)), max_distance_change)


@contextlib.contextmanager
def _few_threads() -> Iterator[None]:
    """Run torch on one thread: the problem is a few thousand points, and on a busy CPU
    torch's thread pool waiting for its workers costs ten times the work itself (measured
    with a load of 6 on 2 cores: 16 s against 1.5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _refine(problem: "_CoherenceProblem", cameras: list[PinholeCamera], rounds: int, steps_per_round: int,
            rotation_scale: float, max_distance_change: float) -> tuple[list[PinholeCamera], CalibrationReport]:
    # per view: a rotation vector in units of rotation_scale, a log distance factor in units
    # of max_distance_change
    parameters = torch.zeros(len(cameras), 4, dtype=torch.float32, device=problem.device, requires_grad=True)

    def corrections() -> tuple[torch.Tensor, torch.Tensor]:
        return parameters[:, :3] * rotation_scale, parameters[:, 3] * max_distance_change

    adam = _Adam(parameters, learning_rate=0.05)
    before = None
    for _ in range(rounds):
        with torch.no_grad():
            problem.find_deepest(*corrections())
            if before is None:
                before = float(problem.shortfall(*corrections()))
        for _ in range(steps_per_round):
            prior = PRIOR_WEIGHT * (parameters**2).sum(dim=1).mean()
            loss = problem.shortfall(*corrections()) + prior
            (gradient,) = torch.autograd.grad(loss, parameters)
            adam.step(gradient)
    with torch.no_grad():
        problem.find_deepest(*corrections())
        after = float(problem.shortfall(*corrections()))
        rotations, log_scales = (value.double().cpu().numpy() for value in corrections())
    scales = np.exp(log_scales)
    # Corrections within the outlines' own noise are the optimiser chasing pixels of thin
    # parts (an ant's legs, one or two pixels wide, were shaved by 0.3 degree turns on
    # perfectly posed views): the views are consistent, and the nominal cameras stand.
    applied = (np.degrees(np.linalg.norm(rotations, axis=1)).max() > NOISE_ROTATION_DEG
               or np.abs(scales - 1).max() > NOISE_DISTANCE_CHANGE)
    refined = ([_corrected(camera, omega, scale) for camera, omega, scale in zip(cameras, rotations, scales)]
               if applied else list(cameras))
    report = CalibrationReport([CameraCorrection(tuple(float(a) for a in np.degrees(omega)), float(scale))
                                for omega, scale in zip(rotations, scales)], before, after, applied)
    return refined, report


class _Adam:
    """Adam (Kingma and Ba, 2015) on one tensor. Written out because ``torch.optim``
    imports torch's compiler stack on first use, 1.4 s of every CLI run for 24 numbers."""

    def __init__(self, parameters: torch.Tensor, learning_rate: float, betas: tuple[float, float] = (0.9, 0.999),
                 epsilon: float = 1e-8) -> None:
        self.parameters, self.learning_rate, self.betas, self.epsilon = parameters, learning_rate, betas, epsilon
        self.first = torch.zeros_like(parameters)
        self.second = torch.zeros_like(parameters)
        self.steps = 0

    @torch.no_grad()
    def step(self, gradient: torch.Tensor) -> None:
        self.steps += 1
        (beta1, beta2), t = self.betas, self.steps
        self.first.mul_(beta1).add_(gradient, alpha=1 - beta1)
        self.second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        denominator = (self.second / (1 - beta2**t)).sqrt_().add_(self.epsilon)
        self.parameters.sub_(self.learning_rate * (self.first / (1 - beta1**t)) / denominator)


def _corrected(camera: PinholeCamera, omega: np.ndarray, scale: float) -> PinholeCamera:
    """``camera`` turned by the rotation vector ``omega`` about the origin and moved to
    ``scale`` times its distance from it."""
    turn = _rotation_matrix(torch.from_numpy(omega).double()[None])[0].numpy()
    camera_to_world = camera.camera_to_world.copy()
    camera_to_world[:3, :3] = turn @ camera_to_world[:3, :3]
    camera_to_world[:3, 3] = scale * (turn @ camera_to_world[:3, 3])
    return PinholeCamera(camera_to_world, camera.intrinsics, camera.width, camera.height)


def _rotation_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) of rotation vectors (N, 3), differentiable at zero."""
    zero = torch.zeros_like(omega[:, 0])
    skew = torch.stack([
        torch.stack([zero, -omega[:, 2], omega[:, 1]], dim=-1),
        torch.stack([omega[:, 2], zero, -omega[:, 0]], dim=-1),
        torch.stack([-omega[:, 1], omega[:, 0], zero], dim=-1),
    ], dim=1)
    return torch.linalg.matrix_exp(skew)


class _CoherenceProblem:
    """The outline rays of every view, the deepest point found along each, and how far
    those points fall outside the other views' silhouette cones under corrected cameras."""

    def __init__(self, masks: list[np.ndarray], cameras: list[PinholeCamera], band_px: float,
                 rays_per_view: int, device: torch.device, search_samples: int = 48) -> None:
        self.device = device
        as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
        distances = np.stack([signed_distance(mask) for mask in masks])
        self.distances = torch.from_numpy(distances)[:, None].to(device)  # V, 1, H, W
        self.rotations = as_tensor(np.stack([c.camera_to_world[:3, :3] for c in cameras]))
        self.positions = as_tensor(np.stack([c.position for c in cameras]))
        self.intrinsics = as_tensor(np.stack([c.intrinsics for c in cameras]))
        self.sizes = as_tensor([[c.width, c.height] for c in cameras])
        directions, owners = [], []
        for index, (camera, distance) in enumerate(zip(cameras, distances)):
            rows, columns = np.nonzero((distance > 0) & (distance <= band_px))
            keep = np.linspace(0, len(rows) - 1, min(rays_per_view, len(rows))).astype(np.int64)
            k = camera.intrinsics
            directions.append(np.stack([(columns[keep] + 0.5 - k[0, 2]) / k[0, 0],
                                        -(rows[keep] + 0.5 - k[1, 2]) / k[1, 1], -np.ones(len(keep))], axis=-1))
            owners.append(np.full(len(keep), index))
        self.camera_directions = as_tensor(np.concatenate(directions))  # in camera axes
        self.owner = torch.tensor(np.concatenate(owners), device=device)
        self.others = torch.arange(len(cameras), device=device)[:, None] != self.owner[None]  # V, R
        _, radius = working_volume(cameras)
        self.search = torch.linspace(-1.0, 1.0, search_samples, device=device)
        self.radius = self.reach = radius
        self.depths = torch.linalg.norm(self.positions[self.owner], dim=-1)  # the look-at point

    def find_deepest(self, omega: torch.Tensor, log_scale: torch.Tensor) -> None:
        """Move each ray's point to the sample along it that lies deepest inside the other
        views' silhouettes: across the whole working volume at first, then within a tenth
        of it around the last point. Each search samples its stretch coarsely, then again
        between the best sample's neighbours (as fine as one dense pass, at a tenth of it)."""
        reach = self.reach
        for _ in range(2):
            depths = self.depths[:, None] + reach * self.search[None]
            scores = self._scores(omega, log_scale, depths)
            self.depths = depths[torch.arange(len(depths), device=self.device), scores.argmax(dim=1)]
            reach *= float(self.search[1] - self.search[0])
        self.reach = 0.1 * self.radius

    def shortfall(self, omega: torch.Tensor, log_scale: torch.Tensor, softness_px: float = 0.5) -> torch.Tensor:
        """Mean over outline rays of how far (pixels, softly) each ray's point lies outside
        the nearest other silhouette: 0 when every ray is explained."""
        scores = self._scores(omega, log_scale, self.depths[:, None])[:, 0]
        return (softness_px * F.softplus(-scores / softness_px)).mean()

    def _scores(self, omega: torch.Tensor, log_scale: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        """For rays x samples along them (R, S distances from each ray's camera): the
        smallest signed distance (pixels) over the other views' silhouettes."""
        turn = _rotation_matrix(omega)
        rotations = turn @ self.rotations
        positions = torch.exp(log_scale)[:, None] * (turn @ self.positions[..., None])[..., 0]
        directions = (rotations[self.owner] @ self.camera_directions[..., None])[..., 0]
        directions = directions / torch.linalg.norm(directions, dim=-1, keepdim=True)
        points = positions[self.owner][:, None] + directions[:, None] * depths[..., None]  # R, S, 3
        # every point into every view: camera axes, then pixels, then grid_sample's [-1, 1]
        local = torch.einsum("vji,vnj->vni", rotations, points.reshape(1, -1, 3) - positions[:, None])
        depth = (-local[..., 2]).clamp_min(1e-6)
        k = self.intrinsics
        u = k[:, None, 0, 2] + k[:, None, 0, 0] * local[..., 0] / depth
        v = k[:, None, 1, 2] - k[:, None, 1, 1] * local[..., 1] / depth
        grid = torch.stack([2 * u / self.sizes[:, None, 0] - 1, 2 * v / self.sizes[:, None, 1] - 1], dim=-1)
        sampled = F.grid_sample(self.distances, grid[:, None], mode="bilinear", padding_mode="border",
                                align_corners=False)[:, 0, 0].reshape(len(self.distances), *depths.shape)
        sampled = torch.where(self.others[..., None], sampled, torch.tensor(torch.inf, device=self.device))
        return sampled.min(dim=0).values


def exposure_gains(
    surface: trimesh.Trimesh, images: list[np.ndarray], cameras: list[PinholeCamera], stride: int = 3,
    depth_tolerance: float = 0.01, blur_px: float = 1.0,
) -> np.ndarray:
    """Per-view, per-channel gains (V, 3) that bring the views to one exposure and tint.

    Generated views differ in exposure and white balance by a few per cent, which stereo
    reads as a colour mismatch and the bake as seams between views. Points of ``surface``
    (the hull will do: most of it lies on or near the object) seen by two views give the
    ratio of their colours; the median log ratio of each pair, solved for one log gain per
    view (their mean fixed at zero, so the overall exposure is the views' average), gives
    the gains. Dividing a view's colours by its gains compensates it.
    """
    depths = surface_depths(surface, cameras)
    colours = np.stack([ndimage.gaussian_filter(image[..., :3], (blur_px, blur_px, 0)) for image in images])
    count = len(cameras)
    rows, targets = [], []
    inside = [ndimage.binary_erosion(depth > 0, iterations=2) for depth in depths]
    for i, j, own, seen in covisible_colours(depths, colours, cameras, inside, lambda i: list(range(i + 1, count)),
                                             np.full(count, depth_tolerance), stride):
        ratios = np.log(np.maximum(own, 0.02) / np.maximum(seen, 0.02))
        # points the two views see as different colours are misregistered (an edge in
        # the texture, the hull off the surface), not differently exposed
        ratios = ratios[np.abs(ratios).max(axis=1) < 0.25]
        if len(ratios) < 50:
            continue
        row = np.zeros(count)
        row[i], row[j] = 1.0, -1.0
        rows.append(row)
        targets.append(_mode(ratios))
    rows.append(np.ones(count))  # the mean log gain is zero
    targets.append(np.zeros(3))
    log_gains, *_ = np.linalg.lstsq(np.stack(rows), np.stack(targets), rcond=None)
    return np.exp(log_gains)


def _mode(ratios: np.ndarray, windows: tuple[float, ...] = (0.1, 0.05, 0.025)) -> np.ndarray:
    """The most common log ratio per channel: the median of the ratios near the previous
    estimate, in shrinking windows. Points the two views see on the same surface share
    one ratio, the exposure difference; misregistered ones (the hull off the surface in a
    concavity) spread widely and, where the texture is not symmetric, would bias a plain
    median by several per cent (6 % in blue on a mug whose hull fills its cup)."""
    estimate = np.median(ratios, axis=0)
    for window in windows:
        near = np.abs(ratios - estimate) < window
        estimate = np.array([np.median(ratios[near[:, channel], channel]) if near[:, channel].any()
                             else estimate[channel] for channel in range(ratios.shape[1])])
    return estimate

"""The lighting the views were rendered with, so the bake can divide it out (de-lighting).

Generated views show an object lit: the same surface is brighter where it faces the light.
Baked as it is, that shading sticks to the texture and an engine lights it a second time.
Lambertian shading under lighting fixed in the world (the same in every view) is a smooth
function of the surface normal alone, which second-order spherical harmonics (nine
coefficients) capture closely (Ramamoorthi and Hanrahan, 2001). Texture is the other way
round: a function of position on the surface that changes sharply and has nothing to do
with the normal. So, with the albedo taken as constant, the luminance of many surface points
fitted as a function of their normals finds the shading; texture is noise around that fit
that averages out, and what stands out from it (decals, highlights, misregistered points)
is down-weighted by iteratively reweighted least squares.

The fit is of the logarithm of the luminance: shading multiplies the albedo, so in logs the
texture adds to it, whatever its contrast (a dark globe's oceans and bright continents differ
twentyfold, and a fit of the luminance itself follows the dark majority below zero); the
fitted shading is positive by construction; and the logarithm of linear light is that of
the sRGB values times about 2.4, so the fit hardly depends on which of the two the views'
renderer shaded in.

Texture that follows the normal (a dark sole, a painted top) fits as shading too. White
light shades the three colour channels alike and such texture rarely does, so the channels'
own fits tell the two apart: what they share beyond what their disagreement explains is
shading. And white light changes brightness, not hue: where the brightness that follows the
normal comes with a change of hue (a body shading from white to green), it is texture, so
the part of the shading that the channels' differences explain is not counted as light.
Where what is left is not clearly more than texture, nothing is divided out: flat-lit views
(and unshaded textures) stay as they are.

Achromatic texture (black and white squares, stripes, grey stone) has no hue to give it
away, and nine smooth functions fitted to a high-contrast pattern pick up some of it by
chance: under flat light a checkered ball's fit varied by 0.30 in logs and was divided out.
Light explains much of what the views show: on shaded views of the thirteen benchmark
meshes the fit explains 40 to 88 % of the log luminance's variance; on a checkered ball,
striped can or the globe, lit or not, 1 to 21 %. Under a third, the fit is taken for
texture and nothing is divided out.

Points come from the co-visibility walk (``recon.geometry.covisible_colours``): a point two
views see in the same colour is where the surface is right (its normal can be trusted) and
shows no view-dependent highlight. The shading's scale is unknowable (a bright object under
dim light looks like a dim one under bright light), so it is set by the convention renders
are exposed by: a surface squarely facing the light shows its albedo. The brightest shading
the views show is 1; de-lighting brightens what lies in shade to match, and never darkens
what the views showed. (Normalising to the surface's mean shading instead keeps the
texture's mean brightness but leaves every colour darker than its albedo by the mean
shading: on the shaded benchmark views that cost the de-lit texture all its gain.)

Written by hand: no library fits spherical-harmonic lighting to a mesh and its views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy import ndimage

from recon.camera import PinholeCamera
from recon.geometry import covisible_colours
from recon.render import MeshRenderer

LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709, of linear RGB
DARKEST = 1e-3  # linear light: colours are floored here before their logarithm
DIM_CHANNEL = 0.02  # linear light (about 15 % in sRGB): a channel whose median is under it is not read for hue
# Renders and generated views light every side of an object, with fill light or an
# environment, so no part of it sits at under a tenth of the light of its best-lit side (in
# linear light; about a third in sRGB). A fit that says otherwise took texture for light
# (a globe's white poles as light from above and below), and dividing by it would blow the
# texture in the "shade" out to white. The shading is floored here.
DARKEST_SHADING = 0.1
MIN_POINTS = 200
MIN_EXPLAINED = 0.3  # share of the log luminance's variance the shading must explain (see above)


@dataclass(frozen=True)
class Lighting:
    """Second-order spherical-harmonic shading in the world frame: ``coefficients`` (9,) of
    its natural logarithm in the real basis (``sh_basis``), offset so the brightest shading
    the views show is 1, and clamped below to the darkest they show (``low``, a log; never
    under ``DARKEST_SHADING``), so normals no view saw well are not extrapolated to.
    ``variation`` is the log shading's spread over the surface (area-weighted standard
    deviation; 0.1 is about 10 %) with the share of texture that follows the normal taken
    out, ``noise`` that share (both from the colour channels' own fits, see
    ``estimate_lighting``); ``achromatic`` the spread of the
    luminance fit that no change of hue explains; ``explained`` the share of the log
    luminance's variance over the points that the fit explains; ``applied`` says whether
    the bake divides it out."""

    coefficients: np.ndarray
    low: float
    variation: float
    noise: float
    achromatic: float
    explained: float
    applied: bool

    def shading(self, normals: np.ndarray) -> np.ndarray:
        """The shading (N,) at unit world ``normals`` (N, 3), at most 1."""
        return np.exp(np.clip(sh_basis(normals) @ self.coefficients, self.low, 0.0))

    def remove(self, colour: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """sRGB ``colour`` (N, 3) of surface points with ``normals`` (N, 3), the shading
        divided out in linear light: the albedo, up to the lighting's unknown scale."""
        linear = srgb_to_linear(colour) / self.shading(normals)[:, None]
        return linear_to_srgb(linear).astype(np.float32)

    def to_dict(self) -> dict:
        return {"applied": self.applied, "log_sh_coefficients": np.round(self.coefficients, 5).tolist(),
                "darkest_shading": round(float(np.exp(self.low)), 4),
                "variation": round(self.variation, 5), "noise": round(self.noise, 5),
                "achromatic": round(self.achromatic, 5), "explained": round(self.explained, 4)}


NEUTRAL = Lighting(np.zeros(9), 0.0, 0.0, 0.0, 0.0, 0.0, False)  # shading 1 everywhere


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """The nine real spherical harmonics of bands 0 to 2 at unit vectors (N, 3), (N, 9)."""
    x, y, z = np.asarray(normals, np.float64).T
    return np.stack([
        np.full_like(x, 0.282095),
        0.488603 * y, 0.488603 * z, 0.488603 * x,
        1.092548 * x * y, 1.092548 * y * z, 0.315392 * (3 * z * z - 1), 1.092548 * x * z, 0.546274 * (x * x - y * y),
    ], axis=1)


def srgb_to_linear(colour: np.ndarray) -> np.ndarray:
    colour = np.clip(colour, 0.0, 1.0)
    return np.where(colour <= 0.04045, colour / 12.92, ((colour + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def estimate_lighting(
    surface: trimesh.Trimesh, images: list[np.ndarray], cameras: list[PinholeCamera], stride: int = 2,
    depth_tolerance: float = 0.01, agreement: float = 0.1, significance: float = 0.5,
    min_variation: float = 0.05, min_achromatic: float = 0.1, min_explained: float = MIN_EXPLAINED,
) -> Lighting:
    """Fit the shading of ``surface`` (the dense reconstruction) seen in RGBA ``images``.

    Points on a ``stride`` lattice of each view that another view sees within
    ``depth_tolerance`` and in a colour within ``agreement`` (log ratio) give one colour and
    one normal each. The luminance's fit is applied when the shading's estimated spread
    (``variation``, texture that follows the normal taken out, see below) exceeds both
    ``significance`` times the texture's share in it (``noise``), below which the estimate,
    a difference of two variances, is within its own error, and ``min_variation``: a shading
    that varies less is invisible, and dividing it out would only rescale the texture; and
    when the fit's ``achromatic`` part exceeds ``min_achromatic``. (On the benchmark's
    flat-lit views of a colour-graded bull and ant, which the first test let through, that
    part was 0.07 and 0.04; on shaded views of all thirteen meshes 0.18 or more.) And the
    fit must explain at least ``min_explained`` of the log luminance's variance (the module
    docstring: achromatic texture).
    """
    renderer = MeshRenderer(surface)
    renders = [renderer.render(camera) for camera in cameras]
    depths = np.stack([render.depth for render in renders])
    maps = np.stack([np.dstack([srgb_to_linear(image[..., :3]), render.normals])
                     for image, render in zip(images, renders)])
    inside = [ndimage.binary_erosion(depth > 0, iterations=2) for depth in depths]
    count = len(cameras)
    colours, normals = [], []
    for _, _, own, seen in covisible_colours(depths, maps, cameras, inside, lambda i: list(range(i + 1, count)),
                                             np.full(count, depth_tolerance), stride):
        own_colour, seen_colour = np.maximum(own[:, :3], DARKEST), np.maximum(seen[:, :3], DARKEST)
        agree = np.abs(np.log(own_colour / seen_colour)).max(axis=1) < agreement
        colours.append(((own_colour + seen_colour) / 2)[agree])
        normals.append(own[agree, 3:])
    if sum(len(c) for c in colours) < MIN_POINTS:  # too little seen twice to tell shading from texture
        return NEUTRAL
    colour, normal = np.concatenate(colours), np.concatenate(normals)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    basis = sh_basis(normal)
    face_basis = sh_basis(surface.face_normals)
    areas = surface.area_faces / surface.area

    def centred(c: np.ndarray) -> np.ndarray:
        """The log shading of ``c`` on the faces, less its surface mean (the albedo's share)."""
        shading = face_basis @ c
        return shading - areas @ shading

    log_luminance = np.log(colour @ LUMINANCE)
    coefficients, weights = fit_shading(basis, log_luminance)
    explained = float(np.var(basis @ coefficients) / max(np.var(log_luminance), 1e-12))
    # Each channel's fit holds the shading, the same in all three under white light, plus
    # its own texture that follows the normal. Their mean over the channels holds the
    # shading and a third of the textures' (unrelated between channels); their spread
    # about that mean, two thirds of the textures' and no shading: so the shading's
    # variance is the mean's less half the spread's.
    channels = np.stack([centred(fit_shading(basis, np.log(colour[:, channel]), weights)[0]) for channel in range(3)])
    common = channels.mean(axis=0)
    noise = float(np.sqrt(areas @ ((channels - common) ** 2).mean(axis=0) / 2))
    variation = float(np.sqrt(max(areas @ common**2 - noise**2, 0.0)))
    # The common fit's share that the hue fits (differences of channels) explain, by
    # area-weighted least squares, is texture whose brightness and hue change together.
    # A channel the colour hardly has (blue in yellow) is floored noise, which follows no
    # shading: its difference to the others would "explain" the shading itself, so only
    # channels with some light in them take part.
    lit = channels[np.median(colour, axis=0) > DIM_CHANNEL]
    lit_common = lit.mean(axis=0) if len(lit) else common
    by_hue = 0.0  # with one channel lit, or none (a dark object), there is no hue to explain anything
    if len(lit) > 1:
        hue = (lit[1:] - lit[0]).T
        root = np.sqrt(areas)
        by_hue = hue @ np.linalg.lstsq(hue * root[:, None], lit_common * root, rcond=None)[0]
    achromatic = float(np.sqrt(areas @ (lit_common - by_hue) ** 2))
    seen = (basis @ coefficients)[weights > 0]
    coefficients = coefficients - np.eye(9)[0] * seen.max() / 0.282095  # the brightest seen is 1
    low = max(float(seen.min() - seen.max()), float(np.log(DARKEST_SHADING)))
    applied = (variation > max(significance * noise, min_variation) and achromatic > min_achromatic
               and explained >= min_explained)
    return Lighting(coefficients, low, variation, noise, achromatic, explained, applied)


def fit_shading(basis: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None, iterations: int = 8,
                tuning: float = 4.685, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """SH coefficients (9,) with ``basis @ c`` fitting ``values`` (log colours: the log
    albedo, taken as constant, plus the log shading) by iteratively reweighted least squares
    (Tukey's biweight at ``tuning`` robust standard deviations), and the final weights; given
    ``weights``, by one least-squares solve with them. ``ridge`` keeps the fit defined where
    the normals cover few directions (a box shows six)."""
    regulariser = ridge * len(values) * np.diag([0.0] + [1.0] * 8)
    fixed = weights is not None
    weights = np.ones(len(values)) if weights is None else weights
    for _ in range(1 if fixed else iterations):
        weighted = basis * weights[:, None]
        coefficients = np.linalg.solve(weighted.T @ basis + regulariser, weighted.T @ values)
        if fixed:
            break
        residual = values - basis @ coefficients
        scale = max(1.4826 * float(np.median(np.abs(residual - np.median(residual)))), 1e-6)
        u = residual / (tuning * scale)
        weights = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
        if not weights.any():
            # Every point lies off the fit: no one colour dominates. A two-tone pattern can
            # start the fit between its tones and reweighting chase the few points near it
            # until none is left (a singular solve). The plain least-squares fit stands.
            return fit_shading(basis, values, np.ones(len(values)), ridge=ridge)
    return coefficients, weights

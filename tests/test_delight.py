"""De-lighting: the views' shading estimated from the surface and divided out of the bake."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from flows.cli import build_parser
from flows.requests import AssetOptions
from recon.lighting import estimate_lighting, fit_shading, linear_to_srgb, sh_basis, srgb_to_linear
from recon.reconstruct import ReconstructionOptions, reconstruct
from recon.render import MeshRenderer
from recon.texture import TexturedMesh
from stages.reconstruct import to_pinhole
from zero123pp import Camera, view_cameras

FAST = ReconstructionOptions(resolution=64, target_faces=3000, texture_size=256)
HELD_OUT = [(0.0, 0.0), (180.0, 0.0), (90.0, 45.0), (300.0, -30.0)]
SUN = np.array([0.4, 0.8, 0.45]) / np.linalg.norm([0.4, 0.8, 0.45])


def directional(normals: np.ndarray) -> np.ndarray:
    """Linear irradiance of an ambient term and one sun, brightest (1) facing the sun."""
    return 0.3 + 0.7 * np.clip(normals @ SUN, 0.0, None)


def first_bands(normals: np.ndarray) -> np.ndarray:
    """A shading that second-order spherical harmonics represent exactly."""
    return sh_basis(normals) @ np.array([3.2, 0.5, 0.25, -0.3, 0.1, 0.0, 0.08, -0.1, 0.05])


def two_tone_sphere(one: list[float], other: list[float]) -> trimesh.Trimesh:
    """A sphere painted with two colours in a pattern that has nothing to do with its normals."""
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    p = sphere.vertices
    tile = (np.sin(20 * p[:, 0]) * np.sin(20 * p[:, 1] + 0.5) * np.sin(20 * p[:, 2] + 1.0)) > 0
    colour = np.where(tile[:, None], one, other)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=np.round(colour * 255).astype(np.uint8))
    return sphere


@pytest.fixture(scope="module")
def checkered() -> trimesh.Trimesh:
    return two_tone_sphere([0.85, 0.55, 0.3], [0.3, 0.6, 0.8])


def shaded_views(mesh: trimesh.Trimesh, shading=None, tile: int = 160):
    """The six v1.2 views, RGBA in 0..1: the albedo times ``shading`` of the normal, in linear light."""
    cameras = [to_pinhole(c) for c in view_cameras("v1.2", tile)]
    renderer = MeshRenderer(mesh)
    images = []
    for camera in cameras:
        render = renderer.render(camera)
        colour = render.albedo
        if shading is not None:
            factor = shading(render.normals.reshape(-1, 3)).reshape(render.mask.shape)
            colour = linear_to_srgb(srgb_to_linear(colour) * factor[..., None])
        images.append(np.dstack([np.where(render.mask[..., None], colour, 0.5), render.mask]).astype(np.float32))
    return images, cameras


def held_out_psnr(truth: trimesh.Trimesh, asset: TexturedMesh) -> float:
    """PSNR of the asset's texture, rendered unlit, against the truth's albedo where both show."""
    textured = trimesh.Trimesh(asset.vertices, asset.faces, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=asset.uv, image=asset.texture_image()))
    errors = []
    for azimuth, elevation in HELD_OUT:
        camera = to_pinhole(Camera(azimuth, elevation, 30.0, 4.0, 160, 160))
        a, b = MeshRenderer(truth).render(camera), MeshRenderer(textured).render(camera)
        errors.append(((a.albedo - b.albedo) ** 2)[a.mask & b.mask])
    return float(10 * np.log10(1 / np.concatenate(errors).mean()))


def test_spherical_harmonics_shading_is_recovered_up_to_scale(checkered):
    images, cameras = shaded_views(checkered, first_bands)
    lighting = estimate_lighting(checkered, images, cameras)
    assert lighting.applied
    seen = checkered.vertex_normals[checkered.vertices[:, 1] > -0.2]  # the views look from above
    ratio = lighting.shading(seen) / first_bands(seen)
    assert ratio.std() / ratio.mean() < 0.05  # the same shading but for its unknowable scale
    assert lighting.shading(seen).max() == pytest.approx(1.0, abs=0.01)  # the best-lit surface keeps its colour


def test_delit_base_colour_is_closer_to_the_albedo_than_the_lit_bake(checkered):
    images, cameras = shaded_views(checkered, directional)
    delit = reconstruct(images, cameras, FAST)
    lit = reconstruct(images, cameras, ReconstructionOptions(**{**FAST.__dict__, "delight": False}))
    assert delit.details["lighting"]["applied"] and "lighting" not in lit.details
    assert len(delit.details["lighting"]["log_sh_coefficients"]) == 9
    delit_psnr, lit_psnr = held_out_psnr(checkered, delit), held_out_psnr(checkered, lit)
    assert delit_psnr > lit_psnr + 3, (delit_psnr, lit_psnr)


def test_flat_lit_views_are_left_as_they_are(checkered):
    images, cameras = shaded_views(checkered)
    delit = reconstruct(images, cameras, FAST)
    lit = reconstruct(images, cameras, ReconstructionOptions(**{**FAST.__dict__, "delight": False}))
    lighting = delit.details["lighting"]
    assert not lighting["applied"] and lighting["variation"] < lighting["noise"] + 0.02
    assert np.array_equal(delit.texture, lit.texture)


def test_brightness_that_changes_with_hue_is_texture_not_light():
    """A flat-lit sphere graded from dark green below to white above: its brightness follows
    the normal as light from above would, but white light does not change hue."""
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    height = ((sphere.vertices[:, 1] / 0.5 + 1) / 2)[:, None] ** 1.5
    colour = (1 - height) * np.array([0.1, 0.55, 0.35]) + height * np.array([0.95, 0.95, 0.85])
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=np.round(colour * 255).astype(np.uint8))
    images, cameras = shaded_views(sphere)
    lighting = estimate_lighting(sphere, images, cameras)
    assert lighting.variation > lighting.noise  # the channels' disagreement alone lets it through
    assert lighting.achromatic < 0.05 and not lighting.applied


def test_a_saturated_colour_is_still_delit():
    """Yellow has next to no blue: that channel is floored noise that follows no shading,
    and must not make the shading of the other two look like a change of hue."""
    sphere = two_tone_sphere([0.95, 0.85, 0.03], [0.9, 0.6, 0.02])
    images, cameras = shaded_views(sphere, directional)
    lighting = estimate_lighting(sphere, images, cameras)
    assert lighting.applied and lighting.achromatic > 0.3


def test_the_lit_texture_is_kept_on_request():
    parser = build_parser()
    assert parser.parse_args(["reconstruct", "grid.png", "-o", "asset.glb", "--keep-lighting"]).keep_lighting
    assert not parser.parse_args(["reconstruct", "grid.png", "-o", "asset.glb"]).keep_lighting
    assert AssetOptions(keep_lighting=True).keep_lighting and not AssetOptions().keep_lighting


def test_views_that_share_no_surface_leave_the_colour_alone(checkered):
    images, cameras = shaded_views(checkered, directional)
    lighting = estimate_lighting(checkered, images[:1], cameras[:1])
    assert not lighting.applied and np.allclose(lighting.shading(checkered.vertex_normals), 1.0)


def test_a_dark_object_is_delit_without_any_channel_read_for_hue():
    """Near-black paint leaves every channel under the floor for reading hue (found on
    black-and-white checkered shapes): the fit must still run, with nothing explained by hue."""
    sphere = two_tone_sphere([0.12, 0.1, 0.09], [0.06, 0.07, 0.08])
    images, cameras = shaded_views(sphere, directional)
    lighting = estimate_lighting(sphere, images, cameras)
    assert lighting.applied
    seen = sphere.vertex_normals[sphere.vertices[:, 1] > -0.2]
    ratio = lighting.shading(seen) / directional(seen)
    assert ratio.std() / ratio.mean() < 0.15, ratio.std() / ratio.mean()


def test_achromatic_texture_in_flat_light_is_not_taken_for_light():
    """Unshaded black and white squares: no hue tells them from light, and the shading fit
    picked up 0.6 in logs of them by chance. It explains a few per cent of the luminance's
    variance, far too little for light, so nothing is divided out."""
    sphere = two_tone_sphere([0.92, 0.92, 0.92], [0.08, 0.08, 0.08])
    lighting = estimate_lighting(sphere, *shaded_views(sphere))
    assert lighting.explained < 0.1 and not lighting.applied


def test_the_robust_fit_of_two_tones_falls_back_to_least_squares_rather_than_failing():
    """Two tones, neither a clear majority, start the fit between them; reweighting then
    chased the few points near it until none was left, and the solve was singular (seen on
    a checkered ball). With every weight gone, the plain least-squares fit stands."""
    rng = np.random.default_rng(8)  # a draw on which the reweighting emptied itself
    normals = rng.normal(size=(2000, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    values = np.where(rng.random(2000) < 0.55, -0.2, -5.0)
    coefficients, weights = fit_shading(sh_basis(normals), values)
    assert np.all(weights == 1.0) and np.isfinite(coefficients).all()

"""Grid layout, camera tables and matting of generated views."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zero123pp import join_views, matte_view, read_cameras_json, split_grid, view_cameras, write_cameras_json


def test_grid_is_row_major_three_by_two():
    colours = [(k * 40, 255 - k * 40, 7 * k) for k in range(6)]
    grid = Image.new("RGB", (640, 960))
    for k, colour in enumerate(colours):
        row, col = divmod(k, 2)
        grid.paste(colour, (col * 320, row * 320, (col + 1) * 320, (row + 1) * 320))
    views = split_grid(grid)
    assert [view.getpixel((160, 160)) for view in views] == colours
    assert all(view.size == (320, 320) for view in views)
    assert list(join_views(views).getdata()) == list(grid.getdata())


@pytest.mark.parametrize("size", [(640, 961), (600, 960), (320, 320)])
def test_split_refuses_non_grids(size):
    with pytest.raises(ValueError, match="six-view grid"):
        split_grid(Image.new("RGB", size))


def test_join_refuses_wrong_count():
    with pytest.raises(ValueError, match="exactly 6 views"):
        join_views([Image.new("RGB", (32, 32))] * 5)


@pytest.mark.parametrize(
    "version, elevations, fov",
    [("v1.2", [20, -10] * 3, 30.0), ("v1.1", [30, -20] * 3, math.degrees(2 * math.atan(16 / 35)))],
)
def test_camera_tables(version, elevations, fov):
    cameras = view_cameras(version)
    assert [c.azimuth_deg for c in cameras] == [30, 90, 150, 210, 270, 330]
    assert [c.elevation_deg for c in cameras] == elevations
    assert all(c.fov_deg == pytest.approx(fov) for c in cameras)
    assert fov == pytest.approx(30.0 if version == "v1.2" else 49.13, abs=0.01)


def test_v12_cameras_in_the_world_frame():
    cameras = view_cameras("v1.2")
    assert cameras[0].distance == 4.0
    right = cameras[1]  # azimuth 90: the input camera's right, +X
    e = math.radians(-10)
    np.testing.assert_allclose(right.position, [4 * math.cos(e), 4 * math.sin(e), 0.0], atol=1e-12)
    assert cameras[0].intrinsics[0, 0] == pytest.approx(160 / math.tan(math.radians(15)))
    for camera in cameras:
        c2w = camera.camera_to_world
        np.testing.assert_allclose(c2w[:3, :3].T @ c2w[:3, :3], np.eye(3), atol=1e-12)
        assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
        forward = -c2w[:3, 2]
        np.testing.assert_allclose(forward, -camera.position / np.linalg.norm(camera.position), atol=1e-12)
        assert c2w[1, 1] > 0  # camera up points to world +Y
        np.testing.assert_allclose(camera.project(np.zeros((1, 3))), [[160, 160]], atol=1e-9)
        # a point above the origin appears above the image centre (smaller y)
        assert camera.project(np.array([[0.0, 0.5, 0.0]]))[0, 1] < 160


def test_projection_of_the_right_side():
    front = view_cameras("v1.2")[0]  # azimuth 30, on +Z side and to the right
    x_pixel_of_plus_x = front.project(np.array([[0.5, 0.0, 0.0]]))[0, 0]
    x_pixel_of_minus_x = front.project(np.array([[-0.5, 0.0, 0.0]]))[0, 0]
    assert x_pixel_of_plus_x > x_pixel_of_minus_x  # +X is to the right when seen from the front


def test_cameras_json_round_trip(tmp_path):
    cameras = view_cameras("v1.1", tile_size=256)
    write_cameras_json(cameras, tmp_path / "cameras.json", "v1.1")
    assert read_cameras_json(tmp_path / "cameras.json") == cameras


def test_unknown_version():
    with pytest.raises(ValueError, match="unknown Zero123\\+\\+ version"):
        view_cameras("v2")


@pytest.mark.parametrize("background", [(127, 127, 127), (255, 255, 255)])
def test_matting_keeps_soft_edges_grey_parts_and_holes(background):
    size = 320
    near_background = tuple(channel - 12 for channel in background)  # under the old fixed threshold
    image = Image.new("RGB", (size * 4, size * 4), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((320, 320, 960, 960), fill=(200, 60, 40))
    draw.ellipse((400, 560, 560, 720), fill=background)  # the background seen through a hole
    draw.ellipse((720, 560, 880, 720), fill=near_background)  # a grey part of the object
    view = image.resize((size, size), Image.LANCZOS)  # anti-aliased edge
    rgba = np.asarray(matte_view(view))
    alpha = rgba[..., 3]
    assert alpha[5, 5] == 0 and alpha[100, 160] == 255
    assert alpha[160, 120] == 0  # the hole shows the background
    assert alpha[160, 200] == 255  # the grey part is object
    edge = alpha[160, 78:84]
    assert ((edge > 0) & (edge < 255)).any()  # soft edge kept
    assert np.abs(rgba[100, 160, :3].astype(int) - [200, 60, 40]).max() <= 2


def test_matting_threshold_follows_background_noise():
    size = 320
    noise = np.random.default_rng(0).normal(0.0, 4.0, (size, size, 3))
    rgb = np.clip(127 + noise, 0, 255)
    rgb[100:220, 100:220] = (160, 120, 90)
    rgb[140:180, 140:180] = (127, 127, 127) + noise[140:180, 140:180]  # a hole, as noisy as the background
    rgba = np.asarray(matte_view(Image.fromarray(rgb.astype(np.uint8))))
    alpha = rgba[..., 3]
    assert (alpha[:80] == 0).all() and (alpha[240:] == 0).all()  # noise is not object
    assert (alpha[105:135, 105:215] == 255).all()
    assert (alpha[145:175, 145:175] == 0).all()


def test_matting_keeps_a_face_within_the_noise_but_off_the_background():
    """A box's face shaded to within the background's noise of its grey, pixel by pixel,
    is still off it as a whole: it stays object beside the object, and a patch of the same
    shade away from the object stays background."""
    size = 320
    noise = np.random.default_rng(1).normal(0.0, 2.5, (size, size, 3))
    rgb = 127 + noise
    rgb[100:220, 60:140] = (40, 60, 90) + noise[100:220, 60:140]  # a face colour alone finds
    rgb[100:220, 140:200] = 132 + noise[100:220, 140:200]  # the next face, 5 levels off the grey
    rgb[20:60, 240:300] = 132 + noise[20:60, 240:300]  # the same shade, apart from the object
    alpha = np.asarray(matte_view(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))))[..., 3]
    difference = np.abs(np.clip(rgb, 0, 255).round() - 127).max(axis=2)
    assert (difference[100:220, 140:200] <= 13).mean() > 0.95  # under the matting threshold, one by one
    assert (alpha[105:215, 140:195] == 255).mean() > 0.99
    assert (alpha[240:] == 0).all() and (alpha[:, 220:] == 0).all()

"""Learned matting of the six views: the colour matte with u2netp (the real model, see the
``u2netp`` fixture) restoring what colour alone cannot tell from the grey background."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

from recon.render import MeshRenderer
from stages.reconstruct import to_pinhole
from stages.view_matting import learned_matte, to_rgba_views, view_matting_model, view_matting_session
from stages.settings import load_settings
from zero123pp import matte_view, view_cameras

LIGHT = np.array([0.4, 0.8, 0.6]) / np.linalg.norm([0.4, 0.8, 0.6])


def shaded_views(mesh: trimesh.Trimesh, albedo: float | None = None) -> list[tuple[Image.Image, np.ndarray]]:
    """The six 320 px v1.2 views on 50 % grey, lit softly (the colour times 0.75 to 1.25, so
    a 50 % grey object crosses the background's level), and their true masks."""
    renderer = MeshRenderer(mesh)
    views = []
    for camera in view_cameras("v1.2"):
        pinhole = to_pinhole(camera)
        result = renderer.render(pinhole)
        _, directions = pinhole.rays()
        facing = np.where(((result.normals * directions).sum(-1) > 0)[..., None], -result.normals, result.normals)
        shading = 0.75 + 0.5 * np.clip(facing @ LIGHT, 0.0, 1.0)
        colour = result.albedo if albedo is None else np.full_like(result.albedo, albedo)
        pixels = np.where(result.mask[..., None], colour * shading[..., None], 0.5)
        views.append((Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)), result.mask))
    return views


def iou(matte: Image.Image, mask: np.ndarray) -> float:
    solid = np.asarray(matte.getchannel("A")) >= 128
    return float((solid & mask).sum() / (solid | mask).sum())


@pytest.fixture(scope="module")
def grey_ring() -> list[tuple[Image.Image, np.ndarray]]:
    """A torus painted the background's grey, standing and turned so its hole shows."""
    ring = trimesh.creation.torus(0.55, 0.18, major_sections=64, minor_sections=32)
    ring.apply_transform(trimesh.transformations.rotation_matrix(np.radians(30), [0, 1, 0]))
    return shaded_views(ring, albedo=0.5)


def test_u2netp_matting_keeps_a_grey_object_on_grey(u2netp, grey_ring):
    colour = [iou(matte_view(view), mask) for view, mask in grey_ring]
    learned = [iou(learned_matte(view, u2netp), mask) for view, mask in grey_ring]
    # Colour alone cuts away the ring where its shading crosses the background's grey ...
    assert np.mean(colour) < 0.9 and min(colour) < 0.75, colour
    # ... u2netp gives those parts back, in every view.
    assert np.mean(learned) > 0.93 and min(learned) > 0.88 and all(np.subtract(learned, colour) > -0.001), learned


def test_u2netp_reopens_a_hole_colour_closed(u2netp, grey_ring):
    """Seen face on, the ring's hole merges with its dropped grey parts, so colour judges the
    whole enclosed region a grey part of the object; u2netp sees background there."""
    view, mask = grey_ring[0]
    hole = ndimage.binary_fill_holes(mask) & ~mask
    assert hole.sum() > 5000
    open_by_colour = np.asarray(matte_view(view).getchannel("A"))[hole] < 128
    open_by_both = np.asarray(learned_matte(view, u2netp).getchannel("A"))[hole] < 128
    assert open_by_colour.mean() < 0.1 and open_by_both.mean() > 0.95


def test_u2netp_matting_leaves_a_coloured_object_as_colour_mats_it(u2netp):
    capsule = trimesh.creation.capsule(height=0.9, radius=0.35, count=[48, 48])
    p = capsule.vertices
    colour = 0.5 + 0.4 * np.stack([np.sin(4 * p[:, 0]), np.sin(5 * p[:, 1] + 1), np.cos(4 * p[:, 2])], axis=1)
    capsule.visual = trimesh.visual.ColorVisuals(capsule, vertex_colors=np.round(colour * 255).astype(np.uint8))
    for view, mask in shaded_views(capsule):
        assert np.array_equal(np.asarray(learned_matte(view, u2netp)), np.asarray(matte_view(view)))
        assert iou(matte_view(view), mask) > 0.99


def test_an_invisible_object_stays_invisible(u2netp):
    """u2netp's own probability, not one stretched to [0, 1], so a plain view stays empty."""
    plain = Image.new("RGB", (320, 320), (128, 128, 128))
    assert np.asarray(learned_matte(plain, u2netp).getchannel("A")).max() == 0


def test_to_rgba_views_mats_with_u2netp_when_given(u2netp, grey_ring):
    views = [view for view, _ in grey_ring]
    by_colour, by_both = to_rgba_views(views), to_rgba_views(views, u2netp)
    masks = np.stack([mask for _, mask in grey_ring])
    # colour alone keeps 0.985 of the ring's pixels (off_background finds most of its grey), u2netp 0.997
    assert (np.stack(by_both)[..., 3] >= 0.5)[masks].mean() > (np.stack(by_colour)[..., 3] >= 0.5)[masks].mean() + 0.01


def test_without_u2netp_reconstruction_mats_by_colour_and_says_how_to_fetch_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TEXT_TO_3D_MODEL_CACHE_DIR", str(tmp_path))
    for load in (view_matting_model, view_matting_session):  # through the model cache, and straight (the CLI)
        caplog.clear()
        assert load(load_settings()) is None
        assert "matted by colour alone" in caplog.text and "models fetch u2netp" in caplog.text


def test_the_cli_opens_u2netp_without_importing_torch(u2netp_file, tmp_path):
    """The CLI mats the views on a thread while torch imports, so the matting half must not
    import it (a fresh interpreter runs the check: in this one torch is long imported)."""
    (tmp_path / "u2netp.onnx").symlink_to(u2netp_file)
    probe = ("import sys; from stages.settings import load_settings; "
             "from stages.view_matting import to_rgba_views, view_matting_session; "
             "session = view_matting_session(load_settings()); assert session is not None; "
             "print(sorted(m for m in ('torch', 'open3d', 'trimesh', 'pymeshlab') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "TEXT_TO_3D_MODEL_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stderr

"""Image input hardening: every mode and format users hand in, and every way a file is bad."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from stages.image_input import open_image


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_palette_with_transparency_keeps_alpha():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    image = open_image(_encode(palette, "PNG", transparency=0))
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((1, 1)) == (0, 255, 0, 255)


@pytest.mark.parametrize("mode, expected", [("L", "RGB"), ("LA", "RGBA"), ("RGBA", "RGBA"), ("RGB", "RGB")])
def test_grey_and_colour_modes(mode, expected):
    assert open_image(_encode(Image.new(mode, (4, 4)), "PNG")).mode == expected


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = open_image(_encode(Image.fromarray(values), "PNG"))
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_and_webp():
    cmyk = open_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and cmyk.getpixel((4, 4))[0] > 200 and cmyk.getpixel((4, 4))[1] < 60
    webp = open_image(_encode(Image.new("RGBA", (8, 8), (10, 20, 30, 128)), "WEBP", lossless=True))
    assert webp.mode == "RGBA" and webp.getpixel((0, 0)) == (10, 20, 30, 128)


def test_exif_orientation_is_applied():
    landscape = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert open_image(_encode(landscape, "JPEG", exif=exif)).size == (20, 40)


def test_bad_files_get_clear_errors(tmp_path):
    png = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "anim.gif").write_bytes(_encode(Image.new("RGB", (4, 4)), "GIF"))
    for name, problem in [("truncated.png", "not a readable image"), ("notes.png", "not a readable image"),
                          ("anim.gif", "GIF images are not accepted"), ("missing.png", "no such file")]:
        with pytest.raises(ValueError, match=problem) as error:
            open_image(tmp_path / name)
        assert name in str(error.value)


def test_decompression_bombs_are_refused_before_decoding():
    with pytest.raises(ValueError, match="over the limit"):
        open_image(_encode(Image.new("1", (4000, 4000)), "PNG"), max_pixels=1_000_000)

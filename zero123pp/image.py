"""Turning a user's PIL image into the RGB image Zero123++ conditions on."""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_SIDE = 64
BACKGROUND_GREY = (127, 127, 127)

# Modes whose meaning is unambiguous; converted before use. "I" and "I;16*" are 16-bit
# greyscale as Pillow opens 16-bit PNGs.
_TO_RGBA = {"P", "PA", "LA", "La", "RGBa"}
_TO_RGB = {"1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def normalize_mode(image: Image.Image) -> Image.Image:
    """Return ``image`` as RGB or RGBA, converting the modes that have one obvious meaning.

    Palette images keep their transparency, 16-bit greyscale is scaled (not clipped) to 8
    bits, and CMYK goes through Pillow's conversion. Anything else (floating-point images,
    for example, whose range is unknown) is refused with the mode named.
    """
    if image is None:
        raise ValueError("no image given (got None)")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in _TO_RGBA:
        return image.convert("RGBA")
    if mode in _TO_RGB:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        eight_bit = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit, "L").convert("RGB")
    raise ValueError(
        f"unsupported image mode {mode!r}: give an RGB or RGBA image "
        "(P, PA, LA, L, 1, CMYK, YCbCr and 16-bit greyscale are converted automatically)"
    )


def to_conditioning_rgb(image: Image.Image) -> Image.Image:
    """The RGB image Zero123++ sees: RGBA composited through its alpha onto flat grey 127."""
    image = normalize_mode(image)
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"image is {image.size[0]}x{image.size[1]}; each side must be at least {MIN_SIDE} px")
    if image.mode == "RGB":
        return image
    canvas = Image.new("RGB", image.size, BACKGROUND_GREY)
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas

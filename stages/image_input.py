"""Reading images that users hand in: one place for every stage and command.

Photos arrive from phones, scanners and paint programs: palette PNGs, grey JPEGs, CMYK
prints, 16-bit TIFF-like PNGs, rotated phone shots. Every stage wants plain 8-bit RGB or
RGBA in the orientation the user saw, so all of that is normalised here, once.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "WEBP")
# 64 megapixels: larger than any camera the studios use, far below what exhausts a worker.
MAX_PIXELS = 64_000_000


def open_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open a PNG, JPEG or WebP file (or its bytes) as an 8-bit ``RGB`` or ``RGBA`` image.

    EXIF orientation is applied; palette, grey, grey+alpha, CMYK and 16-bit images are
    converted, keeping alpha. The size is checked before decoding, so a decompression bomb
    is refused without being expanded. Raises ``ValueError`` naming the file (or ``name``,
    the origin of bytes) and the problem.
    """
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            if image.format not in FORMATS:
                raise ValueError(f"{name}: {image.format} images are not accepted (use PNG, JPEG or WebP)")
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{name}: {width}x{height} is {width * height} pixels, over the limit of {max_pixels}"
                )
            image.load()
            return to_8bit_rgb_or_rgba(ImageOps.exif_transpose(image))
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: is a folder, not an image") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: refused as a decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        # PIL's own text names the stream object (``<_io.BytesIO object at 0x...>``), not the file.
        raise ValueError(f"{name}: not a readable image (not PNG, JPEG or WebP data)") from None
    except OSError as error:
        # PIL reports unknown formats and truncated data as OSError subclasses.
        raise ValueError(f"{name}: not a readable image ({error})") from None


def to_8bit_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit ``RGB``, or ``RGBA`` when the image carries transparency."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: PIL's own convert("L") clips at 255 instead of scaling.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")

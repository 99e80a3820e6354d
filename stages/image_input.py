"""Reading images that users hand in: one place for every stage and command."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, or raise ``ValueError`` naming the file and problem."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None

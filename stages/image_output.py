"""Writing stage outputs to local files: whole files or nothing, never a half-written one."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from recon.files import write_atomically


ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")  # formats that keep a cutout's transparency


def image_format(path: Path, alpha: bool = False) -> str:
    """The image format ``path``'s suffix names; ``ValueError`` naming the path when PIL
    cannot write it, or when ``alpha`` is needed and the format has none (JPEG). Cheap: the
    command line checks its outputs with it before any model loads."""
    image_format = Image.registered_extensions().get(Path(path).suffix.lower())
    if image_format not in Image.SAVE:
        raise ValueError(f"{path}: not an image suffix that can be written (use .png, .jpg or .webp)")
    if alpha and image_format not in ALPHA_FORMATS:
        raise ValueError(f"{path}: {image_format} has no transparency; use .png or .webp for a cutout")
    return image_format


def check_output_place(path: Path, folder: bool = False) -> None:
    """Refuse, before any work, an output whose place is taken: a file where a folder is
    wanted, a folder where a file is, or a parent that is a file."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{path}: is a folder; name a file")
    start = path if folder else path.parent
    for parent in (start, *start.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{path}: {parent} is a file, not a folder")
            break


def save_image(image: Image.Image, path: Path) -> None:
    """Encode ``image`` in the format its suffix names and move it into place in one step."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format(path, alpha=image.mode == "RGBA"))
    write_atomically(path, buffer.getvalue())


def save_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())

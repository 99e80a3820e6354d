"""Writing stage outputs to local files: whole files or nothing, never a half-written one."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from recon.export import write_atomically


def save_image(image: Image.Image, path: Path) -> None:
    """Encode ``image`` in the format its suffix names and move it into place in one step."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=Image.registered_extensions().get(path.suffix.lower()))
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: cannot write an image with this suffix ({error})") from None
    write_atomically(path, buffer.getvalue())


def save_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())

"""Views, masks and cameras in nerfstudio's dataset format, for studios that refine there.

nerfstudio's ``transforms.json`` stores camera-to-world matrices in the OpenGL convention,
the one these cameras already use, and per-frame pinhole intrinsics.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from recon.camera import PinholeCamera


def export_nerfstudio(images: list[np.ndarray], cameras: list[PinholeCamera], folder: str | Path) -> Path:
    """Write ``images/``, ``masks/`` and ``transforms.json`` into ``folder`` (replaced whole).

    The dataset is written into a scratch folder beside ``folder`` and swapped in: an existing
    ``folder`` is renamed aside first and removed only once the new one is in place (put back
    if the swap fails), so a failure at any point leaves a whole dataset under the name.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f".{folder.name}.partial-{secrets.token_hex(6)}"
    scratch.mkdir(mode=0o777)  # mkdtemp's 0700 would stay with the folder; outputs follow the umask
    try:
        (scratch / "images").mkdir()
        (scratch / "masks").mkdir()
        frames = []
        for index, (image, camera) in enumerate(zip(images, cameras)):
            pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels[..., :3], "RGB").save(scratch / "images" / f"frame_{index:05d}.png")
            Image.fromarray(np.where(pixels[..., 3] >= 128, 255, 0).astype(np.uint8), "L").save(
                scratch / "masks" / f"mask_{index:05d}.png"
            )
            k = camera.intrinsics
            frames.append({
                "file_path": f"images/frame_{index:05d}.png",
                "mask_path": f"masks/mask_{index:05d}.png",
                "transform_matrix": camera.camera_to_world.tolist(),
                "fl_x": k[0, 0], "fl_y": k[1, 1], "cx": k[0, 2], "cy": k[1, 2],
                "w": camera.width, "h": camera.height,
            })
        document = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
        (scratch / "transforms.json").write_text(json.dumps(document, indent=2))
        _swap_in(scratch, folder)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return folder


def _swap_in(scratch: Path, folder: Path) -> None:
    """Rename ``scratch`` to ``folder``; a previous ``folder`` goes aside, then away."""
    if not folder.exists():
        os.replace(scratch, folder)
        return
    previous = folder.parent / f".{folder.name}.previous-{secrets.token_hex(6)}"
    os.replace(folder, previous)
    try:
        os.replace(scratch, folder)
    except BaseException:
        os.replace(previous, folder)
        raise
    shutil.rmtree(previous, ignore_errors=True)

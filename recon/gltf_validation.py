"""The Khronos glTF-Validator (npm ``gltf-validator``, installed by ``make install``), from Python."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).with_name("validate_gltf.cjs")
NOT_INSTALLED = 3  # the script's exit status when it cannot load the validator


class ValidatorUnavailable(RuntimeError):
    """Node.js or the validator is not installed here: nothing was said about the file."""


def validate_glb(path: str | Path) -> dict:
    """The validator's report for one GLB: ``report["issues"]["numErrors"]`` etc.

    Raises ``ValidatorUnavailable`` naming what is missing when Node or the validator is not
    installed (``npm install`` in the repository root installs it), and ``RuntimeError``
    with the validator's message when it fails on the file itself.
    """
    node = shutil.which("node")
    if node is None:
        raise ValidatorUnavailable("glTF validation needs Node.js (`node` is not on PATH)")
    result = subprocess.run([node, str(SCRIPT), str(path)], capture_output=True, text=True)
    message = result.stderr.strip() or result.stdout.strip()
    if result.returncode == NOT_INSTALLED:
        raise ValidatorUnavailable(f"gltf-validator is not installed (`npm install` in the repository root): "
                                   f"{message.splitlines()[0] if message else ''}")
    if result.returncode != 0:
        raise RuntimeError(f"gltf-validator failed on {path}: {message}")
    return json.loads(result.stdout)

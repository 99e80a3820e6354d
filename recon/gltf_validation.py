"""The Khronos glTF-Validator (npm ``gltf-validator``, installed by ``make install``), from Python."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).with_name("validate_gltf.cjs")


def validate_glb(path: str | Path) -> dict:
    """The validator's report for one GLB: ``report["issues"]["numErrors"]`` etc.

    Raises ``RuntimeError`` naming what is missing when Node or the validator is not
    installed (``npm install`` in the repository root installs it).
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("glTF validation needs Node.js (`node` is not on PATH)")
    result = subprocess.run([node, str(SCRIPT), str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"gltf-validator failed on {path}: {result.stderr.strip() or result.stdout.strip()}")
    return json.loads(result.stdout)

"""Import GLBs into Blender (the ``bpy`` module) and print, as one JSON line, what it sees.

    .venv-blender/bin/python tests/blender_client.py FILE.glb ...

Run in Blender's own environment (``make blender-client``): ``bpy`` 5.0.1 needs numpy < 2,
which the project's environment cannot have, so this script imports nothing of the project.
Per file: the import error (or ``null``) and every mesh object with its name, world-space
dimensions, bounding-box minimum and centre, whether its material's base colour comes from
an image texture, and its UV layer count.
"""

from __future__ import annotations

import json
import sys

import bpy
from mathutils import Vector


def base_colour_image(item) -> str | None:
    """The image feeding the Principled BSDF's Base Color, if any."""
    for slot in item.material_slots:
        if slot.material is None or not slot.material.use_nodes:
            continue
        for node in slot.material.node_tree.nodes:
            if node.type == "BSDF_PRINCIPLED":
                for link in node.inputs["Base Color"].links:
                    source = link.from_node
                    if source.type == "TEX_IMAGE" and source.image is not None:
                        return source.image.name
    return None


def inspect(path: str) -> dict:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    try:
        result = bpy.ops.import_scene.gltf(filepath=path)
    except RuntimeError as error:
        return {"error": str(error).strip(), "objects": []}
    if "FINISHED" not in result:
        return {"error": f"import returned {sorted(result)}", "objects": []}
    objects = []
    for item in bpy.context.scene.objects:
        if item.type != "MESH":
            continue
        corners = [item.matrix_world @ Vector(corner) for corner in item.bound_box]
        low = [min(corner[axis] for corner in corners) for axis in range(3)]
        high = [max(corner[axis] for corner in corners) for axis in range(3)]
        objects.append({"name": item.name, "dimensions": [h - l for l, h in zip(low, high)], "min": low,
                        "centre": [(l + h) / 2 for l, h in zip(low, high)],
                        "base_colour_image": base_colour_image(item), "uv_layers": len(item.data.uv_layers)})
    return {"error": None, "objects": objects}


if __name__ == "__main__":
    print(json.dumps({path: inspect(path) for path in sys.argv[1:]}))

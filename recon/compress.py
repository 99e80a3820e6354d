"""A compressed copy of a GLB: KTX2/BasisU textures and meshopt geometry.

Textures become KTX2 with ETC1S/BasisU supercompression and mipmaps (``KHR_texture_basisu``),
encoded by ``alktx2`` (Basis Universal's encoder as a Python wheel): engines transcode ETC1S
to their GPU's block format, so the texture stays compressed in video memory too. Geometry
is then quantised and meshopt-compressed (``EXT_meshopt_compression``) by the npm
``gltfpack``, whose Node build cannot encode textures itself (it has no BasisU or WebP) but
carries KTX2 images through. The texture swap edits the GLB's JSON and binary chunks by
hand because no installed library writes ``KHR_texture_basisu``.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GLTFPACK = Path(__file__).resolve().parents[1] / "node_modules" / "gltfpack" / "cli.js"
KTX2_EXTENSION = "KHR_texture_basisu"
LINEAR_SLOTS = ("normalTexture", "metallicRoughnessTexture", "occlusionTexture")


@dataclass
class CompressedGlb:
    """The compressed GLB's bytes and, per texture it re-encoded (named by a material slot
    that uses it, e.g. ``baseColorTexture``), the PSNR (dB) of its decoded full-resolution
    level against the original image."""

    data: bytes
    texture_psnr: dict[str, float]


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """A GLB's JSON tree and its binary chunk."""
    if len(data) < 20 or data[:4] != b"glTF":
        raise ValueError("not a GLB file (no glTF header)")
    _, _, length = struct.unpack_from("<4sII", data, 0)
    chunks, offset = [], 12
    while offset + 8 <= min(length, len(data)):
        size, kind = struct.unpack_from("<I4s", data, offset)
        chunks.append((kind, data[offset + 8:offset + 8 + size]))
        offset += 8 + size
    if not chunks or chunks[0][0] != b"JSON":
        raise ValueError("not a GLB file (no JSON chunk)")
    binary = chunks[1][1] if len(chunks) > 1 and chunks[1][0] == b"BIN\0" else b""
    return json.loads(chunks[0][1]), binary


def write_glb(tree: dict, binary: bytes) -> bytes:
    """A GLB of ``tree`` and ``binary``, each chunk padded to four bytes as the format asks."""
    text = json.dumps(tree, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text
    if binary:
        chunks += struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def ktx2_textures(data: bytes, quality: int = 100) -> CompressedGlb:
    """``data`` (a GLB with one buffer, as trimesh writes it) with every PNG or JPEG image
    re-encoded as KTX2 (ETC1S, mipmaps; sRGB for colour, linear for normal and ORM maps)."""
    import alktx2  # imported here: its native library is only needed when compressing

    tree, binary = read_glb(data)
    if len(tree.get("buffers", [])) > 1:
        raise ValueError("only single-buffer GLBs can have their textures re-encoded")
    views = [binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
             for view in tree.get("bufferViews", [])]
    slots = {tree["textures"][texture["index"]]["source"]: slot for material in tree.get("materials", [])
             for slot, texture in _texture_slots(material)}  # image -> a material slot using it
    linear_images = {image for image, slot in slots.items() if slot in LINEAR_SLOTS}
    psnr, encoded_views = {}, set()
    for number, image in enumerate(tree.get("images", [])):
        if image["bufferView"] in encoded_views:  # trimesh writes an image used twice (ORM) as two on one view
            image["mimeType"] = "image/ktx2"
            continue
        original = views[image["bufferView"]]
        encoded = alktx2.encode_bytes_to_ktx2(
            original, mime=image.get("mimeType", "image/png"), codec="etc1s", quality=quality, mipmaps=True,
            srgb=number not in linear_images, linear=number in linear_images)
        decoded, _ = alktx2.decode_ktx2_to_bytes(encoded, format="png")
        psnr[slots.get(number, f"image{number}")] = round(float(image_psnr(original, decoded)), 2)
        views[image["bufferView"]] = encoded
        encoded_views.add(image["bufferView"])
        image["mimeType"] = "image/ktx2"
    for texture in tree.get("textures", []):
        texture.setdefault("extensions", {})[KTX2_EXTENSION] = {"source": texture.pop("source")}
    for key in ("extensionsUsed", "extensionsRequired"):
        tree[key] = sorted(set(tree.get(key, [])) | {KTX2_EXTENSION})
    packed = bytearray()
    for view, view_data in zip(tree.get("bufferViews", []), views):
        packed += b"\0" * (-len(packed) % 4)  # accessors need their data 4-byte aligned
        view["byteOffset"], view["byteLength"] = len(packed), len(view_data)
        packed += view_data
    tree["buffers"] = [{"byteLength": len(packed)}]
    return CompressedGlb(write_glb(tree, bytes(packed)), psnr)


def _texture_slots(material: dict) -> list[tuple[str, dict]]:
    slots = [(slot, material[slot]) for slot in LINEAR_SLOTS + ("emissiveTexture",) if slot in material]
    pbr = material.get("pbrMetallicRoughness", {})
    slots += [(slot, pbr[slot]) for slot in ("baseColorTexture", "metallicRoughnessTexture") if slot in pbr]
    return slots


def image_psnr(reference: bytes, candidate: bytes) -> float:
    """PSNR in dB of ``candidate`` against ``reference`` (encoded images), over RGB in 8 bits."""
    first = np.asarray(Image.open(io.BytesIO(reference)).convert("RGB"), np.float64)
    second = np.asarray(Image.open(io.BytesIO(candidate)).convert("RGB"), np.float64)
    if first.shape != second.shape:
        raise ValueError(f"images differ in size: {first.shape} and {second.shape}")
    mse = float(np.mean((first - second) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def meshopt_compress(data: bytes) -> bytes:
    """``data`` with quantised, meshopt-compressed geometry (gltfpack ``-cc``); node and mesh
    names (collision pieces) and materials are kept as they are."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("GLB compression needs Node.js (`node` is not on PATH)")
    if not GLTFPACK.is_file():
        raise RuntimeError(f"GLB compression needs gltfpack: {GLTFPACK} is missing (run `npm ci` in the repository)")
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "in.glb", Path(scratch) / "out.glb"
        source.write_bytes(data)
        result = subprocess.run([node, str(GLTFPACK), "-i", str(source), "-o", str(target), "-cc", "-kn", "-km"],
                                capture_output=True, text=True)
        if result.returncode != 0 or not target.is_file():
            raise RuntimeError(f"gltfpack failed: {result.stderr.strip() or result.stdout.strip()}")
        return target.read_bytes()


def compress_glb(data: bytes, texture_quality: int = 100) -> CompressedGlb:
    """KTX2 textures, then meshopt geometry: the whole compressed variant of a GLB."""
    textured = ktx2_textures(data, texture_quality)
    return CompressedGlb(meshopt_compress(textured.data), textured.texture_psnr)

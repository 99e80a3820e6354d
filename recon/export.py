"""Engine-ready export: glTF 2.0 binary with a metallic-roughness material, and LODs.

Normalised for engines: +Y up, +Z front (the input view), metres, pivot at the bottom
centre of the bounding box, a chosen height. Files are written beside their final name and
renamed into place, a GLB and its LODs together, so a failure or Ctrl-C never leaves a
half-written GLB or an incomplete LOD set.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from recon.files import write_set_atomically
from recon.normal_map import transfer_normal_map
from recon.render import MeshRenderer
from recon.surface import decimate
from recon.texture import TexturedMesh, texel_surface, transfer_base_colour


def normalise_for_engine(vertices: np.ndarray, height: float = 1.0) -> np.ndarray:
    """Move the bounding box's bottom centre to the origin and scale to ``height`` metres."""
    if height <= 0:
        raise ValueError(f"height must be positive, got {height}")
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    pivot = np.array([(low[0] + high[0]) / 2, low[1], (low[2] + high[2]) / 2])
    extent = high[1] - low[1]
    if extent <= 0:
        raise ValueError("the mesh is flat in Y: no height to normalise")
    return (vertices - pivot) * (height / extent)


# Explicit material factors: glTF's own defaults (metallic 1, roughness 1) make an unset
# material chrome-like in engines; reconstructed colour is a dielectric's, mostly matte.
METALLIC = 0.0
ROUGHNESS = 0.9


def pbr_material(base_colour: Image.Image, normal_map: Image.Image | None = None, metallic: float = METALLIC,
                 roughness: float = ROUGHNESS, occlusion: np.ndarray | None = None) -> trimesh.visual.material.PBRMaterial:
    """A glTF metallic-roughness material with explicit factors.

    With ``occlusion`` (H, W) in 0..1, the material gets an ORM texture as Unreal packs it,
    occlusion, roughness and metallic in R, G and B (:func:`orm_image`), bound as both the
    occlusion and the metallic-roughness texture, whose channels glTF reads exactly so; the
    factors are then 1, as the texture holds the values.
    """
    orm = {}
    if occlusion is not None:
        image = orm_image(occlusion, roughness, metallic)
        orm = {"occlusionTexture": image, "metallicRoughnessTexture": image}
        metallic = roughness = 1.0
    return trimesh.visual.material.PBRMaterial(
        name="base", baseColorTexture=base_colour, normalTexture=normal_map, metallicFactor=metallic,
        roughnessFactor=roughness, doubleSided=False, **orm,
    )


def orm_image(occlusion: np.ndarray, roughness: float = ROUGHNESS, metallic: float = METALLIC) -> Image.Image:
    """An ORM texture: ``occlusion`` (H, W) in 0..1 in R, constant ``roughness`` in G and
    ``metallic`` in B."""
    channels = [occlusion, np.full_like(occlusion, roughness), np.full_like(occlusion, metallic)]
    return Image.fromarray(np.round(np.clip(np.dstack(channels), 0, 1) * 255).astype(np.uint8), "RGB")


def bake_occlusion(mesh: trimesh.Trimesh, uv: np.ndarray, normals: np.ndarray, size: int = 256, rays: int = 32,
                   reach: float = 0.2, seed: int = 0) -> np.ndarray:
    """Ambient occlusion (size, size) in 0..1 (1: open sky) in ``mesh``'s UV layout, for the
    ORM texture: per vertex, the share of cosine-weighted rays over its hemisphere that no
    part of the mesh stops within ``reach`` times the bounding-box diagonal, interpolated
    across each face. Occlusion is soft and low-frequency, so a small texture holds it."""
    rng = np.random.default_rng(seed)
    height, angle = rng.random(rays), 2 * np.pi * rng.random(rays)
    local = np.stack([np.sqrt(height) * np.cos(angle), np.sqrt(height) * np.sin(angle), np.sqrt(1 - height)], axis=1)
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    tangent = np.cross(normals, helper)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    bitangent = np.cross(normals, tangent)
    directions = (local[None, :, :1] * tangent[:, None] + local[None, :, 1:2] * bitangent[:, None]
                  + local[None, :, 2:] * normals[:, None])
    diagonal = float(np.linalg.norm(np.ptp(mesh.vertices, axis=0)))
    origins = np.broadcast_to((mesh.vertices + 1e-4 * diagonal * normals)[:, None], directions.shape)
    hits = MeshRenderer(mesh).cast(origins, directions)["t_hit"]
    openness = (hits > reach * diagonal).mean(axis=1)
    texels = texel_surface(np.asarray(mesh.vertices), np.asarray(mesh.faces), uv, size)
    values = texels.interpolate(openness[:, None])
    return texels.fill(values, np.ones(len(values), bool))[..., 0]


def to_trimesh(asset: TexturedMesh, roughness: float = ROUGHNESS, metallic: float = METALLIC) -> trimesh.Trimesh:
    """A trimesh whose glTF export carries the base-colour texture (and the normal map, if
    one was baked) in a PBR material."""
    material = pbr_material(asset.texture_image(), asset.normal_texture_image(), metallic, roughness)
    visual = trimesh.visual.TextureVisuals(uv=asset.uv, material=material)
    return trimesh.Trimesh(asset.vertices, asset.faces, vertex_normals=asset.normals, visual=visual, process=False)


def lod_chain(asset: TexturedMesh, lods: int, min_texture_size: int = 128) -> list[TexturedMesh]:
    """LOD0 is ``asset``; LOD i has about 1 / 2**i of its faces, LOD0's bounding box and
    textures 1 / 2**i its texture size, as is common: an engine shows a coarse level from
    far away, where mip-mapping samples coarser texels anyway. Full-size textures on every
    level made the chain of the 20k-face cow nearly four times as slow (4.5 instead of 1.2
    CPU seconds).

    Each level decimates the seam-free surface and gets a UV layout of its own, onto which
    LOD0's textures are baked. Decimated along LOD0's own layout, every seam would be a
    boundary no collapse may cross, and a fragmented surface is seams nearly everywhere:
    on the reconstructed globe, LOD1 and LOD2 both kept 99 % of LOD0's faces. Textures stay
    at least ``min_texture_size``: a coarse level of a fragmented surface still has hundreds
    of charts (the 372-face LOD2 of a foam ball: 207), which 64 px leave about 16 texels
    each; that LOD2 rendered at 24 dB PSNR against LOD0, and at 39 dB with 128 px.
    """
    if lods < 1:
        raise ValueError(f"lods must be at least 1, got {lods}")
    chain = [asset]
    coarse = asset.seam_free_surface()
    size = asset.texture.shape[0]
    for level in range(1, lods):
        # each level from the one before: half the faces to collapse, for the same result
        coarse = decimate(coarse, max(len(asset.faces) // 2**level, 64), keep_bounds=True)
        lod, resampling = transfer_base_colour(asset, coarse, min(size, max(size >> level, min_texture_size)))
        if asset.normal_texture is not None:
            lod = replace(lod, normal_texture=transfer_normal_map(asset, lod, resampling))
        chain.append(lod)
    return chain


def export_glb(asset: TexturedMesh, output: str | Path, lods: int = 3) -> list[Path]:
    """Write ``output`` (LOD0) and ``{stem}_LOD0.glb`` .. ``{stem}_LOD{lods-1}.glb`` beside it."""
    output = Path(output)
    if output.suffix.lower() != ".glb":
        raise ValueError(f"output must be a .glb file, got {output}")
    # NORMAL is written explicitly: without it, glTF viewers shade every face flat
    blobs = [to_trimesh(level).export(file_type="glb", include_normals=True) for level in lod_chain(asset, lods)]
    paths = [output] + [output.with_name(f"{output.stem}_LOD{level}.glb") for level in range(lods)]
    write_set_atomically(dict(zip(paths, [blobs[0], *blobs])))
    return paths

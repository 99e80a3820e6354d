"""Tangent-space normal maps: the dense surface's shading carried onto the decimated mesh.

Decimation to ``target_faces`` keeps the silhouette but flattens detail smaller than a face.
The normal map stores, per texel, the dense surface's normal in the decimated surface's
tangent frame, so an engine shades the low-poly asset as the dense one.

Convention (glTF 2.0): tangent along increasing u, bitangent along increasing v (up in
the image), normal out of the surface; RGB = (n + 1) / 2. glTF files without tangents
leave them to the viewer, which derives them from the same UVs and normals (MikkTSpace).
The frames here are built as MikkTSpace builds them in the common case: face tangents from
the UV gradients, summed at each vertex and made orthogonal to its normal. Written by hand
because trimesh cannot write a TANGENT attribute and no installed library bakes normal
maps; where MikkTSpace splits a vertex's tangent between faces, the two may differ slightly.
"""

from __future__ import annotations

import numpy as np
import trimesh

from recon.render import sample_texture
from recon.texture import Resampling, TexelSurface, TexturedMesh, texel_surface


def vertex_tangents(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, normals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unit tangents (V, 3) orthogonal to ``normals`` along increasing u, and the sign (V,)
    that turns ``cross(normal, tangent)`` into the direction of increasing v."""
    edge1, edge2 = vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]]
    duv1, duv2 = uv[faces[:, 1]] - uv[faces[:, 0]], uv[faces[:, 2]] - uv[faces[:, 0]]
    determinant = duv1[:, 0] * duv2[:, 1] - duv2[:, 0] * duv1[:, 1]
    determinant = np.where(np.abs(determinant) < 1e-20, 1e-20, determinant)[:, None]
    # the face's position gradients along u and v, weighted by its area in 3D
    along_u = (edge1 * duv2[:, 1:2] - edge2 * duv1[:, 1:2]) / determinant
    along_v = (edge2 * duv1[:, 0:1] - edge1 * duv2[:, 0:1]) / determinant
    area = 0.5 * np.linalg.norm(np.cross(edge1, edge2), axis=1, keepdims=True)
    tangent_sum, bitangent_sum = np.zeros_like(vertices), np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(tangent_sum, faces[:, corner], area * _unit(along_u))
        np.add.at(bitangent_sum, faces[:, corner], area * _unit(along_v))
    tangents = _unit(tangent_sum - normals * (tangent_sum * normals).sum(axis=1, keepdims=True))
    signs = np.where((np.cross(normals, tangents) * bitangent_sum).sum(axis=1) < 0, -1.0, 1.0)
    return tangents, signs


def bake_normal_map(asset: TexturedMesh, dense: trimesh.Trimesh, texture_size: int | None = None) -> np.ndarray:
    """A tangent-space normal map (H, W, 3) in 0..1 for ``asset`` from the ``dense`` surface.

    Each texel takes the smooth normal of the nearest point of ``dense``, expressed in the
    frame interpolated from ``asset``'s vertex normals and tangents. Gutters take their
    nearest texel's value, as the base colour does.
    """
    size = texture_size or asset.texture.shape[0]
    texels = texel_surface(asset.vertices, asset.faces, asset.uv, size)
    on_dense = texels.nearest_on(dense, texels.interpolate(asset.vertices))
    return _in_tangent_space(asset, texels, _unit(on_dense.interpolate(np.asarray(dense.vertex_normals))))


def transfer_normal_map(source: TexturedMesh, target: TexturedMesh, resampling: Resampling) -> np.ndarray:
    """``source``'s normal map baked for ``target``, a simplified copy with UVs of its own
    (a LOD), at ``target``'s texels in ``resampling`` (``transfer_base_colour``): each texel
    takes the normal that ``source``'s map gives the nearest point of ``source``, carried
    from ``source``'s tangent frame into ``target``'s."""
    encoded = sample_texture(source.normal_texture, resampling.source_uv) * 2 - 1
    frame = _tangent_frames(source, resampling.on_source)
    detail = sum(encoded[:, axis:axis + 1] * frame[axis] for axis in range(3))
    return _in_tangent_space(target, resampling.texels, _unit(detail))


def _tangent_frames(asset: TexturedMesh, texels: TexelSurface) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit tangent, bitangent and normal of ``asset`` at every texel of ``texels``."""
    tangents, signs = vertex_tangents(asset.vertices, asset.faces, asset.uv, asset.normals)
    normal = _unit(texels.interpolate(asset.normals))
    tangent = _unit(texels.interpolate(tangents))
    tangent = _unit(tangent - normal * (tangent * normal).sum(axis=1, keepdims=True))
    bitangent = np.cross(normal, tangent) * np.sign(texels.interpolate(signs[:, None]))
    return tangent, bitangent, normal


def _in_tangent_space(asset: TexturedMesh, texels: TexelSurface, detail: np.ndarray) -> np.ndarray:
    """A normal map of ``asset``'s texels from unit ``detail`` normals (N, 3) at them."""
    in_tangent_space = np.stack([(detail * axis).sum(axis=1) for axis in _tangent_frames(asset, texels)], axis=1)
    # a detail normal facing away from the low-poly surface would shade it from behind
    in_tangent_space[:, 2] = np.maximum(in_tangent_space[:, 2], 0.05)
    encoded = (_unit(in_tangent_space) + 1) / 2
    return texels.fill(encoded, np.ones(len(encoded), bool))


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

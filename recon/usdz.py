"""USDZ for Apple's AR Quick Look and other USD clients (``usd-core``'s ``pxr``).

One mesh with a ``UsdPreviewSurface`` material (base colour, optional normal map, the
metallic and roughness factors), Y up, one unit a metre, packaged by ``UsdUtils``'s ARKit
packager, which refuses what AR Quick Look cannot show. ``compliance_errors`` runs
``UsdUtils.ComplianceChecker`` with its ARKit rules; the checker left ``usd-core`` after
26.5, which is why that version is pinned.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_usdz(
    output: str | Path, name: str, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, normals: np.ndarray,
    base_colour: Image.Image, normal_map: Image.Image | None = None, metallic: float = 0.0, roughness: float = 0.9,
) -> Path:
    """Write ``output`` (``.usdz``): the mesh (metres, +Y up; UVs with v up as in USD and
    trimesh) with its textures as PNG files inside the package."""
    from pxr import Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt

    output = Path(output)
    if output.suffix.lower() != ".usdz":
        raise ValueError(f"output must be a .usdz file, got {output}")
    prim_name = re.sub(r"\W", "_", name) or "asset"
    if prim_name[0].isdigit():
        prim_name = f"_{prim_name}"
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        layer = folder / f"{prim_name}.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        root = UsdGeom.Xform.Define(stage, f"/{prim_name}")
        stage.SetDefaultPrim(root.GetPrim())
        mesh = UsdGeom.Mesh.Define(stage, f"/{prim_name}/Geom/{prim_name}")
        points = Vt.Vec3fArray.FromNumpy(np.asarray(vertices, np.float32))
        mesh.CreatePointsAttr(points)
        mesh.CreateExtentAttr(UsdGeom.PointBased.ComputeExtent(points))
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, np.int32)))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.asarray(faces, np.int32).reshape(-1)))
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(np.asarray(normals, np.float32)))
        mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set(Vt.Vec2fArray.FromNumpy(np.asarray(uv, np.float32)))

        material = UsdShade.Material.Define(stage, f"/{prim_name}/Materials/base")
        surface = UsdShade.Shader.Define(stage, f"{material.GetPath()}/PreviewSurface")
        surface.CreateIdAttr("UsdPreviewSurface")
        surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(float(metallic))
        surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(float(roughness))
        material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        reader = UsdShade.Shader.Define(stage, f"{material.GetPath()}/uv")
        reader.CreateIdAttr("UsdPrimvarReader_float2")
        reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        textures = {"base_colour": (base_colour, "diffuseColor", "sRGB")}
        if normal_map is not None:
            textures["normal"] = (normal_map, "normal", "raw")
        (folder / "textures").mkdir()
        for texture_name, (image, slot, colour_space) in textures.items():
            image.convert("RGB").save(folder / "textures" / f"{texture_name}.png")
            texture = UsdShade.Shader.Define(stage, f"{material.GetPath()}/{texture_name}")
            texture.CreateIdAttr("UsdUVTexture")
            texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"textures/{texture_name}.png")
            texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(colour_space)
            texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
            if slot == "normal":  # tangent-space normals stored as (n + 1) / 2, as in glTF
                texture.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set((2.0, 2.0, 2.0, 1.0))
                texture.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set((-1.0, -1.0, -1.0, 0.0))
            texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
            surface.CreateInput(slot, Sdf.ValueTypeNames.Color3f if slot == "diffuseColor" else Sdf.ValueTypeNames.Normal3f
                                ).ConnectToSource(texture.ConnectableAPI(), "rgb")
        UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.partial.usdz")
        if not UsdUtils.CreateNewARKitUsdzPackage(Sdf.AssetPath(str(layer)), str(partial)):
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"USD could not package {output.name} for ARKit")
        partial.replace(output)
    return output


def compliance_errors(path: str | Path) -> list[str]:
    """``UsdUtils.ComplianceChecker``'s errors and failed checks for ``path`` under its ARKit
    rules; empty when the file complies."""
    from pxr import UsdUtils

    checker = UsdUtils.ComplianceChecker(arkit=True, skipARKitRootLayerCheck=False, rootPackageOnly=False,
                                         skipVariants=False, verbose=False)
    checker.CheckCompliance(str(path))
    return list(checker.GetErrors()) + list(checker.GetFailedChecks())

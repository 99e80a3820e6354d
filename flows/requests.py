"""Typed flow parameters (the Prefect UI renders them as forms) and the asset id of each.

Three kinds of request, one per flow: a prompt (text-to-3d), a photo (image-to-3d) and a
studio's blockout mesh with a prompt or photo to texture it from (mesh-to-3d). The asset
id hashes everything that decides the result: the parameters, the model revisions and the
bytes of every input file, so the same request always finds its finished stages and a
changed input file is a new asset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.assets import asset_id
from stages.bounds import Faces, Height, ImageSize, Lods, Steps, TextureSize


class PackageOptions(BaseModel):
    """A delivery set for an engine (``stages.package``), stored under ``{asset_id}/package/``."""

    model_config = ConfigDict(extra="forbid")

    engine: Literal["generic", "unreal", "unity", "godot"] = Field(
        "generic", description="naming of collision pieces; unreal also gets an ORM texture")
    collision: bool = Field(False, description="convex collision pieces (CoACD)")
    compress: bool = Field(False, description="also a KTX2 + meshopt compressed GLB")
    usdz: bool = Field(False, description="also a USDZ (ARKit compliant)")


class AssetOptions(BaseModel):
    """Every knob of the stages; each has a default that suits a studio's hero asset."""

    model_config = ConfigDict(extra="forbid")

    image_model: str = Field("sdxl-base", description="sdxl-base, sdxl-turbo or sdxl-lightning (prompts only)")
    image_steps: Steps | None = Field(None, description="SDXL steps; default: the model's preset")
    image_size: ImageSize | None = Field(None, description="SDXL image side; default: the model's preset")
    segmenter: Literal["sam", "u2net"] = "sam"
    version: Literal["v1.2", "v1.1"] | None = Field(
        None, description="Zero123++ version; default v1.2, or v1.1 with depth control (the ControlNet's version)")
    view_steps: Steps = Field(28, description="Zero123++ denoising steps (75-100 for fine detail)")
    conditioning_scale: float = Field(1.0, ge=0.0, le=2.0, description="depth ControlNet strength")
    target_faces: Faces = Field(20000, description="faces of a reconstructed LOD0")
    texture_size: TextureSize = Field(1024, description="side of the base-colour texture: a power of two")
    normal_map: bool = Field(False, description="also bake a tangent-space normal map of the dense surface's detail "
                                                "(reconstruction only)")
    keep_lighting: bool = Field(False, description="keep the views' lighting in the base colour instead of "
                                                   "dividing it out (reconstruction only)")
    lods: Lods = Field(3, description="LOD0 plus halvings of the face count")
    height: Height = Field(1.0, description="height in metres of a reconstructed asset")
    preview_size: int = Field(256, ge=32, le=1024, description="tile side of the contact sheet and turntable")
    package: PackageOptions | None = Field(None, description="also package the GLB for an engine; as JSON on the "
                                                             "command line: package='{\"engine\": \"unreal\"}'")

    @field_validator("package", mode="before")
    @classmethod
    def _package_from_json(cls, value: object) -> object:
        """Command-line options and batch rows give text: the package options as JSON."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"write the package options as JSON, for example {{\"engine\": \"unreal\"}}; "
                                 f"got {value!r}") from None
        return value


class AssetRequest(BaseModel):
    """One asset: its inputs, its seed and the stage options."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seed of every generative stage")
    options: AssetOptions = Field(default_factory=AssetOptions)

    @property
    def depth_mesh(self) -> str | None:
        """The mesh whose depth steers the views, if any."""
        return getattr(self, "mesh", None) or getattr(self, "blockout", None)

    @property
    def version(self) -> str:
        return self.options.version or ("v1.1" if self.depth_mesh else "v1.2")

    @model_validator(mode="after")
    def _depth_needs_v11(self) -> "AssetRequest":
        if self.depth_mesh and self.options.version == "v1.2":
            raise ValueError("depth control needs Zero123++ v1.1: the depth ControlNet is trained for it")
        return self


class TextTo3DRequest(AssetRequest):
    prompt: str = Field(description="what to make, for example 'a mossy treasure chest'")
    blockout: str | None = Field(None, description="optional mesh (path or s3:// URI) whose depth steers the views")


class ImageTo3DRequest(AssetRequest):
    image: str = Field(description="photo of one object: a local path or s3://bucket/key")
    blockout: str | None = Field(None, description="optional mesh (path or s3:// URI) whose depth steers the views")


class MeshTo3DRequest(AssetRequest):
    """Retexture: the studio's mesh keeps its geometry; Zero123++ v1.1 with depth control
    draws the six views it is textured from."""

    mesh: str = Field(description="blockout mesh (GLB, OBJ, PLY, OFF, STL): a local path or s3://bucket/key")
    prompt: str | None = Field(None, description="what it should look like")
    image: str | None = Field(None, description="or a reference photo (path or s3:// URI)")

    @model_validator(mode="after")
    def _one_reference(self) -> "MeshTo3DRequest":
        if (self.prompt is None) == (self.image is None):
            raise ValueError("mesh-to-3d needs exactly one of prompt or image to texture the mesh from")
        return self


def validation_reasons(error: ValidationError) -> str:
    """Pydantic's reasons on one line, each after the field it is about: what a batch row's
    outcome and the command line show (pydantic's own text spans several lines and links)."""
    def reason(detail: dict) -> str:
        location = detail["loc"][1:] if detail["loc"][:1] == ("options",) else detail["loc"]  # rows are flat
        where = ".".join(map(str, location)) or "request"
        problem = detail["ctx"]["error"] if detail["type"] == "value_error" else detail["msg"]
        return f"{where}: {problem}"

    return "; ".join(reason(detail) for detail in error.errors())


def input_files(request: AssetRequest) -> dict[str, str]:
    """The user files a request reads, by role."""
    roles = ("image", "mesh", "blockout")
    return {role: getattr(request, role) for role in roles if getattr(request, role, None)}


def models_used(request: AssetRequest) -> list[str]:
    """Registry names of the models the request runs."""
    options = request.options
    used = [] if getattr(request, "image", None) else [options.image_model]
    used += ["u2netp"] + (["sam-vit-huge"] if options.segmenter == "sam" else [])
    used.append(f"zero123plus-{request.version}")
    if request.depth_mesh:
        used.append("controlnet-zp11-depth-v1")
    return used


def request_asset_id(request: AssetRequest) -> str:
    """``{slug}-{hash}``: slug of the prompt or input file name, hash of everything that
    decides the result. Fails with a clear error on an empty prompt, a missing input or a
    model the settings' licence policy refuses."""
    from flows.tasks import input_digest
    from stages.registry import check_licence_policy, registry
    from stages.settings import load_settings
    from stages.bounds import prompt_words

    prompt = getattr(request, "prompt", None)
    if prompt is not None:
        prompt_words(prompt)  # bad input fails before anything runs
    settings = load_settings()
    check_licence_policy(models_used(request), settings)  # so does a model the licence policy refuses
    models = registry(settings)
    revisions = {name: f"{models[name].source}@{models[name].revision}" for name in models_used(request)}
    files = input_files(request)
    digests = {role: input_digest(location) for role, location in files.items()}
    name = prompt or Path(files.get("mesh") or files["image"]).stem
    kind = type(request).__name__
    dumped = request.model_dump()
    if dumped["options"]["package"] is None:  # ids of assets made before the option existed stay theirs
        del dumped["options"]["package"]
    return asset_id(name, {"kind": kind, "request": dumped, "models": revisions, "inputs": digests})


def parent_asset(request: AssetRequest) -> str | None:
    """The asset a retexture starts from, when its mesh is one of the store's own GLBs
    (``{store}/{asset_id}/recon/asset.glb``): lineage across assets."""
    from flows.tasks import store

    if not isinstance(request, MeshTo3DRequest):
        return None
    mesh = request.mesh
    root = store().uri("_").rsplit("/", 1)[0] + "/"
    mesh_uri = mesh if "://" in mesh else Path(mesh).expanduser().resolve().as_uri()
    return mesh_uri[len(root):].split("/", 1)[0] if mesh_uri.startswith(root) else None

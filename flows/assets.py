"""Asset identity and lineage: the asset id and the manifest that marks an asset complete.

The id is a readable slug of the prompt or input name plus a hash of the canonical request
(inputs, parameters, model revisions): the same request always gives the same id, which is
what lets a rerun find the stages it already finished. ``manifest.json`` is written last;
an asset without one is incomplete, whatever else is stored under its id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Mapping

from flows.store import ArtifactStore, StoredObject

SLUG_LENGTH = 40
HASH_LENGTH = 12
MANIFEST = "manifest.json"
PACKAGES = ("text-to-3d", "torch", "diffusers", "transformers", "prefect", "trimesh", "open3d-cpu", "pymeshlab",
            "xatlas", "onnxruntime", "numpy", "boto3")


def slugify(text: str) -> str:
    """``[a-z0-9-]``, at most 40 characters, cut at a word boundary where possible."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > SLUG_LENGTH:
        slug = slug[:SLUG_LENGTH]
        slug = slug.rsplit("-", 1)[0] if "-" in slug[SLUG_LENGTH // 2:] else slug
    return slug.strip("-") or "asset"


def canonical_json(data: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal requests give equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def asset_id(name: str, request: Mapping[str, Any]) -> str:
    """``{slug}-{hash}``: the slug of ``name``, the hash of the canonical ``request``."""
    digest = hashlib.sha256(canonical_json(request).encode()).hexdigest()[:HASH_LENGTH]
    return f"{slugify(name)}-{digest}"


def package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class StageRecord:
    """One stage's lineage: outputs with checksums, timing, models and cache key."""

    status: str
    seconds: float
    outputs: dict[str, StoredObject]
    models: list[dict[str, str]] = field(default_factory=list)
    cache_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 3),
                "outputs": {name: stored.to_dict() for name, stored in self.outputs.items()},
                "models": self.models, "cache_key": self.cache_key, **({"details": self.details} if self.details else {})}


def manifest_key(asset: str) -> str:
    return f"{asset}/{MANIFEST}"


def build_manifest(asset: str, request: Mapping[str, Any], stages: Mapping[str, StageRecord], started: datetime,
                   parent: str | None = None) -> dict[str, Any]:
    """An asset's lineage: request, per-stage outputs and timings, models and what their
    licences allow, packages, parent."""
    from stages.registry import licence_summary
    from stages.settings import load_settings

    used = [model["name"] for record in stages.values() for model in record.models]
    return {
        "asset_id": asset,
        "request": dict(request),
        "stages": {name: record.to_dict() for name, record in stages.items()},
        "models": {name: record.models for name, record in stages.items() if record.models},
        "licences": licence_summary(used, load_settings()),
        "packages": package_versions(),
        "parent_asset": parent,
        "started_at": started.isoformat(),
        "completed_at": datetime.now(timezone.utc).isoformat(),
    }


def write_manifest(store: ArtifactStore, asset: str, manifest: Mapping[str, Any]) -> StoredObject:
    """Write the manifest: the last write of an asset, which marks it complete."""
    return store.put(manifest_key(asset), (json.dumps(manifest, indent=2) + "\n").encode())


def read_manifest(store: ArtifactStore, asset: str) -> dict[str, Any] | None:
    """The asset's manifest, or ``None`` while the asset is incomplete."""
    if not store.exists(manifest_key(asset)):
        return None
    return json.loads(store.get(manifest_key(asset)))

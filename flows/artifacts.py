"""Lineage in the Prefect UI: per asset a markdown summary with its previews, a table of
its stages and links to its files, keyed by asset id so each rerun adds a new version.

The previews are embedded in the summary as small ``data:`` URIs, so they show on every
store: a browser page loads no ``file://`` image, and a presigned link expires. Each image
links its full-size file: a presigned HTTPS URL on S3, a plain path on a local store.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.assets import manifest_key
from flows.store import ArtifactStore
from flows.tasks import key_of
from stages.registry import licence_line

# Images the summary embeds, in this order: (stage, output, caption).
EMBEDDED = (("image", "image", "SDXL image"), ("input_image", "image", "input photo"),
            ("cutout", "reframed", "cutout"), ("depth", "depth_grid", "depth condition"),
            ("views", "grid", "six views"), ("previews", "contact_sheet", "contact sheet"),
            ("previews", "turntable", "turntable"))
LINKED = (("recon", "asset", "glb"), ("views", "grid", "views"), ("previews", "contact_sheet", "contact-sheet"))

# Per embedded image, counted as the data URI's characters: the summary is stored in the
# Prefect database and sent whole to every browser that opens it.
THUMBNAIL_MAX_CHARS = 150_000
THUMBNAIL_SIDE = 512
# Lossy formats at this quality are indistinguishable from the source at thumbnail size.
THUMBNAIL_QUALITY = 85


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _encodings(image: Image.Image) -> list[str]:
    """The image as PNG, WebP and (without transparency) JPEG data URIs."""
    encoded = []
    formats = [("PNG", "image/png", {"optimize": True}), ("WEBP", "image/webp", {"quality": THUMBNAIL_QUALITY})]
    if image.mode == "RGB":
        formats.append(("JPEG", "image/jpeg", {"quality": THUMBNAIL_QUALITY, "optimize": True}))
    for image_format, mime, options in formats:
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, **options)
        encoded.append(_data_uri(mime, buffer.getvalue()))
    return encoded


def thumbnail_data_uri(data: bytes, name: str, max_chars: int = THUMBNAIL_MAX_CHARS,
                       side: int = THUMBNAIL_SIDE) -> str:
    """A ``data:`` URI of at most ``max_chars`` showing the image in ``data``.

    A GIF small enough is embedded whole (the turntable keeps turning); otherwise its first
    frame, like any still, is shrunk to fit ``side`` and encoded as the smallest of PNG, WebP
    and JPEG, halving the side until the URI fits. ``name`` names the image in errors.
    """
    from stages.image_input import open_image, to_8bit_rgb_or_rgba

    with Image.open(io.BytesIO(data)) as opened:
        if opened.format == "GIF":
            whole = _data_uri("image/gif", data)
            if len(whole) <= max_chars:
                return whole
            opened.seek(0)
            image = to_8bit_rgb_or_rgba(opened)
        else:
            image = open_image(data, name=name)
    while side >= 16:
        image.thumbnail((side, side))
        smallest = min(_encodings(image), key=len)
        if len(smallest) <= max_chars:
            return smallest
        side //= 2
    raise ValueError(f"{name}: no thumbnail fits in {max_chars} characters")


def _is_url(location: str) -> bool:
    return location.startswith(("https://", "http://"))


def _file_reference(location: str, text: str) -> str:
    """A markdown link for a URL, the path itself (as code) for a local file."""
    return f"[{text}]({location})" if _is_url(location) else f"`{location}`"


def summary_markdown(store: ArtifactStore, asset: str, manifest: dict[str, Any]) -> str:
    """The asset's summary: its subject, its previews as thumbnails and where its files are."""
    stages = manifest["stages"]
    keys = {(stage, output): key_of(record, output, asset)
            for stage, record in stages.items() for output in record["outputs"]}
    request = manifest["request"]
    subject = request.get("prompt") or request.get("image") or request.get("mesh")
    lines = [f"# {asset}", "", f"{subject}", "",
             f"manifest: {_file_reference(store.link(manifest_key(asset)), 'manifest.json')}", ""]
    if "licences" in manifest:  # manifests written before licences were recorded have none
        lines += [f"licences: {licence_line(manifest['licences'])}", ""]
    if manifest.get("parent_asset"):
        lines += [f"retexture of asset `{manifest['parent_asset']}`", ""]
    if ("recon", "asset") in keys:
        lines += [f"GLB: {_file_reference(store.link(keys['recon', 'asset']), 'asset.glb')}", ""]
    for stage, output, caption in EMBEDDED:
        if (stage, output) not in keys:
            continue
        key = keys[stage, output]
        thumbnail = thumbnail_data_uri(store.get(key), name=store.uri(key))
        lines += [f"**{caption}**", "", f"![{caption}]({thumbnail})", "",
                  f"full size: {_file_reference(store.link(key), key.rsplit('/', 1)[-1])}", ""]
    return "\n".join(lines)


def stage_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage: seconds, faces, texture size and the glTF validator's verdict."""
    rows = []
    for name, record in manifest["stages"].items():
        details = record.get("details", {})
        rows.append({"stage": name, "seconds": record["seconds"], "faces": details.get("faces", ""),
                     "texture_size": details.get("texture_size", ""), "validator": details.get("validator", ""),
                     "models": ", ".join(model["name"] for model in record.get("models", []))})
    return rows


def publish_asset_artifacts(store: ArtifactStore, asset: str, manifest: dict[str, Any]) -> None:
    create_markdown_artifact(summary_markdown(store, asset, manifest), key=f"{asset}-summary",
                             description=f"asset {asset}: previews")
    create_table_artifact(stage_table(manifest), key=f"{asset}-stages", description=f"asset {asset}: stages")
    # Link artifacts only where the store gives URLs: a local path is no link a browser follows.
    for stage, output, name in LINKED:
        record = manifest["stages"].get(stage)
        if record is None or output not in record["outputs"]:
            continue
        link = store.link(key_of(record, output, asset))
        if _is_url(link):
            create_link_artifact(link, link_text=f"{asset} {name}", key=f"{asset}-{name}",
                                 description=f"asset {asset}: {stage}/{output}")

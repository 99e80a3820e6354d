"""Lineage in the Prefect UI: per asset a markdown summary with its previews, a table of
its stages and links to its files, keyed by asset id so each rerun adds a new version."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.store import ArtifactStore
from flows.tasks import key_of
from stages.registry import licence_line

# Images the summary embeds, in this order: (stage, output, caption).
EMBEDDED = (("image", "image", "SDXL image"), ("input_image", "image", "input photo"),
            ("cutout", "reframed", "cutout"), ("depth", "depth_grid", "depth condition"),
            ("views", "grid", "six views"), ("previews", "contact_sheet", "contact sheet"),
            ("previews", "turntable", "turntable"))
LINKED = (("recon", "asset", "glb"), ("views", "grid", "views"), ("previews", "contact_sheet", "contact-sheet"))


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
    stages = manifest["stages"]
    link = {(stage, output): store.link(key_of(record, output, asset))
            for stage, record in stages.items() for output in record["outputs"]}
    images = [f"**{caption}**\n\n![{caption}]({link[stage, output]})\n"
              for stage, output, caption in EMBEDDED if (stage, output) in link]
    request = manifest["request"]
    subject = request.get("prompt") or request.get("image") or request.get("mesh")
    lines = [f"# {asset}", "", f"{subject}", "", f"manifest: `{store.uri(f'{asset}/manifest.json')}`", ""]
    lines += [f"licences: {licence_line(manifest['licences'])}", ""]
    if manifest.get("parent_asset"):
        lines += [f"retexture of asset `{manifest['parent_asset']}`", ""]
    lines += images
    create_markdown_artifact("\n".join(lines), key=f"{asset}-summary", description=f"asset {asset}: previews")
    create_table_artifact(stage_table(manifest), key=f"{asset}-stages", description=f"asset {asset}: stages")
    for stage, output, name in LINKED:
        if (stage, output) in link:
            create_link_artifact(link[stage, output], link_text=f"{asset} {name}", key=f"{asset}-{name}",
                                 description=f"asset {asset}: {stage}/{output}")

"""The asset summary shows its previews on every store: thumbnails as ``data:`` URIs under
the size cap, full files as plain paths or presigned links that expire when settings say,
and ``serve --port N`` serves a UI that asks the API on N (checked in Chromium when
installed)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DATA_URI = re.compile(r"!\[[^\]]*\]\((data:image/(png|jpeg|webp|gif);base64,([A-Za-z0-9+/=]+))\)")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _gif(frames: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Random pixels: incompressible, so only shrinking brings them under the cap."""
    channels = len(mode)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8), mode)


def publish_sample_asset(store, asset: str = "bottle-0123456789ab") -> dict:
    """Store what a mesh-to-3d run stores (a photo, a transparent cutout, a depth grid, a
    noisy 2x3 view grid, a contact sheet, a turntable GIF too large to embed whole and a
    GLB) and return its manifest."""
    from flows.assets import StageRecord, build_manifest
    from stages.sample_input import draw_sample_object

    photo = draw_sample_object(256)
    frames = [_noise(192, 192, seed) for seed in range(12)]
    files = {
        ("input_image", "image"): ("input/bottle.png", _png(photo)),
        ("cutout", "reframed"): ("cutout/reframed.png", _png(_noise(1024, 1024, 1, "RGBA"))),
        ("depth", "depth_grid"): ("depth/depth_grid.png", _png(_noise(640, 960, 2).convert("L"))),
        ("views", "grid"): ("views/grid.png", _png(_noise(1280, 1920, 3))),
        ("previews", "contact_sheet"): ("previews/contact.png", _png(_noise(1024, 1024, 4))),
        ("previews", "turntable"): ("previews/turntable.gif", _gif(frames)),
        ("recon", "asset"): ("recon/asset.glb", b"glTF"),
    }
    stages: dict[str, dict] = {}
    for (stage, output), (path, data) in files.items():
        stages.setdefault(stage, {})[output] = store.put(f"{asset}/{path}", data)
    records = {stage: StageRecord("completed", 1.0, outputs) for stage, outputs in stages.items()}
    return build_manifest(asset, {"mesh": "bottle.glb", "image": "bottle.png"}, records, datetime.now(timezone.utc))


def _thumbnails(markdown: str) -> list[tuple[str, str, bytes]]:
    return [(uri, mime, base64.b64decode(data)) for uri, mime, data in DATA_URI.findall(markdown)]


def test_summary_embeds_every_preview_as_a_data_uri_under_the_cap_and_names_files_by_path(tmp_path):
    from flows.artifacts import THUMBNAIL_MAX_CHARS, summary_markdown
    from flows.store import LocalStore

    store = LocalStore(tmp_path / "store")
    manifest = publish_sample_asset(store)
    markdown = summary_markdown(store, manifest["asset_id"], manifest)

    assert "file://" not in markdown
    thumbnails = _thumbnails(markdown)
    # photo, cutout, depth condition, six views, contact sheet, a turntable frame
    assert len(thumbnails) == len(re.findall(r"!\[", markdown)) == 6
    for uri, mime, data in thumbnails:
        assert len(uri) <= THUMBNAIL_MAX_CHARS
        with Image.open(io.BytesIO(data)) as image:
            assert image.format.lower() == mime and max(image.size) <= 512
    # the transparent cutout keeps its transparency: no JPEG for it
    assert thumbnails[1][1] in ("png", "webp") and Image.open(io.BytesIO(thumbnails[1][2])).mode == "RGBA"
    for key in ("views/grid.png", "previews/turntable.gif", "recon/asset.glb", "manifest.json"):
        assert f"`{store.root / manifest['asset_id'] / key}`" in markdown


def test_a_small_turntable_gif_is_embedded_whole_and_a_large_one_as_one_frame():
    from flows.artifacts import thumbnail_data_uri

    small = _gif([Image.new("RGB", (64, 64), (40 * index, 90, 120)) for index in range(6)])
    assert thumbnail_data_uri(small, "small.gif") == "data:image/gif;base64," + base64.b64encode(small).decode()

    large = _gif([_noise(256, 256, seed) for seed in range(8)])
    uri = thumbnail_data_uri(large, "large.gif", max_chars=60_000)
    assert len(uri) <= 60_000 and not uri.startswith("data:image/gif")


def test_an_image_that_fits_at_no_size_is_a_clear_error():
    from flows.artifacts import thumbnail_data_uri

    with pytest.raises(ValueError, match="grid.png: no thumbnail fits in 40 characters"):
        thumbnail_data_uri(_png(_noise(256, 256)), "grid.png", max_chars=40)


def _expires(url: str) -> int:
    return int(parse_qs(urlparse(url).query)["X-Amz-Expires"][0])


def test_presigned_links_expire_after_the_seconds_settings_give(s3_endpoint, monkeypatch):
    from flows.artifacts import summary_markdown
    from flows.tasks import store

    bucket = f"links-{free_port()}"
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "TEXT_TO_3D_STORE": f"s3://{bucket}/assets",
                        "TEXT_TO_3D_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)

    assert _expires(store().link("a/b.png")) == 24 * 3600  # a day by default
    monkeypatch.setenv("TEXT_TO_3D_LINK_SECONDS", "900")
    target = store()
    manifest = publish_sample_asset(target)
    markdown = summary_markdown(target, manifest["asset_id"], manifest)
    links = re.findall(r"\]\((https?://[^)]+)\)", markdown)
    assert len(links) == 8 and {_expires(link) for link in links} == {900}  # 6 previews, GLB, manifest
    assert "file://" not in markdown and len(_thumbnails(markdown)) == 6
    # a presigned link opens the file without credentials
    with urllib.request.urlopen(links[-1]) as response:
        assert response.read() == target.get(f"{manifest['asset_id']}/previews/turntable.gif")

    monkeypatch.setenv("TEXT_TO_3D_LINK_SECONDS", str(8 * 24 * 3600))
    with pytest.raises(ValueError, match="link_seconds"):
        store()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_serve_on_another_port_serves_a_ui_that_asks_the_api_on_that_port(tmp_path):
    """`/ui-settings` names port N; with Chromium installed, the artifact page rendered by
    that UI (which must reach the API on N to show anything) holds the embedded previews."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.artifacts import publish_asset_artifacts
    from flows.store import LocalStore

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # a stale API URL in the environment, as in a shell that once ran the default server
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": "http://127.0.0.1:4200/api",
           "PYTHONPATH": str(ROOT)}
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--gpus", "1"],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get_json(f"{base}/api/health")
                break
            except OSError:
                assert serve.poll() is None and time.monotonic() < deadline, "serve's server did not start"
                time.sleep(1)
        ui_settings = _get_json(f"{base}/ui-settings")
        assert ui_settings["api_url"] == f"{base}/api"

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.skip("chromium is not installed: the rendered artifact page is not checked")
        store = LocalStore(tmp_path / "store")
        manifest = publish_sample_asset(store)
        asset = manifest["asset_id"]

        @flow(name="publish-summary")
        def publish() -> None:
            publish_asset_artifacts(store, asset, manifest)

        with temporary_settings({PREFECT_API_URL: f"{base}/api"}):
            publish()
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            with get_client(sync_client=True) as client:
                [artifact] = client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{asset}-summary"])))
            # The flow's events and logs go to this server through process-wide workers; sent
            # now, they cannot keep a later test's harness waiting on a server that is gone.
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all()
            EventsWorker.drain_all()
        page = f"{base}{ui_settings['v2_base_url']}/artifacts/artifact/{artifact.id}"
        headless = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--virtual-time-budget=20000"]
        dom = subprocess.run([*headless, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        assert asset in dom, dom[-2000:]
        assert len(re.findall(r'<img[^>]+src="data:image/(?:png|jpeg|webp|gif);base64,', dom)) == 6
        assert "file://" not in dom
    finally:
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=60)
        print(output[-3000:])

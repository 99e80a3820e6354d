"""Model residency: load each model once per process and keep what fits on the device.

A worker runs many flow runs; loading SDXL or SAM for each would cost more than the work.
The cache keys a loaded model by its source, revision, device and dtype and hands the same
object back. The memory policy decides what happens when the next model does not fit:

- ``resident``: every model stays on the device (an error when it cannot fit);
- ``offload``: diffusers pipelines use model CPU offload (each network on the GPU only while it runs);
- ``evict``: drop the least recently used models until the new one fits;
- ``auto``: evict, and fall back to offload when even an empty device is too small.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from stages.registry import ModelSpec, ResolvedModel, model_spec, open_onnx, resolve
from stages.runtime import resolve_device, resolve_dtype
from stages.settings import MemoryPolicy, Settings

logger = logging.getLogger(__name__)


@dataclass
class SamBundle:
    """Segment Anything's network and its processor, which always travel together."""

    model: Any
    processor: Any

    def to(self, device: torch.device) -> "SamBundle":
        self.model.to(device)
        return self


@dataclass
class _Entry:
    model: Any
    bytes: int
    device: torch.device
    offloaded: bool


class ModelCache:
    """Process-wide, thread-safe cache of loaded models with a memory policy."""

    def __init__(self, policy: MemoryPolicy = "auto", max_resident_bytes: int | None = None) -> None:
        self.policy = policy
        self.max_resident_bytes = max_resident_bytes
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, resolved: ResolvedModel, device: torch.device, dtype: torch.dtype, extra: tuple = ()) -> Any:
        """The loaded model for ``resolved`` on ``device``: from the cache, or loaded now."""
        key = (resolved.spec.name, str(resolved.path), resolved.revision, str(resolved.weights), str(device), dtype,
               *extra)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key].model
            model = load_model(resolved, dtype, *extra)
            size = model_bytes(model)
            offloaded = self._make_room(size, device, resolved.spec.name)
            place(model, device, offload=offloaded)
            self._entries[key] = _Entry(model, size, device, offloaded)
            return model

    @property
    def names(self) -> list[str]:
        """Names of the cached models, least recently used first."""
        return [key[0] for key in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            _release_memory()

    def _make_room(self, size: int, device: torch.device, name: str) -> bool:
        """Evict per policy so ``size`` bytes fit; return whether the model must be offloaded."""
        if self.policy == "offload":
            return device.type == "cuda"
        budget = self._budget(device)
        if budget is None or size <= budget - self._resident_bytes(device):
            return False
        if self.policy == "resident":
            raise MemoryError(f"{name} needs {size / 2**30:.1f} GiB and the memory policy keeps every model resident")
        while self._entries and size > budget - self._resident_bytes(device):
            evicted_key, _ = self._entries.popitem(last=False)
            logger.info("evicting %s to make room for %s", evicted_key[0], name)
            _release_memory()
            budget = self._budget(device) or budget
        if size <= budget - self._resident_bytes(device):
            return False
        if self.policy == "evict" or device.type != "cuda":
            raise MemoryError(f"{name} needs {size / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB budget")
        logger.info("%s does not fit on %s even alone; using model CPU offload", name, device)
        return True

    def _budget(self, device: torch.device) -> int | None:
        if self.max_resident_bytes is not None:
            return self.max_resident_bytes
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return free + self._resident_bytes(device)
        return None

    def _resident_bytes(self, device: torch.device) -> int:
        return sum(e.bytes for e in self._entries.values() if e.device == device and not e.offloaded)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_bytes(model: Any) -> int:
    """Parameter and buffer bytes of every torch module inside ``model``."""
    modules = [model] if isinstance(model, torch.nn.Module) else []
    if hasattr(model, "components"):
        modules = [m for m in model.components.values() if isinstance(m, torch.nn.Module)]
    elif isinstance(model, SamBundle):
        modules = [model.model]
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def place(model: Any, device: torch.device, offload: bool = False) -> None:
    """Move ``model`` to ``device``, or let diffusers offload it network by network."""
    if offload and hasattr(model, "enable_model_cpu_offload"):
        model.enable_model_cpu_offload(device=device)
    elif hasattr(model, "to"):
        model.to(device)


def load_model(resolved: ResolvedModel, dtype: torch.dtype, *extra: ResolvedModel) -> Any:
    """Load a resolved model onto the CPU in ``dtype``: safetensors only, never repository code.

    ``extra`` carries a Zero123++ pipeline's depth ControlNet.
    """
    spec, path = resolved.spec, resolved.path
    if spec.kind in ("sdxl", "sdxl-refiner"):
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

        options: dict[str, Any] = {"dtype": dtype, "variant": spec.variant, "use_safetensors": True}
        if resolved.weights is not None:
            # A distilled UNet (SDXL-Lightning) shipped as one file beside the base pipeline.
            from safetensors.torch import load_file

            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path / "unet"))
            unet.load_state_dict(load_file(resolved.weights))
            options["unet"] = unet if dtype == torch.float32 else unet.to(dtype)
        pipeline_class = StableDiffusionXLPipeline if spec.kind == "sdxl" else StableDiffusionXLImg2ImgPipeline
        pipeline = pipeline_class.from_pretrained(path, **options)
        if spec.timestep_spacing:
            pipeline.scheduler = pipeline.scheduler.from_config(
                pipeline.scheduler.config, timestep_spacing=spec.timestep_spacing
            )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    if spec.kind == "sam":
        from transformers import SamModel, SamProcessor

        model = SamModel.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()
        return SamBundle(model, SamProcessor.from_pretrained(path))
    if spec.kind == "zero123pp":
        from zero123pp import Zero123PlusPipeline

        controlnet = extra[0].path if extra else None
        pipeline = Zero123PlusPipeline.from_pretrained(path, controlnet=controlnet, torch_dtype=dtype)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    if spec.kind == "controlnet":
        from zero123pp.pipeline import load_controlnet

        return load_controlnet(path, torch_dtype=dtype)
    if spec.kind == "onnx":
        return open_onnx(path)
    raise ValueError(f"{spec.name}: no loader for models of kind {spec.kind!r}")


_CACHE: ModelCache | None = None


def model_cache(settings: Settings) -> ModelCache:
    """The process-wide cache, created on first use with the settings' memory policy."""
    global _CACHE
    if _CACHE is None:
        _CACHE = ModelCache(settings.memory_policy, settings.max_resident_bytes)
    return _CACHE


@functools.lru_cache(maxsize=None)
def _resolve_once(spec: ModelSpec) -> ResolvedModel:
    """Resolution asks the hub which commit a revision names: once per spec and process,
    not on every stage call."""
    return resolve(spec)


def resolved_model(name: str, settings: Settings) -> ResolvedModel:
    """The files and revision ``get_model`` loads for the registry model ``name`` (resolved
    once per process), without loading it: what a stage's cache key records."""
    return _resolve_once(model_spec(name, settings))


# Keyed by id: a model evicted and collected may pass its id, and so its lock, to a later
# model, which only makes them take turns.
_MODEL_LOCKS: dict[int, threading.Lock] = {}
_MODEL_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and what was resolved for it (spec, files, revision: its lineage)."""

    model: Any
    resolved: ResolvedModel

    @property
    def spec(self) -> ModelSpec:
        return self.resolved.spec

    @property
    def lock(self) -> threading.Lock:
        """Held while the model runs: one cached model serves every thread of the process,
        and a pipeline is not reentrant (Zero123++'s reference attention swaps processors
        per call), so concurrent stages take turns on it."""
        with _MODEL_LOCKS_GUARD:
            return _MODEL_LOCKS.setdefault(id(self.model), threading.Lock())

    def record(self) -> dict[str, str]:
        """What lineage records of a model: name, source, resolved revision, licence."""
        spec = self.spec
        return {"name": spec.name, "source": spec.source, "revision": self.resolved.revision, "licence": spec.licence}


def get_model(name: str, settings: Settings, controlnet: str | None = None) -> LoadedModel:
    """Resolve, load (once per process) and place the registry model ``name``.

    ``controlnet`` names a ControlNet to attach (Zero123++ v1.1 with depth control).
    """
    spec = model_spec(name, settings)
    resolved = _resolve_once(spec)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(spec.dtype if spec.dtype != "auto" else settings.dtype, device)
    extra = (_resolve_once(model_spec(controlnet, settings)),) if controlnet else ()
    return LoadedModel(model_cache(settings).get(resolved, device, dtype, extra), resolved)

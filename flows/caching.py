"""Stage caching a studio can trust: what a stage's cache key holds, when a stored result may
be reused, how results are written, and the lock that makes one run at a time write a stage.

- The key (``StageCachePolicy``) holds everything that decides a stage's outputs: its
  arguments and the bytes of the stored objects it reads, the task's source, the resolved
  files of its models (a hub commit or a local file's SHA-256, never a branch name), device
  and dtype, the code of ``stages``, ``recon`` and ``zero123pp`` with the versions of the
  libraries that shape outputs, and the store's root.
- A stored result is reused only while it is plain JSON written by this serializer and every
  output it names is still in the store with its SHA-256. Prefect reuses any record found
  under a key, so the policy checks the record *before* it answers with a key: a record
  that fails is skipped by answering with the key's next generation (``{key}-1``,
  ``{key}-2``, ...), where the stage runs again and writes a fresh record. Nothing is
  deleted or rewritten from inside a key computation, and concurrent runs walk the same
  generations to the same answer.
- Results are plain JSON (``PLAIN_JSON``): no pickle, and no class hooks that import code by
  name, so writing the result storage never runs code on a worker. Prefect decodes a record
  with the serializer the record itself names, so the check above also refuses any record
  that names another; a record swapped in between that check and Prefect's read (moments
  later, in the same task run) is outside what this guards.
- ``SERIALIZABLE`` isolation with ``StageLocks``: the first run of a stage holds its key's
  lock while it computes and records; a concurrent run of the same request waits, then
  finds the record and reuses it.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from prefect.cache_policies import INPUTS, CachePolicy
from prefect.locking.protocol import LockManager
from prefect.serializers import JSONSerializer
from prefect.utilities.hashing import hash_objects

from flows.store import ArtifactStore, IntegrityError, sha256_of

PLAIN_JSON = JSONSerializer(object_encoder=None, object_decoder=None)
"""JSON with no object hooks: plain dicts, lists, strings and numbers in, the same out."""

CODE_PACKAGES = ("stages", "recon", "zero123pp")
# The libraries whose versions change what a stage writes (the five the issue names, under
# both names open3d ships as, and the mesh, atlas and inference libraries recon and the
# matting run on).
CODE_DISTRIBUTIONS = ("torch", "diffusers", "transformers", "open3d", "open3d-cpu", "pymeshlab", "trimesh", "xatlas",
                      "onnxruntime")

ModelsOf = Callable[[dict[str, Any]], list[str]]


def source_digest(folders: list[Path]) -> str:
    """SHA-256 over the name and bytes of every source file (``.py``, ``.cjs``) in ``folders``."""
    digest = hashlib.sha256()
    for folder in folders:
        files = sorted(path for pattern in ("*.py", "*.cjs") for path in folder.rglob(pattern))
        for path in files:
            digest.update(f"{folder.name}/{path.relative_to(folder).as_posix()}".encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.cache
def code_version() -> dict[str, Any]:
    """The code every stage runs: its packages' sources and the installed library versions.
    Computed once per process (the sources a process imported do not change under it)."""
    folders = [Path(importlib.util.find_spec(name).submodule_search_locations[0]) for name in CODE_PACKAGES]
    versions = {}
    for name in CODE_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"sources": source_digest(folders), "versions": versions}


def store_root(settings: Any) -> str:
    """The store a stage writes to: an absolute local folder, or an S3 prefix at its endpoint."""
    if settings.store.startswith("s3://"):
        return f"{settings.store.rstrip('/')}@{settings.s3_endpoint_url or 'aws'}"
    return str(Path(settings.store).expanduser().resolve())


def model_version(name: str, settings: Any, device: Any) -> dict[str, Any]:
    """What decides a model's outputs: its resolved files, dtype and loading options. The
    registry's source and branch are left out: the files say what was loaded."""
    from stages.model_cache import resolved_model
    from stages.registry import content_revision, model_spec
    from stages.runtime import resolve_dtype

    spec = model_spec(name, settings)
    try:
        files = content_revision(resolved_model(name, settings))
    except ValueError as error:  # reconstruction mats by colour alone without u2netp
        files = f"unavailable: {error}"
    dtype = None if spec.kind == "onnx" else str(
        resolve_dtype(spec.dtype if spec.dtype != "auto" else settings.dtype, device))
    loading = {field: value for field, value in asdict(spec).items()
               if field not in ("name", "source", "base", "revision", "sha256", "licence", "dtype")}
    return {"files": files, "dtype": dtype, **loading}


def stored_digest(store: ArtifactStore, key: str) -> str:
    """The SHA-256 of a stored object a stage reads; a missing or damaged object is keyed as
    such, and the stage itself then fails on it with the store's own error."""
    try:
        return sha256_of(store.get(key))
    except (FileNotFoundError, IntegrityError, ValueError) as error:
        return f"unreadable: {type(error).__name__}"


def outputs_intact(result: Any, asset: str, store: ArtifactStore) -> bool:
    """Whether every output a stage result names is in this store with its SHA-256 and size.
    Each output is read whole (a few MB a stage): the checksum recorded beside an object says
    what was written, only its bytes say what is there now."""
    try:
        for stored in result["outputs"].values():
            uri = stored["uri"]
            key = uri[uri.index(f"{asset}/"):]
            if store.uri(key) != uri:
                return False
            data = store.get(key)
            if sha256_of(data) != stored["sha256"] or len(data) != stored["bytes"]:
                return False
    except (FileNotFoundError, IntegrityError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def trusted_result(raw: bytes) -> tuple[bool, Any]:
    """``(usable, result)`` of a raw result record, read as plain JSON and never decoded by
    Prefect first: a record is trusted only when it names ``PLAIN_JSON`` as its serializer.
    An expired record counts as absent (``usable`` and ``None``): Prefect rewrites it."""
    try:
        record = json.loads(raw)
        metadata_ = record["metadata"]
        if metadata_["serializer"] != PLAIN_JSON.model_dump(mode="json"):
            return False, None
        if metadata_.get("expiration") is not None:
            return True, None
        return True, json.loads(record["result"])
    except (ValueError, KeyError, TypeError):
        return False, None


def _settings_and_store() -> tuple[Any, ArtifactStore]:
    from stages.settings import load_settings

    from flows.store import open_store

    settings = load_settings()
    return settings, open_store(settings.store, settings.s3_endpoint_url, settings.s3_max_attempts)


def _read_record(result_store: Any, key: str) -> bytes | None:
    """The raw bytes of the result record under ``key``, or ``None`` when there is none."""
    # Prefect's own helper for calling a storage block's method from synchronous code, as
    # its ResultStore does.
    from prefect._internal.compatibility.blocks import call_explicitly_sync_block_method
    from prefect.results import get_default_result_storage

    storage = result_store.result_storage or get_default_result_storage(_sync=True)
    try:
        return call_explicitly_sync_block_method(storage, "read_path", (key,), {})
    except Exception:  # every storage block says "absent" its own way (ValueError, NoSuchKey, ...)
        return None


@dataclass
class StageCachePolicy(CachePolicy):
    """The cache key of one stage task (see the module docstring for what it holds).

    ``models`` names the registry models a call runs, from its arguments; ``on_device``
    says the stage's work runs on the settings' device (models and reconstruction).
    Arguments named ``*_key`` are store keys: their objects' bytes are part of the key.
    """

    models: Optional[ModelsOf] = None
    on_device: bool = False

    def ingredients(self, task: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """Everything the key hashes, by name (what a test compares, one ingredient at a time)."""
        return self._ingredients(task, inputs, *_settings_and_store())

    def _ingredients(self, task: Any, inputs: dict[str, Any], settings: Any, store: ArtifactStore) -> dict[str, Any]:
        from stages.runtime import resolve_device

        device = resolve_device(settings.device)
        return {
            "inputs": INPUTS.compute_key(None, inputs, {}),
            "stored_inputs": {name: stored_digest(store, value) for name, value in sorted(inputs.items())
                              if name.endswith("_key") and isinstance(value, str)},
            # Prefect keeps the source on the task: on a Dask or Ray worker the function
            # arrives by cloudpickle, whose code objects have no file to read it from
            "task_source": hash_objects(task.source_code or inspect.getsource(task.fn)),
            "models": {name: model_version(name, settings, device) for name in (self.models or (lambda _: []))(inputs)},
            "device": str(device) if self.on_device else None,
            "code": code_version(),
            "store": store_root(settings),
        }

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        settings, store = _settings_and_store()
        base = hash_objects(self._ingredients(task_ctx.task, inputs, settings, store), raise_on_failure=True)
        result_store = task_ctx.result_store
        key, generation = base, 0
        while True:
            if result_store.lock_manager is not None:
                result_store.lock_manager.wait_for_lock(key)  # a record is written whole under its lock
            raw = _read_record(result_store, key)
            if raw is None:
                return key
            usable, result = trusted_result(raw)
            if usable and (result is None or outputs_intact(result, inputs["asset"], store)):
                return key
            generation += 1
            key = f"{base}-{generation}"


def lock_directory() -> Path:
    """``Settings.lock_dir``, else ``locks`` beside Prefect's local result storage."""
    from prefect.settings import get_current_settings

    from stages.settings import load_settings

    configured = load_settings().lock_dir
    return Path(configured).expanduser() if configured else get_current_settings().results.local_storage_path / "locks"


class StageLocks(LockManager):
    """Prefect's lock protocol on OS file locks (``flock``), one lock file per cache key.

    The kernel drops a lock when its holder's process ends, so a worker killed mid-stage
    (SIGKILL, out of memory) never leaves a lock its rerun would wait on for ever, as a lock
    that is a file's mere existence (Prefect's ``FileSystemLockManager``) does; no lease to
    expire is needed, so ``hold_timeout`` is not used. Workers on several machines share
    locks through a folder on a shared file system (Linux maps ``flock`` onto NFS's locks).
    Lock files are kept, empty: removing one would let a waiter lock a file a newcomer no
    longer sees.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, int]] = {}  # key -> (holder, descriptor holding it)

    def __getstate__(self) -> dict:
        return {}  # locks belong to the process that took them (Dask and Ray pickle tasks)

    def __setstate__(self, state: dict) -> None:
        self._held = {}

    def _take(self, key: str, timeout: float | None) -> int | None:
        """A descriptor holding ``key``'s lock, or ``None`` at the deadline (``None``: no deadline)."""
        directory = lock_directory()
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(directory / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                    return descriptor
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(descriptor)
                        return None
                    time.sleep(0.1)
        except BaseException:
            os.close(descriptor)
            raise

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        held = self._held.get(key)
        if held is not None and held[0] == holder:
            return True
        descriptor = self._take(key, acquire_timeout)
        if descriptor is None:
            return False
        self._held[key] = (holder, descriptor)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        held = self._held.get(key)
        if held is None or held[0] != holder:
            raise ValueError(f"No lock held by {holder} for transaction with key {key}")
        del self._held[key]  # before the lock is free, so the next holder's entry stays
        os.close(held[1])

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        descriptor = self._take(key, timeout=0)
        if descriptor is None:
            return True
        os.close(descriptor)
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        descriptor = self._take(key, timeout)
        if descriptor is None:
            return False
        os.close(descriptor)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)


STAGE_LOCKS = StageLocks()


def stage_cache(models: Optional[ModelsOf] = None, on_device: bool = False) -> StageCachePolicy:
    """A stage's cache policy: its key, reused only while intact, one writer at a time."""
    return StageCachePolicy(models=models, on_device=on_device, isolation_level="SERIALIZABLE",
                            lock_manager=STAGE_LOCKS)

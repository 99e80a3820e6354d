"""One settings object for the whole product.

Values come from, highest priority first: arguments given in code (CLI flags and flow
parameters), environment variables prefixed ``TEXT_TO_3D_`` (nested with ``__``, for example
``TEXT_TO_3D_MODELS__SDXL_BASE__SOURCE=/models/sdxl``), a TOML file named by
``TEXT_TO_3D_CONFIG``, then the defaults below. Nothing else in the product reads the
environment for its own configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

CONFIG_ENV = "TEXT_TO_3D_CONFIG"

MemoryPolicy = Literal["auto", "resident", "offload", "evict"]
LicencePolicy = Literal["warn", "refuse-non-commercial"]


class ModelOverride(BaseModel):
    """Fields of one registry entry a deployment may replace (see ``stages.registry``)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    revision: str | None = None
    dtype: str | None = None
    variant: str | None = None
    base: str | None = None
    weights_file: str | None = None


class Settings(BaseSettings):
    """Deployment-wide configuration: where artifacts go, where models come from, where they run."""

    model_config = SettingsConfigDict(env_prefix="TEXT_TO_3D_", env_nested_delimiter="__", extra="forbid")

    store: str = "out/assets"
    """Artifact store: a local folder, or ``s3://bucket/prefix``."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, R2, a local test server); AWS when unset."""
    s3_max_attempts: int = 5
    """boto3's own attempts per S3 request (adaptive backoff) before a stage sees the error."""
    link_seconds: int = Field(24 * 3600, ge=1, le=7 * 24 * 3600)
    """Lifetime of the presigned S3 links in the Prefect UI's artifacts (S3 allows up to a week)."""
    model_cache_dir: Path = Path("~/.cache/text-to-3d").expanduser()
    """Where ``models fetch`` puts files that do not come from the Hugging Face hub (u2netp)."""
    device: str = "auto"
    dtype: str = "auto"
    memory_policy: MemoryPolicy = "auto"
    """auto: keep models on the GPU while they fit, evict the least recently used, else offload."""
    max_resident_bytes: int | None = None
    """Budget for resident models; default: the free memory of the device (CUDA) or no limit (CPU)."""
    task_runner: Literal["threads", "dask", "ray"] = "threads"
    """Where flows run their stage tasks: local threads, a Dask cluster or a Ray cluster."""
    task_runner_address: str | None = None
    """Address of an existing Dask scheduler or Ray cluster; unset starts a local one."""
    max_workers: int = 4
    """Threads, or local Dask/Ray workers, that run stage tasks at once."""
    gpu_slots: int | None = Field(None, ge=1)
    """GPU stages at once in this process, across all its flow runs (``serve``'s resident worker,
    where every flow run's stages share one process); unset: no limit here (a Prefect 'gpu'
    concurrency limit or the cluster's GPU resources decide)."""
    max_mesh_bytes: int = 256 * 2**20
    """Largest mesh file a request may name; checked before the file is read."""
    max_manifest_bytes: int = 16 * 2**20
    """Largest batch manifest; checked before the file is read."""
    lock_dir: Path | None = None
    """Where stage locks live (one writer per asset stage): a folder every worker sees, on a
    shared file system when workers on several machines share one store; default: ``locks``
    beside Prefect's local result storage."""
    licence_policy: LicencePolicy = "warn"
    """refuse-non-commercial: a run that needs a model whose licence forbids commercial use
    (Zero123++ v1.2, SDXL-Turbo) fails before it starts, naming the model; warn: it logs."""
    collision_threshold: float = 0.05
    """CoACD's concavity threshold for collision pieces: 0.01 tight (more pieces) .. 1 coarse."""
    collision_max_hulls: int = 16
    """At most this many convex collision pieces per asset."""
    models: dict[str, ModelOverride] = {}
    """Per-model overrides keyed by registry name (``sdxl-base``, ``sam-vit-huge``, ...)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get(CONFIG_ENV)
        if config_file and not Path(config_file).is_file():
            raise ValueError(f"{CONFIG_ENV}={config_file}: no such settings file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(**overrides: object) -> Settings:
    """Read the settings now (environment and TOML file), with ``overrides`` on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})

"""Running plans: one asset or a batch, stage by stage, then the manifest and UI artifacts.

Every stage is submitted to the flow's task runner (threads, Dask or Ray), so with a Dask or
Ray runner the stages run on the cluster's workers; GPU stages then ask for one GPU each.
A batch advances all its assets one stage name at a time (``plans.STAGE_ORDER``), at most
``concurrency`` tasks at once, each asset's next task starting as soon as a slot frees:
each model is loaded once per batch, not once per asset, and a failing asset stops only
itself.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal
from uuid import UUID

from prefect import task
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.assets import StageRecord, build_manifest, write_manifest
from flows.caching import PLAIN_JSON
from flows.plans import STAGE_ORDER, Plan, Step
from flows.requests import AssetRequest
from flows.store import StoredObject
from flows.tasks import RETRIES, store


@dataclass
class Job:
    """One asset to make: its id, its request and its plan."""

    asset: str
    request: AssetRequest
    plan: Plan
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    clock: float = field(default_factory=time.perf_counter)
    results: dict[str, dict] = field(default_factory=dict)


@dataclass
class Outcome:
    """How one asset ended: completed, skipped (already complete) or failed (with why)."""

    asset: str
    status: Literal["completed", "skipped", "failed"]
    manifest: str | None = None
    error: str | None = None
    failed_stage: str | None = None
    seconds: float = 0.0


def _record(stage_result: dict) -> StageRecord:
    outputs = {name: StoredObject(**value) for name, value in stage_result["outputs"].items()}
    return StageRecord("completed", stage_result["seconds"], outputs, stage_result.get("models", []),
                       details=stage_result.get("details", {}))


@task(name="manifest", result_serializer=PLAIN_JSON, **RETRIES)
def finish_asset(asset: str, request: dict, results: dict, started: datetime, parent: str | None = None) -> str:
    """Publish the asset's lineage artifacts in the Prefect UI, then write the manifest (the
    asset's last write: now it is complete); returns the manifest's URI."""
    from flows.artifacts import publish_asset_artifacts

    target = store()
    records = {name: _record(result) for name, result in results.items()}
    manifest = build_manifest(asset, request, records, started, parent)
    publish_asset_artifacts(target, asset, manifest)
    return write_manifest(target, asset, manifest).uri


def gpu_resources(submitted_task: Any) -> contextlib.AbstractContextManager:
    """Ask the active Dask or Ray runner for one GPU for a GPU stage; a no-op for threads."""
    if "gpu" not in submitted_task.tags:
        return contextlib.nullcontext()
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = type(context.task_runner).__name__ if context else ""
    if runner == "DaskTaskRunner" and _gpus_declared():
        import dask

        return dask.annotate(resources={"GPU": 1})
    if runner == "RayTaskRunner" and _gpus_declared():
        from prefect_ray.context import remote_options

        return remote_options(num_gpus=1)
    return contextlib.nullcontext()


def _as_submitted(submitted_task: Any) -> Any:
    """The task as this process submits it: without its 'gpu' tag where the process limits
    GPU stages itself (``gpu_slots`` in the settings: ``serve``'s resident worker, see
    ``flows.tasks.gpu_slot``). A tagged task asks the Prefect server for a slot, which is a
    database write even when no 'gpu' limit exists; on the local SQLite server it collided
    with the server's other writes ("database is locked"), and the client's retry waited
    about 2 s, on one or two GPU stages of most measured runs."""
    from flows.tasks import settings

    if "gpu" not in submitted_task.tags or settings().gpu_slots is None:
        return submitted_task
    return _untagged(submitted_task)


@functools.cache
def _untagged(submitted_task: Any) -> Any:
    copy = submitted_task.with_options()  # with_options(tags=set()) keeps the tags: empty is "unset"
    copy.tags = set(submitted_task.tags) - {"gpu"}
    return copy


def _gpus_declared() -> bool:
    """Annotate only where workers have GPUs to give: an external cluster (its workers are
    started with GPU resources) or a local one on a CUDA machine."""
    from flows.tasks import settings

    if settings().task_runner_address:
        return True
    import torch  # only here: a flow run on an external cluster imports no torch

    return torch.cuda.is_available()


def _advance(job: Job, result: dict | None) -> Step | None:
    """Send a stage's result into the plan; the next step, or ``None`` when it is done."""
    try:
        return job.plan.send(result) if result is not None else next(job.plan)
    except StopIteration as done:
        job.results = done.value
        return None


def _import_native_libraries_on_this_thread() -> None:
    """Import pymeshlab here, on the flow's own (main) thread, before any stage thread can.

    Imported first from a worker thread, pymeshlab leaves the heap corrupted and the process
    aborts at exit ("malloc_consolidate(): unaligned fastbin chunk detected"), after every
    file is written but with exit status 134. Imported on the main thread it is fine to use
    from any thread (its filters are serialised in ``recon.surface``).
    """
    import recon.surface  # noqa: F401


def _stages_run_here() -> bool:
    """Whether stages run in this process (threads), not on a Dask or Ray cluster's workers."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context is None or isinstance(context.task_runner, ThreadPoolTaskRunner)


class FlowRunStopped(Exception):
    """The flow run was cancelled while it ran in a process it shares (``stop_flow_run``)."""


_stopping: set[UUID] = set()


def stop_flow_run(flow_run_id: UUID) -> None:
    """Ask a flow run executing in this process to stop once its running stages end: a
    thread cannot be killed, so its flow checks before starting each stage. Used by
    ``flows.resident_worker`` for a cancelled flow run; its finished stages stay stored,
    and a rerun resumes from them."""
    _stopping.add(flow_run_id)


def forget_stop(flow_run_id: UUID) -> None:
    """Drop a ``stop_flow_run`` request once its flow run has ended."""
    _stopping.discard(flow_run_id)


def _raise_if_stopping() -> None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.id in _stopping:
        raise FlowRunStopped("cancelled: stopped before its next stage")


def run_jobs(jobs: list[Job], concurrency: int = 4) -> list[Outcome]:
    """Run every job's plan to its manifest, stage name by stage name; never raises for
    one job's failure (its outcome says what failed and why), only for the flow run's
    cancellation (``stop_flow_run``)."""
    if _stages_run_here():
        _import_native_libraries_on_this_thread()
    outcomes: dict[str, Outcome] = {}
    waiting: dict[str, tuple[Job, Step]] = {}
    for job in jobs:
        waiting[job.asset] = (job, _advance(job, None))
    while waiting:
        stage = min((step[0].name for _, step in waiting.values()), key=STAGE_ORDER.index)
        queue = [asset for asset, (_, step) in waiting.items() if step[0].name == stage]
        running: dict[str, PrefectFuture] = {}
        # A window of ``concurrency`` tasks: the next asset starts as soon as any one
        # finishes, not when the slowest of a wave of ``concurrency`` does.
        while queue or running:
            while queue and len(running) < concurrency:
                _raise_if_stopping()
                asset = queue.pop(0)
                submitted_task, arguments = waiting[asset][1]
                with gpu_resources(submitted_task):
                    running[asset] = _as_submitted(submitted_task).submit(**arguments)
            finished = next(as_completed(list(running.values())))
            finished.wait()  # done, but its state is only brought up to date by a wait
            asset = next(name for name, future in running.items() if future is finished)
            del running[asset]
            job = waiting[asset][0]
            if not finished.state.is_completed():
                error = finished.state.result(raise_on_failure=False)
                outcomes[asset] = Outcome(asset, "failed", error=str(error), failed_stage=stage,
                                          seconds=time.perf_counter() - job.clock)
                del waiting[asset]
                continue
            following = _advance(job, finished.result())
            if following is None:
                del waiting[asset]
                outcomes[asset] = _finish(job)
            else:
                waiting[asset] = (job, following)
    return [outcomes[job.asset] for job in jobs]


def _finish(job: Job) -> Outcome:
    from flows.requests import parent_asset

    state = finish_asset(job.asset, job.request.model_dump(), job.results, job.started,
                         parent_asset(job.request), return_state=True)
    seconds = time.perf_counter() - job.clock
    if not state.is_completed():
        return Outcome(job.asset, "failed", error=str(state.result(raise_on_failure=False)), failed_stage="manifest",
                       seconds=seconds)
    return Outcome(job.asset, "completed", manifest=state.result(), seconds=seconds)


def run_one(request: AssetRequest) -> str:
    """Make one asset; returns its manifest URI, or raises the failing stage's error."""
    from flows.plans import plan_for
    from flows.requests import request_asset_id

    asset = request_asset_id(request)
    [outcome] = run_jobs([Job(asset, request, plan_for(request, asset))], concurrency=1)
    if outcome.status != "completed":
        raise RuntimeError(f"asset {asset}: stage {outcome.failed_stage} failed: {outcome.error}")
    print(f"asset {asset} complete: {outcome.manifest}")
    return outcome.manifest


def make_task_runner() -> Any:
    """The task runner the settings name (``TEXT_TO_3D_TASK_RUNNER``): threads, or a Dask or
    Ray cluster (``TEXT_TO_3D_TASK_RUNNER_ADDRESS``, else a local one)."""
    from flows.tasks import settings

    current = settings()
    if current.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=current.max_workers)
    if current.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RuntimeError("task runner 'dask' needs prefect-dask: pip install -c constraints.txt "
                               "'.[dask]'") from None
        if current.task_runner_address:
            return DaskTaskRunner(address=current.task_runner_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": current.max_workers, "threads_per_worker": 1,
                                              "processes": True, **_local_gpu_resources()})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise RuntimeError("task runner 'ray' needs prefect-ray: pip install -c constraints.txt '.[ray]'") from None
    if current.task_runner_address:
        return RayTaskRunner(address=current.task_runner_address)
    return RayTaskRunner(init_kwargs={"num_cpus": current.max_workers, "include_dashboard": False})


def _local_gpu_resources() -> dict[str, Any]:
    import torch

    return {"resources": {"GPU": torch.cuda.device_count()}} if torch.cuda.is_available() else {}


def run_name() -> str:
    """Flow run names carry the asset id, so the UI's run list reads as the asset list."""
    from prefect.runtime import flow_run

    from flows.requests import ImageTo3DRequest, MeshTo3DRequest, TextTo3DRequest, request_asset_id

    model = {"text-to-3d": TextTo3DRequest, "image-to-3d": ImageTo3DRequest, "mesh-to-3d": MeshTo3DRequest}
    try:
        return request_asset_id(model[flow_run.flow_name].model_validate(flow_run.parameters))
    except Exception:  # the flow itself reports bad input; naming the run must not fail first
        return f"{flow_run.flow_name}-invalid-request"


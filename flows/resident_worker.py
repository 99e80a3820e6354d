"""A Prefect worker whose flow runs execute inside its own long-lived process.

Prefect's process worker starts a fresh Python for every flow run: on the 2-core machine
that is 3 to 6 s of interpreter start, Prefect import and flow loading per asset, and every
model the stages load is loaded again for the next asset. This worker polls the same
``process`` work pool and runs each flow run it claims on a thread of its own process,
through Prefect's own flow engine (``run_flow``), so the Prefect UI shows the same states,
logs, retries and lineage. Its imports, its model cache (``stages.model_cache``: resident,
offload, evict or auto, with LRU eviction) and its loaded flows outlive every flow run.

What a process per run gave and this does not: a crash in native code takes the worker
and its running flow runs down (a rerun of an asset resumes from its stored stages), and a
running flow run cannot be killed mid-stage: a cancelled one stops before its next stage,
then shows Cancelled. The deployments' environment (their ``job_variables``) is not applied
per run; ``serve`` gives the worker that environment once.

Written here because Prefect has no in-process worker: its ``Runner`` (``flow.serve``)
also spawns a process per flow run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow
from prefect.flows import Flow, load_flow_from_flow_run
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from flows.runner import forget_stop, stop_flow_run

CANCEL_POLL_SECONDS = 2.0


class ResidentWorker(ProcessWorker):
    """A ``process`` pool's worker that runs flow runs on threads of this process."""

    @classmethod
    def __dispatch_key__(cls) -> str:
        # registered under a name of its own: under its type, ``process``, it would replace
        # Prefect's process worker in the worker registry of any process that imports it
        return "text-to-3d-resident"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flows: dict[UUID, Flow] = {}
        self.executing: set[UUID] = set()

    async def run(self, flow_run: FlowRun, configuration: ProcessJobConfiguration,
                  task_status: anyio.abc.TaskStatus[int] | None = None) -> ProcessWorkerResult:
        flow = await self._flow(flow_run)
        (task_status or anyio.TASK_STATUS_IGNORED).started(os.getpid())
        self.executing.add(flow_run.id)
        try:
            async with anyio.create_task_group() as watching:
                watching.start_soon(self._stop_when_cancelled, flow_run)
                state = await anyio.to_thread.run_sync(
                    functools.partial(run_flow, flow, flow_run=flow_run, return_type="state"))
                watching.cancel_scope.cancel()
        except Exception as error:
            # the engine records a flow's own failure as its state; an error escaping it
            # would leave the run Running for ever, with nothing left to finish it
            self.get_flow_run_logger(flow_run).exception("The flow engine failed outside the flow")
            await self._propose_crashed_state(flow_run, f"The flow engine failed: {type(error).__name__}: {error}")
            return ProcessWorkerResult(status_code=1, identifier=str(os.getpid()))
        finally:
            self.executing.discard(flow_run.id)
            forget_stop(flow_run.id)
        # The engine's last state proposal is refused while the run is Cancelling, so a run
        # cancelled while it ran (stopped, or done before the watch saw the cancel) ends here.
        current = await self.client.read_flow_run(flow_run.id)
        if current.state.is_cancelling():
            await self._mark_flow_run_as_cancelled(
                current, {"message": "Cancelled while it ran; the stages it finished are kept"})
            return ProcessWorkerResult(status_code=0, identifier=str(os.getpid()))
        return ProcessWorkerResult(status_code=1 if state.is_crashed() else 0, identifier=str(os.getpid()))

    async def _stop_when_cancelled(self, flow_run: FlowRun) -> None:
        """Watch the running flow run's state; once cancelled, ask it to stop before its next
        stage (its thread cannot be killed). Polled, one small read every few seconds while
        it runs: Prefect's workers leave running flow runs to their own process to watch."""
        while True:
            await anyio.sleep(CANCEL_POLL_SECONDS)
            try:
                cancelling = (await self.client.read_flow_run(flow_run.id)).state.is_cancelling()
            except Exception:  # the server out of reach for a moment: the flow run goes on
                self._logger.debug("Could not read the state of flow run %s", flow_run.id, exc_info=True)
                continue
            if cancelling:
                stop_flow_run(flow_run.id)
                self.get_flow_run_logger(flow_run).info("Cancelling: the flow run stops once its running stages end")
                return

    async def _flow(self, flow_run: FlowRun) -> Flow:
        """The deployment's flow, loaded (pull steps and entrypoint) once per deployment."""
        if flow_run.deployment_id not in self._flows:
            self._flows[flow_run.deployment_id] = await load_flow_from_flow_run(flow_run, use_placeholder_flow=False)
        return self._flows[flow_run.deployment_id]


def preload() -> None:
    """Import what every flow run's stages need, on this (main) thread and before the first
    run: pymeshlab must be imported on the main thread (``flows.runner``), and the first
    asset then pays no import."""
    import recon.surface  # noqa: F401
    import stages.reconstruct  # noqa: F401
    import stages.six_views  # noqa: F401


def crash_on_termination(worker: ResidentWorker) -> None:
    """On SIGTERM (``serve`` stopping, a container shut down), mark the flow runs this
    process is running Crashed and exit at once: their threads die with the process, and
    left alone they would show Running for good. A rerun of each asset resumes from the
    stages it finished."""

    def crash_and_exit(signum: int, frame: Any) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        message = "The resident worker was stopped while this flow run ran; a rerun resumes from its finished stages"
        with get_client(sync_client=True) as client:
            for flow_run_id in list(worker.executing):
                try:
                    client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
                except Exception:  # the server already gone: nothing more to tell it
                    pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, crash_and_exit)


async def work(pool: str) -> None:
    async with ResidentWorker(work_pool_name=pool) as worker:
        crash_on_termination(worker)
        await worker.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the process work pool to take flow runs from")
    args = parser.parse_args()
    preload()
    asyncio.run(work(args.pool))


if __name__ == "__main__":
    main()

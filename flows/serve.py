"""``text-to-3d serve``: everything a local run needs, in one command.

Starts a local Prefect server (unless ``--api-url`` names one), creates the ``gpu`` process
work pool, limits GPU stages to one at a time per GPU (in the resident worker's process, or
else with the ``gpu`` tag concurrency limit), registers the deployments of ``prefect.yaml``
and runs a worker until interrupted. Then ``prefect deployment run text-to-3d/default
--param prompt="..."`` works from any shell.

By default (``warm="resident"``) the worker is ``flows.resident_worker``: every flow run
executes inside its one long-lived process, so no flow run starts a Python of its own, and
imports and loaded models outlive every flow run. ``warm="dask"`` keeps Prefect's process
worker (a fresh process per flow run) and sends the stages to one long-lived local Dask
worker; ``warm="off"`` runs everything in each flow run's own process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
POOL = "gpu"
WARM_MODES = ("resident", "dask", "off")
SHUTDOWN_GRACE_SECONDS = 15  # then children that have not stopped are killed
# Prefect's process worker asks for scheduled runs every 10 s by default, so a deployment run
# waited 5 s on average, up to 10, before it started: serve's own worker asks every second
# (a poll is one small query to the local server). The caller's environment still wins.
WORKER_DEFAULTS = {"PREFECT_WORKER_QUERY_SECONDS": "1"}


def _prefect() -> str:
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


def _wait_healthy(api_url: str, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server at {api_url} did not answer within {seconds:.0f} s") from None
            time.sleep(0.5)


def _gpu_slots() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_warm_pool(env: dict[str, str], gpu_slots: int, children: list[subprocess.Popen]) -> str:
    """Start a local Dask scheduler and one long-lived worker process; returns its address.

    Flow runs still get a fresh process each, but with ``TEXT_TO_3D_TASK_RUNNER=dask`` at this
    address their stages run on this worker, whose imports and model cache outlive every
    flow run: models load once per ``serve``, not once per asset. The worker has ``gpu_slots``
    GPU resources (GPU stages ask for one each) and imports pymeshlab on its main thread first
    (see ``runner._import_native_libraries_on_this_thread``).
    """
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
    port = _free_port()
    children.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], env=env, cwd=REPOSITORY))
    address = f"tcp://127.0.0.1:{port}"
    children.append(subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads",
                                      str(max(os.cpu_count() or 1, 2)), "--resources", f"GPU={gpu_slots}",
                                      "--preload", "recon.surface", "--no-dashboard"], env=env, cwd=REPOSITORY))
    return address


def deployment_environment() -> dict[str, str]:
    """The environment ``prefect.yaml`` gives its deployments' flow runs (``job_variables``).
    A process worker sets it in each flow run's process; the resident worker, whose process
    every flow run shares, gets it once when it starts."""
    import yaml

    definitions = yaml.safe_load((REPOSITORY / "prefect.yaml").read_text())["definitions"]
    return {key: str(value) for key, value in definitions["gpu_pool"]["job_variables"]["env"].items()}


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """The worker's environment: ``env`` over serve's latency-minded worker defaults."""
    return {**WORKER_DEFAULTS, **env}


def serve(api_url: str | None = None, port: int = 4200, gpu_slots: int | None = None,
          config: str | None = None, warm: str = "resident") -> int:
    """Run server (optional), pool, limit, deployments and a worker; returns the worker's exit code."""
    if warm not in WARM_MODES:
        raise ValueError(f"warm must be one of {', '.join(WARM_MODES)}, got {warm!r}")
    env = {**os.environ, "TEXT_TO_3D_HOME": str(REPOSITORY)}
    if config:
        env["TEXT_TO_3D_CONFIG"] = str(Path(config).resolve())
    children: list[subprocess.Popen] = []

    def stop() -> None:
        """Stop every child: SIGTERM (Prefect's server and worker can ignore SIGINT),
        then SIGKILL for any still running after the grace period, so serve always exits."""
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for child in reversed(children):
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        children.clear()

    # SIGTERM unwinds to ``finally``: stopping inside the handler would wait on the very
    # child the interrupted ``wait()`` holds, a deadlock.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        own_server = api_url is None
        if own_server:
            api_url = f"http://127.0.0.1:{port}/api"
            # `prefect server start --port` moves only the API: the UI it serves asks the API
            # at PREFECT_UI_API_URL (a proxy's address, when set), else at PREFECT_API_URL,
            # else at the default port 4200.
            children.append(subprocess.Popen([_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                             env={**env, "PREFECT_API_URL": api_url}))
        _wait_healthy(api_url)
        env["PREFECT_API_URL"] = api_url
        gpu_slots = gpu_slots or _gpu_slots()
        if warm == "dask":
            env["TEXT_TO_3D_TASK_RUNNER"] = "dask"
            env["TEXT_TO_3D_TASK_RUNNER_ADDRESS"] = _start_warm_pool(env, gpu_slots, children)
        prefect = _prefect()
        if warm == "resident":
            # every flow run's stages share the worker's process, which limits its GPU stages
            # itself (flows.tasks.gpu_slot); a server-side 'gpu' limit would only add database
            # round trips to each GPU stage. One an earlier serve left on its own local server
            # goes; a server named by --api-url may have other workers relying on it.
            env["TEXT_TO_3D_GPU_SLOTS"] = str(gpu_slots)
            if own_server:
                subprocess.run([prefect, "concurrency-limit", "delete", "gpu"], env=env, cwd=REPOSITORY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            worker = [sys.executable, "-m", "flows.resident_worker", "--pool", POOL]
            worker_env = {**deployment_environment(), **env}
        else:
            subprocess.run([prefect, "concurrency-limit", "create", "gpu", str(gpu_slots)], env=env, cwd=REPOSITORY,
                           check=True, stdout=subprocess.DEVNULL)
            worker, worker_env = [prefect, "worker", "start", "--pool", POOL], env
        for command in (
            [prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"],
            [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPOSITORY / "prefect.yaml")],
        ):
            subprocess.run(command, env=env, cwd=REPOSITORY, check=True, stdout=subprocess.DEVNULL)
        print(f"Prefect UI and API: {api_url.removesuffix('/api')}\n"
              f"try: PREFECT_API_URL={api_url} prefect deployment run text-to-3d/default "
              "--param prompt=\"a mossy treasure chest\"", flush=True)
        children.append(subprocess.Popen(worker, env=worker_environment(worker_env), cwd=REPOSITORY))
        return children[-1].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop()

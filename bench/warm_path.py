"""Per-asset orchestration cost of a served deployment, on CPU with tiny models.

Starts ``text-to-3d serve`` (its own Prefect server on a free port, a temporary Prefect home
and a local store), runs mesh-to-3d deployment runs one after another with different seeds,
and splits each run's wall time using the server's own timestamps:

- ``queueing``: Scheduled -> Pending, the wait for the worker's next poll;
- ``process_start``: Pending -> Running, the flow-run process starting and importing the flow;
- ``flow_start``: Running -> the first stage task starting;
- ``stages``: each stage's own seconds, from the asset's manifest;
- ``task_wrapping``: the stage tasks' Running -> Completed time beyond their stage seconds;
- ``between_tasks``: from the first stage task's start to the manifest task's, outside any
  task's Running time (submission, cache keys, state round trips);
- ``manifest``: the manifest task (UI artifacts, then manifest.json);
- ``teardown``: the manifest task's end -> Completed;
- ``overhead``: wall minus the sum of stage seconds (the issue's target is at most 2 s warm).

Optionally (``--batch-rows``) it also runs a batch of mesh rows with ``text-to-3d run batch``
at each ``--batch-concurrency``, and reports wall against the sum of stage seconds.

Usage: ``PYTHONPATH=$PWD python bench/warm_path.py [--runs 3] [--batch-rows 20]``; prints JSON.
Needs u2netp (../shared/data/u2netp.onnx, else the model cache or its PyPI wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose zero123pp.py is a script

from flows.serve import WARM_MODES  # noqa: E402  (standard library only: no heavy imports)
SHARED_U2NETP = ROOT.parent / "shared" / "data" / "u2netp.onnx"
OPTIONS = {"segmenter": "u2net", "view_steps": 1, "texture_size": 64, "lods": 1, "preview_size": 32}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(work: Path, models_file: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "TEXT_TO_3D_CONFIG": str(models_file),
           "TEXT_TO_3D_STORE": str(work / "store"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if SHARED_U2NETP.is_file():
        env["TEXT_TO_3D_MODELS__U2NETP__SOURCE"] = str(SHARED_U2NETP)
    return env


def _inputs(work: Path) -> tuple[Path, Path]:
    from stages.sample_input import draw_sample_blockout, draw_sample_object

    mesh, image = work / "bottle.glb", work / "bottle.png"
    draw_sample_blockout().export(mesh)
    draw_sample_object(256).save(image)
    return mesh, image


def _state_times(client: Any, flow_run_id: Any) -> dict[str, float]:
    """First timestamp of each state type of a flow run, as POSIX seconds."""
    times: dict[str, float] = {}
    for state in sorted(client.read_flow_run_states(flow_run_id), key=lambda state: state.timestamp):
        times.setdefault(state.type.value, state.timestamp.timestamp())
    return times


def _breakdown(client: Any, flow_run: Any, store: Path) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states = _state_times(client, flow_run.id)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    tasks = sorted((task for task in tasks if task.start_time), key=lambda task: task.start_time)
    manifest_task = next(task for task in tasks if task.name.startswith("manifest"))
    manifest = json.loads((store / flow_run.name / "manifest.json").read_text())
    stages = {name: record["seconds"] for name, record in manifest["stages"].items()}
    wall = states["COMPLETED"] - states["SCHEDULED"]
    stage_tasks = [task for task in tasks if task is not manifest_task]
    in_tasks = sum(task.end_time.timestamp() - task.start_time.timestamp() for task in stage_tasks)
    return {
        "asset": flow_run.name,
        "wall": round(wall, 2),
        "queueing": round(states["PENDING"] - states["SCHEDULED"], 2),
        "process_start": round(states["RUNNING"] - states["PENDING"], 2),
        "flow_start": round(tasks[0].start_time.timestamp() - states["RUNNING"], 2),
        "stages": stages,
        "stage_sum": round(sum(stages.values()), 2),
        "task_wrapping": round(in_tasks - sum(stages.values()), 2),
        "between_tasks": round(manifest_task.start_time.timestamp() - tasks[0].start_time.timestamp() - in_tasks, 2),
        "manifest": round(manifest_task.end_time.timestamp() - manifest_task.start_time.timestamp(), 2),
        "teardown": round(states["COMPLETED"] - manifest_task.end_time.timestamp(), 2),
        "overhead": round(wall - sum(stages.values()), 2),
    }


def _wait_for_deployment(client: Any, name: str, server: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.read_deployment_by_name(name)
            return
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not register {name}") from None
            time.sleep(1)


def deployment_runs(env: dict[str, str], mesh: Path, image: Path, runs: int, store: Path,
                    server: subprocess.Popen) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        _wait_for_deployment(client, "mesh-to-3d/default", server)
        results = []
        for seed in range(runs):
            flow_run = run_deployment("mesh-to-3d/default", timeout=600, poll_interval=0.5,
                                      parameters={"mesh": str(mesh), "image": str(image), "seed": seed,
                                                  "options": OPTIONS})
            if not flow_run.state.is_completed():
                raise RuntimeError(f"run {seed} ended {flow_run.state.type.value}: {flow_run.state.message}")
            results.append(_breakdown(client, flow_run, store))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def batch_runs(env: dict[str, str], mesh: Path, image: Path, rows: int, concurrencies: list[int],
               work: Path) -> list[dict[str, Any]]:
    """``text-to-3d run batch`` of ``rows`` retexture rows per concurrency, each into a fresh store."""
    manifest = work / "rows.jsonl"
    manifest.write_text("".join(json.dumps({"mesh": str(mesh), "image": str(image), "seed": 1000 + row}) + "\n"
                                for row in range(rows)))
    options = [argument for key, value in OPTIONS.items() for argument in ("--option", f"{key}={value}")]
    cli = shutil.which("text-to-3d", path=str(Path(sys.executable).parent))
    results = []
    for concurrency in concurrencies:
        store = work / f"batch-store-{concurrency}"
        started = time.perf_counter()
        subprocess.run([cli, "run", "batch", str(manifest), "--concurrency", str(concurrency), *options],
                       env={**env, "TEXT_TO_3D_STORE": str(store)}, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        stage_sum = sum(record["seconds"] for path in store.glob("*/manifest.json")
                        for record in json.loads(path.read_text())["stages"].values())
        results.append({"rows": rows, "concurrency": concurrency, "wall": round(wall, 1),
                        "stage_sum": round(stage_sum, 1), "wall_over_stage_sum_per_2_cores":
                        round(wall / (stage_sum / 2), 2)})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="consecutive mesh-to-3d deployment runs")
    parser.add_argument("--batch-rows", type=int, default=0, help="rows of the batch run (0: no batch)")
    parser.add_argument("--batch-concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--warm", choices=WARM_MODES, default="off",
                        help="serve's --warm: resident (serve's default) runs flow runs inside one long-lived "
                             "worker process, dask sends their stages to a long-lived Dask worker; off here "
                             "unless asked, so runs compare with earlier cold figures")
    parser.add_argument("--serve-log", type=Path, help="keep serve's log (server, worker, flow runs) here")
    args = parser.parse_args()

    from stages.tiny_models import make_tiny_models

    with tempfile.TemporaryDirectory(prefix="warm-path-") as folder:
        work = Path(folder)
        env = _environment(work, make_tiny_models(work / "models"))
        mesh, image = _inputs(work)
        report: dict[str, Any] = {"options": OPTIONS, "warm": args.warm}
        if args.runs:
            port = _free_port()
            env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
            os.environ.update({key: env[key] for key in ("PREFECT_API_URL", "PREFECT_HOME")})
            cli = shutil.which("text-to-3d", path=str(Path(sys.executable).parent))
            log = args.serve_log or work / "serve.log"
            server = subprocess.Popen([cli, "serve", "--port", str(port), "--gpus", "1",
                                       "--warm", args.warm], env=env, cwd=ROOT,
                                      stdout=log.open("w"), stderr=subprocess.STDOUT)
            try:
                report["deployment_runs"] = deployment_runs(env, mesh, image, args.runs, work / "store", server)
            except Exception:
                print(log.read_text()[-4000:], file=sys.stderr)
                raise
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)
        if args.batch_rows:
            env.pop("PREFECT_API_URL", None)
            report["batch"] = batch_runs(env, mesh, image, args.batch_rows, args.batch_concurrency, work)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

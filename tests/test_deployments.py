"""prefect.yaml and infra/ parse and say what they must; a deployment run through `serve`
and `prefect deployment run` reaches Completed on a real Prefect server."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_declares_the_four_deployments_on_the_gpu_pool():
    from prefect import Flow

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {}
    for deployment in config["deployments"]:
        module, function = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), function)
        assert isinstance(flow, Flow)
        deployments[f"{flow.name}/{deployment['name']}"] = deployment
        assert deployment["work_pool"]["name"] == "gpu"
    assert set(deployments) == {"text-to-3d/default", "image-to-3d/default", "mesh-to-3d/default",
                                "batch-text-to-3d/nightly"}
    [schedule] = deployments["batch-text-to-3d/nightly"]["schedules"]
    assert schedule["active"] is False and len(schedule["cron"].split()) == 5


def test_infra_files_parse_and_ask_for_gpus():
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda:" in dockerfile and "-c constraints.txt" in dockerfile
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "gpu-worker"} <= set(services)
    assert "postgresql+asyncpg" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    [device] = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["gpu-worker"]["environment"]["TEXT_TO_3D_STORE"].startswith("s3://")
    # the compose worker is a resident one: it needs, once, what prefect.yaml gives each flow run
    from flows.serve import deployment_environment

    assert deployment_environment().items() <= services["gpu-worker"]["environment"].items()

    template = json.loads((ROOT / "infra" / "k8s" / "gpu-work-pool.json").read_text())
    assert set(template) == {"variables", "job_configuration"}
    variables = template["variables"]["properties"]
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}" and variables["gpus"]["default"] == 1
    # every placeholder names a declared variable (Prefect fills them from job variables)
    placeholders = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(variables), placeholders - set(variables)


def _env_example() -> dict[str, str]:
    lines = (ROOT / "infra" / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_compose_reads_every_credential_from_infra_env_and_the_worker_has_its_own_bucket_key():
    text = (ROOT / "infra" / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    # every variable compose needs is documented, with no value: infra/.env holds them, uncommitted
    example = _env_example()
    assert set(re.findall(r"\$\{(\w+):\?", text)) == set(example) and not any(example.values())
    assert "/infra/.env" in (ROOT / ".gitignore").read_text().splitlines()
    for service in services.values():
        for name, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER", name):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), f"{name} is not read from infra/.env"
    database_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "${POSTGRES_PASSWORD:?" in database_url

    # the worker's key is not the root key: minio-init creates it with a policy on one bucket
    worker = services["gpu-worker"]
    assert worker["environment"]["AWS_ACCESS_KEY_ID"].startswith("${WORKER_ACCESS_KEY:?")
    assert worker["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${WORKER_SECRET_KEY:?")
    assert worker["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}
    bucket = worker["environment"]["TEXT_TO_3D_STORE"].removeprefix("s3://").split("/")[0]
    init = services["minio-init"]
    [script] = init["command"]
    assert f"mc mb --ignore-existing store/{bucket}" in script
    assert 'mc admin user add store "$$WORKER_ACCESS_KEY" "$$WORKER_SECRET_KEY"' in script
    assert 'mc admin policy attach store text-to-3d-worker --user "$$WORKER_ACCESS_KEY"' in script
    [mount] = init["volumes"]
    policy = json.loads((ROOT / "infra" / mount.split(":")[0]).read_text())
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement["Resource"]) <= {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
        assert all(action.startswith("s3:") and "*" not in action for action in statement["Action"])


def test_a_deployment_run_through_serve_reaches_completed(prefect_server, tiny_models_file, u2netp_file, tmp_path):
    from stages.sample_input import draw_sample_blockout, draw_sample_object

    api_url, result_storage = str(prefect_server.api.url), str(prefect_server.results.local_storage_path)
    draw_sample_blockout().export(tmp_path / "bottle.glb")
    draw_sample_object(256).save(tmp_path / "bottle.png")
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOCAL_STORAGE_PATH": result_storage,
           "PREFECT_WORKER_QUERY_SECONDS": "1", "TEXT_TO_3D_CONFIG": str(tiny_models_file),
           "TEXT_TO_3D_MODELS__U2NETP__SOURCE": str(u2netp_file),
           "TEXT_TO_3D_STORE": str(tmp_path / "store")}
    text_to_3d = [sys.executable, "-m", "flows.cli"]
    server = subprocess.Popen([*text_to_3d, "serve", "--api-url", api_url, "--gpus", "1"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent))
        options = json.dumps({"segmenter": "u2net", "view_steps": 1, "texture_size": 64, "lods": 1,
                              "preview_size": 32})
        command = [prefect, "deployment", "run", "mesh-to-3d/default", "--param", f"mesh={tmp_path / 'bottle.glb'}",
                   "--param", f"image={tmp_path / 'bottle.png'}", "--param", f"options={options}",
                   "--watch", "--watch-timeout", "300"]
        deadline = time.monotonic() + 120
        while (run := subprocess.run([prefect, "deployment", "inspect", "mesh-to-3d/default"], env=env,
                                     capture_output=True, text=True)).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "serve did not register the deployments"
            time.sleep(1)
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=330)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        [manifest] = (tmp_path / "store").glob("*/manifest.json")
        # the summary shows its previews in the UI: embedded thumbnails, no file:// images
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        with get_client(sync_client=True) as client:
            [summary] = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{manifest.parent.name}-summary"])))
        assert "file://" not in summary.data
        assert summary.data.count("](data:image/") == 6, summary.data[:2000]
        # the flow run ran inside serve's long-lived resident worker, not a process of its own
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(summary.flow_run_id)
        command_line = Path(f"/proc/{flow_run.infrastructure_pid}/cmdline").read_bytes().split(b"\0")
        assert b"flows.resident_worker" in command_line, command_line
        # cancelled while it runs, a flow run of that shared process stops before its next
        # stage and ends Cancelled, without a manifest
        from prefect.deployments import run_deployment

        slow = run_deployment("mesh-to-3d/default", timeout=0, parameters={
            "mesh": str(tmp_path / "bottle.glb"), "image": str(tmp_path / "bottle.png"), "seed": 1,
            "options": {**json.loads(options), "view_steps": 3}})
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not client.read_flow_run(slow.id).state.is_running():
                assert time.monotonic() < deadline, "the second flow run never started"
                time.sleep(0.2)
            subprocess.run([prefect, "flow-run", "cancel", str(slow.id)], env=env, check=True, capture_output=True)
            while not (state := client.read_flow_run(slow.id).state).is_final():
                assert time.monotonic() < deadline + 120, f"the cancelled flow run is still {state.name}"
                time.sleep(0.5)
        assert state.is_cancelled(), state
        assert len(list((tmp_path / "store").glob("*/manifest.json"))) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
        print(output[-3000:])


def test_serve_runs_flow_runs_in_its_resident_worker_unless_told_otherwise():
    """The test above runs its deployment through serve's default: the flow run inside the
    resident worker's long-lived process, where models stay loaded between flow runs."""
    from flows.cli import build_parser

    assert build_parser().parse_args(["serve"]).warm == "resident"
    assert build_parser().parse_args(["serve", "--warm", "dask"]).warm == "dask"
    assert build_parser().parse_args(["serve", "--warm", "off"]).warm == "off"


def test_a_process_that_limits_its_gpu_stages_itself_submits_them_untagged_and_holds_its_slots(monkeypatch):
    """In the resident worker GPU stages take the process's own slots, not the Prefect
    server's 'gpu' tag limit, whose slot requests collided with the local server's writes."""
    from flows.runner import _as_submitted
    from flows.tasks import cutout_stage, depth_grid_stage, gpu_slot

    monkeypatch.delenv("TEXT_TO_3D_GPU_SLOTS", raising=False)
    assert _as_submitted(cutout_stage) is cutout_stage and "gpu" in cutout_stage.tags
    monkeypatch.setenv("TEXT_TO_3D_GPU_SLOTS", "1")
    untagged = _as_submitted(cutout_stage)
    assert untagged.name == "cutout" and "gpu" not in untagged.tags and "gpu" in cutout_stage.tags
    assert _as_submitted(depth_grid_stage) is depth_grid_stage
    entered = threading.Event()

    def second_stage() -> None:
        with gpu_slot():
            entered.set()

    with gpu_slot():
        waiting = threading.Thread(target=second_stage)
        waiting.start()
        assert not entered.wait(0.3)  # one slot: the second GPU stage waits for the first
    waiting.join(timeout=10)
    assert entered.is_set()


def test_serve_polls_for_flow_runs_every_second_unless_the_environment_says_otherwise():
    from flows.serve import worker_environment

    assert worker_environment({})["PREFECT_WORKER_QUERY_SECONDS"] == "1"
    assert worker_environment({"PREFECT_WORKER_QUERY_SECONDS": "5"})["PREFECT_WORKER_QUERY_SECONDS"] == "5"


def test_a_flow_run_process_orchestrates_without_importing_torch_trimesh_or_open3d(tmp_path):
    """With stages on a cluster's workers the flow run only names, plans and stores: a fresh
    process per flow run must not pay seconds of heavy imports for that."""
    from stages.sample_input import draw_sample_blockout, draw_sample_object

    draw_sample_blockout().export(tmp_path / "bottle.glb")
    draw_sample_object(64).save(tmp_path / "bottle.png")
    script = f"""
import sys
import flows.batch, flows.image_to_3d, flows.mesh_to_3d, flows.text_to_3d
from flows.plans import plan_for
from flows.requests import MeshTo3DRequest, TextTo3DRequest, request_asset_id
from flows.tasks import store
for request in (MeshTo3DRequest(mesh={str(tmp_path / "bottle.glb")!r}, image={str(tmp_path / "bottle.png")!r}),
                TextTo3DRequest(prompt="a mossy chest")):
    asset = request_asset_id(request)
    next(plan_for(request, asset))
    store().put(asset + "/manifest.json", b"{{}}")
print(sorted(name for name in ("torch", "trimesh", "open3d", "pymeshlab", "diffusers") if name in sys.modules))
"""
    env = {**os.environ, "TEXT_TO_3D_STORE": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"

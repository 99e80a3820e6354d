"""No secret leaves the environment: a flow run with canary credentials, on moto's S3 server
and a real Prefect test server, leaves the canary in no stored object, manifest, artifact,
persisted result, log line, event or row of Prefect's database, nor in what it printed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest

from tests.conftest import free_port

FAST = {"segmenter": "u2net", "view_steps": 1, "texture_size": 64, "lods": 1, "preview_size": 32}


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []


def test_a_flow_run_with_canary_credentials_leaves_them_nowhere(prefect_server, tiny_models_file, u2netp_file,
                                                               s3_endpoint, monkeypatch, capfd, caplog, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from flows.mesh_to_3d import mesh_to_3d
    from flows.requests import AssetOptions
    from stages.sample_input import draw_sample_blockout, draw_sample_object
    from stages.settings import CONFIG_ENV

    canary = f"canary-{uuid.uuid4().hex}"
    bucket = f"secrets-{free_port()}"
    # Secrets only: the access key id is an identifier that every presigned link names.
    for name, value in {"AWS_ACCESS_KEY_ID": "canary-key-id", "AWS_SECRET_ACCESS_KEY": canary,
                        "HF_TOKEN": canary, "AWS_DEFAULT_REGION": "us-east-1", CONFIG_ENV: str(tiny_models_file),
                        "TEXT_TO_3D_MODELS__U2NETP__SOURCE": str(u2netp_file),
                        "TEXT_TO_3D_STORE": f"s3://{bucket}/assets", "TEXT_TO_3D_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    draw_sample_blockout().export(tmp_path / "bottle.glb")
    draw_sample_object(256).save(tmp_path / "bottle.png")

    state = mesh_to_3d(mesh=str(tmp_path / "bottle.glb"), image=str(tmp_path / "bottle.png"),
                       options=AssetOptions(**FAST), return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)

    places: dict[str, bytes] = {}
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    assert any(key.endswith("/manifest.json") for key in keys) and any(key.endswith(".glb") for key in keys)
    for key in keys:
        places[f"s3://{bucket}/{key}"] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    results = _files(Path(prefect_server.results.local_storage_path))
    assert results, "no persisted results to check"
    for path in results:
        places[str(path)] = path.read_bytes()
    # Prefect's database holds every artifact, log, event, parameter and state
    database = Path(prefect_server.server.database.connection_url.get_secret_value().split("///", 1)[1])
    for path in database.parent.glob(database.name + "*"):
        places[str(path)] = path.read_bytes()
    flow_run = state.state_details.flow_run_id
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))
        # an artifact may have no key (one in this run had none in a CI-like run); all are searched
        assert any((artifact.key or "").endswith("-summary") for artifact in artifacts)
        places["artifacts"] = json.dumps([artifact.model_dump(mode="json") for artifact in artifacts]).encode()
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])))
        assert logs, "no logs to check"
        places["logs"] = json.dumps([log.model_dump(mode="json") for log in logs]).encode()
    captured = capfd.readouterr()
    places["stdout and stderr"] = (captured.out + captured.err).encode()
    places["log records"] = "\n".join(record.getMessage() for record in caplog.records).encode()

    leaks = [place for place, data in places.items() if canary.encode() in data]
    assert not leaks, f"the canary secret is in {leaks}"

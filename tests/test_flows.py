"""The text-to-3d flow on tiny models, a real Prefect test server and moto's S3 HTTP server."""

from __future__ import annotations

import boto3
import pytest

from tests.conftest import free_port


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def flow_settings(prefect_server, tiny_models_file, shared_dir, s3_endpoint, monkeypatch):
    from stages.settings import CONFIG_ENV

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket = f"flows-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv(CONFIG_ENV, str(tiny_models_file))
    monkeypatch.setenv("TEXT_TO_3D_MODELS__U2NETP__SOURCE", str(shared_dir / "data" / "u2netp.onnx"))
    monkeypatch.setenv("TEXT_TO_3D_STORE", f"s3://{bucket}/assets")
    monkeypatch.setenv("TEXT_TO_3D_S3_ENDPOINT_URL", s3_endpoint)
    from flows.store import open_store

    return open_store(f"s3://{bucket}/assets", endpoint_url=s3_endpoint)


def _task_states(flow_state) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def test_flow_stores_each_finished_stage_and_a_rerun_recomputes_none(flow_settings):
    from flows.text_to_3d import TextTo3DRequest, request_asset_id, text_to_3d

    request = TextTo3DRequest(prompt="a red chair", seed=2, image_size=128, image_steps=3, view_steps=2)
    asset = request_asset_id(request)
    first = text_to_3d(request, return_state=True)
    # Random tiny models draw noise, so reconstruction refuses the views (foreground on every
    # border); everything before it is stored and the asset stays incomplete.
    assert first.is_failed()
    assert "foreground touches the border" in str(first.result(raise_on_failure=False))
    for key in ["image/image.png", "cutout/cutout.png", "cutout/reframed.png", "views/grid.png",
                "views/view_5.png", "views/cameras.json"]:
        assert flow_settings.exists(f"{asset}/{key}"), key
    assert not flow_settings.exists(f"{asset}/manifest.json")

    second = text_to_3d(request, return_state=True)
    states = _task_states(second)
    assert states["text-to-image"] == states["cutout"] == states["six-views"] == "Cached", states
    assert states["reconstruct"] == "Failed"


def test_bad_prompt_fails_before_any_stage(flow_settings):
    from flows.text_to_3d import TextTo3DRequest, text_to_3d

    state = text_to_3d(TextTo3DRequest(prompt="   "), return_state=True)
    assert state.is_failed() and "prompt is empty" in str(state.result(raise_on_failure=False))

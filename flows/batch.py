"""``batch-text-to-3d``: a manifest of prompts (CSV or JSONL; local path or S3 URI) to one
asset per row.

Each row is a prompt with optional parameters (any field of the request: ``seed``,
``image_model``, ``texture_size`` ...); a row with an ``image`` column is an image-to-3d row
and one with a ``mesh`` column a retexture. Rows whose asset is already complete are
skipped, a bad row fails alone with its reason, and the run ends with a table artifact of
every row's outcome. Stages run one name at a time across all rows, so each model is
loaded once per batch.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed
from pydantic import ValidationError

from flows.assets import read_manifest, slugify
from flows.caching import PLAIN_JSON
from flows.plans import plan_for
from flows.requests import (AssetOptions, AssetRequest, ImageTo3DRequest, MeshTo3DRequest, TextTo3DRequest,
                            request_asset_id, validation_reasons)
from flows.runner import Job, Outcome, make_task_runner, run_jobs
from flows.store import read_input
from flows.tasks import settings, store


def read_rows(data: bytes, name: str) -> list[dict[str, Any] | ValueError]:
    """The manifest's rows as dicts; an unreadable row becomes a ``ValueError`` naming its line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{name}: a manifest must be UTF-8 text") from None
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        rows: list[dict[str, Any] | ValueError] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append(row if isinstance(row, dict) else ValueError(f"line {number}: not a JSON object"))
            except json.JSONDecodeError as error:
                rows.append(ValueError(f"line {number}: not valid JSON ({error.msg})"))
        return rows
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "prompt" not in reader.fieldnames and "image" not in reader.fieldnames:
            raise ValueError(f"{name}: a CSV manifest needs a header with a 'prompt' (or 'image') column")
        return [{key: value for key, value in row.items() if value not in ("", None)} for row in reader]
    raise ValueError(f"{name}: a manifest must be .csv or .jsonl")


def row_request(row: dict[str, Any], defaults: dict[str, Any]) -> AssetRequest:
    """The typed request of one row: mesh-to-3d with a ``mesh``, image-to-3d with an ``image``,
    else text-to-3d. Raises ``ValueError`` with pydantic's reasons."""
    if None in row:
        raise ValueError("the row has more cells than the header has columns")
    fields = {**defaults, **row}
    kind = MeshTo3DRequest if "mesh" in fields else ImageTo3DRequest if "image" in fields else TextTo3DRequest
    options = {name: fields.pop(name) for name in list(fields) if name in AssetOptions.model_fields}
    try:
        return kind.model_validate({**fields, "options": options})
    except ValidationError as error:
        raise ValueError(validation_reasons(error)) from None


def _outcome_row(number: int, outcome: Outcome) -> dict[str, Any]:
    return {"row": number, "asset": outcome.asset, "status": outcome.status, "failed_stage": outcome.failed_stage or "",
            "error": (outcome.error or "")[:300], "manifest": outcome.manifest or "", "seconds": round(outcome.seconds, 1)}


@flow(name="batch-text-to-3d", flow_run_name="batch-{manifest}", task_runner=make_task_runner(),
      validate_parameters=True, result_serializer=PLAIN_JSON)
def batch_text_to_3d(manifest: str, concurrency: int = 4, defaults: dict[str, Any] | None = None) -> Any:
    """One asset per manifest row; returns every row's outcome (the run fails if any row did).

    Args:
        manifest: CSV or JSONL of prompts: a local path or s3://bucket/key
        concurrency: stage tasks run at once (GPU stages also obey the 'gpu' concurrency limit)
        defaults: parameters (seed or any stage option) for rows that do not set them
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    current = settings()
    data = read_input(manifest, current.s3_endpoint_url, current.max_manifest_bytes, "TEXT_TO_3D_MAX_MANIFEST_BYTES")
    rows = read_rows(data, Path(manifest).name.lower())
    target = store()
    outcomes: dict[int, Outcome] = {}
    jobs: dict[int, Job] = {}
    for number, row in enumerate(rows, start=1):
        try:
            if isinstance(row, ValueError):
                raise row
            asset_request = row_request(row, defaults or {})
            asset = request_asset_id(asset_request)
        except ValueError as error:
            outcomes[number] = Outcome(f"row-{number}", "failed", error=str(error), failed_stage="request")
            continue
        if read_manifest(target, asset) is not None:
            outcomes[number] = Outcome(asset, "skipped", manifest=target.uri(f"{asset}/manifest.json"))
        elif any(job.asset == asset for job in jobs.values()):
            outcomes[number] = Outcome(asset, "skipped", error="same request as an earlier row")
        else:
            jobs[number] = Job(asset, asset_request, plan_for(asset_request, asset))
    for number, outcome in zip(jobs, run_jobs(list(jobs.values()), concurrency)):
        outcomes[number] = outcome
    table = [_outcome_row(number, outcomes[number]) for number in sorted(outcomes)]
    create_table_artifact(table, key=f"batch-{slugify(Path(manifest).stem)}",
                          description=f"outcome of every row of {manifest}")
    failed = [row for row in table if row["status"] == "failed"]
    summary = f"{len(table)} rows: {len(table) - len(failed)} complete or skipped, {len(failed)} failed"
    return Failed(message=summary, data=table) if failed else Completed(message=summary, data=table)

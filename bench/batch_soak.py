"""Batch soak: a nightly batch of mesh rows on tiny models, some rows bad; prints JSON.

    python bench/batch_soak.py                        # 200 rows, 10 (5 %) bad, into a temporary folder
    python bench/batch_soak.py --rows 40 --bad 2 --out /tmp/soak --concurrency 2

Every good row must end with a complete manifest whose outputs all exist and match their
recorded sha256, every bad row with its own clear error, and nothing may be partial: no
manifest for a failed row, no scratch file left in the store. The bad rows cycle through
the faults a studio's manifest really holds (``BAD_ROWS``). The run uses the local store
and Prefect's ephemeral server in a fresh ``PREFECT_HOME``; the same check runs in CI on 20
rows against S3 (tests/test_flows.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Small but complete: every stage runs, on tiny models, in a few seconds per asset.
FAST = {"segmenter": "u2net", "view_steps": 1, "texture_size": 64, "lods": 2, "preview_size": 32}

# (row as JSON, or a line that is not JSON; what the row's error must say). ``{mesh}``,
# ``{image}`` and ``{corrupt}`` name the inputs.
BAD_ROWS: list[tuple[Any, str]] = [
    ('{"prompt": "a broken row",', "not valid JSON"),
    ({"prompt": "  "}, "prompt is empty"),
    ({"image": "{corrupt}", "segmenter": "u2net"}, "corrupt.png"),
    ({"mesh": "{missing}", "image": "{image}"}, "no such input file"),
    ({"mesh": "{mesh}", "image": "{image}", "texture_size": 100}, "texture_size"),
]


def write_inputs(folder: Path) -> dict[str, Path]:
    """The built-in blockout and photo, and a photo cut short (a corrupt upload)."""
    from stages.sample_input import draw_sample_blockout, draw_sample_object

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"mesh": folder / "blockout.glb", "image": folder / "reference.png", "corrupt": folder / "corrupt.png"}
    draw_sample_blockout().export(paths["mesh"])
    draw_sample_object(256).save(paths["image"])
    paths["corrupt"].write_bytes(paths["image"].read_bytes()[:200])
    return paths


def write_batch(path: Path, inputs: dict[str, Path], rows: int, bad: int) -> dict[int, str]:
    """A JSONL manifest of ``rows`` rows: mesh rows (one seed each), with ``bad`` of them,
    spread evenly, taken in turn from ``BAD_ROWS``. Returns each bad row's number (from 1)
    and what its error must say."""
    if not 0 <= bad <= rows:
        raise ValueError(f"bad rows must be between 0 and {rows}, got {bad}")
    names = {key: str(value) for key, value in inputs.items()} | {"missing": str(inputs["mesh"].with_name("gone.glb"))}
    bad_numbers = {round((index + 0.5) * rows / bad) for index in range(bad)} if bad else set()
    lines, expected = [], {}
    for number in range(1, rows + 1):
        if number in bad_numbers:
            row, error = BAD_ROWS[len(expected) % len(BAD_ROWS)]
            # a seed of its own: a bad row repeated is a new request, not a duplicate the batch skips
            text = row if isinstance(row, str) else json.dumps({**row, "seed": 1000 + number})
            for key, value in names.items():
                text = text.replace("{" + key + "}", value)
            lines.append(text)
            expected[number] = error
        else:
            lines.append(json.dumps({"mesh": names["mesh"], "image": names["image"], "seed": 1000 + number}))
    path.write_text("\n".join(lines) + "\n")
    return expected


def check_batch(store: Any, table: list[dict[str, Any]], rows: int, expected_errors: dict[int, str]) -> list[str]:
    """Every way a batch of ``rows`` rows fell short of its expected outcome, as sentences;
    empty when all is well."""
    from flows.assets import read_manifest
    from flows.store import LocalStore

    problems = []
    for row in table:
        number, error = row["row"], expected_errors.get(row["row"])
        if error is None and row["status"] != "completed":
            problems.append(f"row {number}: {row['status']}, expected completed ({row['error']})")
        elif error is not None and (row["status"] != "failed" or error not in row["error"]):
            problems.append(f"row {number}: {row['status']} with {row['error']!r}, expected an error saying {error!r}")
        manifest = read_manifest(store, row["asset"]) if not row["asset"].startswith("row-") else None
        if row["status"] == "failed" and manifest is not None:
            problems.append(f"row {number} failed but its asset {row['asset']} has a manifest")
        if row["status"] == "completed":
            problems += _incomplete_outputs(store, number, row["asset"], manifest)
    if [row["row"] for row in table] != list(range(1, rows + 1)):
        problems.append(f"the outcome table does not hold rows 1 to {rows} once each: {len(table)} entries")
    if isinstance(store, LocalStore):
        problems += [f"scratch file left: {path}" for path in store.root.rglob("*.partial")]
    return problems


def _incomplete_outputs(store: Any, number: int, asset: str, manifest: dict | None) -> list[str]:
    """Outputs a completed row's manifest records that are missing or differ from their sha256."""
    if manifest is None:
        return [f"row {number} completed without a manifest"]
    problems = []
    for stage, record in manifest["stages"].items():
        for name, stored in record["outputs"].items():
            key = stored["uri"][stored["uri"].index(f"{asset}/"):]
            try:
                data = store.get(key)  # verifies the sha256 recorded with the object
            except (FileNotFoundError, OSError) as error:
                problems.append(f"row {number}: {stage}/{name}: {error}")
                continue
            if len(data) != stored["bytes"]:
                problems.append(f"row {number}: {stage}/{name} holds {len(data)} bytes, the manifest says {stored['bytes']}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--bad", type=int, default=None, help="bad rows (default: 5 %% of the rows)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    bad = round(0.05 * args.rows) if args.bad is None else args.bad
    out = (args.out or Path(tempfile.mkdtemp(prefix="batch-soak-"))).resolve()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stages.registry import fetch, model_spec
    from stages.settings import CONFIG_ENV, load_settings
    from stages.tiny_models import make_tiny_models

    os.environ[CONFIG_ENV] = str(make_tiny_models(out / "models"))
    os.environ["TEXT_TO_3D_STORE"] = str(out / "assets")
    os.environ["TEXT_TO_3D_MODELS__U2NETP__SOURCE"] = str(fetch(model_spec("u2netp", load_settings())).path)
    os.environ["PREFECT_HOME"] = str(out / "prefect")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine starts it slowly
    expected = write_batch(out / "nightly.jsonl", write_inputs(out / "inputs"), args.rows, bad)

    from flows.batch import batch_text_to_3d
    from flows.tasks import store

    started = time.perf_counter()
    state = batch_text_to_3d(str(out / "nightly.jsonl"), concurrency=args.concurrency, defaults=FAST,
                             return_state=True)
    wall = time.perf_counter() - started
    table = state.result(raise_on_failure=False)
    problems = check_batch(store(), table, args.rows, expected)
    print(json.dumps({
        "rows": args.rows, "bad_rows": bad, "concurrency": args.concurrency,
        "completed": sum(row["status"] == "completed" for row in table),
        "failed": sum(row["status"] == "failed" for row in table),
        "problems": problems, "ok": not problems,
        "wall_seconds": round(wall, 1), "seconds_per_row": round(wall / max(args.rows, 1), 2),
        "message": state.message, "machine": platform.node(), "cpus": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
        "out": str(out),
    }, indent=2))
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()

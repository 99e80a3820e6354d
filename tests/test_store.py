"""Artifact store and asset lineage against real backends: a folder and moto's S3 HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flows.assets import StageRecord, asset_id, build_manifest, read_manifest, slugify, write_manifest
from flows.store import IntegrityError, LocalStore, S3Store, input_version, open_store, read_input
from tests.conftest import free_port


@pytest.fixture
def s3_store(s3_endpoint, s3_bucket):
    return open_store(f"s3://{s3_bucket}/studio", endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    return LocalStore(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_store")


def test_round_trip_with_checksums(store):
    stored = store.put("chest-1/image/image.png", b"pixels")
    assert stored.bytes == 6 and len(stored.sha256) == 64
    assert store.get("chest-1/image/image.png") == b"pixels"
    assert store.exists("chest-1/image/image.png") and not store.exists("chest-1/image/other.png")
    with pytest.raises(FileNotFoundError, match="no such artifact"):
        store.get("chest-1/image/other.png")
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.put("../escape", b"x")


# Two processes put different bytes under one key while a third reads it, all starting together.
CONTENDER = """
import json, os, sys, time
import recon.export  # the store's writer, imported before the start (it brings torch)
from flows.store import IntegrityError, LocalStore
store, role, byte = LocalStore(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
while not os.path.exists(sys.argv[4]):
    time.sleep(0.01)
expected = lambda value: bytes([value]) * (10_000 * (value + 1))  # writer k: byte k, (k + 1) * 10 kB
counts = {"integrity_errors": 0, "foreign": 0}
for _ in range(300):
    if role == "writer":
        store.put("chest-1/views/grid.png", expected(byte))
        continue
    try:
        data = store.get("chest-1/views/grid.png")
    except IntegrityError:
        counts["integrity_errors"] += 1
    else:
        counts["foreign"] += data != expected(data[0])
print(json.dumps(counts))
"""


def test_concurrent_writers_of_one_key_never_show_a_reader_a_mismatched_pair(tmp_path):
    """Each writer's data and checksum change together: every read returns one writer's
    whole bytes and verifies, and the pair left at the end matches."""
    store = LocalStore(tmp_path / "store")
    store.put("chest-1/views/grid.png", bytes([0]) * 10_000)
    start = tmp_path / "start"
    roles = [("writer", 0), ("writer", 1), ("reader", 0)]
    processes = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(store.root), role, str(byte), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).parents[1])
                 for role, byte in roles]
    assert [process.stdout.readline() for process in processes] == ["ready\n"] * 3
    start.touch()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 3, [error[-600:] for _, error in outputs]
    assert [json.loads(output) for output, _ in outputs[2:]] == [{"integrity_errors": 0, "foreign": 0}]
    data = store.get("chest-1/views/grid.png")
    assert data in {bytes([byte]) * (10_000 * (byte + 1)) for byte in range(2)}
    assert not list((store.root / "chest-1" / "views").glob(".*.partial"))


def test_large_objects_go_up_in_parts(s3_store):
    data = bytes(range(256)) * (S3Store.MULTIPART_BYTES // 256 + 1000)
    stored = s3_store.put("big/recon/mesh.glb", data)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="studio/big/recon/mesh.glb")
    assert "-" in head["ETag"]  # multipart ETags carry the part count
    assert s3_store.get("big/recon/mesh.glb") == data and stored.bytes == len(data)


def test_corruption_is_detected_on_read(store):
    store.put("a/b/c.bin", b"original")
    if isinstance(store, LocalStore):
        (store.root / "a" / "b" / "c.bin").write_bytes(b"tampered")
    else:
        store.client.put_object(Bucket=store.bucket, Key="studio/a/b/c.bin", Body=b"tampered",
                                Metadata={"sha256": "0" * 64})
    with pytest.raises(IntegrityError):
        store.get("a/b/c.bin")


def test_an_input_version_changes_with_its_file_and_costs_no_download(store, tmp_path, s3_endpoint):
    if isinstance(store, LocalStore):
        location, endpoint = str(tmp_path / "blockout.glb"), None
        Path(location).write_bytes(b"first")
    else:
        store.put("inputs/blockout.glb", b"first")
        location, endpoint = store.uri("inputs/blockout.glb"), s3_endpoint
    first = input_version(location, endpoint)
    assert input_version(location, endpoint) == first and read_input(location, endpoint) == b"first"
    if isinstance(store, LocalStore):
        Path(location).write_bytes(b"second, longer")
    else:
        store.put("inputs/blockout.glb", b"second, longer")
    assert input_version(location, endpoint) != first
    with pytest.raises(ValueError, match="no such input"):
        input_version(location.replace("blockout", "missing"), endpoint)


def test_unreachable_endpoint_fails_clearly_after_retries(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Store("bucket", endpoint_url=endpoint, max_attempts=2, connect_timeout=0.5)
    # a ConnectionError (retried by stages) that names the endpoint and the object
    with pytest.raises(ConnectionError, match=f"S3 endpoint {endpoint} unreachable while writing s3://bucket/x/y/z"):
        store.put("x/y/z", b"data")


def test_asset_ids_are_stable_readable_and_distinct():
    request = {"prompt": "A mossy treasure chest!", "seed": 7, "models": {"sdxl-base": "abc"}}
    first = asset_id(request["prompt"], request)
    assert first == asset_id(request["prompt"], dict(reversed(list(request.items()))))
    assert first.startswith("a-mossy-treasure-chest-") and len(first.rsplit("-", 1)[1]) == 12
    assert asset_id(request["prompt"], {**request, "seed": 8}) != first
    assert len(slugify("word " * 30)) <= 40 and slugify("***") == "asset"


def test_manifest_is_written_last_and_marks_the_asset_complete(store):
    assert read_manifest(store, "chest-1") is None
    image = store.put("chest-1/image/image.png", b"png")
    record = StageRecord("completed", 1.5, {"image": image}, models=[{"name": "sdxl-base", "revision": "local"}])
    write_manifest(store, "chest-1", build_manifest("chest-1", {"prompt": "chest"}, {"image": record},
                                                    datetime.now(timezone.utc)))
    manifest = read_manifest(store, "chest-1")
    assert manifest["stages"]["image"]["outputs"]["image"]["sha256"] == image.sha256
    assert manifest["models"]["image"][0]["name"] == "sdxl-base"
    assert manifest["packages"]["torch"].startswith("2.13.0")
    json.dumps(manifest)

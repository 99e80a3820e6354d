"""Faults injected into real runs, and what comes out: the rows of docs/reliability.md not
already tested with their feature (the killed worker, dropped connections and the batch live
in tests/test_flows.py, the corrupted object and concurrent writers in tests/test_store.py,
deleted outputs and concurrent runs in tests/test_caching.py).

S3 faults are real HTTP: moto's server behind the fault proxy (tests/fault_proxy.py). The
full disk is the kernel refusing a write (``RLIMIT_FSIZE`` in a child process), and the
out-of-memory error comes from the tiny six-view model itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from flows.store import LocalStore, S3Store, sha256_of
from tests.fault_proxy import FaultProxy
from tests.test_flows import _retexture, _states, _task_runs, inputs, s3  # noqa: F401 (fixtures)


@pytest.fixture
def faulty_s3(s3_endpoint, s3_bucket):
    """A fresh bucket reached through a fault proxy: ``(proxy, bucket, direct client)``."""
    bucket, direct = s3_bucket, boto3.client("s3", endpoint_url=s3_endpoint)
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    yield proxy, bucket, direct
    proxy.close()


def test_an_upload_cut_part_way_is_resent_whole_and_a_lasting_cut_leaves_no_object(faulty_s3):
    proxy, bucket, direct = faulty_s3
    store = S3Store(bucket, "assets", endpoint_url=proxy.url, max_attempts=3)
    data = os.urandom(S3Store.MULTIPART_BYTES + 2**20)  # two parts
    proxy.cut(1, after_bytes=2**20)  # the first connection: CreateMultipartUpload, then a part
    stored = store.put("chest-1/recon/asset.glb", data)
    assert proxy.faulted == 1 and stored.sha256 == sha256_of(data)
    assert store.get("chest-1/recon/asset.glb") == data

    proxy.cut(10**9, after_bytes=2**20)
    with pytest.raises(ConnectionError, match=f"S3 endpoint {proxy.url} unreachable while writing "
                                              f"s3://{bucket}/assets/chest-2/recon/asset.glb"):
        store.put("chest-2/recon/asset.glb", data)
    proxy.heal()
    assert not store.exists("chest-2/recon/asset.glb")
    # the parts already sent were discarded with the upload (its abort is a small request)
    assert "Uploads" not in direct.list_multipart_uploads(Bucket=bucket)


def test_throttling_is_backed_off_and_a_lasting_throttle_fails_with_s3s_code(faulty_s3):
    from botocore.exceptions import ClientError

    proxy, bucket, _ = faulty_s3
    store = S3Store(bucket, "assets", endpoint_url=proxy.url, max_attempts=3)
    proxy.throttle(2)
    store.put("chest-1/image/image.png", b"pixels")
    assert proxy.faulted == 2 and store.get("chest-1/image/image.png") == b"pixels"
    proxy.throttle(10**9)
    with pytest.raises(ClientError, match=r"\(SlowDown\) when calling the GetObject operation \(reached max retries"):
        store.get("chest-1/image/image.png")  # a stage retries this code (flows.tasks.TRANSIENT_S3_CODES)


def test_s3_errors_fail_a_stage_and_its_retry_completes_the_asset(s3, inputs):
    """The flow's S3 client tries each request once here, so S3's 500 reaches the stage."""
    s3.proxy.fail(1)
    asset, state = _retexture(inputs, seed=11)
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert s3.proxy.faulted == 1
    assert {name: run.run_count for name, run in _task_runs(state).items() if run.run_count > 1} == {"ingest-image": 2}
    assert s3.store.exists(f"{asset}/manifest.json")


def test_a_stage_out_of_gpu_memory_is_retried_and_the_retry_completes_the_asset(s3, inputs, monkeypatch):
    """The tiny Zero123++ UNet runs out of memory on its first step, as a GPU shared with
    another job does; the stage's retry finds the memory and the asset completes."""
    import torch

    from stages.model_cache import get_model
    from stages.settings import load_settings

    unet = get_model("zero123plus-v1.1", load_settings(), controlnet="controlnet-zp11-depth-v1").model.unet
    forward = unet.forward

    def out_of_memory_once(*args, **kwargs):
        monkeypatch.setattr(unet, "forward", forward)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 0 bytes free)")

    monkeypatch.setattr(unet, "forward", out_of_memory_once)
    asset, state = _retexture(inputs, seed=12)
    assert state.is_completed(), state.result(raise_on_failure=False)
    assert {name: run.run_count for name, run in _task_runs(state).items() if run.run_count > 1} == {"six-views": 2}
    assert s3.store.exists(f"{asset}/manifest.json")


# A child process whose files may not grow past 64 kB: the kernel fails the write part-way,
# as it does on a full disk (EFBIG there, ENOSPC here; the store sees the same failed write).
FULL_DISK = """
import resource, signal, sys
from flows.store import LocalStore
store = LocalStore(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with an error instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, resource.RLIM_INFINITY))
try:
    store.put("chest-1/views/grid.png", bytes(range(256)) * 1000)
except OSError as error:
    print(error)
"""


def test_a_full_disk_fails_the_write_clearly_and_keeps_the_previous_version_whole(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put("chest-1/views/grid.png", b"the first run's grid")
    child = subprocess.run([sys.executable, "-c", FULL_DISK, str(store.root)], capture_output=True, text=True,
                           cwd=Path(__file__).parents[1], timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == (f"[Errno 27] {store.uri('chest-1/views/grid.png')}: could not store 256000 bytes: "
                                    "File too large")
    assert store.get("chest-1/views/grid.png") == b"the first run's grid"  # and its checksum still matches
    assert sorted(path.name for path in (store.root / "chest-1" / "views").iterdir()) == [
        ".lock", "grid.png", "grid.png.sha256"]

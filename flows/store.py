"""The artifact store: every stage's outputs under ``{prefix}/{asset_id}/{stage}/{file}``.

Two backends behind one interface: a local folder (the embedded default) and S3 through
boto3 (any ``endpoint_url``: AWS, MinIO, R2, moto's server). Writes are whole or absent
(local: scratch files renamed into place under a lock; S3: a single PUT or a completed
multipart upload), every object carries its SHA-256, and reads verify it, so a truncated
or altered artifact is never used silently.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol


SHA256_METADATA = "sha256"


class IntegrityError(IOError):
    """A stored object's bytes do not match the checksum recorded with it."""


@dataclass(frozen=True)
class StoredObject:
    """A reference to one stored artifact: what tasks pass between each other."""

    uri: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, str | int]:
        return {"uri": self.uri, "sha256": self.sha256, "bytes": self.bytes}


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> StoredObject: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def uri(self, key: str) -> str: ...
    def link(self, key: str) -> str:
        """Where a person finds the full file: a presigned HTTPS URL, or a local path."""
        ...


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid artifact key {key!r}: use relative 'asset/stage/file' paths")
    return key


class LocalStore:
    """A folder; checksums live in ``.sha256`` files beside the artifacts.

    An artifact and its checksum are two files, so each folder has a ``.lock`` file: a
    writer holds it exclusively (``flock``) while it renames the new pair into place, a
    reader shares it while it reads the pair. So no reader sees one file's new version beside
    the other's old one, and two writers of one key (two runs of one asset) cannot cross
    their renames into a lasting mismatch. Locks are the operating system's: released when
    a process dies, shared by every process on the machine, and on NFS emulated with its
    byte-range locks. (An extended attribute would publish both in one rename, but tmpfs
    before Linux 6.6 and macOS's Python have no user attributes.) A writer killed between
    its two renames leaves a pair that fails verification: the read raises
    ``IntegrityError``, as for any corrupt artifact, and the stage that wrote it runs again.
    """

    LOCK = ".lock"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def uri(self, key: str) -> str:
        return (self.root / _check_key(key)).as_uri()

    def link(self, key: str) -> str:
        """Where a person on this machine finds the file: its plain path (a browser page
        opens no ``file://`` link, and a path is what a shell or file manager takes)."""
        return str(self.root / _check_key(key))

    def put(self, key: str, data: bytes) -> StoredObject:
        from recon.files import write_set_atomically

        path = self.root / _check_key(key)
        digest = sha256_of(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._locked(path.parent, exclusive=True):
                write_set_atomically({self._checksum_path(path): digest.encode(), path: data})
        except OSError as error:  # a full disk, a read-only store: name the artifact, keep the cause
            raise OSError(error.errno, f"{self.uri(key)}: could not store {len(data)} bytes: {error.strerror or error}") from error
        return StoredObject(self.uri(key), digest, len(data))

    def get(self, key: str) -> bytes:
        path = self.root / _check_key(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.uri(key)}: no such artifact")
        with self._locked(path.parent, exclusive=False):
            data = path.read_bytes()
            checksum = self._checksum_path(path)
            recorded = checksum.read_text() if checksum.is_file() else None
        if recorded is not None and recorded != sha256_of(data):
            raise IntegrityError(f"{self.uri(key)}: content does not match its recorded sha256")
        return data

    def exists(self, key: str) -> bool:
        return (self.root / _check_key(key)).is_file()

    @staticmethod
    def _checksum_path(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    @contextmanager
    def _locked(self, folder: Path, exclusive: bool) -> Iterator[None]:
        """Hold ``folder``'s lock. A reader finds it made: the writer of any artifact there
        made it first; a folder written before stores had locks is read unlocked."""
        lock = folder / self.LOCK
        try:
            handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666) if exclusive else os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(handle)  # closing releases the lock


class S3Store:
    """``s3://bucket/prefix`` through boto3, with adaptive retries and multipart for large files."""

    MULTIPART_BYTES = 16 * 2**20

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 max_attempts: int = 5, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 link_seconds: int = 24 * 3600) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.link_seconds = link_seconds
        # botocore retries throttling, 5xx and connection errors with backoff; a task-level
        # retry sits above this for longer outages. Links are signed with SigV4: boto3 would
        # presign with SigV2, which AWS regions opened since 2014 refuse.
        config = Config(retries={"total_max_attempts": max_attempts, "mode": "adaptive"},
                        connect_timeout=connect_timeout, read_timeout=read_timeout, signature_version="s3v4")
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{_check_key(key)}" if self.prefix else _check_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def link(self, key: str) -> str:
        """A presigned HTTPS URL that expires after ``link_seconds`` (settings: a day)."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=self.link_seconds)

    @contextmanager
    def _reaching(self, key: str, action: str) -> Iterator[None]:
        """Name the endpoint and object when S3 cannot be reached or drops the connection;
        raised as a ConnectionError, which stages retry as transient. Missing credentials are
        a ``ValueError`` naming the settings to set: no retry finds them."""
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError, NoCredentialsError

        try:
            yield
        except NoCredentialsError:
            raise ValueError(f"no S3 credentials for {action} {self.uri(key)}: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and TEXT_TO_3D_S3_ENDPOINT_URL for a store "
                             "other than AWS") from None
        except (BotoConnectionError, HTTPClientError) as error:
            endpoint = self.client.meta.endpoint_url
            raise ConnectionError(f"S3 endpoint {endpoint} unreachable while {action} {self.uri(key)}: {error} "
                                  "(TEXT_TO_3D_S3_ENDPOINT_URL sets the endpoint)") from error

    def put(self, key: str, data: bytes) -> StoredObject:
        from boto3.s3.transfer import TransferConfig

        digest = sha256_of(data)
        with self._reaching(key, "writing"):
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, self._object_key(key),
                ExtraArgs={"Metadata": {SHA256_METADATA: digest}},
                Config=TransferConfig(multipart_threshold=self.MULTIPART_BYTES, multipart_chunksize=self.MULTIPART_BYTES),
            )
        return StoredObject(self.uri(key), digest, len(data))

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            with self._reaching(key, "reading"):
                response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
                data = response["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.uri(key)}: no such artifact") from None
            raise
        expected = response.get("Metadata", {}).get(SHA256_METADATA)
        if expected is not None and expected != sha256_of(data):
            raise IntegrityError(f"{self.uri(key)}: content does not match its recorded sha256")
        return data

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> dict | None:
        """The object's metadata (``ETag``, ``ContentLength``, ...), or ``None`` when absent."""
        from botocore.exceptions import ClientError

        try:
            with self._reaching(key, "checking"):
                return self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise


def open_store(location: str, endpoint_url: str | None = None, max_attempts: int = 5,
               link_seconds: int = 24 * 3600) -> ArtifactStore:
    """``s3://bucket/prefix`` gives an S3 store, anything else a local folder."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{location!r}: an S3 store needs a bucket (s3://bucket/prefix)")
        return S3Store(bucket, prefix, endpoint_url, max_attempts=max_attempts, link_seconds=link_seconds)
    return LocalStore(location)


def _s3_input(location: str, endpoint_url: str | None) -> tuple[S3Store, str]:
    bucket, _, key = location[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ValueError(f"{location!r}: an S3 input needs a bucket and a key (s3://bucket/key)")
    return S3Store(bucket, endpoint_url=endpoint_url), key


def _local_input(location: str) -> Path:
    path = Path(location).expanduser()
    if not path.is_file():
        raise ValueError(f"{location}: no such input file")
    return path


def input_version(location: str, endpoint_url: str | None = None) -> tuple:
    """A cheap stamp that changes whenever a user's input file does, without reading it:
    path, size and modification time locally, size and ETag on S3 (one HEAD request).
    The second item is always the size in bytes.

    Raises ``ValueError`` naming the location when it does not exist.
    """
    if location.startswith("s3://"):
        source, key = _s3_input(location, endpoint_url)
        head = source.head(key)
        if head is None:
            raise ValueError(f"{location}: no such input object")
        return location, head["ContentLength"], endpoint_url, head["ETag"]
    path = _local_input(location)
    status = path.stat()
    return str(path.resolve()), status.st_size, status.st_mtime_ns


def read_input(location: str, endpoint_url: str | None = None, max_bytes: int | None = None,
               limit_setting: str = "") -> bytes:
    """The bytes of a user's input file: a local path or ``s3://bucket/key``.

    With ``max_bytes``, a larger file is refused from its size alone (a stat or one HEAD
    request), before any of it is read; the error names ``limit_setting``, the setting
    that raises the limit. Raises ``ValueError`` naming the location when it does not exist
    or is too large (bad input, never retried); connection and throttling errors propagate
    so the caller can retry them.
    """
    if max_bytes is not None:
        _check_size(location, input_version(location, endpoint_url)[1], max_bytes, limit_setting)
    if location.startswith("s3://"):
        source, key = _s3_input(location, endpoint_url)
        try:
            data = source.get(key)
        except FileNotFoundError:
            raise ValueError(f"{location}: no such input object") from None
    else:
        data = _local_input(location).read_bytes()
    if max_bytes is not None:  # the file may have grown since its size was read
        _check_size(location, len(data), max_bytes, limit_setting)
    return data


def _check_size(location: str, size: int, max_bytes: int, limit_setting: str) -> None:
    if size > max_bytes:
        raise ValueError(f"{location}: {size:,} bytes, over the limit of {max_bytes:,}"
                         + (f" (setting {limit_setting})" if limit_setting else ""))

"""Files written whole or not at all. Only the standard library: the artifact store writes
through these from flow-run processes, which import no torch, trimesh or open3d."""

from __future__ import annotations

import glob
import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write one file so that a reader sees the old bytes or the new, never a part."""
    write_set_atomically({path: data})


def write_set_atomically(files: dict[Path, bytes]) -> None:
    """Write files that belong together (a GLB and its LODs): every one goes to a scratch
    file beside its final name first, and only when all are written are they renamed into
    place, so an interrupt (Ctrl-C, a full disk) while writing leaves the previous set
    whole. Scratch files a killed run left behind for these names are removed first.
    Files follow the umask (``mkstemp`` would make them 0600)."""
    for path in files:
        if path.is_dir():
            raise ValueError(f"{path} is a folder; expected a file name")
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
            stale.unlink(missing_ok=True)
    scratches: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            scratch = path.parent / f".{path.name}.{secrets.token_hex(6)}.partial"
            handle = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            scratches[path] = scratch
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
        for path, scratch in scratches.items():
            os.replace(scratch, path)
    except BaseException:
        for scratch in scratches.values():
            scratch.unlink(missing_ok=True)
        raise

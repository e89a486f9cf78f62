"""Small, careful file helpers: atomic writes, checksums, verified downloads.

Nothing here half-writes a file under its final name: every writer goes to a
temporary name in the same folder and is renamed into place (``os.replace``)
only when complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm


class DataError(RuntimeError):
    """Bad or missing input data. The message names the file and the problem."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_sha256sums(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into {relative name: hex digest}."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        sums[name.strip().lstrip("*")] = digest.lower()
    return sums


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to ``final``; rename it into place on success.

    On an exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp creates 0600; give the file the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, waiting: str | None = None):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block: a second holder
    waits, printing ``waiting`` first; the OS drops the lock of a killed process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: str | os.PathLike, obj, **kw) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=json_default, **kw) + "\n")


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def verify_file(path: str | os.PathLike, sha256: str) -> None:
    """Raise DataError if ``path`` is missing or its SHA-256 differs."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file is missing")
    got = sha256_file(path)
    if got != sha256.lower():
        raise DataError(f"{path}: SHA-256 mismatch (expected {sha256.lower()}, got {got}); "
                        "the file is corrupt or not the published one; delete it and download again")


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60,
          verify: Callable[[Path], None] | None = None) -> Path:
    """Download ``url`` (http(s) or file://) to ``dest`` atomically, verifying ``sha256``.

    ``verify(path)``: a further check of the downloaded file (e.g. a published hash prefix or MD5)
    that raises DataError if it fails. An existing ``dest`` with the right checksum is kept as is.
    A partial or refused download never appears under ``dest``.
    """
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        return dest
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False,
                          disable=total is not None and total < (1 << 22)) as bar:
                    while block := r.read(1 << 20):
                        f.write(block)
                        bar.update(len(block))
        except OSError as e:  # URLError is an OSError
            raise DataError(f"{dest.name}: could not download from {url}: {e}") from e
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256.lower():
                raise DataError(f"{dest.name}: downloaded from {url} but SHA-256 is {got}, "
                                f"expected {sha256.lower()}")
        if verify is not None:
            verify(tmp)
    return dest


def copy_verified(src: str | os.PathLike, dest: str | os.PathLike, sha256: str | None = None) -> Path:
    """Copy a local file into place atomically, verifying its checksum."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: file is missing")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        if sha256 is not None and sha256_file(tmp) != sha256.lower():
            raise DataError(f"{src}: SHA-256 mismatch with the published checksum")
    return Path(dest)

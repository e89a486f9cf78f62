"""Crash-safe writing of an HDF5 image store: shards, the merge, the scan that resumes, the lock.
Every dataset carries HDF5's fletcher32 checksum, so a corrupt chunk fails on reading.

No file is ever modified in place. Finished images go to shard files ``<out>.parts/part-XXXXX.h5``,
each written under a temporary name, fsynced and renamed into place (:func:`dgstudy.io.atomic_path`),
so a shard exists under its final name only when complete. :func:`consolidate` merges ``<out>`` (if
any) and every shard into a temporary file that atomically replaces ``<out>``, then deletes the
shards; :func:`scan` lists the images already finished and removes stray temporary files of killed
writers. One writer at a time: :func:`writer_lock` (an exclusive ``flock`` on ``<out>.lock``).

Every merged store gets a checksum beside it, ``<out>.sha256`` (``sha256sum`` format: ``sha256sum -c``
checks it), written after the store is in place; the old one is removed before, so a checksum never
describes another file than the store beside it. :func:`verify` checks a store against it, or, for
a store without one (written before it existed, or killed between the rename and the checksum), reads
every dataset (each chunk's fletcher32 checksum).
What the root attributes mean is the caller's (:mod:`dgstudy.features`); here they are written,
read back as plain values, and handed to the caller's check.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from .io import DataError, atomic_path, file_lock, read_sha256sums, sha256_file


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def image_key(i: int) -> str:
    return f"{int(i):05d}"


def stored_images(f) -> set[int]:
    return {int(k) for k in f["images"]} if "images" in f else set()


def write_attrs(f, attrs: dict) -> None:
    """Root attributes (lists as JSON); a None value is not written (read back as absent)."""
    for k, v in attrs.items():
        if v is not None:
            f.attrs[k] = json.dumps(v) if isinstance(v, (list, tuple)) else v


def read_attrs(f) -> dict:
    """Root attributes of an open h5py file as plain Python values (``layers`` a list)."""
    out = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, np.generic):
            v = v.item()
        if k == "layers" and isinstance(v, str):
            v = json.loads(v)
        out[k] = v
    return out


def fsync(path: Path) -> None:
    """Flush ``path`` to disk and give it the usual permissions (mkstemp makes it 0600)."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_part(pdir: Path, attrs: dict, results: dict[int, tuple], compression) -> Path:
    """Write {image: (features, image_size, input_size, image_attrs)} to the next shard, atomically
    (``image_attrs``: more attributes of the image's group, e.g. where its layers' cells lie)."""
    pdir.mkdir(parents=True, exist_ok=True)
    taken = [int(p.stem.split("-")[1]) for p in pdir.glob("part-*.h5")]
    final = pdir / f"part-{max(taken, default=-1) + 1:05d}.h5"
    with atomic_path(final, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            write_attrs(f, attrs)
            grp = f.create_group("images")
            for i, (feats, image_size, in_size, image_attrs) in sorted(results.items()):
                g = grp.create_group(image_key(i))
                g.attrs["image_size"] = np.asarray(image_size, dtype=np.int64)
                g.attrs["input_size"] = np.asarray(in_size, dtype=np.int64)
                for k, v in image_attrs.items():
                    g.attrs[k] = v
                for layer, arr in feats.items():
                    g.create_dataset(layer, data=arr, compression=compression, fletcher32=True)
        fsync(tmp)
    return final


def checksum_path(out: str | os.PathLike) -> Path:
    """``<out>.sha256``: the SHA-256 of the merged store ``out`` (:func:`consolidate`)."""
    out = Path(out)
    return out.with_name(out.name + ".sha256")


def consolidate(out: Path, pdir: Path, attrs: dict) -> None:
    """Merge ``out`` (if present) and every shard into a new file that atomically replaces ``out``,
    then write its checksum (:func:`checksum_path`)."""
    parts = sorted(pdir.glob("part-*.h5"))
    if parts:
        sidecar = checksum_path(out)
        with atomic_path(out, suffix=".h5") as tmp:
            if out.exists():
                shutil.copyfile(out, tmp)
            with h5py.File(tmp, "a") as f:
                if "images" not in f:
                    write_attrs(f, attrs)
                    f.create_group("images")
                have = stored_images(f)
                for p in parts:
                    with h5py.File(p, "r") as src:
                        for key in src["images"]:
                            if int(key) not in have:
                                src.copy(src["images"][key], f["images"], name=key)
                                have.add(int(key))
            fsync(tmp)
            digest = sha256_file(tmp)
            sidecar.unlink(missing_ok=True)      # the old store's, never left beside the new one
        with atomic_path(sidecar) as tmp:
            tmp.write_text(f"{digest}  {out.name}\n")
    shutil.rmtree(pdir, ignore_errors=True)


def verify(out: str | os.PathLike) -> str | None:
    """None if the store ``out`` is intact, else what is wrong with it: its SHA-256 against
    :func:`checksum_path`, or, without one, whether HDF5 opens it and every dataset reads back (each
    chunk passes its fletcher32 checksum). Incompleteness is not damage (extraction resumes)."""
    out = Path(out)
    sidecar = checksum_path(out)
    if sidecar.exists():
        try:
            want = read_sha256sums(sidecar).get(out.name)
        except (OSError, UnicodeDecodeError) as e:
            want, why = None, f"{type(e).__name__}: {e}"
        else:
            why = f"it names no {out.name}"
        if want is None:
            return f"its checksum file {sidecar.name} is unreadable ({why})"
        got = sha256_file(out)
        if got != want:
            return (f"SHA-256 {got[:12]}... differs from the {want[:12]}... recorded in {sidecar.name} "
                    f"({out.stat().st_size} bytes): truncated or corrupt")
        return None
    try:
        with h5py.File(out, "r") as f:
            read_attrs(f)
            bad = []

            def read(name, obj):
                if isinstance(obj, h5py.Dataset):
                    try:
                        obj[()]
                    except (OSError, ValueError) as e:
                        bad.append(f"{name} ({e})")
            f.visititems(read)
    except (OSError, KeyError, ValueError) as e:
        return f"not a readable HDF5 store, truncated or corrupt ({type(e).__name__}: {e})"
    if bad:
        return f"{len(bad)} datasets fail to read (first: {bad[0]}): corrupt"
    return None


def scan(out: Path, pdir: Path, attrs: dict, check: Callable[[Path, dict, dict], None]) -> set[int]:
    """Images already finished in ``out`` or in complete shards (attributes checked)."""
    done: set[int] = set()
    for stray in out.parent.glob(f".{out.name}.*.tmp"):   # a merge whose writer was killed
        stray.unlink()
    if out.exists():
        try:
            with h5py.File(out, "r") as f:
                have = read_attrs(f)
                images = stored_images(f)
        except OSError as e:
            raise DataError(f"{out}: not a readable HDF5 store, truncated or corrupt ({e}); delete it "
                            "(its .parts folder keeps any unmerged images) and extract again") from e
        check(out, have, attrs)
        done |= images
    if pdir.exists():
        for stray in pdir.glob(".part-*.tmp"):   # a shard whose writer was killed
            stray.unlink()
        for p in sorted(pdir.glob("part-*.h5")):
            try:
                with h5py.File(p, "r") as f:
                    check(p, read_attrs(f), attrs)
                    done |= stored_images(f)
            except OSError as e:
                raise DataError(f"{p}: unreadable feature shard ({e}); delete it to recompute its images") from e
    return done


@contextlib.contextmanager
def writer_lock(out: Path):
    """Hold an exclusive ``flock`` on ``<out>.lock``: a second writer waits (the OS drops the lock
    of a killed process)."""
    with file_lock(out.with_name(out.name + ".lock"),
                   f"waiting for another process that is extracting into {out} ..."):
        yield

"""The shared file helpers: atomic writes and verified downloads."""
import hashlib

import pytest

from dgstudy.io import DataError, atomic_path, fetch, read_sha256sums, sha256_file, verify_file, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_replaces_on_success(tmp_path):
    final = tmp_path / "sub" / "out.json"
    write_json(final, {"a": 1})
    assert final.read_text().strip().startswith("{")
    assert [p.name for p in final.parent.iterdir()] == ["out.json"]


def test_fetch_verifies_checksum_from_local_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"fixations" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = fetch(src.as_uri(), tmp_path / "dl" / "file.bin", sha256=digest)
    assert sha256_file(dest) == digest
    with pytest.raises(DataError, match="file2.bin.*SHA-256"):
        fetch(src.as_uri(), tmp_path / "dl" / "file2.bin", sha256="0" * 64)
    assert not (tmp_path / "dl" / "file2.bin").exists()
    with pytest.raises(DataError, match="could not download"):
        fetch((tmp_path / "nope").as_uri(), tmp_path / "dl" / "file3.bin")


def test_verify_file_and_sums(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    (tmp_path / "SUMS").write_text(f"{sha256_file(f)}  a.txt\n")
    sums = read_sha256sums(tmp_path / "SUMS")
    verify_file(f, sums["a.txt"])
    f.write_text("y")
    with pytest.raises(DataError, match="a.txt: SHA-256 mismatch"):
        verify_file(f, sums["a.txt"])

"""Per-file checksums: the one manifest reader and the file check that models and checkpoints share."""

import hashlib
import json

import pytest

from localdpo.storage.fileintegrity import file_entry, read_manifest, sha256_file, verify_files


class Broken(RuntimeError):
    pass


def test_file_entry_is_the_sha256_and_size(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path, chunk=2) == hashlib.sha256(b"abc").hexdigest()
    assert file_entry(path) == {"sha256": hashlib.sha256(b"abc").hexdigest(), "bytes": 3}


def test_read_manifest_names_the_file_when_missing_or_unreadable(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(Broken, match=r"manifest.json: missing \(the writer was killed\)"):
        read_manifest(path, Broken, missing="the writer was killed")
    path.write_text("{")
    with pytest.raises(Broken, match=r"manifest.json: unreadable manifest"):
        read_manifest(path, Broken, missing="-")
    path.write_text(json.dumps({"version": 1}))
    with pytest.raises(Broken, match=r"unreadable manifest \('files'\)"):
        read_manifest(path, Broken, missing="-")
    path.write_text(json.dumps({"version": 1, "files": {"a": {}}}))
    assert read_manifest(path, Broken, missing="-") == ({"version": 1, "files": {"a": {}}}, {"a": {}})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "listed in the manifest but missing"),
        (lambda p: p.write_bytes(b"abcd"), "4 bytes, manifest says 3"),
        (lambda p: p.write_bytes(b"abd"), "sha256 does not match"),
    ],
)
def test_verify_files_names_the_damaged_file(tmp_path, damage, message):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    files = {"a.bin": file_entry(path)}
    verify_files(tmp_path, files, Broken)
    damage(path)
    with pytest.raises(Broken, match=message):
        verify_files(tmp_path, files, Broken)

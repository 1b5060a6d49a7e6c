"""Atomic writes: the old file or the new one, never a mix, and no temporary file left behind."""

import os

import pytest

from localdpo.storage.fileio import (
    atomic_directory,
    atomic_open,
    atomic_write_bytes,
    atomic_write_text,
    publish_directory,
    temporary_directory_beside,
)


def test_writes_text_and_bytes_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    assert atomic_write_text(path, "héllo\n") == path
    assert path.read_bytes() == "héllo\n".encode()
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["a.txt"]


def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "results.csv"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_open(path) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["results.csv"]


def test_temporary_file_is_hidden_in_the_same_directory_until_the_rename(tmp_path):
    path = tmp_path / "x.jsonl"
    with atomic_open(path) as handle:
        handle.write("row\n")
        (temp,) = [p for p in tmp_path.iterdir()]
        assert temp.name.startswith(".x.jsonl.") and temp.name.endswith(".tmp") and not path.exists()
    assert path.read_text() == "row\n"


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), atomic_open(tmp_path / "a", "a"):
        pass


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path):
    """A result file must be readable as a plain `open` would make it (not mkstemp's owner-only 0600), and
    rewriting a file keeps the permissions its owner gave it."""
    old = os.umask(0o027)
    try:
        assert (atomic_write_text(tmp_path / "new.md", "x").stat().st_mode & 0o777) == 0o640
        os.umask(0o022)
        assert (atomic_write_text(tmp_path / "other.md", "x").stat().st_mode & 0o777) == 0o644
        (tmp_path / "kept.md").write_text("old")
        (tmp_path / "kept.md").chmod(0o600)
        assert (atomic_write_text(tmp_path / "kept.md", "new").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_a_directory_is_replaced_whole_and_a_failure_keeps_the_old_one(tmp_path):
    out = tmp_path / "exported"
    with atomic_directory(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".exported.") and not out.exists()
        (tmp / "a.txt").write_text("first")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    assert sorted(p.name for p in out.rglob("*")) == ["a.txt", "b.txt", "sub"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask_now()
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "first"
    with atomic_directory(out) as tmp:
        (tmp / "c.txt").write_text("second")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary or old copy left


def _umask_now() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_directory_written_only_if_missing_appears_whole_and_a_winner_is_kept(tmp_path):
    """`replace=False` (the embedded model's cache): a concurrent writer that got there first is kept."""
    target = tmp_path / "deep" / "tokenizer"

    def fails(directory):
        (directory / "half.json").write_text("{")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError), atomic_directory(target, replace=False) as tmp:
        fails(tmp)
    assert not target.exists() and list(target.parent.iterdir()) == []

    with atomic_directory(target, replace=False) as tmp:
        (tmp / "tokenizer.json").write_text("{}")
    assert (target / "tokenizer.json").read_text() == "{}"
    # a concurrent writer that already won is kept, and the loser's temporary directory is removed
    with atomic_directory(target, replace=False) as tmp:
        (tmp / "other.json").write_text("[]")
    assert sorted(p.name for p in target.iterdir()) == ["tokenizer.json"]
    assert [p.name for p in target.parent.iterdir()] == ["tokenizer"]


def test_a_check_that_refuses_the_new_file_keeps_the_old_one(tmp_path):
    """`check` reads the complete temporary file; raising there leaves the target and no temporary behind."""
    out = atomic_write_text(tmp_path / "rows.jsonl", "old\n")
    seen = []

    def refuse(new_file):
        seen.append(new_file.read_text())
        raise ValueError("not valid")

    with pytest.raises(ValueError, match="not valid"):
        atomic_write_text(out, "new\n", check=refuse)
    assert seen == ["new\n"] and out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
    atomic_write_text(out, "new\n", check=lambda new_file: None)
    assert out.read_text() == "new\n"


def test_a_directory_filled_elsewhere_is_published_over_the_old_one(tmp_path):
    """`publish_directory`: a temporary directory beside the target (as several ranks fill a checkpoint)."""
    out = tmp_path / "step-000002"
    tmp = temporary_directory_beside(out, prefix=".tmp-step-000002-")
    assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-step-000002-") and tmp.name.endswith(".tmp")
    (tmp / "a.txt").write_text("new")
    out.mkdir()
    (out / "b.txt").write_text("old")
    assert publish_directory(tmp, out) == out
    assert [p.name for p in out.iterdir()] == ["a.txt"] and [p.name for p in tmp_path.iterdir()] == [out.name]

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from localdpo.reference.store import (
    REFCACHE_ENV,
    ContextStore,
    Record,
    ShardDamagedError,
    check_shard,
    clear_store,
    default_cache_dir,
    load_verified_shard,
    sequence_key,
    stale_temp_files,
    store_summary,
    verify_store,
)

CONTEXT = "c" * 64


def _store(tmp_path) -> ContextStore:
    store = ContextStore(tmp_path / CONTEXT[:24], CONTEXT)
    store.ensure({"model": "m"})
    return store


def _record(ids, steer_id="s1", side="chosen") -> Record:
    ids = torch.tensor(ids)
    logps = -torch.arange(ids.numel(), dtype=torch.float32) / 10  # (T,) 0, -0.1, -0.2, ...
    return Record(sequence_key(CONTEXT, ids.tolist()), ids, logps, steer_id, side)


def test_sequence_key_is_sha256_of_context_and_ids():
    expected = hashlib.sha256(f'{{"context":"{CONTEXT}","ids":[5,6,7]}}'.encode()).hexdigest()
    assert sequence_key(CONTEXT, [5, 6, 7]) == expected
    assert sequence_key(CONTEXT, [5, 6, 7]) != sequence_key(CONTEXT, [5, 6])
    assert sequence_key(CONTEXT, [5, 6, 7]) != sequence_key("d" * 64, [5, 6, 7])


def test_write_then_read_in_a_fresh_store(tmp_path):
    store = _store(tmp_path)
    record = _record([1, 2, 3, 4])
    name = store.write([record, record])  # a duplicate is stored once
    index = json.loads((store.index_dir / name.replace(".safetensors", ".json")).read_text())
    data = (store.shard_dir / name).read_bytes()
    assert index["sha256"] == hashlib.sha256(data).hexdigest() and index["bytes"] == len(data)
    assert [e["key"] for e in index["entries"]] == [record.key]

    fresh = ContextStore(store.directory, CONTEXT)
    assert fresh.refresh() == 1
    ids, logps = fresh.read(fresh.lookup(record.key))
    assert ids.tolist() == [1, 2, 3, 4]
    assert logps.tolist() == pytest.approx([0.0, -0.1, -0.2, -0.3])
    assert [e.key for e in fresh.candidates("s1", "chosen", 3)] == [record.key]
    assert fresh.candidates("s1", "chosen", 5) == [] and fresh.candidates("s1", "rejected", 1) == []


def test_flipped_byte_and_truncation_are_detected(tmp_path):
    store = _store(tmp_path)
    name = store.write([_record([1, 2, 3, 4])])
    path = store.shard_dir / name
    index = json.loads((store.index_dir / name.replace(".safetensors", ".json")).read_text())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardDamagedError, match="sha256"):
        load_verified_shard(path, index)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(ShardDamagedError, match="truncated"):
        load_verified_shard(path, index)
    check = check_shard(store.index_dir / path.with_suffix(".json").name, store.shard_dir)
    assert check.problem is not None and "truncated" in check.problem


def test_discard_warns_names_the_file_and_removes_it(tmp_path):
    store = _store(tmp_path)
    record = _record([1, 2, 3])
    name = store.write([record])
    (store.shard_dir / name).write_bytes(b"garbage")
    with pytest.raises(ShardDamagedError):
        store.read(store.lookup(record.key))
    with pytest.warns(UserWarning, match=name):
        store.discard(name, "test")
    assert store.lookup(record.key) is None
    assert not (store.shard_dir / name).exists() and not list(store.index_dir.glob("*.json"))


def test_verify_store_reports_and_removes_damaged(tmp_path):
    store = _store(tmp_path)
    good = store.write([_record([1, 2, 3], steer_id="a")])
    bad = store.write([_record([4, 5, 6], steer_id="b")])
    data = bytearray((store.shard_dir / bad).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store.shard_dir / bad).write_bytes(bytes(data))
    intact, damaged = verify_store(tmp_path)
    assert [c.shard_path.name for c in intact] == [good]
    assert [c.shard_path.name for c in damaged] == [bad]
    verify_store(tmp_path, remove_damaged=True)
    intact, damaged = verify_store(tmp_path)
    assert len(intact) == 1 and damaged == []


def test_store_summary_counts_orphans_and_temp_files(tmp_path):
    store = _store(tmp_path)
    store.write([_record([1, 2, 3]), _record([1, 2, 4], side="rejected")])
    (store.shard_dir / "orphan.safetensors").write_bytes(b"x")
    (store.shard_dir / ".tmp.otherhost.1.abcd.x.safetensors").write_bytes(b"x")
    summary = store_summary(tmp_path)
    assert [(c["shards"], c["entries"]) for c in summary.contexts] == [(1, 2)]
    assert [p.name for p in summary.orphan_shards] == ["orphan.safetensors"]
    assert len(summary.temp_files) == 1


def test_temp_files_of_dead_processes_are_removed(tmp_path):
    from localdpo.reference.store import _HOST

    store = _store(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = store.shard_dir / f".tmp.{_HOST}.{dead_pid}.abcd1234.x.safetensors"
    live = store.shard_dir / f".tmp.{_HOST}.{__import__('os').getpid()}.abcd1234.y.safetensors"
    foreign = store.shard_dir / f".tmp.elsewhere.{dead_pid}.abcd1234.z.safetensors"
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    assert stale_temp_files(store.shard_dir) == [stale]
    store.ensure({"model": "m"})
    assert not stale.exists() and live.exists() and foreign.exists()


def test_a_write_killed_mid_way_leaves_a_temp_file_that_stale_detection_names(tmp_path, monkeypatch):
    """The writer's own temporary name carries host and pid: what `stale_temp_files` reads back."""
    import os

    from localdpo.reference.store import _HOST, _atomic_write
    from localdpo.storage import fileio

    seen = []

    def killed(tmp, target):
        seen.append(os.path.basename(tmp))
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _atomic_write(tmp_path / "x.safetensors", b"data")
    (name,) = seen
    assert name.startswith(f".tmp.{_HOST}.{os.getpid()}.") and name.endswith(".tmp")
    assert list(tmp_path.iterdir()) == []  # the writer removed its temporary file
    (tmp_path / name.replace(f".{os.getpid()}.", ".999999999.")).write_bytes(b"partial")
    assert [p.name.split(".")[2:4] for p in stale_temp_files(tmp_path)] == [[_HOST, "999999999"]]


def test_clear_removes_only_context_directories(tmp_path):
    _store(tmp_path).write([_record([1, 2, 3])])
    (tmp_path / "notes.txt").write_text("mine")
    assert clear_store(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_default_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALDPO_CACHE", str(tmp_path / "root"))
    monkeypatch.delenv(REFCACHE_ENV, raising=False)
    assert default_cache_dir() == tmp_path / "root" / "refcache"
    monkeypatch.setenv(REFCACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"

"""On-disk store of the reference log-prob cache: safetensors shards, one small JSON index file per shard.

Layout (one directory per *context*, the hash of everything besides the token ids that changes a value):

    <cache_dir>/<context[:24]>/context.json          what the context is (model and tokenizer fingerprints, ...)
    <cache_dir>/<context[:24]>/shards/<name>.safetensors   `<key>.ids` int32 (T,), `<key>.logps` float32 (T,)
    <cache_dir>/<context[:24]>/index/<name>.json      shard sha256 and size, and its entries (key, steer, side, T)

Every file is written to a temporary name, fsync'd and renamed (`os.replace`); a shard is renamed into
place before its index file, so an index file always describes a complete shard. Shard names are unique
(time, host, pid, random), so concurrent writers never touch the same file and readers never see half a
file. A shard is read whole and its sha256 checked against its index before any value is used; a damaged
or missing shard is reported with a warning naming the file and removed (its entries become misses).
Nothing is unpickled or executed on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from localdpo.reference.fingerprint import content_hash
from localdpo.storage.fileio import atomic_write_bytes
from localdpo.storage.paths import cache_root

FORMAT_VERSION = 1
REFCACHE_ENV = "LOCALDPO_REFCACHE"
CONTEXT_FILE = "context.json"
SHARDS = "shards"
INDEX_DIR = "index"
"""Subdirectory of a context holding one JSON index file per shard (not the batch key `localdpo.steers.batches.INDEX`)."""
_TMP_PREFIX = ".tmp."
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


class ShardDamagedError(RuntimeError):
    """A shard is missing, truncated, corrupted or does not hold what its index says."""


def default_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache directory: `override`, else `$LOCALDPO_REFCACHE`, else `cache_root() / "refcache"`."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(REFCACHE_ENV):
        return Path(os.environ[REFCACHE_ENV]).expanduser()
    return cache_root() / "refcache"


def sequence_key(context_hash: str, ids: Sequence[int]) -> str:
    """sha256 of sorted JSON {context, ids}: the key of one side's per-token log-probs."""
    return content_hash({"context": context_hash, "ids": [int(i) for i in ids]})


@dataclass(frozen=True)
class Entry:
    """Where one cached sequence lives."""

    key: str
    shard: str
    """Shard file name (without directory)."""
    length: int
    steer_id: str | None
    side: str
    """"chosen" or "rejected"."""


@dataclass(frozen=True)
class Record:
    """One sequence to store: its key, token ids (T,) and per-token log-probs (T,)."""

    key: str
    ids: torch.Tensor
    logps: torch.Tensor
    steer_id: str | None
    side: str


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`localdpo.storage.fileio`); the temporary file's name,
    `.tmp.<host>.<pid>.<random>.tmp`, lets `stale_temp_files` find those of killed writers."""
    atomic_write_bytes(path, data, temp_prefix=f"{_TMP_PREFIX}{_HOST}.{os.getpid()}.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_files(directory: Path) -> list[Path]:
    """Temporary files in `directory` left by dead processes of this host (a build killed mid-write)."""
    stale = []
    if not directory.is_dir():
        return stale
    for path in directory.iterdir():
        parts = path.name.split(".")
        if not path.name.startswith(_TMP_PREFIX) or len(parts) < 5:
            continue
        if parts[2] == _HOST and parts[3].isdigit() and not _pid_alive(int(parts[3])):
            stale.append(path)
    return stale


def _listed(directory: Path, suffix: str) -> list[Path]:
    """Finished files of `directory` ending in `suffix`, sorted (temporary `.tmp.*` files excluded)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix) and not p.name.startswith("."))


def _read_index(path: Path) -> dict:
    """A parsed index file; `ShardDamagedError` naming it when unreadable or malformed."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {index.get('format')!r} != {FORMAT_VERSION}")
        for name in ("shard", "sha256", "bytes", "entries", "context"):
            if name not in index:
                raise ValueError(f"missing field {name!r}")
        for entry in index["entries"]:
            for name in ("key", "length", "side"):
                if name not in entry:
                    raise ValueError(f"an entry lacks field {name!r}")
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ShardDamagedError(f"{path}: unreadable index ({error})") from None
    return index


@dataclass
class ShardCheck:
    """Result of checking one shard against its index."""

    index_path: Path
    shard_path: Path
    entries: int = 0
    problem: str | None = None
    """None when the shard is intact."""


@dataclass
class ContextStore:
    """The shards of one context directory, with an in-memory index and a bounded cache of verified shards."""

    directory: Path
    context_hash: str
    max_loaded_bytes: int = 256 * 1024 * 1024
    """Verified shard contents kept in memory (least recently used dropped first)."""
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)
    _by_steer: dict[tuple[str, str], list[Entry]] = field(default_factory=dict, repr=False)
    _shards: dict[str, dict] = field(default_factory=dict, repr=False)
    _loaded: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _loaded_bytes: int = 0

    @property
    def shard_dir(self) -> Path:
        return self.directory / SHARDS

    @property
    def index_dir(self) -> Path:
        return self.directory / INDEX_DIR

    def ensure(self, context: dict) -> None:
        """Create the directory (and `context.json`, first writer wins); remove dead writers' temp files."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        context_path = self.directory / CONTEXT_FILE
        if context_path.is_file():
            stored = json.loads(context_path.read_text(encoding="utf-8"))
            if stored.get("hash") != self.context_hash:
                raise RuntimeError(
                    f"{context_path}: holds context {stored.get('hash')}, expected {self.context_hash}"
                )
        else:
            payload = {"hash": self.context_hash, "context": context, "created": time.time()}
            _atomic_write(context_path, json.dumps(payload, indent=1, sort_keys=True).encode("utf-8"))
        for path in stale_temp_files(self.shard_dir) + stale_temp_files(self.index_dir):
            path.unlink(missing_ok=True)

    def refresh(self) -> int:
        """Read index files written since the last refresh (by this or another process); returns how many."""
        if not self.index_dir.is_dir():
            return 0
        added = 0
        for path in _listed(self.index_dir, ".json"):
            name = path.stem + ".safetensors"
            if name in self._shards:
                continue
            try:
                index = _read_index(path)
                if index["context"] != self.context_hash or index["shard"] != name:
                    raise ShardDamagedError(
                        f"{path}: describes shard {index['shard']} of context {index['context']}"
                    )
            except ShardDamagedError as error:
                self._report_damaged(name, str(error))
                continue
            self._add_index(index)
            added += 1
        return added

    def _add_index(self, index: dict) -> None:
        name = index["shard"]
        self._shards[name] = index
        for raw in index["entries"]:
            entry = Entry(raw["key"], name, int(raw["length"]), raw.get("steer_id"), raw["side"])
            self._entries.setdefault(entry.key, entry)
            if entry.steer_id is not None:
                self._by_steer.setdefault((entry.steer_id, entry.side), []).append(entry)

    def lookup(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def candidates(self, steer_id: str | None, side: str, min_length: int) -> list[Entry]:
        """Cached sequences of the same steer and side at least `min_length` long (prefix lookups)."""
        if steer_id is None:
            return []
        return [
            e
            for e in self._by_steer.get((steer_id, side), [])
            if e.length >= min_length and e.shard in self._shards
        ]

    def read(self, entry: Entry) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (T,) int64, logps (T,) float32) of `entry`, from its verified shard; `ShardDamagedError` if not."""
        tensors = self._load_shard(entry.shard)
        ids, logps = tensors.get(f"{entry.key}.ids"), tensors.get(f"{entry.key}.logps")
        if ids is None or logps is None or ids.numel() != entry.length or logps.shape != ids.shape:
            raise ShardDamagedError(
                f"{self.shard_dir / entry.shard}: entry {entry.key[:12]} missing or malformed"
            )
        return ids.long(), logps

    def _load_shard(self, name: str) -> dict[str, torch.Tensor]:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        index = self._shards.get(name)
        if index is None:
            raise ShardDamagedError(f"{self.shard_dir / name}: not in the index")
        tensors = load_verified_shard(self.shard_dir / name, index)
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self._loaded[name] = tensors
        self._loaded_bytes += nbytes
        while self._loaded_bytes > self.max_loaded_bytes and len(self._loaded) > 1:
            _, dropped = self._loaded.popitem(last=False)
            self._loaded_bytes -= sum(t.numel() * t.element_size() for t in dropped.values())
        return tensors

    def discard(self, name: str, reason: str) -> None:
        """Warn naming the damaged shard, then remove it and its index file so its entries are recomputed."""
        self._report_damaged(name, reason)
        if name in self._loaded:
            dropped = self._loaded.pop(name)
            self._loaded_bytes -= sum(t.numel() * t.element_size() for t in dropped.values())
        # Rebuild the lookup tables from the remaining shards (one of them may hold a duplicate entry).
        self._entries.clear()
        self._by_steer.clear()
        for index in self._shards.values():
            self._add_index(index)

    def _report_damaged(self, name: str, reason: str) -> None:
        warnings.warn(
            f"reference cache: damaged shard {self.shard_dir / name} ({reason}); removed, its entries will be recomputed",
            stacklevel=4,
        )
        (self.index_dir / (Path(name).stem + ".json")).unlink(missing_ok=True)
        (self.shard_dir / name).unlink(missing_ok=True)
        self._shards.pop(name, None)

    def write(self, records: Iterable[Record]) -> str | None:
        """Store `records` as one new shard (shard first, then its index file); returns the shard name."""
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for record in records:
            if f"{record.key}.ids" in tensors:
                continue
            ids = record.ids.detach().to("cpu", torch.int64)
            if ids.numel() and (int(ids.max()) >= 2**31 or int(ids.min()) < 0):
                raise ValueError(f"token ids out of int32 range in steer {record.steer_id!r}")
            tensors[f"{record.key}.ids"] = ids.to(torch.int32).contiguous()
            tensors[f"{record.key}.logps"] = record.logps.detach().to("cpu", torch.float32).contiguous()
            entries.append(
                {"key": record.key, "steer_id": record.steer_id, "side": record.side, "length": ids.numel()}
            )
        if not entries:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.safetensors"
        data = save_safetensors(
            tensors, metadata={"format": str(FORMAT_VERSION), "context": self.context_hash}
        )
        index = {
            "format": FORMAT_VERSION,
            "context": self.context_hash,
            "shard": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "created": time.time(),
            "entries": entries,
        }
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.shard_dir / name, data)
        _atomic_write(
            self.index_dir / (Path(name).stem + ".json"), json.dumps(index, indent=0).encode("utf-8")
        )
        self._add_index(index)
        return name


def load_verified_shard(path: Path, index: dict) -> dict[str, torch.Tensor]:
    """The tensors of a shard whose size and sha256 match `index`; `ShardDamagedError` naming it otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ShardDamagedError(f"{path}: cannot read ({error.strerror})") from None
    if len(data) != index["bytes"]:
        raise ShardDamagedError(f"{path}: {len(data)} bytes, index says {index['bytes']} (truncated?)")
    if hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise ShardDamagedError(f"{path}: sha256 does not match its index (corrupted)")
    try:
        return load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types
        raise ShardDamagedError(f"{path}: not a valid safetensors file ({error})") from None


def check_shard(index_path: Path, shard_dir: Path) -> ShardCheck:
    """Full check of one shard: index readable, size and sha256, every entry present and keyed by its ids."""
    check = ShardCheck(index_path=index_path, shard_path=shard_dir / (index_path.stem + ".safetensors"))
    try:
        index = _read_index(index_path)
        check.entries = len(index["entries"])
        tensors = load_verified_shard(check.shard_path, index)
        for raw in index["entries"]:
            ids, logps = tensors.get(f"{raw['key']}.ids"), tensors.get(f"{raw['key']}.logps")
            if ids is None or logps is None or ids.numel() != raw["length"] or logps.shape != ids.shape:
                raise ShardDamagedError(f"entry {raw['key'][:12]} missing or malformed")
            if sequence_key(index["context"], ids.tolist()) != raw["key"]:
                raise ShardDamagedError(f"entry {raw['key'][:12]}: key does not match its stored token ids")
            if not bool(torch.isfinite(logps).all()):
                raise ShardDamagedError(f"entry {raw['key'][:12]}: non-finite log-probs")
    except ShardDamagedError as error:
        check.problem = str(error)
    return check


@dataclass
class StoreSummary:
    """What `store_summary` found under a cache directory."""

    contexts: list[dict] = field(default_factory=list)
    """Per context: directory, hash, context dict, shards, entries, bytes."""
    orphan_shards: list[Path] = field(default_factory=list)
    """Shards without an index file (a writer died between the two renames): never read, safe to delete."""
    temp_files: list[Path] = field(default_factory=list)


def context_dirs(cache_dir: Path) -> list[Path]:
    """Context directories under `cache_dir` (those holding a `context.json`)."""
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.iterdir() if (p / CONTEXT_FILE).is_file())


def store_summary(cache_dir: Path) -> StoreSummary:
    """Contexts, shard and entry counts and sizes under `cache_dir` (reads index files only)."""
    summary = StoreSummary()
    for directory in context_dirs(cache_dir):
        info = json.loads((directory / CONTEXT_FILE).read_text(encoding="utf-8"))
        shards = entries = size = 0
        indexed = set()
        for index_path in _listed(directory / INDEX_DIR, ".json"):
            indexed.add(index_path.stem)
            try:
                index = _read_index(index_path)
            except ShardDamagedError:
                continue
            shards += 1
            entries += len(index["entries"])
            size += int(index["bytes"])
        shard_dir = directory / SHARDS
        if shard_dir.is_dir():
            summary.orphan_shards += [p for p in _listed(shard_dir, ".safetensors") if p.stem not in indexed]
        for sub in (SHARDS, INDEX_DIR):
            if (directory / sub).is_dir():
                summary.temp_files += [
                    p for p in (directory / sub).iterdir() if p.name.startswith(_TMP_PREFIX)
                ]
        summary.contexts.append(
            {
                "directory": str(directory),
                "hash": info.get("hash"),
                "context": info.get("context", {}),
                "shards": shards,
                "entries": entries,
                "bytes": size,
            }
        )
    return summary


def verify_store(
    cache_dir: Path, *, remove_damaged: bool = False
) -> tuple[list[ShardCheck], list[ShardCheck]]:
    """(intact, damaged) checks of every shard under `cache_dir`; `remove_damaged` deletes the damaged ones."""
    intact, damaged = [], []
    for directory in context_dirs(cache_dir):
        for index_path in _listed(directory / INDEX_DIR, ".json"):
            check = check_shard(index_path, directory / SHARDS)
            (damaged if check.problem else intact).append(check)
            if check.problem and remove_damaged:
                index_path.unlink(missing_ok=True)
                check.shard_path.unlink(missing_ok=True)
    return intact, damaged


def clear_store(cache_dir: Path) -> int:
    """Delete every context directory under `cache_dir` (only directories holding a `context.json`); returns how many."""
    removed = 0
    for directory in context_dirs(cache_dir):
        shutil.rmtree(directory)
        removed += 1
    return removed

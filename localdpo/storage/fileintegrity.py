"""Per-file checksums for the directories localdpo writes (converted models, checkpoints).

A manifest maps each file name to `{"sha256": ..., "bytes": ...}`; it is written last, so a directory whose
manifest verifies was written completely.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in `chunk`-byte blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path, error: type[Exception], *, missing: str) -> tuple[dict, dict]:
    """`(manifest, its "files" mapping)` read from `path`; `error` naming the file when it is absent (`missing`
    says why that happens) or unreadable."""
    if not path.is_file():
        raise error(f"{path}: missing ({missing})")
    try:
        manifest = json.loads(path.read_text())
        return manifest, manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as reason:
        raise error(f"{path}: unreadable manifest ({reason})") from None


def file_entry(path: Path) -> dict:
    """The manifest entry of one file: `{"sha256", "bytes"}`."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def verify_files(directory: Path, files: dict[str, dict], error: type[Exception]) -> None:
    """Raise `error` naming the first listed file that is missing, of the wrong size or of the wrong sha256."""
    for name, expected in files.items():
        file = directory / name
        if not file.is_file():
            raise error(f"{file}: listed in the manifest but missing")
        if file.stat().st_size != expected["bytes"]:
            raise error(f"{file}: {file.stat().st_size} bytes, manifest says {expected['bytes']}")
        if sha256_file(file) != expected["sha256"]:
            raise error(f"{file}: sha256 does not match the manifest (corrupted)")

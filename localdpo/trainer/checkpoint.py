"""Resumable checkpoints written atomically and verified on load.

A checkpoint is a directory `checkpoints/step-000040/` holding
  model.safetensors  the trainable parameters (all weights, or the LoRA adapter),
  optimizer.pt       optimizer and scheduler state (`torch.load(weights_only=True)`),
  rng.pt             python and torch (CPU and CUDA) RNG states,
  state.json         step, examples consumed, data seed, world size, evaluation history,
  eval_items.safetensors  per-item values of the step-0 evaluation (optional), which comparisons pair against,
  manifest.json      sha256 and size of every file above and the layout (`full`), written last.
An FSDP run writes the `sharded` layout instead (`localdpo.trainer.sharded_checkpoint`): the weights and
optimizer state as `torch.distributed.checkpoint` shards, with the same state.json, items and manifest.
It is written into a hidden temporary directory (every file fsynced), then renamed into place, so a kill at
any moment leaves either no checkpoint or a complete one; a directory whose manifest is missing or does not
match its files is never loaded (`latest_checkpoint` skips it with a warning).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from localdpo.storage.fileintegrity import file_entry, read_manifest, verify_files
from localdpo.storage.fileio import atomic_directory, publish_directory

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PREFIX = "step-"
ITEMS_FILE = "eval_items.safetensors"
FULL, SHARDED = "full", "sharded"
"""Checkpoint layouts: `full` (one process's tensors, this module) or `sharded` (`torch.distributed.checkpoint`
shards of an FSDP run, `localdpo.trainer.sharded_checkpoint`), named by the manifest's `layout`."""
REQUIRED_FILES = {
    FULL: ("model.safetensors", "optimizer.pt", "rng.pt", "state.json"),
    SHARDED: (".metadata", "scheduler.pt", "rng-rank0.pt", "state.json"),
}


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, corrupted or does not fit the run; the message names the file."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns."""

    path: Path
    tensors: dict[str, torch.Tensor]
    """Trainable parameters by name."""
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]
    """step, consumed (examples consumed from the data stream), data_seed, world_size, ..."""
    items: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-item evaluation values saved with the checkpoint (empty when none were)."""


TEMP_PREFIX = ".tmp-"
"""Name prefix of a checkpoint being written (`.tmp-step-NNNNNN-*.tmp`), removed by `prune_checkpoints`."""


def checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:06d}"


def capture_rng_state() -> dict[str, Any]:
    """Python and torch RNG states (every CUDA device too); numpy is not used by the trainer."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    rng: dict[str, Any],
    state: dict[str, Any],
    items: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` under `root` atomically; returns its directory."""
    final = checkpoint_dir(Path(root), step)
    with atomic_directory(final, temp_prefix=f"{TEMP_PREFIX}{final.name}-") as tmp:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "model.safetensors")
        )
        torch.save({"optimizer": optimizer, "scheduler": scheduler}, tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        write_checkpoint_manifest(tmp, step, state=state, items=items, layout=FULL)
    return final


def publish_checkpoint(
    tmp: Path,
    root: Path,
    step: int,
    *,
    state: dict[str, Any],
    items: dict[str, torch.Tensor] | None,
    layout: str,
) -> Path:
    """Finish the checkpoint being written in `tmp` (`write_checkpoint_manifest`), then move it to
    `root/step-NNNNNN` atomically (`localdpo.storage.fileio.publish_directory`, replacing a checkpoint of the same step)."""
    write_checkpoint_manifest(tmp, step, state=state, items=items, layout=layout)
    return publish_directory(tmp, checkpoint_dir(root, step))


def write_checkpoint_manifest(
    tmp: Path, step: int, *, state: dict[str, Any], items: dict[str, torch.Tensor] | None, layout: str
) -> None:
    """Add `state.json` and the items to the checkpoint being written in `tmp`, then its manifest, last."""
    if items:
        save_file({k: torch.as_tensor(v).contiguous().cpu() for k, v in items.items()}, str(tmp / ITEMS_FILE))
    (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=1, sort_keys=True))
    files = {path.name: file_entry(path) for path in sorted(tmp.iterdir())}
    manifest = {"version": FORMAT_VERSION, "step": step, "complete": True, "layout": layout, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of checkpoint `path` after checking every file's size and sha256; `CheckpointError` if not."""
    path = Path(path)
    manifest_path = path / MANIFEST
    manifest, files = read_manifest(manifest_path, CheckpointError, missing="the checkpoint was not finished")
    if manifest.get("version") != FORMAT_VERSION or not manifest.get("complete"):
        raise CheckpointError(
            f"{manifest_path}: version {manifest.get('version')} / complete={manifest.get('complete')}"
        )
    layout = manifest.get("layout", FULL)
    if layout not in REQUIRED_FILES:
        raise CheckpointError(f"{manifest_path}: unknown layout {layout!r}")
    for name in REQUIRED_FILES[layout]:
        if name not in files:
            raise CheckpointError(f"{manifest_path}: does not list {name}")
    verify_files(path, files, CheckpointError)
    return manifest


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A verified checkpoint read back (tensors on CPU)."""
    path = Path(path)
    if verify_checkpoint(path).get("layout", FULL) != FULL:
        raise CheckpointError(
            f"{path}: a sharded checkpoint (written with train.distributed=fsdp): resume it with train.distributed=fsdp"
        )
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    return Checkpoint(
        path=path,
        tensors=load_file(str(path / "model.safetensors")),
        optimizer=opt["optimizer"],
        scheduler=opt["scheduler"],
        rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
        state=json.loads((path / "state.json").read_text()),
        items=load_file(str(path / ITEMS_FILE)) if (path / ITEMS_FILE).is_file() else {},
    )


def restore_training_state(
    checkpoint: Checkpoint, params: dict[str, torch.Tensor], optimizer, scheduler
) -> None:
    """Copy a checkpoint's parameters into `params` (in place) and restore optimizer, scheduler and RNG states."""
    mismatched = set(params) ^ set(checkpoint.tensors)
    if mismatched:
        raise CheckpointError(
            f"{checkpoint.path}: parameters do not match the model: {sorted(mismatched)[:5]}"
        )
    with torch.no_grad():
        for name, tensor in checkpoint.tensors.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    restore_rng_state(checkpoint.rng)


INITIAL_ITEMS = "initial/"
"""Checkpoint item-name prefix of the step-0 per-item evaluation values."""


@dataclass
class TrainingProgress:
    """Where a run stands, besides weights, optimizer and RNG: what a trainer checkpoint restores."""

    step: int
    consumed: int
    """Examples consumed from the data stream (all processes)."""
    history: list[dict[str, float]]
    """Every evaluation so far."""
    initial_items: dict[str, np.ndarray]
    """Per-item values of the step-0 evaluation (what a resumed run's final items are paired against)."""


def progress_record(
    progress: TrainingProgress, *, data_seed: int, n_train: int, world_size: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`(state, items)` of a checkpoint at `progress`: what state.json and eval_items.safetensors hold."""
    state = {
        "consumed": progress.consumed,
        "data_seed": data_seed,
        "n_train": n_train,
        "world_size": world_size,
        "history": progress.history,
    }
    items = {INITIAL_ITEMS + name: torch.from_numpy(v) for name, v in progress.initial_items.items()}
    return state, items


def restored_progress(
    path: Path, state: dict[str, Any], items: dict[str, torch.Tensor], *, data_seed: int, n_train: int
) -> TrainingProgress:
    """The `TrainingProgress` a checkpoint's state.json and items hold; `CheckpointError` when it was written
    for another data order."""
    if state.get("data_seed") != data_seed or state.get("n_train") != n_train:
        raise CheckpointError(f"{path}: written for another data order (data seed / training set size differ)")
    return TrainingProgress(
        step=int(state["step"]),
        consumed=int(state["consumed"]),
        history=list(state.get("history", [])),
        initial_items={
            name.removeprefix(INITIAL_ITEMS): value.numpy()
            for name, value in items.items()
            if name.startswith(INITIAL_ITEMS)
        },
    )


def checkpoint_to_resume(root: str | os.PathLike, resume: str) -> Path | None:
    """The checkpoint `checkpoint.resume` names: `auto` the newest verified one under `root`, `never` none,
    else that path."""
    if resume == "never":
        return None
    return latest_checkpoint(root) if resume == "auto" else Path(resume)


def save_training_checkpoint(
    root: str | os.PathLike,
    progress: TrainingProgress,
    *,
    params: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    data_seed: int,
    n_train: int,
    world_size: int,
    keep_last: int,
) -> Path:
    """Write a resumable checkpoint of a trainer at `progress.step` under `root` and prune old ones."""
    state, items = progress_record(progress, data_seed=data_seed, n_train=n_train, world_size=world_size)
    path = save_checkpoint(
        root,
        progress.step,
        tensors=params,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=capture_rng_state(),
        state=state,
        items=items,
    )
    prune_checkpoints(root, keep_last)
    return path


def resume_training(
    root: str | os.PathLike,
    resume: str,
    *,
    params: dict[str, torch.Tensor],
    optimizer,
    scheduler,
    data_seed: int,
    n_train: int,
) -> TrainingProgress | None:
    """Restore the checkpoint that `checkpoint.resume` names (`checkpoint_to_resume`) into `params`,
    `optimizer`, `scheduler` and the RNGs; its progress, or None."""
    path = checkpoint_to_resume(root, resume)
    if path is None:
        return None
    checkpoint = load_checkpoint(path)
    restore_training_state(checkpoint, params, optimizer, scheduler)
    return restored_progress(path, checkpoint.state, checkpoint.items, data_seed=data_seed, n_train=n_train)


def save_final_model(
    model, tokenizer, run_dir: str | os.PathLike, name: str = "final", *, state_dict=None
) -> Path:
    """Save `model` (or its LoRA adapter) and `tokenizer` in Hugging Face format as `run_dir/<name>`, atomically;
    `state_dict`: the weights to write instead of the model's own (an FSDP model's, gathered whole)."""
    final = Path(run_dir) / name
    with atomic_directory(final) as tmp:  # an old `name` is replaced only once the new one is whole
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint directories under `root` (verified or not), oldest step first; temporary ones excluded."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and path.name[len(PREFIX) :].isdigit():
            found.append((int(path.name[len(PREFIX) :]), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint under `root` that verifies; broken ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as error:
            warnings.warn(f"skipping a checkpoint that does not verify: {error}", stacklevel=2)
    return None


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, and leftover temporary directories (0 keeps all)."""
    root = Path(root)
    if keep_last <= 0 or not root.is_dir():
        return
    for path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(f"{TEMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)

"""Sharded checkpoints of an FSDP run (`train.distributed=fsdp`) with `torch.distributed.checkpoint` (DCP).

A sharded checkpoint is a directory `checkpoints/step-000040/` holding
  .metadata, __<rank>_0.distcp  the trainable weights and AdamW state, each process writing its own shards
                                (`get_state_dict`: parameter names as in the unsharded model),
  scheduler.pt                  the learning-rate schedule's state (the same on every process),
  rng-rank<r>.pt                python and torch RNG states of process r,
  state.json, eval_items.safetensors, manifest.json   as in `localdpo.trainer.checkpoint` (layout `sharded`).
Every process writes into one hidden temporary directory that rank 0 names; once all have written (DCP
fsyncs its files), rank 0 adds state.json and the manifest and renames the directory into place: a kill at
any moment leaves either no checkpoint or a complete one.

Resume on the same world size restores every tensor and RNG stream bitwise. On another world size DCP
re-shards the weights and AdamW state exactly (it stores each tensor's global layout) and the data position
is one global integer, so the run continues from the same weights, optimizer state and examples; what may
differ is randomness: process r restores rank r's RNG states when they exist, else rank 0's (every process is
seeded alike, so they hold the same states until their batches differ), which matters only with dropout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from localdpo.storage.fileio import fsync_file, temporary_directory_beside
from localdpo.trainer import checkpoint as ckpt
from localdpo.trainer.distributed import DistInfo

SCHEDULER_FILE = "scheduler.pt"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)


def _shared_name(value, dist: DistInfo):
    """Rank 0's `value` (a name, a tuple of them), on every process."""
    if not dist.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded_checkpoint(
    root: str | Path,
    progress: ckpt.TrainingProgress,
    *,
    model,
    optimizer,
    scheduler,
    data_seed: int,
    n_train: int,
    dist: DistInfo,
    keep_last: int,
) -> Path | None:
    """Write a sharded checkpoint at `progress.step` under `root` (every process calls it); prune old ones.

    Returns the directory on rank 0, None elsewhere.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(root)
    tmp_name = None
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        final = ckpt.checkpoint_dir(root, progress.step)
        tmp_name = str(temporary_directory_beside(final, prefix=f"{ckpt.TEMP_PREFIX}{final.name}-"))
    tmp = Path(_shared_name(tmp_name, dist))
    try:
        model_state, optimizer_state = get_state_dict(model, optimizer, options=_state_dict_options())
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp)
        torch.save(ckpt.capture_rng_state(), tmp / rng_file(dist.rank))
        fsync_file(tmp / rng_file(dist.rank))
        if dist.enabled:
            torch.distributed.barrier()
        path = None
        if dist.is_main:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
            state, items = ckpt.progress_record(
                progress, data_seed=data_seed, n_train=n_train, world_size=dist.world_size
            )
            path = ckpt.publish_checkpoint(
                tmp, root, progress.step, state=state, items=items, layout=ckpt.SHARDED
            )
            ckpt.prune_checkpoints(root, keep_last)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dist.enabled:
        torch.distributed.barrier()
    return path


def resume_sharded(
    root: str | Path,
    resume: str,
    *,
    model,
    optimizer,
    scheduler,
    data_seed: int,
    n_train: int,
    dist: DistInfo,
) -> ckpt.TrainingProgress | None:
    """Restore the checkpoint `checkpoint.resume` names (rank 0 picks and verifies it) into the sharded
    `model`, `optimizer`, `scheduler` and this process's RNGs; its progress, or None. Every process calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    chosen = None  # (path, error) as rank 0 finds them, so every process raises the same error, none waits
    if dist.is_main:
        try:
            path = ckpt.checkpoint_to_resume(root, resume)
            if path is not None:
                layout = ckpt.verify_checkpoint(path).get("layout", ckpt.FULL)
                if layout != ckpt.SHARDED:
                    raise ckpt.CheckpointError(
                        f"{path}: a {layout} checkpoint (written without train.distributed=fsdp): resume it "
                        "the way it was written"
                    )
            chosen = (str(path) if path is not None else None, None)
        except ckpt.CheckpointError as error:
            chosen = (None, str(error))
    found, error = _shared_name(chosen, dist)
    if error is not None:
        raise ckpt.CheckpointError(error)
    if found is None:
        return None
    path = Path(found)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_state_dict_options())
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_state_dict_options(),
    )
    scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True))
    rng = path / rng_file(dist.rank)
    ckpt.restore_rng_state(
        torch.load(rng if rng.is_file() else path / rng_file(0), map_location="cpu", weights_only=True)
    )
    items_path = path / ckpt.ITEMS_FILE
    return ckpt.restored_progress(
        path,
        json.loads((path / "state.json").read_text()),
        load_file(str(items_path)) if items_path.is_file() else {},
        data_seed=data_seed,
        n_train=n_train,
    )


def read_sharded_state(path: str | Path, key: str = "model") -> dict[str, Any]:
    """Part `key` of sharded checkpoint `path` (`model`: the trainable weights; `optimizer`: AdamW's state as
    `get_state_dict` names it, `{"state": {name: {"exp_avg", "exp_avg_sq", "step"}}, "param_groups": ...}`),
    whole, on CPU, read in this process (no process group): what `localdpo export` and the tests read; tied
    weights appear under each name (`lm_head.weight` too). Shape: each as in the unsharded model."""
    import warnings

    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is unavailable or uninitialized")
        return _load_state_dict_from_keys(keys={key}, checkpoint_id=str(path))[key]


def read_sharded_weights(path: str | Path) -> dict[str, Any]:
    """The trainable weights of sharded checkpoint `path` (`read_sharded_state(path, "model")`)."""
    return read_sharded_state(path, "model")

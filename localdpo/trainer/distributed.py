"""Process-group helpers and the data stream every process reads its share of.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) the trainer joins the process group (NCCL on CUDA,
gloo on CPU) and wraps the policy in DistributedDataParallel or shards it with FSDP2
(`localdpo.trainer.fsdp`). The data order is one seeded stream shared by
every process: epoch e is the permutation `randperm(N, seed=data_seed + e)`, epochs concatenated. Each
micro-step takes the next `batch_size × world_size` positions of the stream and process r gets the slice
`[r·batch_size, (r+1)·batch_size)`, so the union over processes is exactly the batch a single process with
`batch_size × world_size` would see, and the data position is one integer (`consumed`) that a checkpoint
stores and resume restores exactly, whatever the world size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, *, always: bool = False) -> DistInfo:
    """Join the process group when launched by torchrun; with `always` (FSDP), a single process gets a
    one-process group of its own (an in-memory store) so the same sharded code runs. No-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not always:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if world_size <= 1:
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return info


def per_rank_values(value: float, info: DistInfo, device) -> list[float]:
    """`value` of every process, by rank (a one-item list for a single process)."""
    if not info.enabled:
        return [value]
    tensor = torch.zeros(info.world_size, dtype=torch.float64, device=device)
    tensor[info.rank] = value
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_mean(values: dict[str, float], info: DistInfo, device) -> dict[str, float]:
    """Mean of each value over processes (identity for a single process)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, tensor.tolist())}


def all_reduce_sum(value: float, info: DistInfo, device) -> float:
    """Sum of `value` over processes (identity for a single process)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return float(tensor.item())


def epoch_permutation(n: int, data_seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch. Shape: () -> (n,) int64."""
    generator = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def epoch_order(n: int, data_seed: int, epoch: int, rounds: Sequence[int] = ()) -> torch.Tensor:
    """The data order of one epoch: `epoch_permutation` of all n; with `rounds` (the sizes of consecutive
    blocks of the dataset, one per steering round, summing to n), each block permuted on its own and the blocks
    in order: round 1's steers, then round 2's, ... Shape: () -> (n,) int64."""
    if not rounds:
        return epoch_permutation(n, data_seed, epoch)
    if sum(rounds) != n:
        raise ValueError(f"round sizes {list(rounds)} do not add up to the {n} examples")
    starts = [sum(rounds[:i]) for i in range(len(rounds))]
    return torch.cat([start + epoch_permutation(size, data_seed, epoch) for start, size in zip(starts, rounds)])


def stream_indices(n: int, data_seed: int, start: int, count: int, rounds: Sequence[int] = ()) -> list[int]:
    """Dataset indices at positions `[start, start + count)` of the concatenated-epochs stream (each epoch in
    `epoch_order`)."""
    if n <= 0:
        raise ValueError("the training set is empty")
    out: list[int] = []
    position = start
    cache: dict[int, torch.Tensor] = {}
    while len(out) < count:
        epoch, offset = divmod(position, n)
        if epoch not in cache:
            cache[epoch] = epoch_order(n, data_seed, epoch, rounds)
        take = min(n - offset, count - len(out))
        out += cache[epoch][offset : offset + take].tolist()
        position += take
    return out


def rank_slice(indices: list[int], info: DistInfo, batch_size: int) -> list[int]:
    """This process's share of one global micro-batch of `batch_size × world_size` indices."""
    return indices[info.rank * batch_size : (info.rank + 1) * batch_size]

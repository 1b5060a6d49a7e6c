"""FSDP2 for the trainer (`train.distributed=fsdp`): shard the training forward, gather it back for saving.

Each decoder layer becomes its own FSDP unit (`fully_shard`), then the training forward
(`localdpo.trainer.modeling.PolicyForward`) becomes the root, which owns what is left: the embeddings, the
final norm and the (tied) LM head. The root is the `PolicyForward`, not the causal LM, because the fast path
calls the decoder and the LM head separately (`localdpo.forward.span_head`): the root's hooks gather its parameters
around the whole pair forward, as DDP's do around it. Between steps every parameter is a `DTensor` holding
1/world of each tensor on each process, and so are its gradient and its AdamW state.

Mixed precision (`MixedPrecisionPolicy`): when the run computes in bf16 (`train.precision`), layers are
gathered and run in bf16 and gradients are reduce-scattered in fp32 into the fp32 master shards; in fp32 (CPU)
nothing is cast.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from localdpo.trainer.config import ConfigError


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of `model` (a transformers causal LM, or a peft model around one), in order: the
    modules whose class is in transformers' `_no_split_modules` (`LlamaDecoderLayer`, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"train.distributed=fsdp: {type(model).__name__} names no decoder layer class (_no_split_modules)"
        )
    return layers


def mixed_precision(autocast_dtype: torch.dtype | None):
    """The FSDP2 policy of a run computing in `autocast_dtype`: gather in it, reduce in fp32; None: no casts."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if autocast_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32)


def device_mesh(device: torch.device, world_size: int):
    """The 1-D mesh of every process (the process group must exist)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size,))


def shard_forward(forward: nn.Module, model: nn.Module, *, mesh, autocast_dtype: torch.dtype | None) -> None:
    """Shard `forward` (a `PolicyForward` over `model`) in place: each decoder layer, then `forward` as root.

    The root reshards after every forward too (FSDP2 keeps a root gathered by default, for its backward): so
    between forwards every parameter is a shard, whatever ran last (an evaluation forward has no backward),
    and the optimizer and checkpoints only ever see shards. Its cost is one more gather of the embeddings and
    LM head in each backward.
    """
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision(autocast_dtype)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(forward, mesh=mesh, mp_policy=policy)
    forward.set_reshard_after_forward(True, recurse=False)


@contextmanager
def root_gathered(forward: nn.Module):
    """The root's own weights (embeddings, final norm, LM head) gathered for the duration: code that calls
    the model directly rather than through `forward` (generation, the drift KL) needs them; the decoder layers
    gather themselves on each call. Every process must run the same model calls inside (collectives)."""
    forward.set_reshard_after_forward(False, recurse=False)  # calls through `forward` inside keep them too
    forward.unshard()
    try:
        yield
    finally:
        forward.reshard()
        forward.set_reshard_after_forward(True, recurse=False)


def full_model_state(model: nn.Module, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Every weight of the sharded `model` gathered whole on CPU, on rank 0 (empty elsewhere); a collective.

    `trainable_only`: the trainable ones (a LoRA adapter). Shape: each as in the unsharded model.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)

"""Reference log-probs for a batch: from the reference cache (default) or a live frozen model.

Both give per-token log-probs of the starting model, laid out like the (trimmed, right-padded) batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from localdpo.data import pad_right
from localdpo.tokenization import TokenizedSteer
from localdpo.trainer.modeling import pair_logps


class CachedReference:
    """Reference log-probs looked up in a `localdpo.refcache.ReferenceCache` (or any object with `.get`).

    The cache is asked with the untrimmed examples (its keys are the full token ids); the values are cut to
    the batch's trimmed lengths and right-padded with 0 like the batch.
    """

    def __init__(self, cache):
        self.cache = cache

    def batch_logps(
        self, examples: Sequence[TokenizedSteer], batch: dict[str, torch.Tensor], device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: -> (B, Tc), (B, Tr) float32 matching the batch's chosen / rejected input ids."""
        from localdpo.data import CHOSEN_ATTENTION_MASK, REJECTED_ATTENTION_MASK

        values = self.cache.get(list(examples))
        sides = []
        for side, key in ((0, CHOSEN_ATTENTION_MASK), (1, REJECTED_ATTENTION_MASK)):
            lengths = batch[key].sum(-1).tolist()
            rows = [pair[side][: int(n)].float() for pair, n in zip(values, lengths)]
            for row, n, example in zip(rows, lengths, examples):
                if row.numel() != n:
                    raise ValueError(
                        f"reference cache returned {row.numel()} log-probs for steer {example.steer_id!r}, expected {n}"
                    )
            sides.append(pad_right(rows, 0.0, batch[key].shape[1]).to(device, non_blocking=True))  # (B, T)
        return sides[0], sides[1]


class LiveReference:
    """Reference log-probs from a frozen model forward (a copy of the starting model, or the LoRA base)."""

    def __init__(self, model, *, disable_adapter_of=None, autocast_dtype: torch.dtype | None = None):
        """`model` is the frozen reference; with `disable_adapter_of` (a peft model) it is that model with its
        adapter switched off, so no copy is kept."""
        self.model = model
        self.peft_model = disable_adapter_of
        self.autocast_dtype = autocast_dtype

    @torch.no_grad()
    def batch_logps(
        self, examples: Sequence[TokenizedSteer], batch: dict[str, torch.Tensor], device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: -> (B, Tc), (B, Tr) float32 matching the batch's chosen / rejected input ids."""
        model = self.peft_model if self.peft_model is not None else self.model
        was_training = model.training
        model.eval()
        adapter_off = self.peft_model.disable_adapter() if self.peft_model is not None else nullcontext()
        try:
            with (
                adapter_off,
                torch.autocast(
                    device_type=torch.device(device).type,
                    dtype=self.autocast_dtype,
                    enabled=self.autocast_dtype is not None,
                ),
            ):
                chosen, rejected = pair_logps(model, batch)
        finally:
            model.train(was_training)
        return chosen.float(), rejected.float()

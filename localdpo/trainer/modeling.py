"""Policy preparation: loading, dropout, LoRA, gradient checkpointing, and the training forward."""

from __future__ import annotations

import torch
from torch import nn

from localdpo.forward.pairs import FastPaths, pair_logps
from localdpo.models.loading import TINY_MODEL, peft_wrapping
from localdpo.trainer.config import RunConfig


def load_base_model(config: RunConfig, tokenizer=None):
    """`(model, tokenizer)` named by `config.model.name` (fp32 weights, CPU, eval mode)."""
    from localdpo.models.loading import load_model, tiny_model

    if config.model.name == TINY_MODEL:
        return tiny_model(seed=config.model.tiny_seed, tokenizer=tokenizer)
    model, loaded_tokenizer = load_model(
        config.model.name, cache_dir=config.cache_dir, trust_remote_code=config.model.trust_remote_code
    )
    return model, tokenizer if tokenizer is not None else loaded_tokenizer


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout probability of `model` to 0 (modules and attention dropout); returns how many were set."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout) and module.p:
            module.p = 0.0
            changed += 1
        if isinstance(getattr(module, "attention_dropout", None), float) and module.attention_dropout:
            module.attention_dropout = 0.0
            changed += 1
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if isinstance(getattr(getattr(model, "config", None), name, None), float):
            setattr(model.config, name, 0.0)
    return changed


def apply_lora(model: nn.Module, config: RunConfig) -> nn.Module:
    """`model` wrapped with a fresh LoRA adapter (peft); only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    lora = config.model.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    with peft_wrapping():
        return get_peft_model(model, peft_config)


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied weights once): what a checkpoint saves."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class PolicyForward(nn.Module):
    """The training forward as one module, so DistributedDataParallel can wrap it whole.

    DDP sets up its gradient all-reduce in its own `forward`; the fast path calls the decoder and the LM head
    separately, so it must run inside the wrapped module's forward, not around it. `forward(batch, score_mask)`
    gives per-token log-probs in `collate_pairs`' layout through the one pair forward, `localdpo.forward.pair_logps`,
    with the fast paths this model can run (decided here, once); the chosen side alone when `score_mask` (the positions the loss
    reads) is given.
    """

    def __init__(self, model: nn.Module, *, packing: bool, span_head: bool, pad_token_id: int):
        """`packing`/`span_head` as asked; one the model cannot run is turned off here, with a warning naming why."""
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id
        self.paths = FastPaths.for_model(model, packing=packing, span_head=span_head)

    @property
    def packing(self) -> bool:
        return self.paths.packing

    @property
    def span_head(self) -> bool:
        return self.paths.span_head

    def forward(
        self, batch: dict[str, torch.Tensor], score_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(chosen, rejected)` log-probs; `rejected` is None when only the chosen side is asked for.

        Shape: batch chosen (B, Tc), rejected (B, Tr); score_mask (B, Tc) bool -> (B, Tc), (B, Tr) float32.
        """
        return pair_logps(
            self.model,
            batch,
            self.paths,
            pad_token_id=self.pad_token_id,
            score_mask=score_mask,
        )  # (B, Tc), (B, Tr) | None

"""Drift: how far training moved the model on text unrelated to the steers.

Measured as the mean per-token KL(reference || policy) over the reference model's own greedy continuations
of a fixed set of generic chat prompts (`drift_prompts.jsonl`, 32 prompts). The continuations and the
reference's full next-token distributions are computed once from the starting model; each evaluation runs
only the policy. Per position t of a continuation (the prediction of continuation token t from everything
before it):

    KL_t = Σ_v p_ref(v | x_<t) · (log p_ref(v | x_<t) − log p_policy(v | x_<t))

and the drift is the mean of KL_t over every continuation token of every prompt (token-weighted). It is 0 for
the starting model and grows as the policy's distribution moves away from the reference's on the text the
reference itself would write: the forward KL of the sampling distribution, exact over the whole vocabulary
(no sampled estimate). Memory: prompts × max_new_tokens × vocab float32 (32 × 24 × 49,152 × 4 B ≈ 150 MB).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from localdpo.generation import greedy_token_continuations, pad_token_id, prompt_ids

DEFAULT_DRIFT_PROMPTS = Path(__file__).with_name("drift_prompts.jsonl")


def load_drift_prompts(path: str | os.PathLike | None = None) -> list[str]:
    """Prompts (`{"prompt": str}` JSONL rows) of the drift set; the shipped 32 by default."""
    path = Path(path) if path is not None else DEFAULT_DRIFT_PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"drift prompt file not found: {path}")
    prompts = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: invalid JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise ValueError(f"{path}:{line_number}: field 'prompt': expected a non-empty string")
        prompts.append(row["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def token_kl(ref_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(softmax(ref_logits) || softmax(policy_logits)), in fp32.

    Shape: ref_logits (N, V), policy_logits (N, V) -> (N,).
    """
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)  # (N, V)
    policy_logp = torch.log_softmax(policy_logits.float(), dim=-1)  # (N, V)
    return (ref_logp.exp() * (ref_logp - policy_logp)).sum(-1)  # (N,)


@dataclass
class DriftSet:
    """Fixed drift sequences and the reference's log-distributions at their continuation positions."""

    sequences: list[torch.Tensor]
    """Per prompt (T_i,) int64: prompt + the reference's greedy continuation."""
    starts: list[int]
    """Per prompt: index of the first continuation token."""
    ref_logits: list[torch.Tensor]
    """Per prompt (T_i - start_i, V) float32 reference logits predicting each continuation token (CPU)."""

    @property
    def num_tokens(self) -> int:
        return sum(int(r.shape[0]) for r in self.ref_logits)

    @classmethod
    def for_eval(cls, reference_model, tokenizer, eval_config, *, device=None) -> DriftSet:
        """The drift set an `EvalConfig` asks for: its prompts (`drift_prompts`, first `drift_num_prompts`)
        continued for `drift_max_new_tokens` by the reference."""
        prompts = load_drift_prompts(eval_config.drift_prompts)[: eval_config.drift_num_prompts]
        return cls.build(
            reference_model,
            tokenizer,
            prompts,
            max_new_tokens=eval_config.drift_max_new_tokens,
            device=device,
        )

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        reference_model,
        tokenizer,
        prompts: list[str],
        *,
        max_new_tokens: int = 24,
        device=None,
        batch_size: int = 32,
    ) -> DriftSet:
        """Generate the reference's greedy continuations (`batch_size` prompts at a time; an EOS the reference
        writes ends its continuation and is part of it) and keep its logits on them."""
        device = device if device is not None else next(reference_model.parameters()).device
        was_training = reference_model.training
        reference_model.eval()
        sequences, starts, ref_logits = [], [], []
        eos = tokenizer.eos_token_id
        try:
            encoded = [prompt_ids(tokenizer, prompt) for prompt in prompts]
            continuations = greedy_token_continuations(
                reference_model,
                encoded,
                max_new_tokens=max_new_tokens,
                eos_ids={eos} if eos is not None else set(),
                pad_id=pad_token_id(tokenizer),
                batch_size=batch_size,
            )
            for ids, (new, ended) in zip(encoded, continuations):
                new = new + [eos] if ended else new
                if not new:
                    continue
                sequence = torch.tensor(ids + new, dtype=torch.long)
                logits = _continuation_logits(reference_model, sequence, len(ids), device)
                sequences.append(sequence)
                starts.append(len(ids))
                ref_logits.append(logits.float().cpu())
        finally:
            reference_model.train(was_training)
        if not sequences:
            raise ValueError("the drift set is empty: no prompt produced a continuation")
        return cls(sequences, starts, ref_logits)

    @torch.no_grad()
    def kl_per_prompt(
        self, policy_model, *, device=None, autocast_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt: (KL summed over its continuation tokens, number of tokens), each (P,) float64."""
        device = device if device is not None else next(policy_model.parameters()).device
        was_training = policy_model.training
        policy_model.eval()
        sums, counts = [], []
        try:
            for sequence, start, ref in zip(self.sequences, self.starts, self.ref_logits):
                with torch.autocast(
                    device_type=torch.device(device).type,
                    dtype=autocast_dtype,
                    enabled=autocast_dtype is not None,
                ):
                    logits = _continuation_logits(policy_model, sequence, start, device)  # (n, V)
                kl = token_kl(ref.to(logits.device), logits)  # (n,)
                sums.append(float(kl.double().sum()))
                counts.append(int(kl.numel()))
        finally:
            policy_model.train(was_training)
        return torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)

    def kl(self, policy_model, *, device=None, autocast_dtype: torch.dtype | None = None) -> float:
        """Mean per-token KL(reference || policy) over every continuation token."""
        sums, counts = self.kl_per_prompt(policy_model, device=device, autocast_dtype=autocast_dtype)
        return float(sums.sum() / counts.sum())


def _continuation_logits(model, sequence: torch.Tensor, start: int, device) -> torch.Tensor:
    """Logits predicting tokens `sequence[start:]`.

    Shape: sequence (T,) -> (T - start, V).
    """
    logits = model(input_ids=sequence.unsqueeze(0).to(device), use_cache=False).logits[0]  # (T, V)
    return logits[start - 1 : -1]  # (T - start, V)

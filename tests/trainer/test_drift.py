import math

import pytest
import torch

from localdpo.generation import prompt_ids
from localdpo.models.loading import tiny_model
from localdpo.trainer.drift import DriftSet, load_drift_prompts, token_kl


def test_token_kl_hand_computed():
    """ref = (1/2, 1/2), policy = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.1438410."""
    ref = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    policy = torch.tensor([[math.log(3.0), 0.0], [1.0, -2.0]])
    kl = token_kl(ref, policy)
    assert kl[0].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-7)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-7)
    # direction matters: KL(policy || ref) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308121
    assert token_kl(policy, ref)[0].item() == pytest.approx(
        0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-7
    )


def test_shipped_prompts():
    prompts = load_drift_prompts()
    assert len(prompts) == 32 and len(set(prompts)) == 32


def test_bad_prompt_file_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: field 'prompt'"):
        load_drift_prompts(path)


def test_drift_is_the_mean_kl_over_the_reference_greedy_continuation(smol_tokenizer):
    reference, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    prompts = ["What is the capital of Australia?", "Write a haiku about autumn leaves."]
    drift = DriftSet.build(reference, tokenizer, prompts, max_new_tokens=3)
    assert drift.kl(reference) == pytest.approx(0.0, abs=1e-7)
    policy, _ = tiny_model(seed=1, tokenizer=smol_tokenizer)
    # By hand: greedy tokens of the reference, then full-vocabulary KL at each continuation position.
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt in prompts:
            ids = prompt_ids(tokenizer, prompt)
            for _ in range(3):
                ids.append(int(reference(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            sequence = torch.tensor([ids])
            start = len(ids) - 3
            p = torch.softmax(reference(input_ids=sequence).logits[0, start - 1 : -1].double(), -1)  # (3, V)
            q = torch.softmax(policy(input_ids=sequence).logits[0, start - 1 : -1].double(), -1)  # (3, V)
            total += float((p * (p.log() - q.log())).sum())
            count += 3
    assert [s.numel() - st for s, st in zip(drift.sequences, drift.starts)] == [3, 3]
    assert drift.kl(policy) == pytest.approx(total / count, rel=1e-5)
    assert drift.kl(policy) > 0.01

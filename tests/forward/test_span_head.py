import pytest
import torch

from localdpo.forward.pairs import sequence_token_logps
from localdpo.forward.span_head import (
    SpanHeadUnsupportedError,
    head_token_logps,
    logit_transform,
    span_token_logps,
)
from localdpo.models.loading import tiny_model


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    model, _ = tiny_model(tokenizer=smol_tokenizer)
    return model


def _batch(vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (3, 12), generator=generator)  # (B, T)
    attention_mask = torch.ones(3, 12, dtype=torch.bool)
    attention_mask[1, 9:] = False  # right padding
    attention_mask[2, 5:] = False
    score_mask = torch.zeros(3, 12, dtype=torch.bool)
    score_mask[0, 4:12] = True
    score_mask[1, 0:9] = True  # position 0 marked: has no predictor, must come out 0
    score_mask[2, 3:5] = True
    return input_ids, attention_mask, score_mask


def test_span_logps_equal_full_forward_on_scored_positions(tiny):
    input_ids, attention_mask, score_mask = _batch(tiny.config.vocab_size)
    full = sequence_token_logps(tiny, input_ids, attention_mask)  # (B, T)
    span = span_token_logps(tiny, input_ids, attention_mask, score_mask)
    scored = score_mask.clone()
    scored[:, 0] = False
    torch.testing.assert_close(span[scored], full[scored], atol=1e-5, rtol=0)
    assert bool((span[~scored] == 0).all())
    assert span.dtype == torch.float32


def test_span_gradients_equal_full_forward(tiny):
    input_ids, attention_mask, score_mask = _batch(tiny.config.vocab_size, seed=1)
    weights = torch.linspace(0.5, 1.5, input_ids.numel()).reshape(input_ids.shape)  # (B, T)
    scored = score_mask.clone()
    scored[:, 0] = False

    def grads(fn):
        tiny.zero_grad()
        (fn() * weights * scored).sum().backward()
        return {n: p.grad.clone() for n, p in tiny.named_parameters()}

    full = grads(lambda: sequence_token_logps(tiny, input_ids, attention_mask))
    # chunk_size=4 < 19 scored rows: exercises the checkpointed chunks
    span = grads(lambda: span_token_logps(tiny, input_ids, attention_mask, score_mask, chunk_size=4))
    for name in full:
        torch.testing.assert_close(span[name], full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_head_token_logps_matches_log_softmax_by_hand():
    """With weight W = [[1, 0], [0, 1], [1, 1]] and h = (1, 2): logits (1, 2, 3), log p(2) = 3 - log(e+e²+e³)."""
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "stub"})()
            self.head = head

        def get_output_embeddings(self):
            return self.head

    expected = 3 - torch.log(
        torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(2.0)) + torch.exp(torch.tensor(3.0))
    )
    out = head_token_logps(Stub(), torch.tensor([[1.0, 2.0]]), torch.tensor([2]))
    torch.testing.assert_close(out, expected.reshape(1))


def _tiny_arch(config_cls, **extra):
    from transformers import AutoModelForCausalLM

    config = config_cls(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        **extra,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize(
    ("config_name", "extra", "expected_transform"),
    [
        ("Gemma2Config", {"final_logit_softcapping": 0.5}, (1.0, 0.5)),
        ("GraniteConfig", {"logits_scaling": 4.0}, (0.25, None)),
        ("CohereConfig", {"logit_scale": 3.0}, (3.0, None)),
    ],
)
def test_logit_postprocessing_is_reproduced(config_name, extra, expected_transform):
    """Softcapping (Gemma 2) and scaling (Granite divides, Cohere multiplies) match the model's own logits."""
    import transformers

    model = _tiny_arch(getattr(transformers, config_name), **extra)
    assert logit_transform(model) == expected_transform
    input_ids, attention_mask, score_mask = _batch(96)
    full = sequence_token_logps(model, input_ids, attention_mask)
    span = span_token_logps(model, input_ids, attention_mask, score_mask)
    scored = score_mask.clone()
    scored[:, 0] = False
    torch.testing.assert_close(span[scored], full[scored], atol=1e-5, rtol=0)


def test_unknown_output_multiplier_is_refused(tiny):
    tiny.config.lm_head_multiplier = 2.0
    try:
        with pytest.raises(SpanHeadUnsupportedError, match="lm_head_multiplier"):
            logit_transform(tiny)
    finally:
        del tiny.config.lm_head_multiplier


def test_memory_of_span_head_is_a_fraction_of_full_logits(tiny):
    """Largest single allocation (profiler): the full path allocates (B, T, V) logits, the span head never does."""
    from torch.profiler import ProfilerActivity, profile

    input_ids = torch.randint(0, tiny.config.vocab_size, (2, 256))
    attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    score_mask = torch.zeros_like(attention_mask)
    score_mask[:, 240:] = True

    def peak(fn):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn().sum().backward()
        return max(e.cpu_memory_usage for e in prof.key_averages())

    full = peak(lambda: sequence_token_logps(tiny, input_ids, attention_mask))
    span = peak(lambda: span_token_logps(tiny, input_ids, attention_mask, score_mask))
    logits_bytes = 2 * 256 * tiny.config.vocab_size * 4
    assert full >= logits_bytes
    assert span < logits_bytes / 4

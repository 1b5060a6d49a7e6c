import copy
import shutil

import pytest
import torch

from localdpo.forward.packing import (
    CHOSEN,
    PAD,
    REJECTED,
    SHARED,
    PackingUnsupportedError,
    check_packing_support,
    pack_batch,
    pack_pairs,
    supports_packing,
)
from localdpo.forward.pairs import FastPaths, packed_pair_logps, pair_logps, sequence_token_logps
from localdpo.models.loading import tiny_model
from localdpo.steers.batches import (
    CHOSEN_ATTENTION_MASK,
    CHOSEN_INPUT_IDS,
    CHOSEN_LOSS_MASK,
    REJECTED_ATTENTION_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_LOSS_MASK,
    collate_pairs,
)
from localdpo.steers.steer import Steer
from localdpo.steers.tokenization import SpanMode, TokenizedSteer, tokenize_steer


def _pair(chosen, rejected, chosen_mask, rejected_mask) -> TokenizedSteer:
    return TokenizedSteer(
        chosen_ids=torch.tensor(chosen),
        rejected_ids=torch.tensor(rejected),
        chosen_mask=torch.tensor(chosen_mask, dtype=torch.bool),
        rejected_mask=torch.tensor(rejected_mask, dtype=torch.bool),
        chosen_assistant_start=0,
        rejected_assistant_start=0,
        divergence=0,
        span_mode=SpanMode.DIVERGENT,
    )


STEERS = [
    Steer(
        prompt=[{"role": "user", "content": "List three prime numbers and explain why each one is prime."}],
        prefix="1. 2 is prime. 2. ",
        rejected="9 is prime because it is odd. 3. 5 is prime.",
        chosen="3 is prime. 3. 5 is prime.",
    ),
    Steer(
        prompt="What is the capital of Australia?",
        prefix="The capital is ",
        rejected="Sydney.",
        chosen="Canberra.",
    ),
    Steer(
        prompt=[{"role": "user", "content": "Write one sentence about cats."}],
        prefix="",
        rejected="Dogs are loyal.",
        chosen="Cats sleep a lot.",
        chosen_complete=True,
    ),
]


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    model, _ = tiny_model(tokenizer=smol_tokenizer)
    return model


def _examples(tokenizer, span_mode):
    return [tokenize_steer(s, tokenizer, span_mode=span_mode) for s in STEERS]


def _unpacked(model, batch):
    chosen = sequence_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK])
    rejected = sequence_token_logps(model, batch[REJECTED_INPUT_IDS], batch[REJECTED_ATTENTION_MASK])
    return chosen, rejected


def _scored(mask: torch.Tensor) -> torch.Tensor:
    mask = mask.clone().bool()
    mask[:, 0] = False  # no predictor for the first token
    return mask


def test_layout_by_hand():
    """chosen [1 2 3 4 5], rejected [1 2 3 7 8 9] share [1 2 3]: row [1 2 3 | 4 5 | 7 8 9]."""
    batch = collate_pairs(
        [_pair([1, 2, 3, 4, 5], [1, 2, 3, 7, 8, 9], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1])], pad_token_id=0
    )
    packed = pack_batch(batch, pad_token_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    S, C, R = SHARED, CHOSEN, REJECTED
    assert packed.branch.tolist() == [[S, S, S, C, C, R, R, R]]
    # chosen token t is predicted by packed index t-1; rejected 7 (t=3) by the last shared token (index 2),
    # rejected 8 by packed 5 (the 7), 9 by packed 6.
    assert packed.chosen_source.tolist() == [[-1, 0, 1, 2, 3]]
    assert packed.rejected_source.tolist() == [[-1, 0, 1, 2, 5, 6]]
    allowed = packed.attention_allowed()[0, 0]
    assert allowed[5].tolist() == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
        False,
    ]  # 7 sees 1 2 3 and itself
    assert allowed[4].tolist() == [True] * 5 + [False] * 3  # 5 sees shared + chosen tail
    assert allowed[7].tolist() == [True, True, True, False, False, True, True, True]
    assert packed.packed_tokens == 8 and packed.unpacked_tokens == 11


def test_pack_batch_docstring_example():
    """The worked example of `pack_batch`'s docstring: chosen [a b c X Y], rejected [a b c Z W]."""
    a, b, c, X, Y, Z, W = 10, 11, 12, 20, 21, 30, 31
    batch = collate_pairs([_pair([a, b, c, X, Y], [a, b, c, Z, W], [1] * 5, [1] * 5)], pad_token_id=0)
    packed = pack_batch(batch, pad_token_id=0)
    S, C, R = SHARED, CHOSEN, REJECTED
    assert packed.input_ids.tolist() == [[a, b, c, X, Y, Z, W]]
    assert packed.branch.tolist() == [[S, S, S, C, C, R, R]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4]]
    assert packed.chosen_source.tolist() == [[-1, 0, 1, 2, 3]]
    assert packed.rejected_source.tolist() == [[-1, 0, 1, 2, 5]]


def test_trim_drops_tokens_after_last_scored_and_padding_is_inert():
    """A resynced divergent span: chosen [1 2 X s], rejected [1 2 Y Z s u]; nothing after each span is kept."""
    pair = _pair([1, 2, 10, 50], [1, 2, 20, 21, 50, 60], [0, 0, 1, 0], [0, 0, 1, 1, 0, 0])
    second = _pair([4, 5], [4, 6, 7], [0, 1], [0, 1, 1])
    batch = collate_pairs([pair, second], pad_token_id=0)
    packed = pack_batch(batch, pad_token_id=99)
    assert packed.input_ids.tolist() == [[1, 2, 10, 20, 21], [4, 5, 6, 7, 99]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3], [0, 1, 1, 2, 0]]
    assert packed.branch[1].tolist() == [SHARED, CHOSEN, REJECTED, REJECTED, PAD]
    assert packed.chosen_source.tolist() == [[-1, 0, 1, -1], [-1, 5, -1, -1]]
    assert packed.rejected_source.tolist() == [[-1, 0, 1, 3, -1, -1], [-1, 5, 7, -1, -1, -1]]
    assert packed.attention_allowed()[1, 0, 4].tolist() == [False, False, False, False, True]


def test_max_tokens_packs_several_pairs_per_row_block_diagonally():
    pairs = [
        _pair([1, 2, 3], [1, 2, 4], [0, 0, 1], [0, 0, 1]),
        _pair([5, 6], [5, 7], [0, 1], [0, 1]),
        _pair([8, 9, 10, 11], [8, 9, 12], [0, 0, 1, 1], [0, 0, 1]),
    ]
    packed = pack_pairs(pairs, pad_token_id=0, max_tokens=8)
    # lengths 4, 3, 5: first-fit decreasing -> row 0 [pair 2 (5) | pair 1 (3)], row 1 [pair 0 (4)]
    assert packed.pair_ids.tolist() == [[2, 2, 2, 2, 2, 1, 1, 1], [0, 0, 0, 0, -1, -1, -1, -1]]
    allowed = packed.attention_allowed()[0, 0]
    assert not bool(allowed[5:, :5].any())  # pair 1 never sees pair 2
    with pytest.raises(ValueError, match="pair 2 .* 5 tokens > max_tokens=4"):
        pack_pairs(pairs, pad_token_id=0, max_tokens=4)


def test_mask_mod_matches_dense_mask():
    """The FlexAttention mask function and the dense SDPA mask are the same relation."""
    from torch.nn.attention.flex_attention import create_mask

    pairs = [
        _pair([1, 2, 3, 4], [1, 2, 5, 6, 7], [0, 0, 1, 1], [0, 0, 1, 1, 1]),
        _pair([8, 9], [8, 10], [0, 1], [0, 1]),
    ]
    packed = pack_pairs(pairs, pad_token_id=0, max_tokens=16)
    rows, length = packed.pair_ids.shape
    dense = create_mask(packed.mask_mod(), rows, 1, length, length, device="cpu")
    assert torch.equal(dense, packed.attention_allowed())


@pytest.mark.parametrize("span_mode", list(SpanMode))
@pytest.mark.parametrize("span_head", [True, False])
@pytest.mark.parametrize("max_tokens", [None, 4096])
def test_packed_logps_equal_unpacked_fp32(tiny, smol_tokenizer, span_mode, span_head, max_tokens):
    examples = _examples(smol_tokenizer, span_mode)
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    expected_chosen, expected_rejected = _unpacked(tiny, batch)
    packed = pack_batch(batch, pad_token_id=smol_tokenizer.pad_token_id, max_tokens=max_tokens)
    assert packed.packed_tokens < packed.unpacked_tokens
    chosen, rejected = packed_pair_logps(tiny, packed, span_head=span_head)
    assert chosen.shape == expected_chosen.shape and rejected.shape == expected_rejected.shape
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)


def test_packed_gradients_equal_unpacked(tiny, smol_tokenizer):
    examples = _examples(smol_tokenizer, SpanMode.COMPLETION)
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])

    def grads(fn):
        tiny.zero_grad()
        chosen, rejected = fn()
        # different weights per side, so a swapped or shared-once token would show
        (2.0 * (chosen * c_mask).sum() - 0.5 * (rejected * r_mask).sum()).backward()
        return {n: p.grad.clone() for n, p in tiny.named_parameters()}

    expected = grads(lambda: _unpacked(tiny, batch))
    packed = pack_batch(batch, pad_token_id=smol_tokenizer.pad_token_id, max_tokens=4096)
    for span_head in (True, False):
        got = grads(lambda span_head=span_head: packed_pair_logps(tiny, packed, span_head=span_head))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_eager_attention_gets_an_additive_mask(smol_tokenizer):
    model, _ = tiny_model(tokenizer=smol_tokenizer)
    model.set_attn_implementation("eager")
    examples = _examples(smol_tokenizer, SpanMode.DIVERGENT)
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    expected_chosen, expected_rejected = _unpacked(model, batch)
    chosen, rejected = packed_pair_logps(model, pack_batch(batch, pad_token_id=0))
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)


@pytest.mark.embedded
def test_bf16_packing_adds_no_more_error_than_bf16_itself(smol_tokenizer):
    """bf16 sums in another order packed vs unpacked, so the two differ by rounding; that difference must be of
    the order of bf16's own error (unpacked bf16 against unpacked fp32 on the same weights), not larger.

    A fixed bound in nats did not hold across library versions (0.054 nat when docs/fastpath.md was written,
    0.196 with transformers 5.23 and 5.24 on the same steers); this ratio is what packing must keep.
    (The tiny random model shows no gap at all in bf16, so the real model is needed here.)
    """
    from localdpo.models.loading import load_model

    model, _ = load_model(dtype=torch.bfloat16)
    examples = _examples(smol_tokenizer, SpanMode.COMPLETION)
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])

    def gap(a, b):
        return max(float((a[0] - b[0])[c_mask].abs().max()), float((a[1] - b[1])[r_mask].abs().max()))

    with torch.no_grad():
        unpacked = _unpacked(model, batch)
        packed = packed_pair_logps(model, pack_batch(batch, pad_token_id=0))
        exact = _unpacked(model.float(), batch)
    bf16_error = gap(unpacked, exact)
    assert 0 < bf16_error < 1.0
    assert gap(packed, unpacked) <= 2 * bf16_error


def _random_pairs(vocab: int, seed: int = 0) -> list[TokenizedSteer]:
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for shared, chosen_tail, rejected_tail in ((9, 4, 6), (0, 3, 2), (14, 5, 1)):
        prefix = torch.randint(0, vocab, (shared,), generator=generator)
        chosen = torch.cat([prefix, torch.randint(0, vocab, (chosen_tail,), generator=generator)])
        rejected = torch.cat([prefix, torch.randint(0, vocab, (rejected_tail,), generator=generator)])
        rejected[shared] = (chosen[shared] + 1) % vocab  # make sure the sides diverge at `shared`
        chosen_mask = torch.zeros(chosen.numel(), dtype=torch.bool)
        chosen_mask[max(shared - 2, 0) :] = True  # scored tokens inside the shared part too
        rejected_mask = torch.zeros(rejected.numel(), dtype=torch.bool)
        rejected_mask[max(shared - 2, 0) :] = True
        pairs.append(_pair(chosen.tolist(), rejected.tolist(), chosen_mask.tolist(), rejected_mask.tolist()))
    return pairs


@pytest.mark.parametrize("config_name", ["MistralConfig", "Qwen2Config", "Qwen3Config", "GemmaConfig"])
def test_other_supported_architectures_pack_exactly(config_name):
    import transformers

    config = getattr(transformers, config_name)(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert supports_packing(model)
    batch = collate_pairs(_random_pairs(96), pad_token_id=0)
    expected_chosen, expected_rejected = _unpacked(model, batch)
    chosen, rejected = packed_pair_logps(model, pack_batch(batch, pad_token_id=0, max_tokens=64))
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)


def test_unsupported_architecture_is_refused_and_entry_point_falls_back():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    assert not supports_packing(model)
    with pytest.raises(PackingUnsupportedError, match="'gpt2' is not one of"):
        check_packing_support(model)
    batch = collate_pairs(_random_pairs(96, seed=1), pad_token_id=0)
    with pytest.warns(UserWarning, match="packing off"):
        paths = FastPaths.for_model(model, packing=True, span_head=True)
    assert not paths.packing
    chosen, rejected = pair_logps(model, batch, paths)
    expected_chosen, expected_rejected = _unpacked(model, batch)
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)


def test_lora_model_packs_exactly(smol_tokenizer):
    """A PEFT LoRA wrapper (adapters non-zero) runs the packed path, no fallback warning, same log-probs."""
    import warnings

    from peft import LoraConfig, get_peft_model

    model, _ = tiny_model(tokenizer=smol_tokenizer)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
    peft_model = get_peft_model(model, config).eval()
    assert supports_packing(peft_model)
    batch = collate_pairs(_random_pairs(peft_model.config.vocab_size, seed=2), pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        paths = FastPaths.for_model(peft_model, packing=True, span_head=True)
        chosen, rejected = pair_logps(peft_model, batch, paths)
    assert paths.packing
    expected_chosen, expected_rejected = _unpacked(peft_model, batch)
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)


def test_attention_without_4d_masks_is_refused(tiny):
    model = copy.copy(tiny)
    model.config = copy.deepcopy(tiny.config)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(PackingUnsupportedError, match="flash_attention_2"):
        check_packing_support(model)


def test_sliding_window_shorter_than_the_sequences_is_refused():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=8,
    )  # fmt: skip
    model = MistralForCausalLM(config).eval()
    packed = pack_pairs(_random_pairs(96), pad_token_id=0)
    with pytest.raises(PackingUnsupportedError, match="sliding_window=8"):
        packed_pair_logps(model, packed)


@pytest.mark.parametrize(
    ("packing", "span_head"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_entry_point_gives_collate_layout_on_every_path(tiny, smol_tokenizer, packing, span_head):
    examples = _examples(smol_tokenizer, SpanMode.DIVERGENT)
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    expected_chosen, expected_rejected = _unpacked(tiny, batch)
    paths = FastPaths.for_model(tiny, packing=packing, span_head=span_head)
    assert paths == FastPaths(packing=packing, span_head=span_head)
    chosen, rejected = pair_logps(tiny, batch, paths, pad_token_id=smol_tokenizer.pad_token_id)
    assert chosen.shape == batch[CHOSEN_INPUT_IDS].shape and rejected.shape == batch[REJECTED_INPUT_IDS].shape
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="FlexAttention on CPU compiles C++ kernels (needs g++)"
)
@pytest.mark.parametrize("max_tokens", [None, 4096], ids=["pair-per-row", "pairs-share-rows"])
def test_flex_attention_packed_forward_equals_unpacked_on_cpu(smol_tokenizer, max_tokens):
    """The BlockMask path through transformers' FlexAttention integration, forward only (PyTorch's CPU
    FlexAttention has no backward; the CUDA test below covers gradients)."""
    model, _ = tiny_model(tokenizer=smol_tokenizer)
    batch = collate_pairs(_examples(smol_tokenizer, SpanMode.DIVERGENT), pad_token_id=0)
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    with torch.no_grad():
        expected = _unpacked(model, batch)
        model.set_attn_implementation("flex_attention")
        # A fresh compile per shape: PyTorch 2.13's CPU codegen for the dynamic-shape recompile does not build.
        torch._dynamo.reset()
        try:
            chosen, rejected = packed_pair_logps(
                model, pack_batch(batch, pad_token_id=0, max_tokens=max_tokens)
            )
        finally:
            torch._dynamo.reset()
    assert c_mask.any() and r_mask.any()
    torch.testing.assert_close(chosen[c_mask], expected[0][c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected[1][r_mask], atol=1e-5, rtol=0)


@pytest.mark.gpu
def test_flex_attention_packed_logps_and_gradients_equal_unpacked_on_cuda(smol_tokenizer):
    model, _ = tiny_model(tokenizer=smol_tokenizer)
    model = model.cuda()
    examples = _examples(smol_tokenizer, SpanMode.COMPLETION)
    batch = {k: v.cuda() for k, v in collate_pairs(examples, pad_token_id=0).items()}
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])

    def run(fn):
        model.zero_grad()
        chosen, rejected = fn()
        ((chosen * c_mask).sum() - (rejected * r_mask).sum()).backward()
        return chosen.detach(), rejected.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    expected = run(lambda: _unpacked(model, batch))
    model.set_attn_implementation("flex_attention")
    got = run(lambda: packed_pair_logps(model, pack_batch(batch, pad_token_id=0, max_tokens=4096)))
    torch.testing.assert_close(got[0][c_mask], expected[0][c_mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1][r_mask], expected[1][r_mask], atol=1e-4, rtol=0)
    for name in expected[2]:
        torch.testing.assert_close(got[2][name], expected[2][name], atol=1e-4, rtol=1e-3, msg=name)


def _trl_rows(examples: list[TokenizedSteer]) -> list[dict[str, list[int]]]:
    """TRL's tokenized columns on localdpo's ids: the prompt ends where the scored completion starts."""
    rows = []
    for example in examples:
        cut = int(example.chosen_mask.nonzero()[0])
        assert cut == int(
            example.rejected_mask.nonzero()[0]
        )  # span mode completion: same start on both sides
        chosen, rejected = example.chosen_ids.tolist(), example.rejected_ids.tolist()
        rows.append({"prompt_ids": chosen[:cut], "chosen_ids": chosen[cut:], "rejected_ids": rejected[cut:]})
    return rows


def test_standard_dpo_first_step_equals_trl_dpo_trainer(smol_tokenizer, tmp_path):
    """Span mode `completion` + localized_dpo_loss through the fast path = TRL 1.16's DPOTrainer, same ids."""
    pytest.importorskip("datasets")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from localdpo.losses import localized_dpo_loss

    policy, _ = tiny_model(seed=0, tokenizer=smol_tokenizer)
    reference, _ = tiny_model(seed=1, tokenizer=smol_tokenizer)
    trl_policy = copy.deepcopy(policy)
    args = DPOConfig(
        output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to=[], save_strategy="no", max_length=None,
        activation_checkpointing=True,  # TRL's default, under the name transformers 5.24 reads without a notice
        per_device_train_batch_size=3, beta=0.1, seed=0,
    )  # fmt: skip
    text = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])  # only to build the trainer
    trainer = DPOTrainer(
        trl_policy,
        ref_model=copy.deepcopy(reference),
        args=args,
        train_dataset=text,
        processing_class=smol_tokenizer,
    )
    examples = _examples(smol_tokenizer, SpanMode.COMPLETION)
    trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(_trl_rows(examples)))
    trl_loss.backward()

    pad = smol_tokenizer.pad_token_id
    batch = collate_pairs(examples, pad_token_id=pad)
    c_mask, r_mask = batch[CHOSEN_LOSS_MASK], batch[REJECTED_LOSS_MASK]
    with torch.no_grad():
        reference_paths = FastPaths.for_model(reference, packing=True, span_head=True)
        ref_chosen, ref_rejected = pair_logps(reference, batch, reference_paths, pad_token_id=pad)
    chosen, rejected = pair_logps(policy, batch, FastPaths.for_model(policy, packing=True, span_head=True), pad_token_id=pad)
    loss = localized_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, c_mask, r_mask, beta=0.1).loss
    loss.backward()
    torch.testing.assert_close(loss, trl_loss, atol=1e-5, rtol=0)
    trl_grads = dict(trainer.model.named_parameters())
    for name, parameter in policy.named_parameters():
        torch.testing.assert_close(parameter.grad, trl_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_side_with_an_empty_span_packs_without_error(tiny, smol_tokenizer):
    """Regression: a deletion steer (chosen span empty) made `pack_batch` call arange(1, 0) and crash."""
    steers = [
        Steer(prompt="List", prefix="a, b", rejected=", c, d", chosen=", c", id="deletion"),
        Steer(prompt="Sum", prefix="1 + 1 = ", rejected="3.", chosen="2.", id="edit"),
    ]
    examples = [tokenize_steer(s, smol_tokenizer) for s in steers]
    assert not examples[0].chosen_mask.any()
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    expected_chosen, expected_rejected = _unpacked(tiny, batch)
    chosen, rejected = packed_pair_logps(tiny, pack_batch(batch, pad_token_id=smol_tokenizer.pad_token_id))
    c_mask, r_mask = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c_mask], expected_chosen[c_mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r_mask], expected_rejected[r_mask], atol=1e-5, rtol=0)

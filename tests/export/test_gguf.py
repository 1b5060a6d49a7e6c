"""`localdpo.export.gguf`: a Llama model written as GGUF reads back (transformers' `gguf_file=` loader) with the
same logits, tokenizer, chat template and greedy answer."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from localdpo.export.gguf import (
    F32_TOLERANCE,
    ExportError,
    OutType,
    check_llama,
    gguf_vocab,
    llama_permute,
    read_back,
    write_gguf,
)
from localdpo.models.loading import tiny_model


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    return tiny_model(seed=0, tokenizer=smol_tokenizer)


def _fields(path) -> dict:
    """The GGUF file's scalar and string metadata, and `tensor name -> type name`."""
    import gguf

    reader = gguf.GGUFReader(path)
    values = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            value = field.parts[field.data[0]]
            values[name] = bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value[0]
    return values | {"tensors": {t.name: t.tensor_type.name for t in reader.tensors}}


def test_llama_permute_is_what_transformers_undoes():
    """One head of d = 4: rows [0, 1, 2, 3] -> [0, 2, 1, 3] (halves (0,1 | 2,3) -> adjacent pairs (0,2), (1,3))."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    assert llama_permute(torch.arange(4.0).reshape(4, 1), 1).flatten().tolist() == [0, 2, 1, 3]
    weight = torch.randn(3 * 8, 5)  # 3 heads of d = 8
    permuted = llama_permute(weight, 3).numpy()
    assert not np.array_equal(permuted, weight.numpy())
    undone = LlamaTensorProcessor()._reverse_permute_weights(permuted, 3, 3)
    assert np.array_equal(undone, weight.numpy())


# f16 is also the default of `tests/export/test_exporter.py`'s read-back of a run: here only in the slow suite
@pytest.mark.parametrize(
    "outtype", [OutType.F32, pytest.param(OutType.F16, marks=pytest.mark.slow), OutType.Q8_0]
)
def test_tiny_model_reads_back_with_the_same_logits_tokenizer_and_greedy_answer(tmp_path, tiny, outtype):
    model, tokenizer = tiny
    path = write_gguf(model, tokenizer, tmp_path / "model.gguf", outtype, name="tiny-test")
    trip = read_back(model, tokenizer, path, outtype)
    assert trip.problems() == []
    assert trip.tokens_match and trip.template_match and trip.greedy_match
    assert len(trip.model_answer) > 0
    # measured: f32 exactly 0; f16 ~0.00025 and q8_0 ~0.0064 of the largest |logit| (~1.3)
    limit = {OutType.F32: F32_TOLERANCE, OutType.F16: 1e-3, OutType.Q8_0: 2e-2}[outtype]
    assert trip.max_abs_logit_diff <= limit * (1 if outtype is OutType.F32 else trip.logit_scale)
    if outtype is not OutType.F32:
        assert trip.max_abs_logit_diff > 0  # the rounding is real: the check measures something

    fields = _fields(path)
    matrix = {OutType.F32: "F32", OutType.F16: "F16", OutType.Q8_0: "Q8_0"}[outtype]
    assert fields["tensors"]["blk.0.attn_q.weight"] == matrix
    assert fields["tensors"]["token_embd.weight"] == matrix
    assert fields["tensors"]["blk.1.ffn_norm.weight"] == "F32"
    assert (
        "output.weight" not in fields["tensors"]
    )  # tied head: the loader reads tie_word_embeddings from this
    assert len(fields["tensors"]) == 2 + 2 * 9
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny-test"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.freq_base"] == 100000.0


@pytest.mark.slow  # one more read-back: ~14 s of CPU, most of it gguf's reader parsing the 49152 tokens 3 times
def test_without_the_query_key_permutation_the_file_does_not_read_back(tmp_path, tiny, monkeypatch):
    """The check can fail: llama.cpp's row order is what transformers' loader undoes."""
    import localdpo.export.gguf

    model, tokenizer = tiny
    monkeypatch.setattr(localdpo.export.gguf, "llama_permute", lambda weight, n_head: weight)
    path = write_gguf(model, tokenizer, tmp_path / "model.gguf", OutType.F32)
    trip = read_back(model, tokenizer, path, OutType.F32)
    assert trip.max_abs_logit_diff > 1e-3
    assert any("max |logit difference|" in problem for problem in trip.problems())


def test_an_untied_head_is_written_as_output_weight(tmp_path, tiny):
    from transformers import LlamaForCausalLM

    model, tokenizer = tiny
    config = model.config.__class__.from_dict(model.config.to_dict() | {"tie_word_embeddings": False})
    torch.manual_seed(1)
    untied = LlamaForCausalLM(config).eval()
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)
    path = write_gguf(untied, tokenizer, tmp_path / "model.gguf", OutType.F32)
    assert _fields(path)["tensors"]["output.weight"] == "F32"
    trip = read_back(untied, tokenizer, path, OutType.F32)
    assert trip.max_abs_logit_diff <= F32_TOLERANCE and trip.greedy_match


def test_gguf_vocab_keeps_ids_types_and_pads_spare_embedding_rows(smol_tokenizer):
    import gguf

    vocab = gguf_vocab(smol_tokenizer, 49152 + 3)
    assert vocab.tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert vocab.token_types[:17] == [int(gguf.TokenType.CONTROL)] * 17
    assert vocab.token_types[17] == int(gguf.TokenType.NORMAL)
    assert vocab.tokens[-3:] == ["[PAD49152]", "[PAD49153]", "[PAD49154]"]
    assert vocab.token_types[-1] == int(gguf.TokenType.UNUSED)
    assert vocab.merges[0] == "Ġ t" and len(vocab.merges) == 48900
    assert vocab.special_ids == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}
    assert (vocab.add_bos, vocab.add_eos) == (False, False)
    assert smol_tokenizer.convert_ids_to_tokens(1000) == vocab.tokens[1000]


def test_other_architectures_and_features_are_one_line_errors():
    from transformers import Qwen2Config

    with pytest.raises(ExportError) as error:
        check_llama(Qwen2Config())
    assert str(error.value) == (
        "GGUF export writes Llama-architecture models (model_type 'llama': SmolLM2 and its family), not "
        "model_type 'qwen2'; export --format hf and convert that with llama.cpp's convert_hf_to_gguf.py"
    )
    llama3 = SimpleNamespace(
        model_type="llama", rope_parameters={"rope_type": "llama3"}, attention_bias=True, hidden_act="silu"
    )
    with pytest.raises(
        ExportError, match=r"this one has rope_type 'llama3', attention_bias; export --format hf"
    ):
        check_llama(llama3)


def test_another_vocabulary_is_refused(tiny):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    )
    with pytest.raises(ExportError, match=r"writes SmolLM2's tokenizer .* vocabulary or merges differ"):
        gguf_vocab(other, 3)

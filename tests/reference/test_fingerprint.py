import copy
import hashlib
import json

import pytest
import torch
import xxhash

from localdpo.models.loading import tiny_model
from localdpo.reference.fingerprint import (
    content_hash,
    model_fingerprint,
    model_label,
    reference_tensors,
    tensor_digest,
    tokenizer_fingerprint,
    weights_stamp,
)


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    model, _ = tiny_model(tokenizer=smol_tokenizer)
    return model


def test_content_hash_is_sha256_of_sorted_compact_json():
    expected = hashlib.sha256(b'{"a":[1,2],"b":{"c":null,"d":"x"}}').hexdigest()
    assert content_hash({"b": {"d": "x", "c": None}, "a": [1, 2]}) == expected


def test_tensor_digest_is_xxh3_128_of_the_raw_bytes():
    tensor = torch.tensor([1.0, -2.5, 3.0], dtype=torch.float32)
    raw = b"".join(torch.tensor([v]).numpy().tobytes() for v in (1.0, -2.5, 3.0))
    assert tensor_digest(tensor) == xxhash.xxh3_128(raw).hexdigest()
    # Non-contiguous views hash their logical (row-major) content.
    matrix = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    assert tensor_digest(matrix.t()) == tensor_digest(torch.tensor([[0, 3], [1, 4], [2, 5]]))
    # bfloat16 has no numpy dtype: hashed through a uint8 view.
    assert tensor_digest(torch.ones(4, dtype=torch.bfloat16)) == xxhash.xxh3_128(b"\x80\x3f" * 4).hexdigest()


def test_same_weights_same_fingerprint_and_name_or_path_ignored(smol_tokenizer, tiny):
    other, _ = tiny_model(tokenizer=smol_tokenizer)
    other.config._name_or_path = "/somewhere/else"
    assert model_fingerprint(other) == model_fingerprint(tiny)


@pytest.mark.parametrize("where", ["first", "last"])
def test_one_changed_element_changes_the_fingerprint(tiny, where):
    model = copy.deepcopy(tiny)
    before = model_fingerprint(model)
    weight = model.model.layers[1].mlp.down_proj.weight
    flat_index = 0 if where == "first" else weight.numel() - 1
    with torch.no_grad():
        value = weight.view(-1)[flat_index]
        weight.view(-1)[flat_index] = torch.nextafter(
            value, value + 1
        )  # one ulp: the smallest possible change
    assert model_fingerprint(model) != before


def test_dtype_and_config_change_the_fingerprint(smol_tokenizer, tiny):
    assert model_fingerprint(copy.deepcopy(tiny).to(torch.bfloat16)) != model_fingerprint(tiny)
    model = copy.deepcopy(tiny)
    model.config.rms_norm_eps = 1e-6
    assert model_fingerprint(model) != model_fingerprint(tiny)


def test_tied_weights_hashed_once_with_buffers(tiny):
    names = [name for name, _ in reference_tensors(tiny)]
    assert "param:model.embed_tokens.weight" in names
    assert not any("lm_head" in name for name in names)  # tied to embed_tokens
    assert "buffer:model.rotary_emb.inv_freq" in names
    assert len(names) == len(set(names))


def test_peft_fingerprint_is_the_base_fingerprint_and_ignores_the_adapter(tiny):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(tiny)
    expected = model_fingerprint(base)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    )
    assert model_fingerprint(peft_model) == expected
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.add_(1.0)
    assert model_fingerprint(peft_model) == expected
    with torch.no_grad():
        peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight[0, 0] += 1.0
    assert model_fingerprint(peft_model) != expected


def test_weights_stamp_sees_in_place_updates_and_replacements(tiny):
    model = copy.deepcopy(tiny)
    stamp = weights_stamp(model)
    assert weights_stamp(model) == stamp
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    after_step = weights_stamp(model)
    assert after_step != stamp
    model.load_state_dict(copy.deepcopy(tiny).state_dict())
    assert weights_stamp(model) != after_step


def test_tokenizer_fingerprint_vocab_and_chat_template(smol_tokenizer):
    base = tokenizer_fingerprint(smol_tokenizer)
    assert tokenizer_fingerprint(copy.deepcopy(smol_tokenizer)) == base
    template = copy.deepcopy(smol_tokenizer)
    template.chat_template = template.chat_template.replace("<|im_start|>", "<|im_start|> ", 1)
    assert tokenizer_fingerprint(template) != base
    vocab = copy.deepcopy(smol_tokenizer)
    vocab.add_tokens(["<steer>"])
    assert tokenizer_fingerprint(vocab) != base
    assert json.loads(json.dumps(base)) == base  # plain hex string


def test_a_model_label_names_the_weights_that_wrote_a_steer():
    model, _ = tiny_model(seed=3)
    label = model_label("tiny", model)
    assert label == f"tiny@{model_fingerprint(model)[:12]}" and len(label) == len("tiny@") + 12
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_label("tiny", model) != label  # trained weights write under another label

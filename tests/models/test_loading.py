import json

import pytest
import torch

from localdpo.models import loading as models
from localdpo.models.loading import (
    ModelCacheError,
    ModelNotFoundError,
    load_model,
    load_tokenizer,
    tiny_model,
    verify_manifest,
    write_manifest,
)


def test_tiny_model_is_deterministic_per_seed(smol_tokenizer):
    a, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    b, _ = tiny_model(seed=0, tokenizer=smol_tokenizer)
    c, _ = tiny_model(seed=1, tokenizer=smol_tokenizer)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    ids = torch.tensor([tokenizer.encode("1 + 1 = 2")])
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_tiny_model_has_smollm2_layout_and_does_not_touch_global_rng(smol_tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, tokenizer = tiny_model(seed=5, tokenizer=smol_tokenizer)
    assert torch.equal(torch.rand(3), expected)
    assert model.config.vocab_size == 49152
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    assert not model.training
    assert tokenizer.pad_token is not None
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def _write_files(directory):
    (directory / "a.bin").write_bytes(b"\x00\x01\x02" * 100)
    (directory / "config.json").write_text('{"x": 1}')
    return write_manifest(directory, {"test": True})


def test_manifest_round_trip(tmp_path):
    _write_files(tmp_path)
    manifest = verify_manifest(tmp_path)
    assert set(manifest["files"]) == {"a.bin", "config.json"}
    assert manifest["files"]["a.bin"]["bytes"] == 300
    assert manifest["source"] == {"test": True}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "a.bin").write_bytes(b"\x00\x01\x03" + b"\x00\x01\x02" * 99), "sha256"),
        (lambda d: (d / "a.bin").write_bytes(b"\x00"), "bytes"),
        (lambda d: (d / "a.bin").unlink(), "missing"),
        (lambda d: (d / "manifest.json").unlink(), "conversion did not finish"),
        (lambda d: (d / "manifest.json").write_text("{"), "unreadable"),
    ],
)
def test_corrupted_cache_is_detected(tmp_path, damage, message):
    _write_files(tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelCacheError, match=message):
        verify_manifest(tmp_path)


def test_corrupted_embedded_cache_is_rebuilt(tmp_path, monkeypatch):
    """A cache entry failing verification is deleted and converted again, never loaded."""
    calls = []

    def fake_convert(target):
        calls.append(target)
        target.mkdir(parents=True)
        _write_files(target)

    monkeypatch.setattr(models, "_write_converted", fake_convert)
    first = models.embedded_model_dir(tmp_path)
    assert len(calls) == 1
    assert models.embedded_model_dir(tmp_path) == first and len(calls) == 1  # verified, reused
    (first / "a.bin").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding"):
        assert models.embedded_model_dir(tmp_path) == first
    assert len(calls) == 2
    verify_manifest(first)


@pytest.mark.embedded
def test_embedded_conversion_equals_gguf_weights(tmp_path):
    model, tokenizer = models.load_model(cache_dir=tmp_path)
    model_dir = models.embedded_model_dir(tmp_path)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    reference = models.load_gguf_model()
    converted = model.state_dict()
    expected = reference.state_dict()
    assert set(converted) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(converted[name], tensor), name
    assert not model.training
    assert tokenizer.pad_token == "<|im_end|>"
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_load_model_merges_a_lora_adapter_dir(tmp_path, smol_tokenizer, library_warnings):
    """A LoRA run's final dir (adapter + tokenizer) loads as its base with the adapter merged: same logits."""
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base, _ = models.load_model(tmp_path / "base")
    with models.peft_wrapping():
        peft_model = get_peft_model(
            base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    peft_model.save_pretrained(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    ids = torch.tensor([tokenizer.encode("3, 6, 9")])
    with torch.no_grad():
        expected = peft_model(ids).logits
    merged, loaded_tokenizer = models.load_model(tmp_path / "final")
    assert type(merged).__name__ == "LlamaForCausalLM" and not merged.training
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)
        fresh_base, _ = models.load_model(tmp_path / "base")
        assert not torch.allclose(
            fresh_base(ids).logits, expected, atol=1e-4
        )  # the adapter does change outputs
    assert loaded_tokenizer.pad_token is not None
    assert library_warnings() == []  # peft's read of a deprecated transformers attribute is not shown


def test_tiny_name_loads_the_tiny_model_everywhere(smol_tokenizer):
    """`load_model("tiny")` is the trainer's `model.name=tiny` (tiny_model, seed 0), for every `--model`."""
    model, tokenizer = load_model("tiny")
    reference, _ = tiny_model(seed=0, tokenizer=smol_tokenizer)
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(value, expected), name
    assert tokenizer.pad_token is not None and not model.training
    assert load_tokenizer("tiny").get_vocab() == smol_tokenizer.get_vocab()


@pytest.mark.parametrize(
    "name, why",
    [
        ("someone/typo", "HF_HUB_OFFLINE is set"),  # conftest sets HF_HUB_OFFLINE=1
        ("./no/such/dir", "no such directory"),
    ],
)
def test_unknown_model_is_one_clear_error(name, why):
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelNotFoundError) as caught:
            load(name)
        message = str(caught.value)
        assert message.startswith(f"model {name!r} is neither a local directory nor a cached hub model")
        assert why in message and "'tiny'" in message and "\n" not in message


def test_a_directory_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(
        ModelNotFoundError, match=r"model directory '.*' cannot be loaded \(.*\); give a directory"
    ):
        load_model(tmp_path)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(
        ModelNotFoundError, match=r"is neither a local directory nor a cached hub model \(it is a file\)"
    ):
        load_model(tmp_path / "weights.txt")

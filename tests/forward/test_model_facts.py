"""`localdpo.forward.model_facts`: the one text-config lookup and the one prompt-learning adapter check, used
by both fast paths (packing and the span head), and the KV-cache argument of the installed transformers."""

from types import SimpleNamespace

import pytest

from localdpo.forward.model_facts import (
    has_prompt_learning_adapter,
    kv_cache_kwargs,
    returned_cache,
    text_config,
)
from localdpo.forward.packing import PackingUnsupportedError, check_packing_support
from localdpo.forward.span_head import SpanHeadUnsupportedError, check_span_head_support


class _Multimodal:
    text = SimpleNamespace(model_type="llama", _attn_implementation="sdpa")

    def get_text_config(self):
        return self.text


def _peft(**adapters):
    configs = {name: SimpleNamespace(is_prompt_learning=prompt) for name, prompt in adapters.items()}
    return SimpleNamespace(
        config=SimpleNamespace(model_type="llama", _attn_implementation="sdpa"),
        peft_config=configs,
        active_adapter=next(iter(adapters)),
    )


def test_text_config_is_the_nested_text_config_when_there_is_one():
    model = SimpleNamespace(config=_Multimodal())
    assert text_config(model) is _Multimodal.text
    plain = SimpleNamespace(config=SimpleNamespace(model_type="llama"))
    assert text_config(plain) is plain.config


def test_any_prompt_learning_adapter_is_refused_by_both_fast_paths():
    assert not has_prompt_learning_adapter(SimpleNamespace(config=None))
    assert not has_prompt_learning_adapter(_peft(default=False))
    inactive = _peft(default=False, prompt=True)  # active adapter: `default`
    for model in (_peft(default=True), inactive):
        assert has_prompt_learning_adapter(model)
        with pytest.raises(PackingUnsupportedError, match="prompt-learning"):
            check_packing_support(model)
        with pytest.raises(SpanHeadUnsupportedError, match="prompt-learning"):
            check_span_head_support(model)
    check_packing_support(_peft(default=False))  # a LoRA-style adapter packs


def test_kv_cache_argument_is_the_one_transformers_returns():
    """The name a model call takes its cache under is the field its output carries it in."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    (name,) = kv_cache_kwargs("the cache")
    assert name in ("cache", "past_key_values") and kv_cache_kwargs("the cache") == {name: "the cache"}
    assert name in CausalLMOutputWithPast.__dataclass_fields__
    assert returned_cache(SimpleNamespace(**{name: "returned"})) == "returned"

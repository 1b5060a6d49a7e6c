"""`localdpo.forward`: the one text-config lookup and the one prompt-learning adapter check, used by both
fast paths (packing and the span head)."""

from types import SimpleNamespace

import pytest

from localdpo.forward import has_prompt_learning_adapter, text_config
from localdpo.packing import PackingUnsupportedError, check_packing_support
from localdpo.span_head import SpanHeadUnsupportedError, _check_not_prompt_learning


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
            _check_not_prompt_learning(model)
    check_packing_support(_peft(default=False))  # a LoRA-style adapter packs

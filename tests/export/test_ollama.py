"""`localdpo.export.ollama`: a ChatML chat template becomes Ollama's Go template (plus SYSTEM), recognised by what it
renders; any other template gives a Modelfile without TEMPLATE and a note."""

import copy

import pytest

from localdpo.export.ollama import CHATML_TEMPLATE, NotChatML, chatml, chatml_default_system, modelfile

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2 = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


def _with_template(tokenizer, template):
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def test_chatml_is_what_the_go_template_renders():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert (
        chatml(messages)
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert CHATML_TEMPLATE.count("<|im_start|>") == 2 and "{{ .Content }}<|im_end|>" in CHATML_TEMPLATE


def test_smollm2_template_is_chatml_with_its_default_system_prompt(smol_tokenizer):
    assert chatml_default_system(smol_tokenizer) == SMOLLM_SYSTEM
    assert chatml_default_system(_with_template(smol_tokenizer, PLAIN_CHATML)) is None


def test_the_smollm2_modelfile(smol_tokenizer):
    written = modelfile(smol_tokenizer)
    assert written.note is None
    assert written.text == (
        "# Ollama: ollama create NAME -f Modelfile, then ollama run NAME\n"
        "FROM ./model.gguf\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
        '<|im_start|>assistant\n"""\n'
        f'SYSTEM """{SMOLLM_SYSTEM}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
    )


def test_another_template_gives_a_modelfile_without_template_and_says_so(smol_tokenizer):
    other = _with_template(smol_tokenizer, LLAMA2)
    with pytest.raises(NotChatML, match=r"renders '\[INST\] First question\? \[/INST\]'"):
        chatml_default_system(other)
    written = modelfile(other)
    assert "TEMPLATE" not in written.text and "SYSTEM" not in written.text
    assert written.text.endswith('FROM ./model.gguf\nPARAMETER stop "<|im_end|>"\n')
    assert written.note.startswith("no TEMPLATE written: the chat template is not ChatML")


@pytest.mark.parametrize("change", ["upper", "trim"])
def test_a_template_that_changes_the_content_is_not_chatml(smol_tokenizer, change):
    """ChatML markers around changed text would pass a check of the markers alone."""
    changes = PLAIN_CHATML.replace("message['content']", f"(message['content'] | {change})")
    with pytest.raises(NotChatML, match=r"not ChatML"):
        chatml_default_system(_with_template(smol_tokenizer, changes))

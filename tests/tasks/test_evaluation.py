import json

import pytest

from localdpo.generation import Generation
from localdpo.models.loading import tiny_model
from localdpo.tasks import get_task
from localdpo.tasks.evaluation import METRIC_KEYS, evaluate_task, evaluate_tasks


def _scripted(outputs):
    def fake(model, tokenizer, texts, config, **kwargs):
        assert len(texts) == len(outputs)
        return [Generation(text, complete, 10) for text, complete in outputs]

    return fake


def test_metrics_by_hand(monkeypatch):
    """Four answers to multiples(k=7, n=4): right, wrong at item 2, wrong at item 0, no list.

    accuracy 1/4; format kept 3/4; first item right in answers 1 and 2 -> 2/4;
    first mistakes at items 2 and 0 -> mean 1.0.
    """
    task = get_task("multiples")
    prompt = task.build(7, 4)
    outputs = [
        ("The first 4 multiples of 7 are 7, 14, 21, and 28.", True),
        ("1. 7\n2. 14\n3. 22\n4. 28", True),
        ("8, 14, 21, 28", True),
        ("Multiples are fun.", True),
    ]
    monkeypatch.setattr("localdpo.tasks.evaluation.generate_answers", _scripted(outputs))
    result = evaluate_task(None, None, task, prompts=[prompt] * 4, records=True)
    assert result["n"] == 4
    assert result["accuracy"] == 0.25
    assert result["format_kept"] == 0.75
    assert result["first_item_accuracy"] == 0.5
    assert result["mean_first_mistake_position"] == 1.0
    assert [r["verdict"] for r in result["records"]] == ["correct", "wrong", "wrong", "uncheckable"]
    assert result["records"][1]["mistake"] == {"item": 2, "kind": "wrong", "found": "22", "expected": "21"}
    json.dumps(result)  # the CLI writes it as JSON


def test_no_wrong_answer_gives_no_mistake_position(monkeypatch):
    task = get_task("addition")
    prompt = task.build(2, "+", 2)
    monkeypatch.setattr("localdpo.tasks.evaluation.generate_answers", _scripted([("2 + 2 = 4", True)]))
    result = evaluate_task(None, None, task, prompts=[prompt])
    assert result["accuracy"] == 1.0 and result["mean_first_mistake_position"] is None
    assert "records" not in result


def test_evaluate_with_tiny_model_uses_heldout_prompts(smol_tokenizer):
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    results = evaluate_tasks(
        model, tokenizer, ["sort_words", "addition"], n=3, seed=1, max_new_tokens=6, records=True
    )
    assert list(results) == ["sort_words", "addition"]
    for name, result in results.items():
        assert set(METRIC_KEYS) <= set(result)
        assert result["n"] == 3 and result["format_kept"] == 0.0  # random weights keep no format
        ids = [r["prompt_id"] for r in result["records"]]
        assert ids == [p.id for p in get_task(name).prompts(3, seed=1, split="heldout")]


def test_empty_prompt_list_is_an_error():
    with pytest.raises(ValueError, match="no prompts"):
        evaluate_task(None, None, "addition", prompts=[])

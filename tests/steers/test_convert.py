"""Round trips: each source format -> `convert_steers` -> `load_steers`, with the exact fields checked."""

import json

import pytest

from localdpo.steers.convert import ConvertError, convert_steers, parse_mapping
from localdpo.steers.steer import load_steers


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def convert_and_load(source, tmp_path, **kwargs):
    result = convert_steers(source, tmp_path / "steers.jsonl", **kwargs)
    assert result.written == tmp_path / "steers.jsonl", result.report.summary()
    loaded = load_steers(result.written)
    assert loaded == result.steers
    return loaded


def fields(steer):
    return (
        steer.prompt,
        steer.prefix,
        steer.chosen,
        steer.rejected,
        steer.chosen_complete,
        steer.rejected_complete,
    )


def test_trl_explicit_prompt_plain_and_conversational(tmp_path):
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    source = write_jsonl(
        tmp_path / "trl.jsonl",
        [
            {
                "prompt": "What is 2 + 2?",
                "chosen": "The answer is 4.",
                "rejected": "The answer is 5.",
                "score": 7,
            },
            {
                "prompt": user,
                "chosen": [{"role": "assistant", "content": "It is 4."}],
                "rejected": [{"role": "assistant", "content": "It is 22."}],
            },
        ],
    )
    first, second = convert_and_load(source, tmp_path)
    assert fields(first) == ("What is 2 + 2?", "The answer is ", "4.", "5.", True, True)
    assert first.id == "trl:1" and first.meta == {"score": 7, "source_format": "trl"}
    assert fields(second) == (user, "It is ", "4.", "22.", True, True)


def test_trl_implicit_prompt_plain_and_conversational(tmp_path):
    user = {"role": "user", "content": "Name a prime."}
    source = write_jsonl(
        tmp_path / "implicit.jsonl",
        [
            {"chosen": "Q: 2 + 2? A: 4", "rejected": "Q: 2 + 2? A: 5"},
            {
                "chosen": [user, {"role": "assistant", "content": "7"}],
                "rejected": [user, {"role": "assistant", "content": "9"}],
            },
        ],
    )
    plain, chat = convert_and_load(source, tmp_path, row_format="trl")
    # TRL's extract_prompt gives the trailing space back to the answers: prompt "Q: 2 + 2? A:", answers " 4" / " 5"
    assert fields(plain) == ("Q: 2 + 2? A:", " ", "4", "5", True, True)
    assert fields(chat) == ([user], "", "7", "9", True, True)


def test_step_dpo_steps_are_the_prefix(tmp_path):
    row = {
        "dataset": "gsm8k",
        "prompt": "Tom has 3 apples and buys 4 more. How many?",
        "initial_reason_steps": "Step 1: Tom starts with 3 apples.\nStep 2: ",
        "chosen": "He buys 4 more, so 3 + 4 = 7.",
        "rejected": "He buys 4 more, so 3 + 4 = 8.",
        "full_chosen": "...",
        "answer": "7",
    }
    (steer,) = convert_and_load(write_jsonl(tmp_path / "step.jsonl", [row]), tmp_path)
    assert fields(steer) == (
        row["prompt"],
        row["initial_reason_steps"],
        row["chosen"],
        row["rejected"],
        False,
        False,
    )
    assert steer.meta == {
        "dataset": "gsm8k",
        "full_chosen": "...",
        "answer": "7",
        "source_format": "step-dpo",
    }


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json"])
def test_datasets_sources_with_a_column_mapping(tmp_path, suffix):
    from datasets import Dataset

    rows = [
        {"qid": 11, "question": "Capital of France?", "good": "Paris", "bad": "Lyon"},
        {"qid": 12, "question": "Capital of Italy?", "good": "Rome", "bad": "Milan"},
    ]
    dataset = Dataset.from_list(rows)
    path = tmp_path / f"pairs{suffix}"
    {".parquet": dataset.to_parquet, ".csv": dataset.to_csv, ".json": dataset.to_json}[suffix](str(path))
    mapping = parse_mapping("prompt=question,chosen=good,rejected=bad,id=qid")
    loaded = convert_and_load(path, tmp_path, mapping=mapping)
    assert [fields(s) for s in loaded] == [
        ("Capital of France?", "", "Paris", "Lyon", True, True),
        ("Capital of Italy?", "", "Rome", "Milan", True, True),
    ]
    assert [s.id for s in loaded] == ["11", "12"]


def test_every_bad_row_is_reported_with_its_line_and_nothing_written(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    source = write_jsonl(
        tmp_path / "mixed.jsonl",
        [good, "{oops", {"prompt": "p", "chosen": "same", "rejected": "same"}, {"chosen": "a"}, good],
    )
    out = tmp_path / "steers.jsonl"
    result = convert_steers(source, out)
    assert result.written is None and not out.exists()
    assert [line for line, _ in result.report.skipped] == [2, 3, 4]
    assert "mixed.jsonl:2: invalid JSON" in result.report.skipped[0][1]
    assert "mixed.jsonl:4: field 'prompt': is missing" in result.report.skipped[2][1]
    kept = convert_steers(source, out, skip_invalid=True)
    assert [s.id for s in kept.steers] == ["mixed:1", "mixed:5"] and len(load_steers(out)) == 2


def test_mapping_errors(tmp_path):
    with pytest.raises(ConvertError, match="expected FIELD=COLUMN"):
        parse_mapping("prompt")
    with pytest.raises(ConvertError, match="unknown field 'answer'"):
        parse_mapping("answer=x")
    source = write_jsonl(tmp_path / "q.jsonl", [{"q": "p", "chosen": "a", "rejected": "b"}])
    result = convert_steers(source, tmp_path / "o.jsonl", mapping=parse_mapping("prompt=question"))
    assert result.report.skipped == [
        (1, f"{source}:1: field 'prompt': source column 'question' (mapped to prompt) is missing")
    ]


def test_unknown_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="source file not found"):
        convert_steers(tmp_path / "nope.parquet", tmp_path / "o.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConvertError, match="unknown file type '.txt'"):
        convert_steers(tmp_path / "x.txt", tmp_path / "o.jsonl")

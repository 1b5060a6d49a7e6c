import json

import pytest

from localdpo import Steer, SteerFileError, load_steers, save_steers
from localdpo.steers import SteerValidationError, steer_from_row

EXAMPLE = {
    "prompt": "Give four examples",
    "prefix": "1. High-quality example 1\n2. ",
    "rejected": "Low-quality example 2\n3. Low-quality example 3",
    "chosen": "High-quality example 2",
}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_every_field(tmp_path):
    steers = [
        Steer(**EXAMPLE, id="a", meta={"task": "demo", "full_output": "..."}),
        Steer(
            prompt=[{"role": "user", "content": "Héllo ✓"}],
            prefix="",
            rejected="x",
            chosen="y",
            chosen_complete=True,
            id="b",
        ),
    ]
    path = save_steers(steers, tmp_path / "out" / "steers.jsonl")
    assert load_steers(path) == steers
    assert not list(path.parent.glob(".*tmp")), "temporary file left behind"


def test_missing_id_gets_file_and_line(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(EXAMPLE), "", json.dumps(EXAMPLE)])
    assert [s.id for s in load_steers(path)] == ["s:1", "s:3"]


def test_trl_row_takes_longest_common_prefix_as_prefix():
    steer = steer_from_row({"prompt": "Count", "chosen": "1, 2, 3", "rejected": "1, 2, 4, 5"})
    assert (steer.prefix, steer.chosen, steer.rejected) == ("1, 2, ", "3", "4, 5")
    assert steer.chosen_complete and steer.rejected_complete
    assert steer.meta["source_format"] == "trl_preference"


def test_trl_conversational_row():
    row = {
        "prompt": [{"role": "user", "content": "Count"}],
        "chosen": [{"role": "assistant", "content": "1 2 3"}],
        "rejected": [{"role": "assistant", "content": "1 2 4"}],
    }
    steer = steer_from_row(row)
    assert (steer.prefix, steer.chosen, steer.rejected) == ("1 2 ", "3", "4")


@pytest.mark.parametrize(
    ("line", "field", "fragment"),
    [
        ('{"prompt": "p", "prefix": "", "rejected": "r"}', "chosen", "is missing"),
        (
            '{"prompt": "p", "prefix": 3, "rejected": "r", "chosen": "c"}',
            "prefix",
            "expected a string, got int",
        ),
        (
            '{"prompt": 5, "prefix": "", "rejected": "r", "chosen": "c"}',
            "prompt",
            "expected a string or a list",
        ),
        (
            '{"prompt": "p", "prefix": "", "rejected": "same", "chosen": "same"}',
            "chosen",
            "identical to rejected",
        ),
        ('{"prompt": "p", "prefix": "", "rejected": "r", "chosen": ""}', "chosen", "is empty"),
        (
            '{"prompt": "p", "prefix": "", "rejected": "r", "chosen": "c", "chosen_complete": "yes"}',
            "chosen_complete",
            "bool",
        ),
        (
            '{"prompt": [{"role": "user"}], "prefix": "", "rejected": "r", "chosen": "c"}',
            "prompt",
            "message 0 needs a string 'content'",
        ),
        (
            '{"prompt": "p", "prefix": "", "rejected": "r", "chosen": "c", "colour": 1}',
            "colour",
            "unknown field",
        ),
        ('["not", "an", "object"]', "<row>", "expected a JSON object"),
    ],
)
def test_bad_row_error_names_file_line_and_field(tmp_path, line, field, fragment):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(EXAMPLE), line])
    with pytest.raises(SteerFileError) as info:
        load_steers(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: field '{field}'")
    assert fragment in message
    assert (info.value.line, info.value.field) == (2, field)


def test_invalid_json_names_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(EXAMPLE), json.dumps(EXAMPLE), '{"prompt": "p",'])
    with pytest.raises(SteerFileError, match=r"bad\.jsonl:3: invalid JSON"):
        load_steers(path)


def test_duplicate_id_is_an_error(tmp_path):
    row = dict(EXAMPLE, id="x")
    path = write_lines(tmp_path / "dup.jsonl", [json.dumps(row), json.dumps(row)])
    with pytest.raises(
        SteerFileError, match=r"dup\.jsonl:2: field 'id': duplicate id 'x' \(first on line 1\)"
    ):
        load_steers(path)


def test_skip_invalid_reports_how_many_and_which(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            json.dumps(EXAMPLE),
            "{oops",
            json.dumps(dict(EXAMPLE, chosen=EXAMPLE["rejected"])),
            json.dumps(EXAMPLE),
        ],
    )
    with pytest.warns(UserWarning, match="skipped 2 bad rows"):
        steers, report = load_steers(path, skip_invalid=True, return_report=True)
    assert [s.id for s in steers] == ["mixed:1", "mixed:4"]
    assert report.loaded == 2
    assert [line for line, _ in report.skipped] == [2, 3]
    assert "identical to rejected" in report.skipped[1][1]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="steer file not found"):
        load_steers(tmp_path / "nope.jsonl")


def test_steer_validates_on_construction():
    with pytest.raises(SteerValidationError, match="field 'prompt'"):
        Steer(prompt=[{"role": "user", "content": "hi"}, "bad"], prefix="", rejected="a", chosen="b")


def test_invalid_utf8_names_file_line_and_byte_offset(tmp_path):
    first = (json.dumps(EXAMPLE) + "\n").encode()
    second = json.dumps(dict(EXAMPLE, chosen="High")).encode()
    bad = second.replace(b"High", b"Hi\xffh")  # one stray byte
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(first + bad + b"\n")
    offset = len(first) + bad.index(b"\xff")
    with pytest.raises(
        SteerFileError, match=rf"bytes\.jsonl:2: invalid UTF-8: byte 0xff at byte offset {offset} "
    ):
        load_steers(path)


def test_invalid_utf8_row_is_skipped_like_any_bad_row(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(
        (json.dumps(EXAMPLE) + "\n").encode()
        + b'{"prompt": "\xc3"}\n'
        + (json.dumps(dict(EXAMPLE, id="z")) + "\n").encode()
    )
    with pytest.warns(UserWarning, match="skipped 1 bad rows"):
        steers, report = load_steers(path, skip_invalid=True, return_report=True)
    assert [s.id for s in steers] == ["bytes:1", "z"]
    assert report.skipped[0][0] == 2 and "invalid UTF-8: byte 0xc3" in report.skipped[0][1]

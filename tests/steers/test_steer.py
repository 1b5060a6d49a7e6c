import json

import pytest

from localdpo import Steer, SteerFileError, load_steers, save_steers
from localdpo.steers.steer import SteerValidationError, steer_from_row

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
            rejected_by="smollm2-135m-instruct@0123456789ab",
            round=2,
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
        (
            '{"prompt": "p", "prefix": "", "rejected": "r", "chosen": "c", "round": 0}',
            "round",
            "round number >= 1, got 0",
        ),
        (
            '{"prompt": "p", "prefix": "", "rejected": "r", "chosen": "c", "round": true}',
            "round",
            "round number >= 1, got True",
        ),
        (
            '{"prompt": "p", "prefix": "", "rejected": "r", "chosen": "c", "rejected_by": ""}',
            "rejected_by",
            "non-empty string",
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


def steer_row(i: int) -> dict:
    return {"prompt": f"p{i}", "prefix": "", "rejected": "x", "chosen": f"y{i}", "id": f"s{i}"}


def test_append_keeps_the_old_bytes_and_adds_the_new_rows(tmp_path):
    """A TRL row, a blank line, an id-less row and no final newline: all kept byte for byte."""
    from localdpo.steers.steer import write_steers

    path = tmp_path / "keep.jsonl"
    old = b'{"prompt": "p", "chosen": "a b", "rejected": "a c"}\r\n\n' + json.dumps(steer_row(0)).encode()
    path.write_bytes(old)
    written = write_steers([Steer(**steer_row(1)), Steer(**steer_row(2))], path, mode="append")
    assert written == path
    assert path.read_bytes().startswith(old + b"\n")
    assert [s.id for s in load_steers(path)] == ["keep:1", "s0", "s1", "s2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.jsonl.lock", "keep.jsonl"]


def test_append_to_a_missing_file_creates_it(tmp_path):
    from localdpo.steers.steer import write_steers

    write_steers([Steer(**steer_row(1))], tmp_path / "new.jsonl", mode="append")
    assert [s.id for s in load_steers(tmp_path / "new.jsonl")] == ["s1"]


@pytest.mark.parametrize(
    "new_ids, message",
    [
        (["s9", "s0"], "the file has the id 's0'"),
        (["s9", "s9"], "two of the new steers have the id 's9'"),
        # line 1 holds the explicit id 'keep:3'; an id-less steer appended at line 3 gets that default id
        ([None], "the file has the id 'keep:3'"),
    ],
)
def test_append_refuses_a_duplicate_id_and_writes_nothing(tmp_path, new_ids, message):
    from localdpo.steers.steer import write_steers
    from localdpo.storage.writeguard import OutputRefusedError

    path = tmp_path / "keep.jsonl"
    save_steers([Steer(**dict(steer_row(1), id="keep:3")), Steer(**steer_row(0))], path)
    before = path.read_bytes()
    new = [Steer(**dict(steer_row(5 + i), id=steer_id)) for i, steer_id in enumerate(new_ids)]
    with pytest.raises(OutputRefusedError) as refused:
        write_steers(new, path, mode="append")
    assert str(refused.value) == f"cannot append to {path}: {message}; nothing was written"
    assert path.read_bytes() == before


def test_append_to_an_invalid_file_is_refused_and_the_file_kept(tmp_path):
    from localdpo.steers.steer import check_steer_output, write_steers
    from localdpo.storage.writeguard import OutputRefusedError

    path = write_lines(tmp_path / "keep.jsonl", [json.dumps(steer_row(0)), "{oops"])
    before = path.read_bytes()
    for refuse in (
        lambda: check_steer_output(path, "append"),  # before a command's slow work
        lambda: write_steers([Steer(**steer_row(1))], path, mode="append"),
    ):
        with pytest.raises(OutputRefusedError) as refused:
            refuse()
        assert str(refused.value).startswith(f"cannot append to {path}: {path}:2: invalid JSON")
        assert str(refused.value).endswith("; fix it or choose another path")
    assert path.read_bytes() == before


def test_an_append_killed_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    """Old bytes + new rows are written to a temporary file and renamed: a crash before the rename (here,
    the fsync raising) leaves the file as it was and no temporary file."""
    import localdpo.storage.fileio
    from localdpo.steers.steer import write_steers

    path = save_steers([Steer(**steer_row(0))], tmp_path / "keep.jsonl")
    before = path.read_bytes()

    def crash(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(localdpo.storage.fileio.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_steers([Steer(**steer_row(i)) for i in range(1, 50)], path, mode="append")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep.jsonl.lock", "keep.jsonl"]


def test_write_steers_refuses_an_existing_file_by_default(tmp_path):
    from localdpo.steers.steer import write_steers
    from localdpo.storage.writeguard import OutputRefusedError

    path = save_steers([Steer(**steer_row(0))], tmp_path / "keep.jsonl")
    before = path.read_bytes()
    with pytest.raises(OutputRefusedError, match="exists; pass --overwrite"):
        write_steers([Steer(**steer_row(1))], path, mode="create")
    assert path.read_bytes() == before
    write_steers([Steer(**steer_row(1))], path, mode="overwrite")
    assert [s.id for s in load_steers(path)] == ["s1"]

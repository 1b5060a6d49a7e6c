"""Issue 28: no command replaces a file by accident. Each writer (`make-steers --out`, `convert OUT`,
`show --html`, `eval --out`) refuses an existing path, an input of the same command and a file the studio
holds, with one line and exit status 2, and leaves the file's bytes as they were."""

import json
import os
from types import SimpleNamespace

import pytest

from localdpo.steers.steer import Steer, load_steers
from localdpo.studio.store import SteerStore

# A person's hand-made steers: an id-less row, a non-ASCII one, no final newline.
PERSON = (
    '{"prompt": "Give four examples", "prefix": "1. High\\n2. ", "rejected": "Low", "chosen": "High"}\n'
    + json.dumps({"prompt": "Héllo", "prefix": "", "rejected": "x ✗", "chosen": "y ✓", "id": "hand-1"})
).encode("utf-8")


@pytest.fixture
def person(tmp_path):
    """`keep.jsonl`, holding a person's steers."""
    path = tmp_path / "keep.jsonl"
    path.write_bytes(PERSON)
    return path


@pytest.fixture
def fake_steermaking(monkeypatch):
    """`make-steers` without a model: `--n` steers per task, ids `<task>:<seed>:<i>`."""
    import localdpo.models.loading
    import localdpo.tasks.steermaking

    def make_steers(model, tokenizer, task, *, n, seed, **kwargs):
        steers = [
            Steer(
                prompt=f"{i} + {i}?",
                prefix="",
                rejected="wrong",
                chosen=str(2 * i),
                id=f"{task.name}:{seed}:{i}",
            )
            for i in range(n)
        ]
        return steers, SimpleNamespace(row=lambda: f"{task.name}: {n} steers", rejected_steers=[])

    monkeypatch.setattr(localdpo.models.loading, "load_model", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(localdpo.tasks.steermaking, "make_steers", make_steers)


def exists_line(command: str, path, *, steers: bool = True) -> str:
    choices = (
        "--overwrite to replace it, --append to add the new steers to it"
        if steers
        else "--overwrite to replace it"
    )
    return f"localdpo {command}: {path} exists; pass {choices}, or choose another path"


def studio_line(command: str, path) -> str:
    return (
        f"localdpo {command}: {path} is held by a running `localdpo studio` "
        "(it saves a person's steers there); "
        "stop the studio or choose another path"
    )


# make-steers


def test_make_steers_refuses_an_existing_file_before_loading_the_model(one_line_error, person):
    line = one_line_error(
        "make-steers", "--task", "addition", "--n", "2", "--out", person, "--model", "someone/typo"
    )
    assert line == exists_line("make-steers", person)
    assert person.read_bytes() == PERSON


def test_make_steers_overwrite_replaces_and_append_adds(cli, one_line_error, person, fake_steermaking):
    status, out, _ = cli("make-steers", "--task", "addition", "--n", "2", "--out", person, "--append")
    assert status == 0 and out.endswith(f"appended 2 steers to {person}\n")
    assert person.read_bytes().startswith(PERSON + b"\n")
    assert sorted(s.id for s in load_steers(person)) == ["addition:0:0", "addition:0:1", "hand-1", "keep:1"]
    appended = person.read_bytes()
    first_new = load_steers(person)[2].id  # the same seed shuffles the same way: this id comes first again
    line = one_line_error("make-steers", "--task", "addition", "--n", "2", "--out", person, "--append")
    assert line == (
        f"localdpo make-steers: cannot append to {person}: the file has the id {first_new!r}; "
        "nothing was written"
    )
    assert person.read_bytes() == appended
    status, out, _ = cli(
        "make-steers", "--task", "addition", "--n", "1", "--seed", "3", "--out", person, "--overwrite"
    )
    assert status == 0 and out.endswith(f"wrote 1 steers to {person}\n")
    assert [s.id for s in load_steers(person)] == ["addition:3:0"]


def test_make_steers_overwrite_and_append_exclude_each_other(cli, person, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli("make-steers", "--task", "addition", "--out", person, "--overwrite", "--append")
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.endswith("argument --append: not allowed with argument --overwrite\n")
    assert person.read_bytes() == PERSON


@pytest.mark.parametrize("flag", [None, "--overwrite", "--append"])
def test_make_steers_refuses_the_studios_file_in_every_mode(one_line_error, tmp_path, fake_steermaking, flag):
    steers = tmp_path / "steers.jsonl"
    steers.write_bytes(PERSON)
    store = SteerStore(steers)
    argv = ["make-steers", "--task", "addition", "--n", "2", "--out", steers] + ([flag] if flag else [])
    assert one_line_error(*argv) == studio_line("make-steers", steers)
    assert steers.read_bytes() == PERSON
    store.close()


# convert


@pytest.fixture
def trl(tmp_path):
    source = tmp_path / "trl.jsonl"
    source.write_text(json.dumps({"prompt": "2 + 2?", "chosen": "It is 4.", "rejected": "It is 5."}) + "\n")
    return source


def test_convert_refuses_an_existing_file(one_line_error, person, trl):
    assert one_line_error("convert", trl, person) == exists_line("convert", person)
    assert person.read_bytes() == PERSON


def test_convert_overwrite_replaces_and_append_adds(cli, one_line_error, person, trl):
    status, out, _ = cli("convert", trl, person, "--append")
    assert status == 0 and out == f"appended 1 steers (1 trl) to {person}; skipped 0 bad rows\n"
    assert person.read_bytes().startswith(PERSON + b"\n")
    assert [s.id for s in load_steers(person)] == ["keep:1", "hand-1", "trl:1"]
    appended = person.read_bytes()
    line = one_line_error("convert", trl, person, "--append")
    assert (
        line
        == f"localdpo convert: cannot append to {person}: the file has the id 'trl:1'; nothing was written"
    )
    assert person.read_bytes() == appended
    status, _, _ = cli("convert", trl, person, "--overwrite")
    assert status == 0 and [s.id for s in load_steers(person)] == ["trl:1"]


@pytest.mark.parametrize("spelling", ["./keep.jsonl", "keep.jsonl", "link.jsonl"])
@pytest.mark.parametrize("flag", [None, "--overwrite", "--append"])
def test_convert_refuses_its_own_input_even_with_overwrite(
    one_line_error, person, monkeypatch, spelling, flag
):
    monkeypatch.chdir(person.parent)
    os.symlink(person, "link.jsonl")
    line = one_line_error("convert", person, spelling, *([flag] if flag else []))
    assert line == (
        f"localdpo convert: {spelling} is also this command's input ({person}); write to another path "
        "(--overwrite and --append do not apply)"
    )
    assert person.read_bytes() == PERSON


def test_convert_refuses_the_studios_file(one_line_error, person, trl):
    store = SteerStore(person)
    assert one_line_error("convert", trl, person, "--append") == studio_line("convert", person)
    assert person.read_bytes() == PERSON
    store.close()


# show --html


@pytest.mark.parametrize("flag", [None, "--overwrite"])
def test_show_refuses_to_write_the_page_over_the_steers_it_shows(one_line_error, person, flag):
    """The issue's `localdpo show keep2.jsonl --html keep2.jsonl`."""
    line = one_line_error("show", person, "--model", "tiny", "--html", person, *([flag] if flag else []))
    assert line == (
        f"localdpo show: {person} is also this command's input ({person}); write to another path "
        "(--overwrite does not apply)"
    )
    assert person.read_bytes() == PERSON


def test_show_refuses_an_existing_page_unless_overwrite(cli, one_line_error, person, tmp_path):
    page = tmp_path / "page.html"
    page.write_bytes(b"<p>an older page</p>")
    line = one_line_error("show", person, "--model", "tiny", "--html", page)
    assert line == exists_line("show", page, steers=False)
    assert page.read_bytes() == b"<p>an older page</p>"
    status, out, _ = cli("show", person, "--model", "tiny", "--html", page, "--overwrite")
    assert status == 0 and out.rstrip().endswith(f"wrote {page}")
    assert "<mark" in page.read_text()


def test_show_refuses_to_write_the_page_over_the_studios_file(one_line_error, person, tmp_path):
    studio_file = tmp_path / "steers.jsonl"
    studio_file.write_bytes(PERSON)
    store = SteerStore(studio_file)
    line = one_line_error("show", person, "--model", "tiny", "--html", studio_file, "--overwrite")
    assert line == studio_line("show", studio_file)
    assert studio_file.read_bytes() == PERSON
    store.close()


# eval --out


def test_eval_refuses_an_existing_report_before_loading_the_model(cli, one_line_error, tmp_path):
    report = tmp_path / "eval.json"
    report.write_bytes(b'{"an": "older report"}')
    line = one_line_error("eval", "--task", "addition", "--model", "someone/typo", "--out", report)
    assert line == exists_line("eval", report, steers=False)
    assert report.read_bytes() == b'{"an": "older report"}'
    argv = [
        "eval",
        "--task",
        "addition",
        "--model",
        "tiny",
        "--n",
        "1",
        "--max-new-tokens",
        "1",
        "--out",
        report,
    ]
    status, _, _ = cli(*argv, "--overwrite")
    assert status == 0 and json.loads(report.read_text())["results"]["addition"]["n"] == 1

"""`claimed_output`: which paths a command may write, and the studio's hold seen from another process."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from localdpo.storage.writeguard import (
    OutputRefusedError,
    WriteMode,
    check_output,
    claimed_output,
    hold_for_studio,
    studio_hold_path,
    write_lock_path,
)
from localdpo.studio.store import SteerStore

REPO = Path(__file__).resolve().parents[2]


def test_an_existing_file_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "page.html"
    assert check_output(out) == out  # missing: fine, in every mode
    out.write_bytes(b"old")
    with pytest.raises(OutputRefusedError) as refused:
        check_output(out)
    assert str(refused.value) == f"{out} exists; pass --overwrite to replace it, or choose another path"
    with pytest.raises(
        OutputRefusedError, match=r"--overwrite to replace it, --append to add the new steers"
    ):
        check_output(out, steer_file=True)
    assert check_output(out, WriteMode.OVERWRITE) == out
    assert check_output(out, WriteMode.APPEND, steer_file=True) == out
    with pytest.raises(ValueError, match="for steer files only"):
        check_output(out, WriteMode.APPEND)
    assert out.read_bytes() == b"old"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(OutputRefusedError, match=r"is a directory; give a file path"):
        check_output(tmp_path, WriteMode.OVERWRITE)


def test_a_directory_output_is_refused_when_it_exists_unless_overwrite_and_a_file_always(tmp_path):
    """`localdpo export`'s OUT: a directory replaced whole."""
    out = tmp_path / "exported"
    assert check_output(out, directory=True) == out
    out.mkdir()
    with pytest.raises(OutputRefusedError) as refused:
        check_output(out, directory=True)
    assert str(refused.value) == f"{out} exists; pass --overwrite to replace it, or choose another path"
    assert check_output(out, WriteMode.OVERWRITE, directory=True) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputRefusedError, match=r"file is a file; give a directory path"):
        check_output(tmp_path / "file", WriteMode.OVERWRITE, directory=True)


def test_a_directory_output_holding_the_input_is_refused_even_with_overwrite(tmp_path, monkeypatch):
    """`export runs/x/final runs/x --overwrite` would delete the model it reads."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    with pytest.raises(OutputRefusedError) as refused:
        check_output(run, WriteMode.OVERWRITE, inputs=[run / "final"], directory=True)
    assert str(refused.value) == (
        f"{run} holds this command's input ({run / 'final'}), which replacing it would delete; write to "
        "another path (--overwrite does not apply)"
    )
    with pytest.raises(OutputRefusedError, match=r"is also this command's input"):
        check_output(run / "final", WriteMode.OVERWRITE, inputs=[run / "final"], directory=True)
    # beside or below the input is fine, and so is a hub id that happens to read as a path inside OUT
    assert check_output(tmp_path / "out", inputs=[run / "final"], directory=True)
    assert check_output(run / "final" / "gguf", inputs=[run / "final"], directory=True)
    assert check_output(tmp_path, WriteMode.OVERWRITE, inputs=["HuggingFaceTB/x"], directory=True)


@pytest.mark.parametrize("spelling", ["dot", "relative", "symlink", "hardlink"])
@pytest.mark.parametrize("mode", list(WriteMode))
def test_an_input_of_the_command_is_refused_in_every_mode(tmp_path, monkeypatch, spelling, mode):
    """`./a.jsonl`, `a.jsonl`, a symlink and a hard link all name the input file."""
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "a.jsonl"
    source.write_bytes(b"steers\n")
    if spelling == "symlink":
        os.symlink(source, tmp_path / "link.jsonl")
    if spelling == "hardlink":
        os.link(source, tmp_path / "hard.jsonl")
    out = {"dot": "./a.jsonl", "relative": "a.jsonl", "symlink": "link.jsonl", "hardlink": "hard.jsonl"}
    with pytest.raises(OutputRefusedError) as refused:
        check_output(out[spelling], mode, inputs=[str(source)], steer_file=True)
    assert str(refused.value) == (
        f"{out[spelling]} is also this command's input ({source}); write to another path "
        "(--overwrite and --append do not apply)"
    )
    assert source.read_bytes() == b"steers\n"


def test_a_missing_input_or_a_hub_id_is_not_the_output(tmp_path):
    assert check_output(tmp_path / "o.jsonl", inputs=["someone/dataset", tmp_path / "nope.jsonl"])


def test_a_symlinked_output_resolves_to_its_target(tmp_path):
    target = tmp_path / "real.html"
    target.write_text("old")
    os.symlink(target, tmp_path / "link.html")
    with claimed_output(tmp_path / "link.html", WriteMode.OVERWRITE) as path:
        assert path == target


def test_the_studio_hold_refuses_every_mode_until_it_is_released(tmp_path):
    steers = tmp_path / "steers.jsonl"
    store = SteerStore(steers)  # the studio's store: it takes the hold, the file itself does not exist yet
    for mode in WriteMode:
        with pytest.raises(OutputRefusedError) as refused:
            check_output(steers, mode, steer_file=True)
        assert str(refused.value) == (
            f"{steers} is held by a running `localdpo studio` (it saves a person's steers there); "
            "stop the studio or choose another path"
        )
    assert not steers.exists()
    store.close()
    assert check_output(steers, WriteMode.CREATE, steer_file=True) == steers


def test_two_studios_share_the_hold(tmp_path):
    first, second = hold_for_studio(tmp_path / "s.jsonl"), hold_for_studio(tmp_path / "s.jsonl")
    second.close()
    with pytest.raises(OutputRefusedError, match="held by a running `localdpo studio`"):
        check_output(tmp_path / "s.jsonl")
    first.close()
    check_output(tmp_path / "s.jsonl")


def test_two_commands_take_turns_and_neither_mistakes_the_other_for_a_studio(tmp_path):
    path = tmp_path / "s.jsonl"
    hold_for_studio(path).close()  # a studio ran here once: its hold file stays
    checked = []
    with claimed_output(path, WriteMode.OVERWRITE, steer_file=True):
        second = threading.Thread(
            target=lambda: checked.append(check_output(path, "append", steer_file=True))
        )
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting for the first command's write lock
    second.join(30)
    assert checked == [path]


HOLDER = """
import sys
from localdpo.studio.store import SteerStore
store = SteerStore(sys.argv[1])
print("holding", flush=True)
sys.stdin.readline()
"""


def test_a_studio_in_another_process_is_seen_and_its_exit_releases_the_hold(tmp_path):
    steers = tmp_path / "steers.jsonl"
    steers.write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    studio = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(steers)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert studio.stdout.readline() == "holding\n"
        with pytest.raises(OutputRefusedError, match="held by a running `localdpo studio`"):
            check_output(steers, WriteMode.OVERWRITE, steer_file=True)
    finally:
        studio.communicate("\n", timeout=60)
    assert check_output(steers, WriteMode.OVERWRITE, steer_file=True) == steers


def test_checks_create_no_file(tmp_path):
    (tmp_path / "a.jsonl").write_text("x\n")
    check_output(tmp_path / "b.jsonl", steer_file=True)
    with pytest.raises(OutputRefusedError):
        check_output(tmp_path / "a.jsonl", steer_file=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
    assert write_lock_path(tmp_path / "a.jsonl").name == ".a.jsonl.lock"
    assert studio_hold_path(tmp_path / "a.jsonl").name == ".a.jsonl.studio.lock"

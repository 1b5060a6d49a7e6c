import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from localdpo.steers.steer import Steer, load_steers, save_steers
from localdpo.studio.errors import StudioError
from localdpo.studio.store import SteerStore

REPO = Path(__file__).resolve().parents[2]


def make_steer(i: int, **changes) -> Steer:
    values = dict(
        prompt=f"prompt {i}", prefix=f"{i} + {i} = ", rejected=f"{2 * i + 1}.", chosen=f"{2 * i}", id=f"s{i}"
    )
    return Steer(**{**values, **changes})


def test_append_keeps_existing_rows_byte_for_byte(tmp_path):
    path = tmp_path / "steers.jsonl"
    # A TRL row and an id-less row: the studio must keep both exactly as written.
    original = (
        '{"prompt": "p", "chosen": "a b", "rejected": "a c"}\n'
        "\n"
        '{"prompt": "q", "prefix": "", "rejected": "x", "chosen": "y"}\n'
    )
    path.write_text(original)
    store = SteerStore(path)
    assert store.append(make_steer(1)) == 3
    text = path.read_text()
    assert text.startswith(original)
    steers = load_steers(path)
    assert [s.id for s in steers] == ["steers:1", "steers:3", "s1"]
    assert not list(tmp_path.glob(".steers.jsonl.*.tmp"))  # no temporary file left


def test_an_invalid_file_is_refused_at_start(tmp_path):
    path = tmp_path / "steers.jsonl"
    path.write_text('{"prompt": "p", "prefix": "", "rejected": "x"}\n')
    with pytest.raises(ValueError, match=r"steers.jsonl:1: field 'chosen'"):
        SteerStore(path)


def test_replace_and_delete_check_the_version(tmp_path):
    path = save_steers([make_steer(i) for i in range(3)], tmp_path / "steers.jsonl")
    store = SteerStore(path)
    rows = store.list()
    assert [r.line for r in rows] == [1, 2, 3]
    updated = store.replace("s1", rows[1].version, make_steer(1, chosen="two"))
    assert updated.version != rows[1].version
    with pytest.raises(StudioError, match="changed since it was shown") as stale:
        store.replace("s1", rows[1].version, make_steer(1, chosen="three"))
    assert stale.value.status == 409
    with pytest.raises(StudioError, match="no steer 'nope'") as missing:
        store.delete("nope", "0")
    assert missing.value.status == 404
    store.delete("s0", rows[0].version)
    assert [(s.id, s.chosen) for s in load_steers(path)] == [("s1", "two"), ("s2", "4")]


def test_delete_keeps_later_default_ids(tmp_path):
    """Rows without an id are named by their line: deleting an earlier row leaves its line blank."""
    path = tmp_path / "steers.jsonl"
    path.write_text(
        json.dumps(make_steer(0).to_dict())
        + "\n"
        + '{"prompt": "q", "prefix": "", "rejected": "x", "chosen": "y"}\n'
    )
    store = SteerStore(path)
    store.delete("s0", store.list()[0].version)
    assert [s.id for s in load_steers(path)] == ["steers:2"]


def test_a_change_that_would_break_the_file_is_refused(tmp_path):
    path = save_steers([make_steer(0), make_steer(1)], tmp_path / "steers.jsonl")
    store = SteerStore(path)
    before = path.read_bytes()
    with pytest.raises(StudioError, match="would make the file invalid") as error:
        store.append(make_steer(2, id="s0"))  # duplicate id
    assert error.value.status == 409
    assert path.read_bytes() == before


def test_concurrent_appends_lose_nothing(tmp_path):
    """Two browser tabs are two request threads of one server."""
    store = SteerStore(tmp_path / "steers.jsonl")

    def append(worker: int) -> None:
        for i in range(10):
            store.append(make_steer(100 * worker + i))

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s.id for s in load_steers(tmp_path / "steers.jsonl")) == sorted(
        f"s{100 * w + i}" for w in range(4) for i in range(10)
    )


WRITER = """
import sys
from localdpo.steers.steer import Steer
from localdpo.studio.store import SteerStore
store = SteerStore(sys.argv[1])
print("ready", flush=True)
for i in range(int(sys.argv[3])):
    store.append(Steer(prompt="p", prefix="", rejected="r" * 2000, chosen=f"c{i}", id=f"{sys.argv[2]}-{i}"))
"""


def test_two_processes_and_one_killed_mid_write_lose_nothing(tmp_path):
    """Two servers append to one file; one is killed with SIGKILL while writing: every finished row stays."""
    path = tmp_path / "steers.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(name: str, n: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, str(n)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    survivor, victim = start("a", 30), start("b", 100_000)
    assert victim.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 60
    while (not path.exists() or path.read_text().count('"id": "b-') < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=60) == 0
    ids = [s.id for s in load_steers(path)]
    assert [i for i in ids if i.startswith("a-")] == [f"a-{i}" for i in range(30)]
    killed = [i for i in ids if i.startswith("b-")]
    assert killed == [f"b-{i}" for i in range(len(killed))] and len(killed) >= 3
    SteerStore(path)  # a restarted server opens the file and clears what the killed one left
    assert not list(tmp_path.glob(".steers.jsonl.*.tmp"))

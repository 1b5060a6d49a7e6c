"""Tasks of one's own: `module:Class` and `file.py:Class` load, register under their name, and a misfit of the
task protocol is one line naming what does not fit."""

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest

from localdpo.tasks import (
    TASKS,
    TaskLoadError,
    Verdict,
    get_task,
    known_tasks,
    registry,
    task_code_digest,
    task_prompt_of,
)

ROOT = Path(__file__).resolve().parents[2]
SPELL = ROOT / "examples" / "tasks" / "spell.py"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test loads into empty registries of loaded tasks (the built-in ones stay)."""
    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setattr(registry, "_BY_NAME", {})


def test_a_file_spec_loads_registers_and_is_found_by_name():
    task = get_task(f"{SPELL}:Spell")
    assert task.name == "spell" and get_task(f"{SPELL}:Spell") is task  # loaded once
    assert get_task("spell") is task and known_tasks()["spell"] is task
    assert "spell" not in TASKS  # the built-in registry is untouched
    prompt = task.prompts(1, seed=0, split="heldout")[0]
    assert task_prompt_of({"task": "spell", "prompt_id": prompt.id}) == prompt
    assert task_code_digest(task) == hashlib.sha256(SPELL.read_bytes()).hexdigest()
    assert task_code_digest("addition") is None and task_code_digest(None) is None


def test_a_module_spec_is_imported_from_the_current_directory(tmp_path, monkeypatch):
    """As `python -m` would, though the `localdpo` console script does not put the cwd on the path."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    make_module(tmp_path, "cwd_task_module.py", "")
    task = get_task("cwd_task_module:Echo")
    assert task.name == "echo" and task.check(task.build(7), "7").verdict is Verdict.CORRECT
    monkeypatch.delitem(sys.modules, "cwd_task_module")


def test_a_task_without_from_id_body_still_loads_and_its_steers_are_not_rechecked(tmp_path):
    path = make_module(tmp_path, "plain.py", "", from_id=False)
    task = get_task(f"{path}:Echo")
    assert task_prompt_of({"task": "echo", "prompt_id": "echo/3"}) is None
    with pytest.raises(NotImplementedError, match="cannot rebuild"):
        task.from_id("echo/3")


@pytest.mark.parametrize(
    ("body", "attribute", "message"),
    [
        ("", "Nope", "has no 'Nope'"),
        ("NOT_A_TASK = 3", "NOT_A_TASK", "a int is not a subclass of localdpo.tasks.Task"),
        ("class Bare(Task):\n    name = 'bare'", "Bare", "Bare does not define check, correct, sample"),
        (
            "class Twin(Echo):\n    name = 'addition'",
            "Twin",
            "Twin.name='addition' is a built-in task's name",
        ),
        (
            "class Spaced(Echo):\n    name = 'my task'",
            "Spaced",
            "Spaced.name='my task'; set a name of letters",
        ),
        (
            "class Loose(Echo):\n    def sample(self, rng):\n        return 'What is 1 + 1?'",
            "Loose",
            "Loose.sample(random.Random(0)) gave a str, not a TaskPrompt",
        ),
        (
            "class Stray(Echo):\n    def sample(self, rng):\n        return TaskPrompt('x/1', 'echo', 'say 1', ('1',))",
            "Stray",
            "gave a prompt with task='echo', id='x/1'; expected task='echo' and an id starting 'echo/'",
        ),
        (
            "class Strict(Echo):\n    def check(self, prompt, output, *, complete=True):\n        return int(output)",
            "Strict",
            "Strict.check(prompt, '') raised ValueError: invalid literal for int() with base 10: ''",
        ),
        (
            "class Drifting(Echo):\n    def from_id_body(self, body):\n        return self.build(int(body) + 1)",
            "Drifting",
            "Drifting.from_id('echo/",
        ),
        (
            "class Needy(Echo):\n    def __init__(self, size):\n        self.size = size",
            "Needy",
            "Needy() raised TypeError",
        ),
    ],
)
def test_a_class_that_does_not_fit_the_protocol_is_named(tmp_path, body, attribute, message):
    path = make_module(tmp_path, "mine.py", body)
    with pytest.raises(TaskLoadError) as caught:
        get_task(f"{path}:{attribute}")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"task '{path}:{attribute}': ")


def test_a_missing_module_or_file_or_a_broken_one_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        TaskLoadError, match=r"no module 'nowhere' in the current directory .*nowhere\.py:Task"
    ):
        get_task("nowhere:Task")
    with pytest.raises(TaskLoadError, match=r"no file nowhere\.py"):
        get_task("nowhere.py:Task")
    (tmp_path / "broken.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(TaskLoadError, match="importing broken raised ModuleNotFoundError: No module named"):
        get_task("broken:Task")
    with pytest.raises(TaskLoadError, match="expected module:Class"):
        get_task("broken:")


def test_a_second_class_may_not_take_a_loaded_tasks_name(tmp_path):
    get_task(f"{make_module(tmp_path, 'one.py', '')}:Echo")
    with pytest.raises(TaskLoadError, match="its name 'echo' is already taken by"):
        get_task(f"{make_module(tmp_path, 'two.py', '')}:Echo")


def test_cli_lists_a_loaded_task_and_refuses_a_misfit_in_one_line(tmp_path, capsys):
    """`localdpo tasks --task SPEC` loads and checks a task of one's own; a misfit is one line and exit
    status 2, here as in `eval` (and `make-steers`, `compare`, `studio`)."""
    from localdpo.cli import main

    assert main(["tasks", "--task", f"{SPELL}:Spell", "--describe"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[-1] == "spell\tspell a word letter by letter, separated by hyphens" and len(out) == len(TASKS) + 1
    )
    path = make_module(tmp_path, "mine.py", "")
    for command in (["tasks"], ["eval", "--model", "tiny"]):
        assert main([*command, "--task", f"{path}:Nope"]) == 2
        err = capsys.readouterr().err
        assert err == f"localdpo {command[0]}: task '{path}:Nope': {path} has no 'Nope'\n"


def test_a_run_config_loads_its_task_when_validated_so_its_steers_find_it():
    """`localdpo train eval.task=file.py:Class`: the task is registered before the held-out steers' meta is
    read (`task_prompt_of`), and a name that reaches no task is a config error naming the key."""
    from localdpo.config import ConfigError
    from localdpo.trainer.config import from_dict, validate

    assert task_prompt_of({"task": "spell", "prompt_id": "spell/tiger"}) is None  # not loaded yet
    validate(from_dict({"eval": {"task": f"{SPELL}:Spell"}}))
    assert task_prompt_of({"task": "spell", "prompt_id": "spell/tiger"}).answer == tuple("tiger")
    with pytest.raises(
        ConfigError, match=r"^eval.task: unknown task 'nope'; known tasks: addition, .*, spell \(or all"
    ):
        validate(from_dict({"eval": {"task": "nope"}}))


def test_asking_for_more_prompts_than_the_task_holds_is_one_line(tmp_path, capsys):
    """The example has 91 train prompts: `make-steers --n 100` says so (exit status 2), as `compare` does for
    `steers.train_prompts`."""
    from localdpo.cli import main
    from localdpo.tasks import PromptSpaceError

    with pytest.raises(
        PromptSpaceError, match="could not find 100 distinct train prompts .found 91.; ask for at most 91"
    ):
        get_task(f"{SPELL}:Spell").prompts(100, seed=0, split="train")
    argv = [
        "make-steers",
        "--task",
        f"{SPELL}:Spell",
        "--n",
        "100",
        "--model",
        "tiny",
        "--out",
        str(tmp_path / "s.jsonl"),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "localdpo make-steers: task spell: could not find 100 distinct train prompts (found 91); ask for at most 91\n"
    )


def make_module(tmp_path: Path, name: str, body: str, *, from_id: bool = True) -> Path:
    """A module holding `Echo`, a minimal task that fits (answer: the number said), then `body`."""
    rebuild = "    def from_id_body(self, body):\n        return self.build(int(body))\n" if from_id else ""
    source = textwrap.dedent(
        """\
        from localdpo.tasks import Correction, Judgement, Task, TaskPrompt, Verdict


        class Echo(Task):
            name = "echo"

            def sample(self, rng):
                return self.build(rng.randint(0, 999))

            def build(self, n):
                return TaskPrompt(f"echo/{n}", "echo", f"Say {n}.", (str(n),))

            def check(self, prompt, output, *, complete=True):
                return Judgement(Verdict.CORRECT if output.strip() == prompt.answer[0] else Verdict.UNCHECKABLE)

            def correct(self, prompt, output, mistake):
                return Correction(mistake.expected)
        """
    )
    path = tmp_path / name
    path.write_text(source + rebuild + "\n\n" + body + "\n")
    return path

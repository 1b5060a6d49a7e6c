"""docs/tasks.md stays true: its code excerpts are the example task's own text, its session runs as shown,
and the split sizes it states are the example's."""

import collections
import doctest
import re
from pathlib import Path

import pytest

from localdpo.tasks import registry, split_of

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "tasks.md").read_text()
EXAMPLE = (ROOT / "examples" / "tasks" / "spell.py").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def test_every_python_excerpt_is_the_example_files_own_text():
    excerpts = _blocks("python")
    assert len(excerpts) == 3
    for excerpt in excerpts:
        assert excerpt in EXAMPLE, excerpt[:80]


def test_the_session_runs_as_shown(monkeypatch):
    monkeypatch.chdir(ROOT)  # the page names the task by its path from the repository root
    monkeypatch.setattr(registry, "_LOADED", {})
    monkeypatch.setattr(registry, "_BY_NAME", {})
    (session,) = _blocks("pycon")
    test = doctest.DocTestParser().get_doctest(session, {}, "docs/tasks.md", str(ROOT / "docs/tasks.md"), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries == 10


@pytest.mark.parametrize("fact", ["91 train, 19 validation and 33 held-out prompts"])
def test_the_split_sizes_stated_are_the_examples(fact):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("spell_example_for_docs", ROOT / "examples" / "tasks" / "spell.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    sizes = collections.Counter(split_of(f"spell/{word}") for word in module.WORDS)
    assert fact in DOC and len(module.WORDS) == 143 and "With 143 words" in DOC
    assert (
        fact
        == f"{sizes['train']} train, {sizes['validation']} validation and {sizes['heldout']} held-out prompts"
    )

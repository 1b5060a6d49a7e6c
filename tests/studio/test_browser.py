"""The studio page in a real browser: `localdpo studio --model tiny` driven by Playwright in headless Chromium.

One server and one browser for the module (each test opens a fresh context: its own cookies and storage).
Steers are made as a person makes them (the keyboard alone in one test, Stop, a cut while the model writes,
Finish and Cancel in another); the file must then hold exactly the steers the page showed, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localdpo.steers.steer import load_steers

CHROMIUM = Path("/usr/bin/chromium")
MAX_TOKENS = "400"
pytestmark = pytest.mark.browser

sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed"
).sync_playwright
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)


@contextlib.contextmanager
def running_studio(steers: Path):
    """`localdpo studio --model tiny` on `steers` in a subprocess; yields its address."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdpo",
            "studio",
            "--model",
            "tiny",
            "--steers",
            str(steers),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            match = re.match(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
            if match:
                break
        else:
            pytest.fail("studio exited before printing its address:\n" + "".join(lines))
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory):
    """`localdpo studio` with the tiny model in a subprocess; yields (address, steer file)."""
    steers = tmp_path_factory.mktemp("studio") / "steers.jsonl"
    with running_studio(steers) as address:
        yield address, steers


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, studio_server):
    """A fresh browser context on the studio page; fails the test on a console error (a 409, the answer that
    asks to confirm a warning, is expected)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.console_errors = errors  # a test that provokes an error clears what it expects
    opened.goto(studio_server[0])
    opened.wait_for_selector("#model-info:has-text('tiny')")
    yield opened
    context.close()
    assert [error for error in errors if "409 (Conflict)" not in error] == []


def steers_in(path: Path) -> list:
    return load_steers(path) if path.exists() else []


def expected_split(pieces: list[str], cut: int) -> tuple[str, str]:
    """(kept, rejected) text of a cut before token `cut`, the space before a word staying kept."""
    kept, rejected = "".join(pieces[:cut]), "".join(pieces[cut:])
    if rejected.startswith(" ") and rejected.strip() and pieces[cut].strip():
        kept, rejected = kept + " ", rejected[1:]
    return kept, rejected


def shown_pieces(page, segment: int) -> list[str]:
    """Wait until the live segment has ended; the text of each of its shown tokens, by token index."""
    try:
        page.wait_for_selector(f"#answer[data-state=finished][data-segment='{segment}']", timeout=30_000)
    except Exception:
        pytest.fail(
            f"segment {segment} did not end: status {page.text_content('#status')!r}, "
            f"log {page.text_content('#log')!r}, tokens {page.locator('#live .tok').count()}"
        )
    spans = page.eval_on_selector_all(
        "#live .tok:not(.end)", "spans => spans.map(s => [Number(s.dataset.i), s.textContent])"
    )
    pieces = [""] * (max(i for i, _ in spans) + 1)
    for i, text in spans:
        pieces[i] = text
    return pieces


def cut_of(page) -> int:
    return int(page.get_attribute("#live .tok.cut-at", "data-i"))


def test_two_steers_with_the_keyboard_alone(page, studio_server):
    """Type, Ctrl+Enter (generate), Esc (stop), Alt+← (move the cut), Enter, type, Ctrl+Enter (save); then on
    the resumed answer Alt+← places a cut, Tab and Space tick "ends the answer", Ctrl+Enter saves."""
    address, steers_file = studio_server
    before = len(steers_in(steers_file))
    assert "token" not in page.url  # the token left the address bar for an HttpOnly cookie
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    keyboard = page.keyboard
    page.focus("#prompt")
    keyboard.type("Name three colours.")
    page.fill("#max-tokens", MAX_TOKENS)
    page.focus("#prompt")
    keyboard.press("Control+Enter")
    page.wait_for_selector("#live .tok >> nth=5")
    keyboard.press("Escape")  # Stop: the model stops, the cut goes before its last token
    pieces = shown_pieces(page, 0)
    assert len(pieces) < int(MAX_TOKENS) and page.text_content("#live .end") == "■ stopped"
    last = max(i for i, piece in enumerate(pieces) if piece)
    assert cut_of(page) == last
    keyboard.press("Alt+ArrowLeft")
    first_cut = cut_of(page)
    assert first_cut == max(i for i, piece in enumerate(pieces[:last]) if piece)
    keyboard.press("Enter")  # on the focused token: the correction box takes the focus
    keyboard.type("red, green")
    keyboard.press("Control+Enter")
    kept_0, rejected_0 = expected_split(pieces, first_cut)

    page.wait_for_selector("#answer[data-segment='1'] #live .tok >> nth=3", timeout=30_000)
    keyboard.press("Escape")
    pieces = shown_pieces(page, 1)
    keyboard.press("Escape")  # Cancel: the cut Stop placed goes
    assert page.locator("#live .tok.cut-at").count() == 0
    keyboard.press("Alt+ArrowLeft")  # no cut: the cut goes before the last token
    second_cut = cut_of(page)
    keyboard.press("Enter")
    keyboard.type(" and blue.")
    keyboard.press("Tab")
    keyboard.press("Space")
    assert page.is_checked("#complete")
    keyboard.press("Control+Enter")
    page.wait_for_selector("#answer[data-state=ended]", timeout=30_000)
    kept_1, rejected_1 = expected_split(pieces, second_cut)
    assert page.locator("#answer .correction").all_text_contents() == ["red, green", " and blue."]
    assert page.text_content("#steer-count") == f"{before + 2} steers in the file"
    assert "saved steer" in page.text_content("#log")  # stays, whatever the status line says next

    first, second = steers_in(steers_file)[before:]
    assert first.prompt == second.prompt == [{"role": "user", "content": "Name three colours."}]
    assert (first.prefix, first.rejected, first.chosen) == (kept_0, rejected_0, "red, green")
    assert (first.rejected_complete, first.meta["rejected_end"]) == (False, "stopped")
    assert second.prefix == kept_0 + "red, green" + kept_1
    assert (second.rejected, second.chosen, second.chosen_complete) == (rejected_1, " and blue.", True)
    assert (first.meta["model"], first.meta["max_new_tokens"], first.round) == ("tiny", 400, 1)
    assert first.rejected_by.startswith("tiny@") and len(first.rejected_by) == len("tiny@") + 12


def test_a_waiting_save_is_cancelled_and_a_degenerate_one_needs_a_second_click(page, studio_server):
    """A click while the model writes cuts and stops it. "Let the model finish, then save" waits; a token
    clicked meanwhile does not move the cut; Cancel drops the save (nothing in the file). Then a correction
    that is the start of the rejected text warns, and saves only on the second click."""
    _, steers_file = studio_server
    before = len(steers_in(steers_file))
    page.fill("#prompt", "Write a long story about a dragon.")
    page.fill("#max-tokens", "1000")  # finishing takes a while: Cancel comes well before its end
    page.click("#generate")
    page.wait_for_selector("#live .tok >> nth=8")
    page.locator("#live .tok >> nth=3").dispatch_event("click")  # the box scrolls as the model writes
    cut = cut_of(page)
    pieces = shown_pieces(page, 0)
    assert len(pieces) < 1000 and page.text_content("#live .end") == "■ stopped"
    page.fill("#chosen", "Once upon a time")
    page.click("#finish")
    page.locator("#live .tok >> nth=1").dispatch_event("click")  # refused while the save waits
    assert cut_of(page) == cut and "Cancel (Esc) first" in page.text_content("#status")
    page.click("#uncut")
    page.wait_for_selector("#answer[data-state=finished]", timeout=30_000)
    assert "nothing saved" in page.text_content("#log")
    page.wait_for_timeout(500)
    assert len(steers_in(steers_file)) == before

    # The finish was interrupted: what the model wrote up to there is the rejected side; cut, type its start.
    pieces = shown_pieces(page, 0)
    page.click(f"#live .tok[data-i='{cut}']")
    _, rejected = expected_split(pieces, cut)
    page.fill("#chosen", rejected[:3])
    page.click("#save")
    page.wait_for_selector("#warning:not([hidden])")
    assert "the start of what the model wrote" in page.text_content("#warning")
    assert page.text_content("#save") == "Save anyway" and len(steers_in(steers_file)) == before
    page.click("#save")
    page.wait_for_selector("#answer[data-segment='1']", timeout=30_000)
    page.click("#stop")  # the model is free for the next test
    shown_pieces(page, 1)
    (steer,) = steers_in(steers_file)[before:]
    assert (steer.rejected, steer.chosen) == (rejected, rejected[:3])


def test_a_reload_keeps_the_draft_and_the_page_says_what_changed(page, studio_server):
    """Prompt, answer, cut and typed correction survive a reload; an edited prompt is flagged; Edit twice
    opens one form; a server that does not answer is said in words."""
    _, steers_file = studio_server
    page.fill("#prompt", "Name a fruit.")
    page.fill("#max-tokens", "24")
    page.click("#generate")
    pieces = shown_pieces(page, 0)
    page.click("#live .tok >> nth=2")
    cut = cut_of(page)
    page.fill("#chosen", "apple")
    page.reload()
    page.wait_for_selector("#live .tok.cut-at", timeout=30_000)
    assert page.input_value("#prompt") == "Name a fruit." and page.input_value("#chosen") == "apple"
    assert cut_of(page) == cut and shown_pieces(page, 0) == pieces
    assert page.is_hidden("#stale")
    page.fill("#prompt", "Name a vegetable.")
    assert page.is_visible("#stale") and page.text_content("#generate") == "Generate (prompt changed)"
    before = len(steers_in(steers_file))
    page.click("#save")  # the restored cut and correction, on the prompt the answer was written for
    page.wait_for_selector("#answer[data-segment='1']", timeout=30_000)
    (steer,) = steers_in(steers_file)[before:]
    assert steer.chosen == "apple" and steer.prompt == [{"role": "user", "content": "Name a fruit."}]
    assert steer.prefix + steer.rejected in "".join(pieces)

    page.click("#tab-review")
    card = page.locator("#review-list article.steer >> nth=0")
    card.wait_for()
    card.locator("button.edit").click()
    card.locator("button.edit").click()
    card.locator("button.edit").click()
    assert card.locator(".edit-form").count() == 1

    page.route("**/api/**", lambda route: route.abort())
    page.click("#reload")
    page.wait_for_selector("#review-count:has-text('does not answer')")
    page.unroute("**/api/**")
    page.console_errors[:] = [e for e in page.console_errors if "net::ERR_FAILED" not in e]


def test_train_compare_and_steer_the_tuned_model(browser, tmp_path):
    """On a file of 6 steers: Train (ldpo, 2 steps) from the page, follow it to its held-out metrics, compare
    the start and tuned models on one prompt, switch to the tuned model and save a steer it wrote: the file
    records the tuned model as `rejected_by`, round 2."""
    steers_file = tmp_path / "steers.jsonl"
    colors = Path(__file__).resolve().parents[1] / "trainer" / "data" / "color_steers.jsonl"
    steers_file.write_text("".join(line + "\n" for line in colors.read_text().splitlines()[:6]))
    with running_studio(steers_file) as address:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(address)
        page.wait_for_selector("#model-info:has-text('tiny')")
        page.click("#tab-train")
        page.wait_for_selector("#train-split:has-text('5 to train on, 1 held out')")
        page.select_option("#train-method", "ldpo")
        page.fill("#train-steps", "2")
        page.fill("#train-lr", "0.001")
        page.fill("#train-batch", "2")
        before = steers_file.read_bytes()
        page.click("#train-start")
        page.wait_for_selector("#view-train[data-training=done]", timeout=600_000)
        assert "done" in page.text_content("#train-status")
        steps = page.eval_on_selector_all(
            "#train-evals tbody tr", "rows => rows.map(r => r.cells[0].textContent)"
        )
        assert steps == ["0", "2"]
        assert steers_file.read_bytes() == before
        run = page.input_value("#tuned-run")
        assert run.endswith("-ldpo")

        page.fill("#compare-prompt", "Name three colours.")
        page.fill("#compare-max", "6")
        page.click("#compare-run")
        page.wait_for_selector("#compare-columns[data-state=finished]", timeout=60_000)
        assert page.text_content("#compare-start") and page.text_content("#compare-tuned")
        start_label = page.text_content("#compare-start-label")
        tuned_label = page.text_content("#compare-tuned-label")
        assert start_label.startswith("tiny@") and tuned_label.startswith(f"tiny+{run}@")

        page.click("#use-tuned")
        page.wait_for_selector("#active-model:has-text('the tuned model')")
        assert f"tiny+{run}" in page.text_content("#model-info")
        page.click("#tab-steer")
        page.fill("#prompt", "Name three colours.")
        page.fill("#max-tokens", "12")
        page.click("#generate")
        shown_pieces(page, 0)
        page.click("#live .tok >> nth=2")
        page.fill("#chosen", "red")
        page.click("#save")
        shown_pieces(page, 1)
        steer = steers_in(steers_file)[-1]
        assert (steer.rejected_by, steer.round, steer.meta["model"]) == (tuned_label, 2, f"tiny+{run}")
        context.close()
    assert [error for error in errors if "409 (Conflict)" not in error] == []

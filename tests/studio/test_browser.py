"""The studio page in a real browser: `localdpo studio --model tiny` driven by Playwright in headless Chromium.

Two steers on one answer, made as a person would (Stop while the model writes, then a click on a token of the
resumed answer; a correction typed each time); the file must then hold two
valid steers whose prefix, rejected and chosen are what the page showed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localdpo.steers import load_steers

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed"
).sync_playwright
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def studio_server(tmp_path):
    """`localdpo studio` with the tiny model in a subprocess; yields (address, steer file)."""
    steers = tmp_path / "steers.jsonl"
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
        yield match.group(1), steers
    finally:
        process.terminate()
        process.wait(timeout=30)


def expected_split(pieces: list[str], cut: int) -> tuple[str, str]:
    """(kept, rejected) text of a cut before token `cut`, the space before a word staying kept."""
    kept, rejected = "".join(pieces[:cut]), "".join(pieces[cut:])
    if rejected.startswith(" ") and rejected.strip() and pieces[cut].strip():
        kept, rejected = kept + " ", rejected[1:]
    return kept, rejected


def finished_pieces(page, segment: int) -> list[str]:
    """Wait until the live segment has ended; the text of each of its shown tokens, by token index."""
    page.wait_for_selector(f"#answer[data-state=finished][data-segment='{segment}']", timeout=30_000)
    spans = page.eval_on_selector_all(
        "#live .tok:not(.end)", "spans => spans.map(s => [Number(s.dataset.i), s.textContent])"
    )
    pieces = [""] * (max(i for i, _ in spans) + 1)
    for i, text in spans:
        pieces[i] = text
    return pieces


def test_two_steers_on_one_answer(studio_server, tmp_path):
    address, steers_file = studio_server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(address)
            page.wait_for_selector("#model-info:has-text('tiny')")
            page.fill("#prompt", "Name three colours.")
            page.fill("#max-tokens", "400")
            page.click("#generate")

            # First steer: Stop while the model writes (the cut is where the answer stood), type, save.
            page.wait_for_selector("#live .tok >> nth=3")
            page.click("#stop")
            first_cut = int(re.search(r"cut after token (\d+)", page.text_content("#status")).group(1))
            page.fill("#chosen", "red, green")
            pieces = finished_pieces(page, 0)  # the model finished the rejected side meanwhile
            assert 4 <= first_cut < len(pieces)
            page.click("#save")
            kept_0, rejected_0 = expected_split(pieces, first_cut)

            # Second steer, on the resumed text: click its second shown token, type, save.
            pieces = finished_pieces(page, 1)
            second_cut = [i for i, piece in enumerate(pieces) if piece][1]
            page.click(f"#live .tok[data-i='{second_cut}']")
            page.fill("#chosen", " and blue.")
            page.check("#complete")
            page.click("#save")
            page.wait_for_selector("#answer[data-state=ended]", timeout=30_000)
            kept_1, rejected_1 = expected_split(pieces, second_cut)
            assert page.locator("#answer .correction").all_text_contents() == ["red, green", " and blue."]

            first, second = load_steers(steers_file)
            assert first.prompt == second.prompt == [{"role": "user", "content": "Name three colours."}]
            assert (first.prefix, first.rejected, first.chosen, first.chosen_complete) == (
                kept_0,
                rejected_0,
                "red, green",
                False,
            )
            # The second steer's prefix holds the first correction.
            assert second.prefix == kept_0 + "red, green" + kept_1
            assert (second.rejected, second.chosen, second.chosen_complete) == (
                rejected_1,
                " and blue.",
                True,
            )
            meta = first.meta
            assert (meta["model"], meta["temperature"], meta["max_new_tokens"]) == ("tiny", 0.0, 400)

            # Review: both steers with their scored tokens; edit the first, delete the second.
            page.click("#tab-review")
            page.wait_for_selector("#review-list article.steer >> nth=1")
            assert page.locator("#review-list .scored.chosen").count() > 0
            card = page.locator(f"article.steer[data-id='{first.id}']")
            card.locator("button.edit").click()
            card.locator("textarea[name=chosen]").fill("red, green and blue")
            card.locator(".edit-form button.primary").click()
            page.wait_for_selector(f"article.steer[data-id='{first.id}'] >> text=red, green and blue")
            page.once("dialog", lambda dialog: dialog.accept())
            page.locator(f"article.steer[data-id='{second.id}'] button.delete").click()
            page.wait_for_selector(f"article.steer[data-id='{second.id}']", state="detached")
        finally:
            browser.close()

    (edited,) = load_steers(steers_file)
    assert (edited.id, edited.prefix, edited.chosen) == (first.id, first.prefix, "red, green and blue")

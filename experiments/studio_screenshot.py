"""Screenshots of the studio page for the README, taken from the real page with the embedded model.

    python experiments/studio_screenshot.py --out docs

Starts `localdpo studio` (embedded SmolLM2-135M-Instruct, a throwaway steer file), draws an addition prompt,
lets the model answer, cuts at the mistake the task's checker marks, saves the suggested correction, cuts the
resumed answer at its first word and types a second correction that ends the answer, then screenshots the steer view (`studio.png`) and the
review view (`studio_review.png`) with headless Chromium (/usr/bin/chromium). Then it trains on those two steers
from the Train view (ldpo, `--train-steps` steps: one steer trained on, one held out), compares the start and
tuned models on the same prompt and switches to the tuned model (`studio_train.png`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright


def start_studio(steers: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "localdpo", "studio", "--steers", str(steers), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        print(line, end="")
        match = re.match(r"open (http://\S+)", line)
        if match:
            return process, match.group(1)
    raise SystemExit("localdpo studio exited before printing its address")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="docs", help="directory for studio.png, studio_review.png and studio_train.png"
    )
    parser.add_argument(
        "--task-seed", type=int, default=3, help="which addition prompt to draw (3: 797 + 953)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=2, help="steps of the Train view's run (a picture, not a result)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        process, address = start_studio(Path(tmp) / "steers.jsonl")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 720}, device_scale_factor=1)
                page.goto(address)
                page.wait_for_selector("#task option[value=addition]", state="attached")
                page.select_option("#task", "addition")
                page.fill("#task-seed", str(args.task_seed))
                page.click("#draw")
                page.wait_for_function("document.getElementById('prompt').value.length > 0")
                page.fill("#max-tokens", "48")
                page.click("#generate")
                page.wait_for_selector("#answer[data-state=finished][data-segment='0']", timeout=600_000)
                page.click("#cut-suggested")  # the checker's first mistake; its correction is filled in
                page.click("#save")
                page.wait_for_selector("#answer[data-state=finished][data-segment='1']", timeout=600_000)
                page.locator("#live .tok", has_text="This").first.click()  # the sentence after the equation
                page.fill("#chosen", "So the answer is 797 + 953 = 1750.")
                page.check("#complete")
                page.screenshot(path=str(out / "studio.png"))
                page.click("#save")
                page.wait_for_selector("#answer[data-state=ended]", timeout=600_000)
                page.click("#tab-review")
                page.wait_for_selector("#review-list article.steer >> nth=1")
                page.screenshot(path=str(out / "studio_review.png"))
                prompt = page.input_value("#prompt")
                page.click("#tab-train")
                page.wait_for_selector("#train-split:has-text('held out')")
                page.select_option("#train-method", "ldpo")
                page.fill("#train-steps", str(args.train_steps))
                page.click("#train-start")
                page.wait_for_selector("#view-train[data-training=done]", timeout=1_800_000)
                page.fill("#compare-prompt", prompt)
                page.fill("#compare-max", "48")
                page.click("#compare-run")
                page.wait_for_selector("#compare-columns[data-state=finished]", timeout=300_000)
                page.click("#use-tuned")
                page.wait_for_selector("#active-model:has-text('the tuned model')", timeout=300_000)
                page.set_viewport_size({"width": 1280, "height": 860})
                page.screenshot(path=str(out / "studio_train.png"))
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
        print((Path(tmp) / "steers.jsonl").read_text())
    print(f"wrote {out / 'studio.png'}, {out / 'studio_review.png'} and {out / 'studio_train.png'}")


if __name__ == "__main__":
    main()

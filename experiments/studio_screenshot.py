"""Screenshots of the studio page for the README, taken from the real page with the embedded model.

    python experiments/studio_screenshot.py --out docs

Starts `localdpo studio` (embedded SmolLM2-135M-Instruct, a throwaway steer file), draws an addition prompt,
lets the model answer, cuts at the mistake the task's checker marks, saves the suggested correction, cuts the
resumed answer at its first word and types a second correction that ends the answer, then screenshots the steer view (`studio.png`) and the
review view (`studio_review.png`) with headless Chromium (/usr/bin/chromium).
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
    parser.add_argument("--out", default="docs", help="directory for studio.png and studio_review.png")
    parser.add_argument(
        "--task-seed", type=int, default=3, help="which addition prompt to draw (3: 797 + 953)"
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
                page.wait_for_selector("#answer[data-state=finished][data-segment='0']", timeout=120_000)
                page.click("#cut-suggested")  # the checker's first mistake; its correction is filled in
                page.click("#save")
                page.wait_for_selector("#answer[data-state=finished][data-segment='1']", timeout=120_000)
                page.locator("#live .tok", has_text="This").first.click()  # the sentence after the equation
                page.fill("#chosen", "So the answer is 797 + 953 = 1750.")
                page.check("#complete")
                page.screenshot(path=str(out / "studio.png"))
                page.click("#save")
                page.wait_for_selector("#answer[data-state=ended]", timeout=120_000)
                page.click("#tab-review")
                page.wait_for_selector("#review-list article.steer >> nth=1")
                page.screenshot(path=str(out / "studio_review.png"))
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
        print((Path(tmp) / "steers.jsonl").read_text())
    print(f"wrote {out / 'studio.png'} and {out / 'studio_review.png'}")


if __name__ == "__main__":
    main()

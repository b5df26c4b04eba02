"""The board in headless Chromium (Debian's chromium + chromium-driver), driven by selenium.

One walk through the workflow on a tiny random model: load the quickstart YAML (its data, the
tiny model instead of the embedded one), max_steps 3, start, progress to 100 % and a loss
curve; a second, long run: reload the page mid-run and see it re-attach, stop it and see it
stop with a resumable checkpoint; chat with the result (side by side with the base); export it.
Screenshots of each tab go to the test's tmp folder, or to docs/webui/ (docs/webui.md shows
them) with LMFORGE_UPDATE_SCREENSHOTS=1, so an ordinary run leaves the tracked files alone.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from conftest import free_port, headless_chromium, needs_chromium
from lmforge.webui.app import Board, build_app

ROOT = Path(__file__).resolve().parents[2]
DOCS_SHOTS = ROOT / "docs" / "webui"

pytestmark = needs_chromium


@pytest.fixture
def board(tiny_model_dir, tmp_path, monkeypatch):
    """The board on a free port, working in tmp_path with the quickstart data."""
    shutil.copytree(ROOT / "examples" / "quickstart" / "data", tmp_path / "data")
    quickstart = yaml.safe_load((ROOT / "examples" / "quickstart" / "train.yaml").read_text())
    quickstart.update(
        model_name_or_path=str(tiny_model_dir),
        output_dir="saves/tiny-lora",
        logging_steps=1,
        per_device_train_batch_size=1,
        bf16=False,
        report_compare=False,
        cutoff_len=64,
    )
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(quickstart, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    the_board = Board(tmp_path / "board", cwd=tmp_path, grace=20)
    demo = build_app(the_board)
    demo.queue(default_concurrency_limit=8)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield the_board, f"http://127.0.0.1:{port}/"
    finally:
        the_board.jobs.stop(wait=True)
        the_board.worker.unload()
        demo.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/webui/ with LMFORGE_UPDATE_SCREENSHOTS=1 (refresh the docs), else under tmp_path."""
    if os.environ.get("LMFORGE_UPDATE_SCREENSHOTS") == "1":
        return DOCS_SHOTS
    return tmp_path / "screenshots"


class Page:
    def __init__(self, driver, shots: Path, timeout=90):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.shots = shots
        self.wait = WebDriverWait(driver, timeout)

    def find(self, css):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def click(self, css):
        element = self.find(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        self.driver.execute_script("arguments[0].click();", element)

    def type(self, css, text, enter=False):
        from selenium.webdriver.common.keys import Keys

        box = self.find(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        box.send_keys(Keys.ENTER if enter else Keys.TAB)

    def text_of(self, css) -> str:
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def until_text(self, css, *words, timeout=None):
        from selenium.webdriver.support.ui import WebDriverWait

        wait = self.wait if timeout is None else WebDriverWait(self.driver, timeout)
        return wait.until(
            lambda _: all(w in self.text_of(css) for w in words) and self.text_of(css)
        )

    def until_stable(self, css, seconds=2.0):
        """Until the text of `css` has not changed for `seconds` (a streamed answer ended)."""
        last, since = None, time.time()
        while time.time() - since < seconds:
            text = self.text_of(css)
            if text != last:
                last, since = text, time.time()
            time.sleep(0.2)
        return last

    def tab(self, name):
        from selenium.webdriver.common.by import By

        def button(_):
            for b in self.driver.find_elements(By.CSS_SELECTOR, "button[role='tab']"):
                if b.text.strip() == name:
                    return b
            return None

        self.driver.execute_script("arguments[0].click();", self.wait.until(button))
        time.sleep(0.5)

    def shot(self, name, at=None):
        self.shots.mkdir(parents=True, exist_ok=True)
        if at:  # one screen around `at`
            element = self.find(at)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
            time.sleep(0.3)
            assert self.driver.save_screenshot(str(self.shots / f"{name}.png"))
            return
        self.driver.execute_script("window.scrollTo(0, 0);")
        height = self.driver.execute_script("return document.body.scrollHeight")
        self.driver.set_window_size(1280, min(max(height, 1000), 4000))
        time.sleep(0.3)
        assert self.driver.save_screenshot(str(self.shots / f"{name}.png"))
        self.driver.set_window_size(1280, 1000)


def test_the_whole_workflow_in_headless_chromium(board, tmp_path):
    the_board, url = board
    started = time.time()
    driver = headless_chromium(tmp_path)
    page = Page(driver, screenshot_dir(tmp_path))
    try:
        driver.get(url)
        assert "lmforge board" in driver.title or page.find("#tab-train")
        # Load the quickstart YAML, then set max_steps 3 in the form.
        page.type("#load-path textarea, #load-path input", "quickstart.yaml")
        page.click("#load")
        page.until_text("#train-message", "Loaded")
        page.type("#field-max_steps input", "3")
        page.click("#start")
        page.until_text("#train-status", "Finished", timeout=120)
        page.until_text("#train-progress", "100 %")
        page.find("#loss-plot img, #loss-plot canvas, #loss-plot svg")
        run = tmp_path / "saves" / "tiny-lora"
        assert (run / "report.md").is_file() and (run / "adapter_model.safetensors").is_file()
        saved = yaml.safe_load(Path(the_board.jobs.history()[-1].argv[-1]).read_text())
        assert saved["max_steps"] == 3 and saved["dataset"] == "identity,general"
        page.until_text("#runs-table", "tiny-lora", "finished")  # listed when the run ended
        page.click("#open-report")
        page.until_text("#report", "Training report")
        page.shot("train")
        page.shot("train-run", at="#train-status")
        print(f"{time.time() - started:.0f} s", 'page.shot("train")')

        # A long second run: reload mid-run and re-attach, then stop it.
        page.type("#field-max_steps input", "100000")
        page.type("#field-output_dir textarea, #field-output_dir input", "saves/tiny-long")
        page.click("#start")
        page.until_text("#train-status", "Running", "tiny-long")
        page.until_text("#train-progress", "step ", timeout=120)
        driver.refresh()
        page.until_text("#train-status", "Running", "tiny-long")  # re-attached
        page.until_text("#train-progress", "step ")
        page.click("#stop")
        page.until_text("#train-status", "Stopped", "130", timeout=120)
        assert any((tmp_path / "saves" / "tiny-long").glob("checkpoint-*"))
        print(f"{time.time() - started:.0f} s", 'assert any((tmp_path / "saves"')

        # Data: a sample with its trained tokens highlighted, and the statistics.
        page.tab("Data")
        page.click("#inspect")
        page.find("#samples mark.trained")
        page.until_text("#stats", "train_samples")
        page.shot("data")
        print(f"{time.time() - started:.0f} s", 'page.shot("data")')

        # Chat with the result, then side by side with the base.
        page.tab("Chat")
        page.click("#chat-from-run")
        page.wait.until(
            lambda d: (
                "tiny-lora"
                in page.find("#chat-adapters textarea, #chat-adapters input").get_attribute("value")
            )
        )
        page.click("#chat-load")
        page.until_text("#chat-status", "Loaded", "tiny-lora", timeout=120)
        page.type("#chat-message textarea, #chat-message input", "Who are you?", enter=True)
        page.find('#chat-a [data-testid="bot"]')
        page.until_text("#chat-status", "Answered")
        page.click("#side-by-side input")
        page.type("#chat-message textarea, #chat-message input", "Hi", enter=True)
        page.find('#chat-b [data-testid="bot"]')
        page.until_text("#chat-status", "Answered")
        page.shot("chat")
        print(f"{time.time() - started:.0f} s", 'page.shot("chat")')

        # Export the result.
        page.tab("Export")
        page.click("#export-from-run")
        page.wait.until(
            lambda d: (
                "tiny-lora"
                in page.find(
                    "#export-field-export_dir textarea, #export-field-export_dir input"
                ).get_attribute("value")
            )
        )
        page.click("#export-start")
        page.until_text("#export-status", "Finished", timeout=180)
        page.until_text("#export-results", "Export parity check: passed", "tiny-lora")
        assert (tmp_path / "exports" / "tiny-lora" / "export_report.json").is_file()
        page.shot("export")
        print(f"{time.time() - started:.0f} s", 'page.shot("export")')

        page.tab("Evaluate")
        page.shot("evaluate")
        page.tab("Synth")
        page.shot("synth")
        page.click("#language input[value='zh']")
        page.until_text("button[role='tab']", "训练")
        page.tab("训练")
        page.shot("train-zh")
    finally:
        driver.quit()
    assert time.time() - started < 420  # 3.5-4 min measured on 2 busy shared cores

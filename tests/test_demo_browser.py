"""The demo page in a real browser: `hspnet demo` is started on a free loopback port, headless Chromium (Debian's
`chromium` + `chromium-driver`, driven by selenium) uploads an image and reads the scores the page shows, which must be
`predict`'s scores; the threshold and top-k controls change the highlighted labels; a file that is not an image gets
a message. Skipped, naming the package, when the browser is not installed (CI installs it: .ci/run).

Also a tool: `python tests/test_demo_browser.py --model outputs/demo --output docs/demo.png` takes the screenshot
shown in the README (the page with two demo images uploaded).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

SERVER_START_TIMEOUT = 120  # seconds: importing torch + gradio on a busy 2-core machine
PAGE_TIMEOUT = 60


def browser_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)`` paths, or skip the test naming what is missing."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    missing = [package for package, found in (("chromium", chromium), ("chromium-driver", driver)) if not found]
    if missing:
        pytest.skip(f"needs a browser: Debian package(s) {' '.join(missing)} not installed "
                    "(apt-get install -y chromium chromium-driver)")
    return chromium, driver


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DemoServer:
    """`python -m hspnet demo --model MODEL --host 127.0.0.1 --port P`, started (not yet serving: importing torch
    and gradio takes seconds, which a caller can spend starting the browser)."""

    def __init__(self, model_dir: str, workdir: str, extra: tuple[str, ...] = ()):
        port = free_port()
        env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                   GRADIO_TEMP_DIR=os.path.join(workdir, "gradio"), TOKENIZERS_PARALLELISM="false")
        self.log_path = os.path.join(workdir, "server.log")
        self.url = f"http://127.0.0.1:{port}/"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hspnet", "demo", "--model", os.path.abspath(model_dir), "--host", "127.0.0.1",
                 "--port",
                 str(port), *extra],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def wait_until_serving(self) -> str:
        """Block until the page answers; the URL."""
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    return self.url
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    with open(self.log_path) as log:
                        raise RuntimeError(f"the demo server did not start:\n{log.read()[-3000:]}") from None
                time.sleep(0.3)

    def stop(self) -> None:
        """Ctrl-C (gradio closes the server; its temp folder is under the caller's workdir anyway), then a kill if it
        has not ended within a few seconds: it waits for the connections still open, which a test need not."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@contextlib.contextmanager
def demo_server(model_dir: str, workdir: str, extra: tuple[str, ...] = ()):
    """Run the demo server until the block ends; yields the URL once the page answers."""
    server = DemoServer(model_dir, workdir, extra)
    try:
        yield server.wait_until_serving()
    finally:
        server.stop()


def chrome(chromium: str, chromedriver: str, width: int = 1280, height: int = 1200):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.binary_location = chromium
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)


def upload(driver, url: str, paths: list[str], expect: str):
    """Open the page, give ``paths`` to the upload control and wait for ``expect`` (a CSS selector) to appear."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, PAGE_TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#hsp-upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#hsp-upload input[type=file]").send_keys("\n".join(paths))
    WebDriverWait(driver, PAGE_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, expect))


def set_number(driver, selector: str, value) -> None:
    """Type ``value`` into the number box of a gradio slider (``selector``: the slider's element id)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"{selector} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.ENTER)


def shown_rows(driver) -> list[dict]:
    """Every label row on the page: label, the score as displayed, the exact score, highlighted or not, its group."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#hsp-results .hsp-row')).map(row => ({
            label: row.dataset.label, exact: parseFloat(row.dataset.score),
            text: row.querySelector('.hsp-score').textContent, on: row.classList.contains('hsp-on'),
            group: row.closest('details').dataset.group}));
    """)


# ---------------------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model_dir(tiny_demo_model_dir):
    """A saved tiny HSPNet on the demo data's hierarchy, shared by the session (conftest.py)."""
    return tiny_demo_model_dir


@pytest.fixture(scope="module")
def started_server(demo_model_dir, tmp_path_factory):
    """The demo server process, started first so that it imports torch and gradio while the browser starts; stopped
    last, after the browser has closed its connections."""
    browser_paths()
    pytest.importorskip("selenium", reason="needs selenium (pip install -e \".[dev]\")")
    pytest.importorskip("gradio", reason="needs gradio (pip install -e \".[demo]\")")
    server = DemoServer(demo_model_dir, str(tmp_path_factory.mktemp("server")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(started_server):
    chromium, chromedriver = browser_paths()
    driver = chrome(chromium, chromedriver)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(browser, started_server):
    """The URL of the demo page, once it answers."""
    return started_server.wait_until_serving()


def test_page_shows_predicts_scores_and_the_controls_work(browser, server, demo_model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from hspnet.apps.predict import predict_images, select_labels
    from hspnet.data.demo import demo_hierarchy, draw_demo_image
    from hspnet.models.loading import load_model

    image, _ = draw_demo_image(0, "test", 7)
    path = str(tmp_path / "shapes.png")
    image.save(path)
    model, processor = load_model(demo_model_dir, device="cpu")
    expected = predict_images(model, processor, [path], threshold=None, top_k=12, all_scores=True,
                              progress=False)[0].scores
    hierarchy = demo_hierarchy()

    upload(browser, server, [path], "#hsp-results .hsp-row")
    rows = shown_rows(browser)
    assert sorted(row["label"] for row in rows) == sorted(hierarchy.labels)
    for row in rows:
        score = expected[row["label"]]
        assert abs(float(row["text"]) - score) <= 0.0005 + 1e-6, (row, score)  # the displayed 3 decimals
        assert row["exact"] == pytest.approx(score, abs=1e-5)
        assert row["group"] == hierarchy.groups[hierarchy.label_to_group[hierarchy.labels.index(row["label"])]]
    assert list(dict.fromkeys(row["group"] for row in rows)) == list(hierarchy.groups)
    assert browser.find_element(By.CSS_SELECTOR, "#hsp-results .hsp-file").text == "shapes.png"
    summary = browser.find_element(By.ID, "hsp-summary").text
    assert "12 labels in 3 groups" in summary and "round shape" in summary

    # threshold between the scores: the labels above it are highlighted; then top-k 2 keeps the best two of them
    scores = sorted(expected.values())
    threshold = round((scores[5] + scores[6]) / 2, 2)
    names = list(hierarchy.labels)
    values = [expected[name] for name in names]
    for control, value, k in (("#hsp-threshold", threshold, None), ("#hsp-topk", 2, 2)):
        want = {name for name, _ in select_labels(values, names, threshold, k)}
        set_number(browser, control, value)
        WebDriverWait(browser, PAGE_TIMEOUT).until(
            lambda d: {row["label"] for row in shown_rows(d) if row["on"]} == want)
    assert len(want) == 2


def test_page_shows_a_message_for_a_file_that_is_not_an_image(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "notes.txt"
    path.write_text("this is not an image\n")
    upload(browser, server, [str(path)], "#hsp-results .hsp-error")
    card = browser.find_element(By.CSS_SELECTOR, "#hsp-results .hsp-error").text
    assert "notes.txt: cannot read this file as an image (not a recognised image format)" in card
    status = browser.find_element(By.ID, "hsp-status").text
    assert "1 file could not be used" in status
    assert "Traceback" not in browser.page_source and "Error" not in status

    # a click on an example (a demo test image, the model has the demo labels) scores it
    browser.find_elements(By.CSS_SELECTOR, "#hsp-examples button.thumbnail-item")[0].click()
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#hsp-results .hsp-image[data-file="demo-test-00000.png"] .hsp-row'))
    assert not browser.find_elements(By.CSS_SELECTOR, "#hsp-results .hsp-error")


# ---------------------------------------------------------------------------------------------------------------------
# The screenshot for the README
# ---------------------------------------------------------------------------------------------------------------------


def take_screenshot(model_dir: str, output: str, indices=(3, 1), width: int = 1280) -> str:
    """Start the page for ``model_dir``, upload demo test images ``indices`` and save a PNG of the page (palette
    quantised so that it stays small)."""
    from PIL import Image

    from hspnet.data.demo import draw_demo_image

    chromium, chromedriver = browser_paths()
    with tempfile.TemporaryDirectory() as workdir, demo_server(model_dir, workdir) as url:
        paths = []
        for index in indices:
            path = os.path.join(workdir, f"demo-test-{index:05d}.png")
            draw_demo_image(0, "test", index)[0].save(path)
            paths.append(path)
        driver = chrome(chromium, chromedriver, width=width, height=900)
        try:
            upload(driver, url, paths, f"#hsp-results .hsp-image:nth-child({len(paths)})")
            time.sleep(1.0)  # let the progress animation finish
            for _ in range(3):  # grow the window until the whole page fits in the viewport
                content, viewport, outer = driver.execute_script(
                    "return [document.documentElement.scrollHeight, window.innerHeight, window.outerHeight]")
                if content <= viewport:
                    break
                driver.set_window_size(width, min(content + (outer - viewport), 2400))
                time.sleep(0.5)
            raw = os.path.join(workdir, "page.png")
            driver.save_screenshot(raw)
        finally:
            driver.quit()
        image = Image.open(raw).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=0)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        image.save(output, optimize=True)
    return output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=take_screenshot.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", default="docs/demo.png")
    args = parser.parse_args()
    print(take_screenshot(args.model, args.output), f"{os.path.getsize(args.output):,} bytes")

"""The live page (`oneforcing serve`) in a real headless Chromium, on the toy world's shipped causal
student: frames arrive with the latency and frames/s shown, a prompt typed mid-stream takes effect
(the frames turn to the new prompt's background), and the server survives a tab closed mid-stream.
Set ONEFORCING_SERVE_SCREENSHOT=FILE.png to keep a screenshot; docs/assets/serve.png is one, taken
with ONEFORCING_SERVE_CHECKPOINT=runs/demo/export (the `make demo` student; default: the shipped
toy causal ODE init)."""

import json
import os
import urllib.request

import pytest

from oneforcing.testing.browser import CHROMIUM, headless_chromium, served

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH "
                                "(apt-get install -y chromium chromium-driver; .ci/run does)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from oneforcing.config.assets import packaged_asset  # noqa: E402
from oneforcing.jobs.base import RunContext  # noqa: E402
from oneforcing.jobs.serve import ServeJob  # noqa: E402

RED_ON_BLACK = "a large red circle moving right slowly on a black background"
BLUE_ON_WHITE = "a large blue square moving up slowly on a white background"
# Mean brightness (0..255) of the frame shown, read back from the page through a canvas.
BRIGHTNESS = """const img = document.getElementById('frame'); const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4)
{ s += d[i] + d[i + 1] + d[i + 2]; } return s / (d.length / 4 * 3);"""


@pytest.fixture(scope="module")
def server():
    checkpoint = os.environ.get("ONEFORCING_SERVE_CHECKPOINT") or str(packaged_asset("toy_causal_ode_init"))
    job = ServeJob(checkpoint=checkpoint, prompt=RED_ON_BLACK)
    with served(job.create_app(RunContext(seed=0))) as (url, thread):
        yield url, thread


@pytest.fixture(scope="module")
def browser():
    with headless_chromium("--window-size=1180,820") as driver:
        yield driver


def status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/status", timeout=10) as r:
        return json.load(r)


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def type_prompt(driver, prompt: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt, Keys.ENTER)


def test_frames_switch_and_closed_tab(server, browser):
    url, thread = server
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    browser.get(url)
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == RED_ON_BLACK  # the job's default
    type_prompt(browser, RED_ON_BLACK)
    wait.until(lambda d: int(text(d, "frames")) >= 8)
    assert text(browser, "latency").endswith(" ms") and int(text(browser, "latency").split()[0]) < 10_000
    wait.until(lambda d: text(d, "fps") not in ("", "–"))
    assert 2 < float(text(browser, "fps")) < 40  # paced to 16 frames/s
    assert float(text(browser, "genfps")) > 0
    assert text(browser, "now") == RED_ON_BLACK
    dark = browser.execute_script(BRIGHTNESS)

    # A new prompt mid-stream: the same video goes on, now under the new prompt.
    before = int(text(browser, "frames"))
    type_prompt(browser, BLUE_ON_WHITE)
    wait.until(lambda d: d.find_element(By.ID, "frame").get_attribute("data-prompt") == BLUE_ON_WHITE)
    assert int(text(browser, "frames")) > before and text(browser, "latency") != "–"  # not restarted
    wait.until(lambda d: text(d, "switch").endswith(")"))
    wait.until(lambda d: d.execute_script(BRIGHTNESS) > dark + 60)  # black background -> white
    switched = int(text(browser, "frames"))
    wait.until(lambda d: int(text(d, "frames")) >= switched + 12)  # settled, for the screenshot
    if os.environ.get("ONEFORCING_SERVE_SCREENSHOT"):
        browser.save_screenshot(os.environ["ONEFORCING_SERVE_SCREENSHOT"])

    # A second tab streams, then closes mid-stream: its stream ends, the server and the first tab go on.
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(url)
    type_prompt(browser, RED_ON_BLACK)
    wait.until(lambda d: int(text(d, "frames")) >= 3)
    assert status(url)["open_streams"] == 2
    browser.close()
    browser.switch_to.window(first)
    WebDriverWait(browser, 15, poll_frequency=0.1).until(lambda d: status(url)["open_streams"] == 1)
    shown = int(text(browser, "frames"))
    wait.until(lambda d: int(text(d, "frames")) >= shown + 8)
    assert thread.is_alive()
    browser.find_element(By.ID, "stop").click()
    WebDriverWait(browser, 15, poll_frequency=0.1).until(lambda d: status(url)["open_streams"] == 0)

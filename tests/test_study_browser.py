"""The preference study in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium): load, both clips auto-playing on loop, vote with the keyboard and the mouse, reload and
resume, finish, export Table 2. Set ONEFORCING_STUDY_SCREENSHOT=FILE.png to keep a screenshot."""

import os
import shutil
import socket
import threading
import time

import pytest

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH "
                                "(apt-get install -y chromium chromium-driver; .ci/run does)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from oneforcing.study import QUESTION  # noqa: E402
from oneforcing.study.app import create_app  # noqa: E402
from oneforcing.study.design import build_design  # noqa: E402
from oneforcing.study.store import StudyStore  # noqa: E402
from oneforcing.testing.study_videos import write_prompts, write_study_folders  # noqa: E402

PROMPTS = ["a red circle moving left", "a blue square moving up"]


@pytest.fixture
def server(tmp_path):
    import uvicorn

    folders = write_study_folders(tmp_path / "videos", systems=("ours", "sf1", "asd"), prompts=PROMPTS)
    design = build_design(folders, str(write_prompts(tmp_path / "prompts.txt", PROMPTS)), seed=0)
    store = StudyStore.open(tmp_path / "study.sqlite", design)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(store, design), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    assert uv.started
    yield f"http://127.0.0.1:{port}", store
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    driver_bin = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    assert os.path.exists(driver_bin), "chromium is installed but chromedriver is not: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,860", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for_progress(driver, rated, total):
    WebDriverWait(driver, 15).until(
        lambda d: d.find_element(By.ID, "progress-text").text == f"{rated} / {total} pairs rated")


def shown_pair(driver) -> int:
    return driver.execute_script("return current && current.pair && current.pair.id")


def both_clips_playing(driver) -> bool:
    return driver.execute_script("""
        return ["left", "right"].every((id) => { const v = document.getElementById(id);
            return v.readyState >= 2 && !v.paused && v.currentTime > 0 && v.loop && v.muted && v.videoWidth == 64; });""")


def test_vote_with_keyboard_and_mouse_reload_finish_export(server, browser, tmp_path):
    base, store = server
    total = len(store.pairs)
    assert total == 4
    browser.get(base)
    name = browser.find_element(By.ID, "name-input")
    assert name.is_displayed()
    name.send_keys("alice", Keys.ENTER)
    wait_for_progress(browser, 0, total)
    assert browser.find_element(By.ID, "question").text == QUESTION
    WebDriverWait(browser, 20).until(both_clips_playing)
    first = shown_pair(browser)
    assert first == store.order("alice")[0]
    assert browser.find_element(By.ID, "prompt-text").text == store.pairs[first].prompt
    if os.environ.get("ONEFORCING_STUDY_SCREENSHOT"):
        browser.save_screenshot(os.environ["ONEFORCING_STUDY_SCREENSHOT"])

    cast = []  # (pair id, choice) in the order they were cast
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()          # keyboard: left
    cast.append((first, "left"))
    wait_for_progress(browser, 1, total)
    second = shown_pair(browser)
    assert second not in (None, first)
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "vote-right")).click().perform()  # mouse
    cast.append((second, "right"))
    wait_for_progress(browser, 2, total)

    browser.refresh()  # resumes as alice, at the first pair she has not rated
    wait_for_progress(browser, 2, total)
    assert browser.find_element(By.ID, "name").text == "alice"
    third = shown_pair(browser)
    assert third == store.order("alice")[2]
    WebDriverWait(browser, 20).until(both_clips_playing)
    ActionChains(browser).send_keys("2").perform()                      # keyboard: tie
    cast.append((third, "tie"))
    wait_for_progress(browser, 3, total)
    fourth = shown_pair(browser)
    browser.find_element(By.ID, "vote-left").click()                     # mouse: left
    cast.append((fourth, "left"))
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "done").is_displayed())
    assert browser.find_element(By.ID, "done").text.startswith(f"All {total} pairs rated")
    assert not browser.find_element(By.ID, "study").is_displayed()
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()          # nothing left to vote on
    time.sleep(0.3)
    assert [(p, c) for _, p, c, _ in store.votes()] == cast  # every vote once, as cast

    expected = {"sf1": [0, 0, 0], "asd": [0, 0, 0]}
    for pair_id, choice in cast:
        pair = store.pairs[pair_id]
        shown = pair.left if choice == "left" else pair.right
        expected[pair.baseline][1 if choice == "tie" else 0 if shown == "ours" else 2] += 1
    assert browser.find_element(By.ID, "export-csv").get_attribute("href") == f"{base}/export.csv"
    browser.get(f"{base}/export.csv")
    rows = [line.split(",") for line in browser.find_element(By.TAG_NAME, "body").text.splitlines()[1:]]
    assert {r[1]: [int(x) for x in r[2:5]] for r in rows} == expected
    browser.get(f"{base}/export.md")
    assert "| comparison | wins | ties | losses | decided | win rate | 95 % interval |" in \
        browser.find_element(By.TAG_NAME, "body").text

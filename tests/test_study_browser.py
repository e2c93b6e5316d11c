"""The preference study in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium) against the `study` job run as a server process, with a roster: the consent screen, the
input lock (a double key press or double click records one vote, and nothing before both clips
play), reload and resume, two annotators side by side, a stale second tab, a clip that fails to load,
kill -9 of the server mid-vote, no side channel in headers or page, and a phone-sized viewport.
Set ONEFORCING_STUDY_SCREENSHOT=FILE.png to keep a screenshot of a pair."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

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
from oneforcing.study.protocol import annotator_token  # noqa: E402
from oneforcing.study.store import StudyStore  # noqa: E402
from oneforcing.testing.study_videos import write_prompts, write_study_folders  # noqa: E402

PROMPTS = ["a red circle moving left", "a blue square moving up", "two green triangles moving right"]
SYSTEMS = ("one_forcing", "self_forcing")  # names the page must never show
ROSTER = ["alice", "bob", "carol", "dave"]
LOCK_S = 1.0


class Server:
    """The `study` job in its own process, so that it can be killed with SIGKILL and started again."""

    def __init__(self, root):
        folders = write_study_folders(root / "videos", SYSTEMS, PROMPTS)
        (root / "roster.txt").write_text("".join(f"{name}\n" for name in ROSTER))
        self.folders, self.db = folders, root / "study.sqlite"
        self.args = ["systems={" + ", ".join(f"{k}: {v}" for k, v in folders.items()) + "}",
                     f"prompts={write_prompts(root / 'prompts.txt', PROMPTS)}", f"db={self.db}",
                     f"roster={root / 'roster.txt'}", "repeats=1", f"lock_s={LOCK_S}", "instructions=Rate them."]
        with socketless_port() as port:
            self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "a")
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "oneforcing.cli", "study", *self.args,
                                      f"port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}"
            try:
                urllib.request.urlopen(self.base + "/", timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        raise AssertionError("server did not start in 60 s")

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def link(self, name):
        return f"{self.base}/?t={annotator_token(self.store.secret, name)}"

    @property
    def store(self):
        return StudyStore(self.db)

    def votes(self, name):
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT slot, choice, client_ms, watched_left, watched_right FROM votes "
                                "WHERE annotator = ? ORDER BY id", (name,)).fetchall()


class socketless_port:
    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("study"))
    yield srv
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGINT)
        srv.proc.wait(timeout=30)
    srv.log.close()


@pytest.fixture(scope="module")
def browser():
    driver_bin = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    assert os.path.exists(driver_bin), "chromium is installed but chromedriver is not: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                "--disable-background-networking", "--disable-extensions", "--window-size=1280,860",
                "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def text(driver, id_):
    return driver.find_element(By.ID, id_).text


def wait_rated(driver, rated, total=4):  # polled often: the lock after a new pair is only LOCK_S long
    WebDriverWait(driver, 20, poll_frequency=0.05).until(lambda d: text(d, "progress-text") == f"{rated} / {total} pairs rated")


def slot(driver):
    return driver.execute_script("return current && current.pair && current.pair.slot")


def enabled(driver):
    return driver.find_element(By.ID, "vote-left").is_enabled()


def open_as(driver, server, name):
    driver.get(server.link(name))
    WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "intro").is_displayed()
                                    or d.find_element(By.ID, "study").is_displayed())
    if driver.find_element(By.ID, "intro").is_displayed():
        assert "Rate them." in text(driver, "instructions")
        driver.find_element(By.ID, "agree").click()
        driver.find_element(By.ID, "begin").click()
    WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "study").is_displayed())


def vote_when_open(driver, key):
    WebDriverWait(driver, 20).until(enabled)
    ActionChains(driver).send_keys(key).perform()


def test_lock_double_input_reload_two_annotators_stale_tab_and_kill_9(server, browser):
    open_as(browser, server, "alice")
    assert text(browser, "question") == QUESTION and text(browser, "name") == "alice"
    wait_rated(browser, 0)
    first = slot(browser)
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()  # before the clips play and the lock ends
    assert not enabled(browser)
    WebDriverWait(browser, 20, poll_frequency=0.05).until(enabled)
    assert server.votes("alice") == []
    # both clips play, looped and muted, at their size; polled because a looping clip reads currentTime 0 at the
    # instant it wraps (CI saw one such read under load)
    WebDriverWait(browser, 10, poll_frequency=0.05).until(lambda d: d.execute_script(
        """return ["left", "right"].every((id) => { const v = document.getElementById(id);
        return !v.paused && v.currentTime > 0 && v.loop && v.muted && v.videoWidth == 64; });"""),
        message="the two clips are not both playing, looped and muted at 64 px")
    if os.environ.get("ONEFORCING_STUDY_SCREENSHOT"):
        browser.save_screenshot(os.environ["ONEFORCING_STUDY_SCREENSHOT"])

    # a double key press 100 ms apart, then a double click: one vote each, none on the next pair
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).pause(0.1).send_keys(Keys.ARROW_LEFT).perform()
    wait_rated(browser, 1)
    second = slot(browser)
    assert second != first and not enabled(browser)
    time.sleep(0.4)
    assert [v[:2] for v in server.votes("alice")] == [(first, "left")]
    WebDriverWait(browser, 20).until(enabled)
    ActionChains(browser).double_click(browser.find_element(By.ID, "vote-right")).perform()
    wait_rated(browser, 2)
    time.sleep(0.4)
    votes = server.votes("alice")
    assert [v[:2] for v in votes] == [(first, "left"), (second, "right")]
    assert all(v[2] >= 1000 * LOCK_S and 0 < v[3] <= 1 and 0 < v[4] <= 1 for v in votes), votes  # time, watched

    browser.refresh()  # resumes as alice, at her first unrated pair
    wait_rated(browser, 2)
    third = slot(browser)
    assert third == 2 and text(browser, "name") == "alice"
    alice_tab = browser.current_window_handle

    browser.switch_to.new_window("tab")  # bob, at the same time
    open_as(browser, server, "bob")
    wait_rated(browser, 0)
    vote_when_open(browser, "2")
    wait_rated(browser, 1)
    assert [v[:2] for v in server.votes("bob")] == [(0, "tie")]
    bob_tab = browser.current_window_handle

    browser.switch_to.new_window("tab")  # a second tab of alice's votes on the pair her first tab shows
    browser.get(server.link("alice"))
    wait_rated(browser, 2)
    vote_when_open(browser, "3")
    wait_rated(browser, 3)
    browser.close()
    browser.switch_to.window(alice_tab)
    vote_when_open(browser, "1")  # the stale tab: told, not silently dropped, and moved on
    WebDriverWait(browser, 10).until(lambda d: "already been rated" in text(d, "notice"))
    wait_rated(browser, 3)
    assert [v[:2] for v in server.votes("alice")][2:] == [(third, "right")]

    # kill -9 the server as a vote is sent, start it again: the vote is stored once or not at all,
    # the page says so, and the session resumes where the database says it stands
    WebDriverWait(browser, 20).until(enabled)
    browser.find_element(By.ID, "vote-left").click()
    try:
        server.kill()
        # two outcomes race: the answer came before the kill (the last pair: the done screen) or the connection
        # dropped (the page says the vote was not saved); either way the page settles and says which
        WebDriverWait(browser, 10, poll_frequency=0.05).until(lambda d: d.find_element(By.ID, "done").is_displayed()
                                                              or "Vote not saved" in text(d, "error"),
                                                              message="the page never settled after the kill")
    finally:
        if server.proc.poll() is not None:
            server.start()  # the module's other tests share this server
    browser.refresh()
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "done").is_displayed()
                                     or text(d, "progress-text") == "3 / 4 pairs rated")
    if not browser.find_element(By.ID, "done").is_displayed():
        vote_when_open(browser, "1")
    WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "done").is_displayed())
    code = text(browser, "code")
    assert len(code) == 8 and code.isalnum()
    slots = [v[0] for v in server.votes("alice")]
    assert sorted(slots) == [0, 1, 2, 3]  # none lost, none doubled
    browser.switch_to.window(bob_tab)
    browser.close()
    browser.switch_to.window(browser.window_handles[0])


def test_a_clip_that_fails_to_load_blocks_the_vote(server, browser):
    store = server.store
    pair_id, repeat = store.sequence("carol")[0]
    pair = store.pairs[pair_id]
    clip = os.path.join(server.folders[store.sides("carol", pair_id, repeat)[1]], f"{pair.prompt}-0.mp4")
    os.rename(clip, clip + ".away")  # gone after start-up: the server answers 404
    try:
        open_as(browser, server, "carol")
        WebDriverWait(browser, 15).until(lambda d: "did not load" in text(d, "error"))
        time.sleep(LOCK_S + 0.3)
        assert not enabled(browser)
        ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
        time.sleep(0.3)
        assert server.votes("carol") == []
    finally:
        os.rename(clip + ".away", clip)
    browser.refresh()
    vote_when_open(browser, Keys.ARROW_RIGHT)
    wait_rated(browser, 1)


def test_no_side_channel_in_headers_page_or_results(server, browser):
    open_as(browser, server, "carol")
    WebDriverWait(browser, 20).until(enabled)
    heads = browser.execute_async_script("""const done = arguments[0];
        Promise.all(["left", "right"].map((s) => fetch(current.pair[s]).then(async (r) =>
            ({status: r.status, headers: Object.fromEntries(r.headers), size: (await r.arrayBuffer()).byteLength}))))
        .then(done);""")
    assert [h["status"] for h in heads] == [200, 200] and heads[0]["size"] == heads[1]["size"]
    for h in heads:
        assert not {"etag", "last-modified"} & set(h["headers"]), h
        assert h["headers"]["cache-control"] == "no-store" and h["headers"]["content-length"] == str(h["size"])
    page = browser.page_source + browser.execute_script("return JSON.stringify(current)")
    for secret in (*SYSTEMS, *server.folders.values(), str(server.db)):
        assert secret not in page, secret
    for name in ("table2.md", "votes.jsonl"):
        browser.get(f"{server.base}/export/{name}")
        assert "owner" in browser.find_element(By.TAG_NAME, "body").text  # 403 until the study closes


def test_a_phone_sized_viewport(server, browser):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    try:
        open_as(browser, server, "dave")
        WebDriverWait(browser, 20).until(enabled)
        box = browser.execute_script("""const r = (id) => document.getElementById(id).getBoundingClientRect();
            return {scroll: document.documentElement.scrollWidth, width: innerWidth, height: innerHeight,
                    left: r("left"), right: r("right"), tie: r("vote-tie")};""")
        assert box["width"] == 390 and box["scroll"] <= box["width"]  # nothing runs off the side
        assert box["left"]["right"] <= box["right"]["left"] and box["right"]["right"] <= 390  # side by side
        assert box["left"]["width"] > 150 and box["tie"]["bottom"] <= box["height"]  # all on one screen
        browser.find_element(By.ID, "vote-tie").click()
        wait_rated(browser, 1)
        assert [v[:2] for v in server.votes("dave")] == [(0, "tie")]
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

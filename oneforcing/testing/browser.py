"""Browser tests' plumbing: an ASGI app served by uvicorn on a free loopback port in a thread, and
a headless Chromium driven by Selenium (Debian's `chromium` + `chromium-driver`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage")


@contextlib.contextmanager
def served(app, start_timeout: float = 30.0):
    """Yields (base URL, the server's thread) while `app` is served on 127.0.0.1."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + start_timeout
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"uvicorn did not start within {start_timeout} s")
    try:
        yield f"http://127.0.0.1:{port}", thread
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def headless_chromium(*extra_flags: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_bin = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not os.path.exists(driver_bin):
        raise RuntimeError("chromium is installed but chromedriver is not: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_FLAGS, *extra_flags):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()

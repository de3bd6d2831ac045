"""A real browser and a real `controller serve` for the tests that look at pages as a person does."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service

from tests.conftest import BIN
from tests.support.daemon import wait_for

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def mid_navigation(error: WebDriverException) -> bool:
    """Whether reading the page failed only because a navigation (a form's redirect, a live update) replaced the
    document under the read: an element gone stale, no body yet, or Chromium saying the node "does not belong to
    the document" (a plain WebDriverException)."""
    return (isinstance(error, (StaleElementReferenceException, NoSuchElementException))
            or "does not belong to the document" in str(error.msg))


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """One headless Chromium, driven through Debian's chromedriver (nothing is downloaded)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """The status and body of one HTTP request (a redirect is an answer, not followed)."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def served(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real `controller serve` on 127.0.0.1:``port``."""
    log = config.parent / "serve.log"
    env = {**os.environ, "CONTROLLER_CONFIG": str(config)}
    with open(log, "w") as output:
        proc = subprocess.Popen([str(BIN / "controller"), "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                                stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for("the dashboard", lambda: _answers(proc, f"http://127.0.0.1:{port}/healthz"), timeout=30)
        yield proc
    except BaseException:
        print(log.read_text())
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _answers(proc: subprocess.Popen[bytes], url: str) -> bool:
    assert proc.poll() is None, "controller serve exited"
    try:
        return request(url)[0] == 200
    except OSError:
        return False

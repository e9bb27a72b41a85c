"""Open a page in headless Chromium: its DOM after scripts ran, its console messages, a screenshot.

Chromium is run twice: once with ``--dump-dom`` (the DOM after ``--virtual-time-budget`` of page
time, so load handlers have run) and once with ``--screenshot``. Console output reaches us only
through ``--enable-logging=stderr``; Chromium 156 prints every console call, whatever its level,
and every uncaught exception as

    [pid:tid:MMDD/HHMMSS.micros:INFO:CONSOLE:12] "Uncaught Error: boom", source: file:///x.html (12)

(older builds wrote ``INFO:CONSOLE(12)]``). The level is not printed, so every console message
counts as an error here: a report page writes nothing to the console when all is well.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60
REQUIRE_ENV = "CAN_TF_REQUIRE_BROWSER"

_CONSOLE = re.compile(
    r':CONSOLE(?::(?P<line1>\d+)|\((?P<line2>\d+)\))\]\s*"(?P<message>.*)", source: (?P<source>.*?)'
    r"(?: \((?P<line3>\d+)\))?\s*$"
)


@dataclasses.dataclass(frozen=True)
class ConsoleMessage:
    """One console message or uncaught exception as Chromium logged it."""

    message: str
    source: str
    line: Optional[int]

    def __str__(self) -> str:
        return f"{self.message} ({self.source}:{self.line})"


@dataclasses.dataclass(frozen=True)
class BrowserResult:
    dom: str
    console_errors: list
    screenshot: Path


def find_chromium() -> Optional[str]:
    """Path of a Chromium / Chrome binary on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The browser's path; skips the test without one unless CAN_TF_REQUIRE_BROWSER=1 (then fails)."""
    path = find_chromium()
    if path is None:
        reason = (f"no headless browser found (looked for {', '.join(CANDIDATES)} on PATH); "
                  f"install chromium to run the browser checks")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1 makes this an error)")
        pytest.skip(reason)
    return path


def parse_console(stderr: str) -> list:
    """Console messages and uncaught exceptions from Chromium's ``--enable-logging=stderr`` output."""
    messages = []
    for line in stderr.splitlines():
        if "CONSOLE" not in line and "Uncaught" not in line:
            continue
        match = _CONSOLE.search(line)
        if match is None:
            messages.append(ConsoleMessage(line.strip(), "", None))
            continue
        number = match.group("line3") or match.group("line1") or match.group("line2")
        messages.append(ConsoleMessage(match.group("message"), match.group("source"),
                                       int(number) if number else None))
    return messages


def _run(browser: str, args: list, profile: str):
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=5000", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def render_in_browser(html_path, screenshot_path, width: int = 1280, height: int = 2400,
                      browser: Optional[str] = None) -> BrowserResult:
    """Loads ``html_path`` in headless Chromium; returns its final DOM, console errors, screenshot."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium binary on PATH")
    url = Path(html_path).resolve().as_uri()
    screenshot_path = Path(screenshot_path).resolve()
    errors = []
    with tempfile.TemporaryDirectory(prefix="can-tf-chromium-") as profile:
        dump = _run(browser, ["--dump-dom", url], os.path.join(profile, "dom"))
        if dump.returncode != 0:
            raise RuntimeError(f"chromium --dump-dom exited {dump.returncode}: {dump.stderr[-2000:]}")
        errors += parse_console(dump.stderr)
        shot = _run(browser, [f"--screenshot={screenshot_path}", f"--window-size={width},{height}",
                              "--hide-scrollbars", url], os.path.join(profile, "shot"))
        if shot.returncode != 0 or not screenshot_path.is_file():
            raise RuntimeError(f"chromium --screenshot exited {shot.returncode}: {shot.stderr[-2000:]}")
        errors += parse_console(shot.stderr)
    return BrowserResult(dom=dump.stdout, console_errors=errors, screenshot=screenshot_path)

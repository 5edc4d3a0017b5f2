"""A real browser for the page tests: Debian's chromium driven by Playwright.

Playwright's own browser download is not reachable here, so it launches the system browser
(``executable_path``; scripts/install-test-deps.sh installs ``chromium``). Without chromium or
Playwright the tests skip, except under ``VEIL_REQUIRE_BROWSER=1`` (.ci/run), where they fail.

``watch(page)`` records what a page did that it must not: console errors (a CSP violation is
one), requests to any other origin, uncaught exceptions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

#: Debian's wrapper script is /usr/bin/chromium; the browser binary itself lives here.
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def chromium_path() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name) if not name.startswith("/") else (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def _unavailable(why: str) -> None:
    if os.environ.get("VEIL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VEIL_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (the test extra has it)")
    path = chromium_path()
    if path is None:
        _unavailable("no chromium (scripts/install-test-deps.sh installs it)")
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium refuses its own sandbox
        b = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Watch:
    origin: str
    console_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def clean(self) -> None:
        assert not self.foreign_requests, self.foreign_requests
        assert not self.page_errors, self.page_errors
        assert not self.console_errors, self.console_errors


def watch(page: Any, url: str) -> Watch:
    parts = urlsplit(url)
    w = Watch(f"{parts.scheme}://{parts.netloc}")
    page.on("console", lambda m: w.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: w.page_errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(w.origin + "/") else w.foreign_requests.append(r.url))
    return w

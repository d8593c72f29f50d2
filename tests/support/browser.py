"""Headless Chromium for the browser tests: Debian's ``chromium``, driven by Playwright.

Playwright drives the system browser through ``executable_path`` (its own
browser download is never used). Each Chromium starts with an empty profile
directory and the flags below, so it reaches nothing but the pages the test
opens on 127.0.0.1. Where Chromium or Playwright is missing the tests are
skipped — except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["FLAGS", "chromium_path", "playwright_session"]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _missing(what: str) -> None:
    message = f"{what} is needed for the browser tests"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (in CI a missing browser is a failure)")
    pytest.skip(message)


def chromium_path() -> str:
    """The system Chromium; skip (fail in CI) when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("Chromium (apt-get install chromium chromium-driver)")
    assert found is not None
    return found


@contextmanager
def playwright_session() -> Iterator[Callable[..., Any]]:
    """``launch(profile, **options)``: a Playwright browser context of a new headless
    Chromium using ``profile`` (created empty) as its user data dir. All are closed at
    the end."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright (pip install -e '.[test]')")
    executable = chromium_path()
    with sync_playwright() as playwright:
        opened: list[Any] = []

        def launch(profile: Path, **options: Any) -> Any:
            profile.mkdir(parents=True, exist_ok=False)
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=executable, headless=True, args=FLAGS,
                accept_downloads=True, **options,
            )
            opened.append(context)
            return context

        try:
            yield launch
        finally:
            for context in opened:
                context.close()

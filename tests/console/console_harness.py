"""Headless Chromium (Debian's `chromium`, driven by Playwright; never a downloaded browser) on the console,
screenshots saved as test artifacts, and the check whether a gateway serves the Realtime WebSocket."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DEBIAN_CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("AISTACK_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts") / "console"
# Clicking "Start listening" or "Record" must not wait for a permission prompt nobody answers.
FAKE_MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


def chromium_path() -> str:
    found = shutil.which("chromium") or (DEBIAN_CHROMIUM if os.access(DEBIAN_CHROMIUM, os.X_OK) else None)
    if found is None:
        pytest.fail("Chromium is not installed; `make system-deps` (run by `make test`) installs it (apt-get install chromium)",
                    pytrace=False)
    return found


@contextmanager
def chromium(fake_microphone: Path | None = None) -> Iterator[object]:
    """One headless Chromium for a module; with `fake_microphone`, its microphone plays that WAV (looping)."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", *FAKE_MEDIA]
    if fake_microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_microphone}")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium_path(), args=args, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def console_page(browser, url: str, tab: str = "models", width: int = 1280, height: int = 900) -> Iterator[object]:
    """A fresh tab (its own sessionStorage) on the console; fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{url}/#{tab}")
    try:
        yield page
    finally:
        context.close()
    assert not script_errors, script_errors


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def realtime_refusal(base_url: str) -> str | None:
    """None when the gateway accepts a Realtime transcription WebSocket, else why not."""
    from websockets.exceptions import InvalidHandshake
    from websockets.sync.client import connect

    try:
        with connect(base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription", open_timeout=10):
            return None
    except (InvalidHandshake, OSError) as error:
        return f"this gateway does not serve the Realtime WebSocket /v1/realtime ({error})"

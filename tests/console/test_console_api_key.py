"""With an API key set, the console asks for it once, keeps it for the tab (sessionStorage, never in a URL)
and works once it is given; a wrong key is asked for again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from console_harness import chromium, console_page, screenshot

pytestmark = pytest.mark.slow

KEY = "console-test-key-7f3a"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as running:
        yield running


def test_the_console_asks_for_the_key_once_and_then_works(make_inprocess_gateway, browser) -> None:
    from playwright.sync_api import expect

    gateway = make_inprocess_gateway(api_key=KEY)
    with gateway.client() as client:
        assert client.get("/v1/models").status_code == 401  # the page below really has to send it
    with console_page(browser, gateway.url, "models") as page:
        page.on("request", lambda request: requests.append(request))
        requests: list = []
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible(timeout=30_000)
        screenshot(page, "api-key")
        page.get_by_label("Key", exact=True).fill("not-the-key")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-refused")).to_be_visible()  # refused: asked again, saying so
        expect(dialog).to_be_visible()
        # By keyboard: the question has the focus, Enter answers it.
        expect(page.get_by_label("Key", exact=True)).to_be_focused()
        page.keyboard.type(KEY)
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(page.locator('#models-table tr[data-model="whisper-tiny.en"] td.state')).to_have_text("unloaded", timeout=30_000)
        assert page.evaluate("sessionStorage.getItem('aistack.apiKey')") == KEY
        # Later requests carry it without asking again, in a header and never in a URL.
        page.get_by_role("tab", name="Speak").click()
        expect(page.locator('#speak-voice option[value="en_US-joe-medium"]')).to_have_count(1, timeout=30_000)
        expect(dialog).to_be_hidden()
        api_calls = [r for r in requests if "/v1/" in r.url or "/admin/" in r.url]
        assert api_calls and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in api_calls[-3:])
        assert not any(KEY in r.url for r in requests)
        assert KEY not in page.url

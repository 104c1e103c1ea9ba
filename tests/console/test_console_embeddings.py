"""The Embeddings panel shows the cosine similarity of the two texts' vectors, on the in-process
all-MiniLM-L6-v2 (its vectors for the two texts fetched over HTTP by the test)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from console_harness import chromium, console_page, screenshot

pytestmark = pytest.mark.slow

FIRST, SECOND = "A cat sleeps on the sofa.", "A kitten naps on the couch."
MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as running:
        yield running


def test_the_cosine_similarity_of_two_texts(make_inprocess_gateway, browser) -> None:
    from playwright.sync_api import expect

    gateway = make_inprocess_gateway()
    with gateway.client() as client:
        answer = client.post("/v1/embeddings", json={"model": MODEL, "input": [FIRST, SECOND]})
    assert answer.status_code == 200, answer.text
    a, b = (np.array(item["embedding"]) for item in answer.json()["data"])
    expected = float(a @ b / np.sqrt((a @ a) * (b @ b)))
    with console_page(browser, gateway.url, "chat") as page:
        # Embedding models come first in the picker.
        expect(page.locator("#embed-model option").first).to_have_attribute("value", MODEL, timeout=30_000)
        page.fill("#embed-a", FIRST)
        page.fill("#embed-b", SECOND)
        page.get_by_role("button", name="Compare").click()
        result = page.locator("#embed-result")
        expect(result).to_have_text(re.compile(rf"^cosine similarity -?\d\.\d{{4}} \({a.size} dimensions\)$"), timeout=30_000)
        shown = float(result.inner_text().split()[2])
        expect(page.locator("#embed-error")).to_be_hidden()
        screenshot(page, "embeddings")
    assert abs(shown - expected) <= 0.00005 + 1e-9, (shown, expected)

"""The Embeddings panel shows the cosine similarity of the two texts' vectors. No embedding model runs
here, so the upstream is the Ollama double (tests/doubles/), whose vectors the test knows."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from console_harness import chromium, console_page, screenshot

from aistack.settings import LlmSettings, OllamaSettings
from doubles.ollama_server import OllamaDouble

pytestmark = pytest.mark.slow

FIRST, SECOND = "A cat sleeps on the sofa.", "A kitten naps on the couch."


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as running:
        yield running


def test_the_cosine_similarity_of_two_texts(make_inprocess_gateway, browser) -> None:
    from playwright.sync_api import expect

    with OllamaDouble() as ollama:
        gateway = make_inprocess_gateway(llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)))
        a, b = (np.array(ollama.embedding_for(text)) for text in (FIRST, SECOND))
        expected = float(a @ b / np.sqrt((a @ a) * (b @ b)))
        with console_page(browser, gateway.url, "chat") as page:
            # Embedding models come first in the picker.
            expect(page.locator("#embed-model option").first).to_have_attribute("value", "nomic-embed-text:latest", timeout=30_000)
            page.fill("#embed-a", FIRST)
            page.fill("#embed-b", SECOND)
            page.get_by_role("button", name="Compare").click()
            result = page.locator("#embed-result")
            expect(result).to_have_text(re.compile(rf"^cosine similarity -?\d\.\d{{4}} \({a.size} dimensions\)$"), timeout=30_000)
            shown = float(result.inner_text().split()[2])
            expect(page.locator("#embed-error")).to_be_hidden()
            screenshot(page, "embeddings")
    assert abs(shown - expected) <= 0.00005 + 1e-9, (shown, expected)

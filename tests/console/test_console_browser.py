"""The web console in headless Chromium against a real gateway (`aistack serve --port 0`) with Whisper,
Piper and the embedded llama.cpp server on SmolLM2: every tab does its job on the real engines."""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_harness import chromium, console_page, realtime_refusal, screenshot

from conftest import Gateway, start_gateway, stop_gateway, wait_until
from llm_fixtures import SMOLLM2_ALIAS, smollm2_gguf

pytestmark = pytest.mark.slow

SPOKEN = "The console speaks this sentence aloud, and the browser plays it while it streams."
TIMEOUT_MS = 120_000  # engines load on first use on a shared CPU: the deadline is generous, the wait is on the DOM


@pytest.fixture(scope="module")
def console_gateway(models_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {
        "AISTACK_LLM__EMBEDDED__GGUF": str(smollm2_gguf()),
        "AISTACK_LLM__EMBEDDED__MODEL_ALIAS": SMOLLM2_ALIAS,
        "AISTACK_LLM__OLLAMA__ENABLED": "false",
        # Without Piper's noise the same text gives the same audio, so the page's and the test's match.
        "AISTACK_TTS__PIPER__NOISE_SCALE": "0",
        "AISTACK_TTS__PIPER__NOISE_W_SCALE": "0",
    }
    gateway = start_gateway(models_cache, tmp_path_factory.mktemp("console-gateway"), env)
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


@pytest.fixture(scope="module")
def microphone_wav(english_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Piper sentence and then 2 s of silence: Chromium's fake microphone loops it, and the pause
    lets a voice-activity detector end each turn."""
    with wave.open(str(english_wav)) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
    path = tmp_path_factory.mktemp("microphone") / "sentence-then-silence.wav"
    with wave.open(str(path), "wb") as padded:
        padded.setparams(params)
        padded.writeframes(frames + b"\0" * (2 * params.framerate * params.sampwidth * params.nchannels))
    return path


@pytest.fixture(scope="module")
def browser(microphone_wav: Path) -> Iterator[object]:
    with chromium(fake_microphone=microphone_wav) as running:
        yield running


def test_models_tab_lists_models_and_unloads_and_loads_one(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_page(browser, console_gateway.url, "models") as page:
        row = page.locator('#models-table tr[data-model="whisper-tiny.en"]')
        state = row.locator("td.state")
        expect(state).to_have_text("unloaded", timeout=TIMEOUT_MS)
        expect(page.locator('#models-table tr[data-model="auto"] td.state')).to_have_text("routes per request")
        expect(page.locator('#models-table tr[data-model="piper"]')).to_contain_text("tts")
        row.get_by_role("button", name="Load whisper-tiny.en").click()
        expect(state).to_have_text("loaded", timeout=TIMEOUT_MS)
        expect(row).to_contain_text("cpu")
        with console_gateway.client() as client:  # the page shows what the gateway says
            rows = {r["id"]: r for r in client.get("/admin/models").json()["data"]}
        assert rows["whisper-tiny.en"]["state"] == "loaded"
        screenshot(page, "models")
        row.get_by_role("button", name="Unload whisper-tiny.en").click()
        expect(state).to_have_text("unloaded", timeout=TIMEOUT_MS)
        # A change made elsewhere shows up by itself, without touching the page.
        with console_gateway.client() as client:
            assert client.post("/admin/models/whisper-tiny.en/load").json()["state"] == "loaded"
        expect(state).to_have_text("loaded", timeout=TIMEOUT_MS)
        with console_gateway.client() as client:
            assert client.post("/admin/models/whisper-tiny.en/unload").json()["state"] == "unloaded"
        expect(state).to_have_text("unloaded", timeout=TIMEOUT_MS)


def test_transcribe_tab_streams_the_words_of_a_piper_wav_and_offers_subtitles(console_gateway: Gateway, browser,
                                                                             english_wav: Path) -> None:
    from playwright.sync_api import expect

    with console_page(browser, console_gateway.url, "transcribe") as page:
        expect(page.locator('#transcribe-model option[value="whisper-tiny.en"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#transcribe-language", "de")  # the picker keeps the models that know the language
        expect(page.locator('#transcribe-model option[value="whisper-base"]')).to_have_count(1)
        expect(page.locator('#transcribe-model option[value="whisper-tiny.en"]')).to_have_count(0)
        page.select_option("#transcribe-language", "en")
        page.select_option("#transcribe-model", "whisper-tiny.en")
        page.select_option("#transcribe-format", "stream")
        page.set_input_files("#transcribe-file", str(english_wav))
        page.get_by_role("button", name="Transcribe", exact=True).click()
        output = page.locator("#transcribe-output")
        expect(page.locator("#transcribe-state")).to_have_text("done by whisper-tiny.en", timeout=TIMEOUT_MS)
        expect(output).to_contain_text(re.compile(r"quick brown fox", re.IGNORECASE))
        expect(output).to_contain_text(re.compile(r"lazy dog", re.IGNORECASE))
        assert int(output.get_attribute("data-deltas") or 0) >= 1  # the text came as transcript.text.delta events
        expect(page.locator("#transcribe-error")).to_be_hidden()
        screenshot(page, "transcribe")
        with page.expect_download() as downloaded:
            page.get_by_role("button", name="Download SRT").click()
        srt = Path(downloaded.value.path()).read_text()
        assert downloaded.value.suggested_filename == "english.srt"
        assert re.match(r"1\n00:00:00,\d{3} --> 00:00:\d\d,\d{3}\n", srt), srt
        assert "fox" in srt.lower()


def test_transcribe_tab_records_the_microphone_and_transcribes_it(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_page(browser, console_gateway.url, "transcribe") as page:
        expect(page.locator('#transcribe-model option[value="whisper-tiny.en"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#transcribe-model", "whisper-tiny.en")
        page.get_by_role("button", name="Record from microphone").click()
        # Chromium's fake microphone loops the Piper sentence and its pause (about 6 s): two rounds hold one whole.
        page.wait_for_function("Number(document.getElementById('transcribe-recorded').dataset.seconds) >= 12", timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Stop recording").click()
        expect(page.locator("#transcribe-recorded")).to_have_attribute("data-state", "recorded")
        page.get_by_role("button", name="Transcribe", exact=True).click()
        expect(page.locator("#transcribe-state")).to_have_text("done by whisper-tiny.en", timeout=TIMEOUT_MS)
        expect(page.locator("#transcribe-output")).to_contain_text(re.compile(r"brown fox", re.IGNORECASE))


def test_transcribe_tab_shows_the_envelope_message_for_audio_it_cannot_decode(console_gateway: Gateway, browser,
                                                                             tmp_path: Path) -> None:
    from playwright.sync_api import expect

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are not audio samples")
    with console_gateway.client() as client:
        expected = client.post("/v1/audio/transcriptions", files={"file": ("notes.wav", not_audio.read_bytes())},
                               data={"model": "whisper-tiny.en", "response_format": "json", "stream": "true"}).json()
    with console_page(browser, console_gateway.url, "transcribe") as page:
        expect(page.locator('#transcribe-model option[value="whisper-tiny.en"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#transcribe-model", "whisper-tiny.en")
        page.set_input_files("#transcribe-file", str(not_audio))
        page.get_by_role("button", name="Transcribe", exact=True).click()
        expect(page.locator("#transcribe-error")).to_have_text(expected["error"]["message"], timeout=TIMEOUT_MS)


def _wav_seconds(body: bytes) -> float:
    with wave.open(io.BytesIO(body)) as audio:
        return audio.getnframes() / audio.getframerate()


def test_speak_tab_plays_streamed_mp3_as_long_as_the_same_synthesis(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_gateway.client() as client:
        answer = client.post("/v1/audio/speech", json={"model": "piper", "voice": "en_US-joe-medium", "input": SPOKEN,
                                                       "response_format": "wav", "speed": 1.25, "whole_file": True})
    assert answer.status_code == 200, answer.text
    expected_s = _wav_seconds(answer.content)
    with console_page(browser, console_gateway.url, "speak") as page:
        expect(page.locator('#speak-voice option[value="en_US-joe-medium"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#speak-model", "piper")
        page.select_option("#speak-format", "mp3")
        page.fill("#speak-input", SPOKEN)
        page.locator("#speak-speed").fill("1.25")
        expect(page.locator("#speak-speed-value")).to_have_text("1.25")
        page.get_by_role("button", name="Speak", exact=True).click()
        audio = page.locator("audio#speak-audio")
        expect(audio).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        played_s = audio.evaluate("element => element.duration")
        streamed = audio.evaluate("element => element.src.startsWith('blob:') && element.buffered.length > 0")
        link = page.locator("#speak-download")
        expect(link).to_be_visible()
        expect(link).to_have_attribute("download", "speech.mp3")
        screenshot(page, "speak")
    assert streamed
    # mp3 frames (1152 samples) and the encoder's padding make it a few tens of milliseconds longer at most.
    assert abs(played_s - expected_s) < 0.15, (played_s, expected_s)


def test_chat_tab_streams_an_answer_from_the_embedded_llm(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_gateway.client() as client:
        assert wait_until(lambda: client.get("/ready").json()["embedded_llm"]["state"] == "running", timeout=90)
    with console_page(browser, console_gateway.url, "chat") as page:
        expect(page.locator(f'#chat-model option[value="{SMOLLM2_ALIAS}"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#chat-model", SMOLLM2_ALIAS)
        page.fill("#chat-input", "Say hello in five words.")
        page.get_by_role("button", name="Send").click()
        expect(page.locator("#chat-log .message.user")).to_have_text(re.compile("Say hello in five words"))
        answer = page.locator("#chat-log .message.assistant")
        expect(answer).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        expect(page.locator("#chat-error")).to_be_hidden()
        assert answer.locator(".text").inner_text().strip(), "no text streamed in"
        screenshot(page, "chat")


def test_embeddings_with_a_chat_only_model_shows_the_gateways_message(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_gateway.client() as client:
        expected = client.post("/v1/embeddings", json={"model": SMOLLM2_ALIAS, "input": ["a", "b"]}).json()["error"]["message"]
    with console_page(browser, console_gateway.url, "chat") as page:
        expect(page.locator(f'#embed-model option[value="{SMOLLM2_ALIAS}"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#embed-model", SMOLLM2_ALIAS)
        page.get_by_role("button", name="Compare").click()
        expect(page.locator("#embed-error")).to_have_text(expected, timeout=TIMEOUT_MS)
        expect(page.locator("#embed-result")).to_have_text("")


def test_status_tab_shows_device_slots_and_the_pages_own_requests(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_page(browser, console_gateway.url, "status") as page:
        device = page.locator('#status-devices tr[data-device="cpu"]')
        expect(device).to_be_visible(timeout=TIMEOUT_MS)
        with console_gateway.client() as client:
            slots = client.get("/ready").json()["devices"]["cpu"]["slots"]
        expect(device.locator("td").first).to_have_text(str(slots))
        expect(page.locator("#status-engines")).to_contain_text("faster-whisper")
        page.get_by_role("tab", name="Speak").click()
        expect(page.locator('#speak-model option[value="piper"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.get_by_role("button", name="Speak", exact=True).click()
        expect(page.locator("audio#speak-audio")).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        page.get_by_role("tab", name="Status").click()
        expect(device.locator("td.waits")).to_have_text(re.compile(r"^p50 [\d.]+ ms, p95 [\d.]+ ms, max [\d.]+ ms$"), timeout=TIMEOUT_MS)
        request_row = page.locator("#status-requests tbody tr", has_text="POST /v1/audio/speech")
        expect(request_row).to_contain_text("200")
        expect(request_row).to_contain_text("piper")
        screenshot(page, "status")


def test_the_tabs_work_from_the_keyboard_and_fit_400_px(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    with console_page(browser, console_gateway.url, "models", width=400, height=900) as page:
        expect(page.locator('#models-table tr[data-model="whisper-base"]')).to_be_visible(timeout=TIMEOUT_MS)
        screenshot(page, "models-400px")
        page.get_by_role("tab", name="Models").focus()
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Transcribe")).to_be_focused()
        expect(page.locator("#panel-transcribe")).to_be_visible()
        page.keyboard.press("End")
        expect(page.get_by_role("tab", name="Status")).to_have_attribute("aria-selected", "true")
        page.keyboard.press("Home")
        expect(page.locator("#panel-models")).to_be_visible()
        # Rows become cards of labelled cells: the page never scrolls sideways, and the buttons are in reach.
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        load = page.get_by_role("button", name="Load whisper-base")
        expect(load).to_be_visible()
        box = load.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 400
        expect(page.locator('#models-table tr[data-model="whisper-base"] td[data-label="State"]')).to_have_text("unloaded")


def test_live_tab_transcribes_the_microphone_over_the_realtime_websocket(console_gateway: Gateway, browser) -> None:
    from playwright.sync_api import expect

    refusal = realtime_refusal(console_gateway.url)
    with console_page(browser, console_gateway.url, "live") as page:
        if refusal is not None:
            # What the page says then is part of the console too: a clear message, not silence.
            page.get_by_role("button", name="Start listening").click()
            expect(page.locator("#live-error")).to_contain_text("does not serve the Realtime WebSocket /v1/realtime", timeout=TIMEOUT_MS)
            expect(page.get_by_role("button", name="Start listening")).to_be_enabled()
            screenshot(page, "live")
            pytest.skip(refusal)
        expect(page.locator('#live-model option[value="whisper-tiny.en"]')).to_have_count(1, timeout=TIMEOUT_MS)
        page.select_option("#live-model", "whisper-tiny.en")
        page.get_by_role("button", name="Start listening").click()
        # The fake microphone loops the Piper sentence: its words arrive as a finished turn.
        finished = page.locator('#live-turns .turn[data-final="true"]', has_text=re.compile("brown fox", re.IGNORECASE))
        expect(finished.first).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator("#live-error")).to_be_hidden()
        screenshot(page, "live")
        page.get_by_role("button", name="Stop").click()
        expect(page.get_by_role("button", name="Start listening")).to_be_enabled(timeout=TIMEOUT_MS)

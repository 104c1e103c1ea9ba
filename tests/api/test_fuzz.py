"""Property-based fuzzing of the gateway's own operations (those /openapi.json lists) on the real
engines: whatever arrives, no 500, and every refusal is the envelope with its kind's one status.

Bounded and repeatable: hypothesis derandomized, a fixed number of cases per operation. (The issue
names schemathesis; it is not installed here, so the cases are drawn with hypothesis directly from
the fields each operation documents.)"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aistack.errors import STATUS_BY_KIND, ErrorKind

pytestmark = pytest.mark.slow

CASES = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=30))
json_value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                              max_size=4), max_leaves=12)
short_text = st.text(max_size=40)


def fields(known: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """Objects with some of an operation's documented fields (good or bad values) and some others."""
    chosen = st.fixed_dictionaries({}, optional={name: strategy | json_value for name, strategy in known.items()})
    return st.tuples(chosen, st.dictionaries(st.text(max_size=10), json_value, max_size=2)).map(lambda p: {**p[1], **p[0]})


SPEECH = fields({"model": st.sampled_from(["piper", "tts-1", "nope"]) | short_text, "input": short_text,
                 "voice": st.sampled_from(["alloy", "en_US-joe-medium"]) | short_text,
                 "response_format": st.sampled_from(["wav", "mp3", "pcm", "opus", "flac", "aac"]) | short_text,
                 "speed": st.floats(allow_nan=False, allow_infinity=False),
                 "stream_format": st.sampled_from(["audio", "sse"]) | short_text})
CHAT = fields({"model": short_text, "messages": json_value, "stream": st.booleans(), "max_tokens": st.integers()})
EMBEDDINGS = fields({"model": short_text, "input": json_value})
TRANSCRIPTION_FORM = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["whisper-tiny.en", "auto", "whisper-1"]) | short_text,
    "language": short_text, "response_format": st.sampled_from(["json", "text", "srt", "verbose_json", "vtt"]) | short_text,
    "temperature": short_text, "stream": st.sampled_from(["true", "false"]) | short_text, "prompt": short_text,
    "timestamp_granularities[]": short_text, "chunking_strategy": short_text})


def assert_answer(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text
    if response.status_code < 400:
        return
    error = response.json()["error"]
    kind = ErrorKind(error["kind"])
    assert STATUS_BY_KIND[kind] == response.status_code, response.text
    assert error["message"] and error["code"] == error["kind"] and error["provider"]


@pytest.fixture(scope="module")
def client(gateway):
    with gateway.client(timeout=120) as opened:
        yield opened
    with gateway.client() as after:
        assert after.get("/health").status_code == 200  # still serving


@CASES
@given(body=SPEECH)
def test_speech(client, body) -> None:
    assert_answer(client.post("/v1/audio/speech", json=body))


@CASES
@given(body=st.one_of(CHAT, json_value), endpoint=st.sampled_from(["chat/completions", "completions"]))
def test_llm_relay(client, body, endpoint: str) -> None:
    assert_answer(client.post(f"/v1/{endpoint}", json=body))


@CASES
@given(body=st.one_of(EMBEDDINGS, json_value))
def test_embeddings(client, body) -> None:
    assert_answer(client.post("/v1/embeddings", json=body))


@CASES
@given(form=TRANSCRIPTION_FORM, audio=st.binary(max_size=256), endpoint=st.sampled_from(["transcriptions", "translations"]))
def test_transcription_forms(client, form, audio: bytes, endpoint: str) -> None:
    assert_answer(client.post(f"/v1/audio/{endpoint}", data=form, files={"file": ("clip.wav", audio, "audio/wav")}))


@CASES
@given(model_id=st.text(min_size=1, max_size=40), action=st.sampled_from(["load", "unload", "models", "voices"]))
def test_model_ids_in_paths_and_queries(client, model_id: str, action: str) -> None:
    quoted = quote(model_id, safe="")
    if action == "models":
        response = client.get(f"/v1/models/{quoted}")
    elif action == "voices":
        response = client.get("/v1/audio/voices", params={"model": model_id})
    else:
        response = client.post(f"/admin/models/{quoted}/{action}")
    assert_answer(response)

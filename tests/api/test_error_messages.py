"""Messages that say which field is wrong and what to send, and envelopes that survive any input
(lone surrogates quoted back, broken or missing bodies)."""

from __future__ import annotations

import json

import pytest

from conftest import Gateway, assert_envelope

pytestmark = pytest.mark.slow

JSON = {"content-type": "application/json"}
LONE_SURROGATE = b'"\\udcff"'  # a JSON escape that decodes to a lone surrogate, which UTF-8 cannot carry


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/audio/speech", b'{"model": ' + LONE_SURROGATE + b', "input": "Hello."}'),
        ("/v1/chat/completions", b'{"model": ' + LONE_SURROGATE + b', "messages": []}'),
        ("/v1/completions", b'{"model": ' + LONE_SURROGATE + b', "prompt": "x"}'),
        ("/v1/embeddings", b'{"model": ' + LONE_SURROGATE + b', "input": "x"}'),
    ],
    ids=["speech", "chat", "completions", "embeddings"],
)
def test_a_lone_surrogate_in_a_model_id_is_quoted_back_in_a_valid_envelope(gateway: Gateway, path: str,
                                                                          body: bytes) -> None:
    with gateway.client() as client:
        response = client.post(path, content=body, headers=JSON)
        assert response.status_code in (400, 404, 503), response.text  # 503 where no LLM server runs here
        error = json.loads(response.content.decode("utf-8"))["error"]  # strict UTF-8: no surrogate slipped through
        assert set(error) == {"kind", "provider", "message", "type", "code", "param"}
        assert "\ufffd" in error["message"] or error["param"] == "model", error
        assert client.get("/health").status_code == 200


def test_a_lone_surrogate_in_a_model_path_is_a_404_envelope(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/v1/models/%ED%B3%BF")
    error = assert_envelope(response, 404, "not_found", "model")
    assert "does not exist" in error["message"] or "not available" in error["message"]


def test_a_lone_surrogate_in_a_multipart_model_is_an_envelope(gateway: Gateway) -> None:
    files = {"file": ("a.wav", b"RIFF", "audio/wav")}
    with gateway.client() as client:
        response = client.post("/v1/audio/transcriptions", files=files, data={"model": b"\xed\xb3\xbf".decode("latin-1")})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] in ("model", "file")


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (b'{"model": "tts-1", "input": ', ("not valid JSON", "at character", "send a JSON object")),
        (b"", ("body is missing", "send a JSON object")),
    ],
    ids=["broken-json", "no-body"],
)
def test_a_broken_or_missing_body_says_so_without_a_field_number(gateway: Gateway, body: bytes,
                                                                 needles: tuple[str, ...]) -> None:
    with gateway.client() as client:
        response = client.post("/v1/audio/speech", content=body, headers=JSON)
    error = assert_envelope(response, 400, "malformed", None, *needles)
    assert not error["message"].startswith("0:") and "None" not in error["message"]


def test_a_missing_field_is_named_with_what_to_do(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/v1/audio/speech", json={"model": "tts-1"})
    assert_envelope(response, 400, "malformed", "input", "'input' is required", "add it")


def test_a_wrong_nested_field_names_its_path(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "speed": "fast"})
    error = assert_envelope(response, 400, "malformed", "speed")
    assert error["message"].startswith("speed: ")


def test_a_body_nested_too_deeply_is_a_400_saying_so(gateway: Gateway) -> None:
    depth = 100_000
    body = b'{"model": "tts-1", "input": "Hi.", "voice": ' + b"[" * depth + b"]" * depth + b"}"
    with gateway.client() as client:
        response = client.post("/v1/audio/speech", content=body, headers=JSON)
        assert_envelope(response, 400, "malformed", None, "nests arrays or objects too deeply")
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(("body", "content_type"), [(b'"just a string"', "application/json"),
                                                     (b'{"input": "Hi."}', "text/plain")],
                         ids=["not-an-object", "not-json-content-type"])
def test_a_body_that_is_no_json_object_says_what_to_send(gateway: Gateway, body: bytes, content_type: str) -> None:
    with gateway.client() as client:
        response = client.post("/v1/audio/speech", content=body, headers={"content-type": content_type})
    assert_envelope(response, 400, "malformed", None, "must be a JSON object", "Content-Type: application/json")

"""/openapi.json documents every route's answer and the error envelope every failure carries."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from aistack import sse
from aistack.api import admin, audio, health, llm, models, speech
from aistack.app import create_app
from aistack.errors import ErrorKind, malformed
from aistack.protocol.errors import ErrorEvent
from aistack.protocol.speech import SPEECH_STREAM_EVENTS, SpeechAudioDelta
from aistack.protocol.transcription import TRANSCRIPT_STREAM_EVENTS, TranscriptTextDone
from aistack.settings import Settings

# Per route, the component schemas its JSON 200 refers to (None: it answers other media types only).
JSON_ANSWERS: dict[str, set[str] | None] = {
    "/health": {"Health"},
    "/ready": {"Ready"},
    "/v1/models": {"ModelList"},
    "/v1/models/{model_id}": {"ModelObject"},
    "/v1/audio/transcriptions": {"Transcription", "VerboseTranscription"},
    "/v1/audio/translations": {"Transcription", "VerboseTranscription"},
    "/v1/audio/speech": None,
    "/v1/audio/voices": {"VoiceList"},
    "/v1/audio/models": {"AudioModelList"},
    "/v1/chat/completions": set(),
    "/v1/completions": set(),
    "/v1/embeddings": set(),
    "/admin/models": {"AdminModelList"},
    "/admin/models/{model_id}/load": {"AdminModel"},
    "/admin/models/{model_id}/unload": {"AdminModel"},
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(cache_dir=Path(tmp_path_factory.mktemp("cache"))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of a duplicate operation id, for one
        body: dict[str, Any] = TestClient(app, base_url="http://localhost").get("/openapi.json").json()
    routers = (health.router, models.router, audio.router, speech.router, llm.router, admin.router)
    routes = {route.path_format for router in routers for route in router.routes if isinstance(route, APIRoute)}
    assert routes == set(JSON_ANSWERS), "a route was added or removed: say here what it answers"
    return body


def _refs(schema: dict[str, Any]) -> set[str]:
    found = {schema["$ref"].rsplit("/", 1)[-1]} if "$ref" in schema else set()
    for option in schema.get("anyOf", []):
        found |= _refs(option)
    return found


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_every_route_documents_its_answer(spec: dict[str, Any]) -> None:
    assert {path for path, _, _ in _operations(spec)} == set(JSON_ANSWERS)
    for path, method, operation in _operations(spec):
        content = operation["responses"]["200"]["content"]
        assert content and all("schema" in media for media in content.values()), (method, path)
        expected = JSON_ANSWERS[path]
        if expected is None:
            assert "application/json" not in content, (method, path)
            continue
        json_schema = content["application/json"]["schema"]
        assert _refs(json_schema) == expected, (method, path)
        for name in expected:
            assert spec["components"]["schemas"][name]["properties"], name


def test_every_route_documents_the_error_envelope(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        responses = operation["responses"]
        for status in ("4XX", "5XX"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert _refs(schema) == {"ErrorEnvelope"}, (method, path, status)
        # Bad input is answered 400 with the envelope, never FastAPI's 422 body.
        assert "422" not in responses, (method, path)
    schemas = spec["components"]["schemas"]
    assert _refs(schemas["ErrorEnvelope"]["properties"]["error"]) == {"ErrorBody"}
    assert set(schemas["ErrorBody"]["properties"]) == {"kind", "provider", "message", "type", "code", "param"}


def test_speech_documents_each_audio_format_and_the_event_stream(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert {"audio/mpeg", "audio/wav", "audio/pcm", "text/event-stream"} <= set(content)
    request = spec["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert _refs(request) == {"SpeechRequest"}
    assert "whole_file" in spec["components"]["schemas"]["SpeechRequest"]["properties"]


def test_every_operation_has_its_own_id(spec: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(spec)]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert {method for path, method, _ in _operations(spec) if path in ("/health", "/ready")} == {"get", "head"}


def _event(raw: bytes) -> dict[str, str]:
    """One SSE event as its fields, as a client reads it."""
    fields = dict(line.split(": ", 1) for line in raw.decode().strip().splitlines())
    return fields


def _valid(schema: dict[str, Any], instance: Any) -> bool:
    import jsonschema_rs

    return bool(jsonschema_rs.validator_for(schema).is_valid(instance))


@pytest.mark.parametrize(("path", "events", "sample"), [
    ("/v1/audio/speech", SPEECH_STREAM_EVENTS, SpeechAudioDelta(audio="UklGRg==")),
    ("/v1/audio/transcriptions", TRANSCRIPT_STREAM_EVENTS, TranscriptTextDone(text="hi", usage={"seconds": 1.0})),
])
def test_an_event_stream_documents_each_event_and_the_json_it_carries(spec: dict[str, Any], path: str, events,
                                                                      sample) -> None:
    # OpenAPI 3.1: the schema of text/event-stream is that of one event (as 3.2's itemSchema).
    schema = spec["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    by_name = {option["properties"]["event"]["const"]: option for option in schema["oneOf"]}
    assert set(by_name) == {model.model_fields["type"].default for model in events}
    error = ErrorEvent.of(malformed("no", param="input"))
    for model in (sample, error):
        sent = _event(sse.event(model))
        assert _valid(schema, sent), sent
        data = by_name[sent["event"]]["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        assert _valid(data["contentSchema"], json.loads(sent["data"])), sent
    # ... and a payload that is not the event's is caught by its content schema.
    content = by_name["error"]["properties"]["data"]["contentSchema"]
    assert not _valid(content, {"type": "error", "error": {"kind": ErrorKind.MALFORMED.value}})


def test_a_relayed_stream_documents_data_only_events(spec: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        schema = spec["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert _valid(schema, _event(sse.data_event({"choices": []})))
        assert _valid(schema, _event(sse.DONE + b"\n\n"))
        assert not _valid(schema, {"event": "x"})


@pytest.mark.parametrize(("path", "required"), [
    ("/v1/chat/completions", ["model", "messages"]),
    ("/v1/completions", ["model", "prompt"]),
    ("/v1/embeddings", ["model", "input"]),
])
def test_a_relayed_route_documents_its_request_body(spec: dict[str, Any], path: str, required: list[str]) -> None:
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == required and set(required) <= set(schema["properties"])
    assert schema["additionalProperties"] is True  # the upstream may take more than OpenAI's fields


def test_a_form_field_is_never_documented_as_null(spec: dict[str, Any]) -> None:
    """A multipart form cannot carry null: an optional field is one left out."""
    forms = [operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
             for _, _, operation in _operations(spec)
             if "multipart/form-data" in operation.get("requestBody", {}).get("content", {})]
    assert len(forms) == 2  # transcriptions and translations
    for name in forms:
        for field, schema in spec["components"]["schemas"][name]["properties"].items():
            text = json.dumps(schema)
            assert '"null"' not in text and schema.get("default", "") is not None, (name, field, schema)
    temperature = spec["components"]["schemas"][forms[0]]["properties"]["temperature"]
    assert temperature["type"] == "number" and temperature["minimum"] == 0 and temperature["maximum"] == 1


def test_speech_documents_that_input_is_not_empty(spec: dict[str, Any]) -> None:
    assert spec["components"]["schemas"]["SpeechRequest"]["properties"]["input"]["minLength"] == 1

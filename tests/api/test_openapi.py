"""/openapi.json documents every route's answer and the error envelope every failure carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from aistack.api import admin, audio, health, llm, models, speech
from aistack.app import create_app
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
    with pytest.warns(UserWarning, match="Duplicate Operation ID"):  # GET and HEAD share one function
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

"""GET /v1/models, /health and /ready against a real gateway process."""

from __future__ import annotations

import pytest

from aistack.languages import WHISPER_LANGUAGES
from conftest import Gateway, wait_until

pytestmark = pytest.mark.slow


def test_models_list_shape(gateway: Gateway) -> None:
    with gateway.client() as client:
        body = client.get("/v1/models").json()
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    assert body["data"][0]["id"] == "auto"
    auto = models["auto"]
    assert auto["is_routing_alias"] is True and "languages" not in auto
    assert auto["supports_streaming"] is True and auto["capabilities"] == ["asr"]
    tiny, base = models["whisper-tiny.en"], models["whisper-base"]
    assert tiny["languages"] == ["en"] and tiny["owned_by"] == "faster-whisper"
    assert base["languages"] == list(WHISPER_LANGUAGES) and {"de", "fr", "ja"} <= set(base["languages"])
    for model in body["data"]:
        assert model["object"] == "model" and isinstance(model["created"], int)
        assert set(model) >= {"id", "object", "created", "owned_by", "capabilities", "supports_streaming", "is_routing_alias"}
    assert not any(m["is_routing_alias"] for m in body["data"][1:])
    # Only what resolves locally is listed.
    assert "whisper-small" not in models and "whisper-1" not in models


def test_retrieve_one_model(gateway: Gateway) -> None:
    with gateway.client() as client:
        assert client.get("/v1/models/whisper-tiny.en").json()["id"] == "whisper-tiny.en"
        missing = client.get("/v1/models/whisper-small")
    assert missing.status_code == 404 and missing.json()["error"]["kind"] == "not_found"


def test_health_and_ready(gateway: Gateway) -> None:
    with gateway.client() as client:
        health = client.get("/health").json()
        ready = client.get("/ready").json()
    assert health["status"] == "ok" and health["version"]
    assert ready["status"] == "ready"
    whisper = ready["engines"]["faster-whisper"]
    assert whisper["state"] == "ready" and set(whisper["visible"]) == {"whisper-tiny.en", "whisper-base"}
    small = next(u for u in whisper["unavailable"] if u["model"] == "whisper-small")
    assert small["reason"] and "whisper-small" in small["fix"]


def test_request_id_is_echoed(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/health", headers={"X-Request-Id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    # The access line is written once the response has gone out, so the client can be first.
    assert wait_until(lambda: "trace-42 GET /health 200" in gateway.log(), timeout=30), gateway.log()[-2000:]


def test_api_key_when_configured(make_inprocess_gateway) -> None:
    gateway = make_inprocess_gateway(api_key="s3cret")
    with gateway.client() as client:
        refused = client.get("/v1/models")
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        allowed = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        health = client.get("/health")
    assert refused.status_code == 401 and refused.json()["error"]["kind"] == "unauthorized"
    assert wrong.status_code == 401
    assert allowed.status_code == 200 and health.status_code == 200

"""/admin/models for the in-process models on the real engine (whisper-tiny.en): their rows, loads and
unloads, unknown and missing ids, and the API key the admin routes need."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

MODEL = "whisper-tiny.en"


def test_admin_loads_and_unloads_models_and_explains_unknown_ids(make_inprocess_gateway) -> None:
    gateway = make_inprocess_gateway()
    with gateway.client() as client:
        listing = client.get("/admin/models").json()["data"]
        row = next(r for r in listing if r["id"] == MODEL)
        assert row["state"] == "unloaded" and row["resident"] is False and row["device"] == "cpu" and row["size_bytes"] > 0

        loaded = client.post(f"/admin/models/{MODEL}/load")
        assert loaded.status_code == 200 and loaded.json()["resident"] is True and loaded.json()["in_use"] == 0
        assert client.get("/ready").json()["engines"]["faster-whisper"]["loaded"] == [MODEL]

        unloaded = client.post(f"/admin/models/{MODEL}/unload")
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
        assert client.post(f"/admin/models/{MODEL}/unload").json()["state"] == "unloaded"  # idempotent

        unknown = client.post("/admin/models/no-such-model/load")
        assert unknown.status_code == 404 and unknown.json()["error"]["kind"] == "not_found"
        assert MODEL in unknown.json()["error"]["message"]
        missing = client.post("/admin/models/whisper-small/load")
        assert missing.status_code == 503 and missing.json()["error"]["kind"] == "network"
        assert "whisper-small" in missing.json()["error"]["message"]


def test_admin_routes_need_the_api_key_when_one_is_set(make_inprocess_gateway) -> None:
    gateway = make_inprocess_gateway(api_key="sesame")
    with gateway.client() as client:
        refused = client.get("/admin/models")
        allowed = client.get("/admin/models", headers={"Authorization": "Bearer sesame"})
    assert refused.status_code == 401 and refused.json()["error"]["kind"] == "unauthorized"
    assert allowed.status_code == 200

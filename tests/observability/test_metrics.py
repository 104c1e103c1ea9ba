"""GET /metrics: what the gateway did, in Prometheus' text format, with bounded labels."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aistack.app import create_app
from aistack.observability.metrics import OTHER_MODEL, GatewayMetrics
from aistack.settings import Settings
from conftest import wait_until

MODEL = "whisper-tiny.en"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    found: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_model_labels_are_bounded_by_the_listing() -> None:
    metrics = GatewayMetrics(lambda: frozenset({"whisper-base"}))
    assert metrics.model_label("whisper-base") == "whisper-base"
    assert metrics.model_label("made-up-model-1") == OTHER_MODEL
    assert metrics.model_label(None) == "" and metrics.model_label("-") == ""
    # Two apps keep their own counts: each owns its registry.
    other = GatewayMetrics()
    metrics.requests.labels("/v1/models", "", "200").inc()
    assert b'route="/v1/models"' in metrics.exposition() and b'route="/v1/models"' not in other.exposition()


def scrape(app, headers: dict[str, str] | None = None) -> httpx.Response:
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11500") as client:
            return await client.get("/metrics", headers=headers)

    return asyncio.run(scenario())


def test_metrics_need_an_admin_key_when_keys_are_set_unless_public(tmp_path: Path) -> None:
    keyed = create_app(Settings(cache_dir=tmp_path, security={"admin_keys": ["a-key"], "user_keys": ["u-key"]}))
    assert scrape(keyed).status_code == 401
    assert scrape(keyed, {"Authorization": "Bearer u-key"}).status_code == 403
    allowed = scrape(keyed, {"Authorization": "Bearer a-key"})
    assert allowed.status_code == 200 and allowed.headers["content-type"].startswith("text/plain")
    public = create_app(Settings(cache_dir=tmp_path, security={"admin_keys": ["a-key"], "public_metrics": True}))
    assert scrape(public).status_code == 200
    assert scrape(create_app(Settings(cache_dir=tmp_path))).status_code == 200  # no keys: loopback, open


@pytest.mark.slow
def test_requests_queues_models_and_audio_are_counted(make_inprocess_gateway, english_wav: Path) -> None:
    gateway = make_inprocess_gateway(models={"keep_alive_s": -1})
    with gateway.client() as client:
        with open(english_wav, "rb") as audio:
            assert client.post("/v1/audio/transcriptions", files={"file": audio}, data={"model": MODEL}).status_code == 200
        speech = client.post("/v1/audio/speech", json={"model": "piper", "input": "Hello there.", "voice": "alloy"})
        assert speech.status_code == 200
        assert client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"x")},
                           data={"model": "no-such-model"}).status_code in (400, 404)
        resident = samples(client.get("/metrics").text)
        assert client.post(f"/admin/models/{MODEL}/unload").status_code == 200
        text = client.get("/metrics").text
    found = samples(text)
    route = "/v1/audio/transcriptions"
    assert value(found, "aistack_http_requests_total", route=route, model=MODEL, status="200") == 1
    assert value(found, "aistack_http_request_duration_seconds_count", route=route, model=MODEL) == 1
    assert value(found, "aistack_http_requests_total", route="/v1/audio/speech", model="piper", status="200") == 1
    # The made-up id never becomes a label.
    assert "no-such-model" not in text
    assert value(found, "aistack_http_requests_in_flight") == 1  # the scrape itself
    assert value(found, "aistack_realtime_sessions") == 0
    assert (value(found, "aistack_audio_seconds_total", direction="transcribed", model=MODEL) or 0) > 2
    assert (value(found, "aistack_audio_seconds_total", direction="synthesized", model="piper") or 0) > 0.3
    assert (value(found, "aistack_slot_wait_seconds_count", device="cpu") or 0) >= 2
    assert value(found, "aistack_device_slots", device="cpu") >= 1
    assert value(found, "aistack_device_slots_busy", device="cpu") == 0
    assert value(found, "aistack_device_queue_depth", device="cpu") == 0
    assert value(found, "aistack_model_loads_total", model=MODEL, outcome="loaded") == 1
    assert value(found, "aistack_model_load_duration_seconds_count", model=MODEL) == 1
    assert (value(resident, "aistack_model_resident_bytes", model=MODEL) or 0) > 10_000_000
    assert value(found, "aistack_model_unloads_total", model=MODEL) == 1
    assert value(found, "aistack_model_resident_bytes", model=MODEL) is None  # gone after the unload
    assert value(found, "aistack_upstream_up", upstream="ollama") == 0  # no Ollama daemon here
    assert value(found, "aistack_upstream_probe_seconds", upstream="ollama") is not None


@pytest.mark.slow
def test_realtime_sessions_open_are_counted(make_inprocess_gateway) -> None:
    # Before: the gauge was declared and never moved (0 with a session open).
    import websockets

    gateway = make_inprocess_gateway()
    ws_url = gateway.url.replace("http://", "ws://") + "/v1/realtime"

    def open_sessions(client: httpx.Client) -> float | None:
        return value(samples(client.get("/metrics").text), "aistack_realtime_sessions")

    async def scenario(client: httpx.Client) -> None:
        async with websockets.connect(ws_url) as first, websockets.connect(ws_url) as second:
            for socket_ in (first, second):
                assert json.loads(await socket_.recv())["type"] == "session.created"
            assert await asyncio.to_thread(open_sessions, client) == 2

    with gateway.client() as client:
        assert open_sessions(client) == 0
        asyncio.run(scenario(client))
        assert wait_until(lambda: open_sessions(client) == 0, timeout=30)


def test_route_and_model_labels_stay_bounded_whatever_the_paths_and_ids(tmp_path: Path) -> None:
    # A raw path or a made-up id as a label would make a new series per request.
    import random
    import string

    app = create_app(Settings(cache_dir=tmp_path))
    made_up = ["".join(random.Random(n).choices(string.ascii_lowercase, k=12)) for n in range(60)]

    async def scenario() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11500") as client:
            for word in made_up:
                await client.get(f"/v1/{word}")
                await client.get(f"/{word}/x")
                await client.get(f"/v1/models/{word}")
                await client.post(f"/admin/models/{word}/unload")
                await client.post("/v1/chat/completions", json={"model": word, "messages": [{"role": "user", "content": "hi"}]})
            return (await client.get("/metrics")).text

    text = asyncio.run(scenario())
    assert not [word for word in made_up if word in text]
    routes = {sample.labels["route"] for family in text_string_to_metric_families(text) for sample in family.samples
              if "route" in sample.labels}
    assert routes == {"unmatched", "/v1/models/{model_id:path}", "/admin/models/{model_id:path}/unload",
                      "/v1/chat/completions"}, routes
    series = sum(len(family.samples) for family in text_string_to_metric_families(text))
    assert series < 400, series


def test_every_metric_served_is_documented(tmp_path: Path) -> None:
    documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    families = list(text_string_to_metric_families(scrape(create_app(Settings(cache_dir=tmp_path))).text))
    assert len(families) >= 17
    for family in families:
        shown = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{shown}`" in documented, f"{shown} is served but not in docs/metrics.md"

"""Optional tracing: spans over OTLP/HTTP to a real receiver, and nothing at all when not configured.

The receiver is an OTLP/HTTP endpoint made here (POST /v1/traces, protobuf bodies decoded with
OpenTelemetry's own message types), on a loopback port it binds itself.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websockets
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from aistack.scheduler import Scheduler
from aistack.settings import LlmSettings, OllamaSettings, SchedulerSettings, TracingSettings
from conftest import wait_until
from doubles.ollama_server import OllamaDouble

ASR_MODEL = "whisper-tiny.en"
HI = [{"role": "user", "content": "hi"}]
SERVER = Span.SpanKind.SPAN_KIND_SERVER
ERROR = Status.StatusCode.STATUS_CODE_ERROR
UNSET = Status.StatusCode.STATUS_CODE_UNSET


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status: int
    status_message: str
    service: str


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        which = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, which) if which else None
    return found


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def _take(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.kind,
                        _attributes(span.attributes), span.status.code, span.status.message, service,
                    ))
        with self._lock:
            self.posts += 1
            self.spans.extend(received)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def server_span(self, request_id: str) -> ReceivedSpan | None:
        found = [s for s in self.snapshot() if s.kind == SERVER and s.attributes.get("aistack.request_id") == request_id]
        assert len(found) <= 1, found
        return found[0] if found else None

    def children(self, parent: ReceivedSpan) -> dict[str, ReceivedSpan]:
        kids = [s for s in self.snapshot() if s.parent_span_id == parent.span_id]
        assert all(kid.trace_id == parent.trace_id for kid in kids), kids
        by_name = {kid.name: kid for kid in kids}
        assert len(by_name) == len(kids), kids  # one of each
        return by_name

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def test_the_endpoint_comes_from_the_setting_or_the_standard_variables() -> None:
    unset = TracingSettings()
    assert unset.traces_url({}) is None
    assert TracingSettings(otlp_endpoint="http://collector:4318/").traces_url({}) == "http://collector:4318/v1/traces"
    assert TracingSettings(otlp_endpoint="http://c:4318/v1/traces").traces_url({}) == "http://c:4318/v1/traces"
    assert unset.traces_url({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    # The per-signal variable is the whole URL, as OpenTelemetry means it; it wins over the general one.
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:9/traces"}
    assert unset.traces_url(both) == "http://b:9/traces"
    assert TracingSettings(otlp_endpoint="http://mine:4318").traces_url(both) == "http://mine:4318/v1/traces"
    assert TracingSettings(otlp_endpoint="http://mine:4318").traces_url({"OTEL_SDK_DISABLED": "true"}) is None


@pytest.mark.slow
def test_each_request_is_one_server_span_with_its_queue_and_engine_spans_under_it(
        make_inprocess_gateway, receiver: OtlpReceiver, english_wav: Path) -> None:
    with OllamaDouble() as ollama:
        gateway = make_inprocess_gateway(
            tracing=TracingSettings(otlp_endpoint=receiver.url, export_interval_s=0.05),
            llm=LlmSettings(ollama=OllamaSettings(base_url=ollama.url)),
        )
        caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        with gateway.client() as client:
            def post(request_id: str, path: str, **kwargs: Any) -> Any:
                return client.post(path, headers={"x-request-id": request_id}, **kwargs)

            with open(english_wav, "rb") as audio:
                asr = post("t-asr", "/v1/audio/transcriptions", files={"file": audio}, data={"model": ASR_MODEL})
            assert asr.status_code == 200, asr.text
            tts = post("t-tts", "/v1/audio/speech", json={"model": "piper", "input": "Hello there.", "voice": "alloy"})
            assert tts.status_code == 200, tts.text
            embedded = post("t-emb", "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a cat", "a dog"]})
            assert embedded.status_code == 200, embedded.text
            wrong_size = post("t-emb-bad", "/v1/embeddings",
                              json={"model": "all-minilm-l6-v2", "input": "a cat", "dimensions": 7})
            assert wrong_size.status_code == 400, wrong_size.text
            chat = post("t-chat", "/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
            assert chat.status_code == 200, chat.text
            ollama.queue_fault("error_500")
            fault = post("t-fault", "/v1/chat/completions", json={"model": "llama3.2", "messages": HI})
            assert fault.status_code == 500, fault.text
            listed = client.get("/v1/models", headers={"x-request-id": "t-models",
                                                       "traceparent": f"00-{caller_trace}-{caller_span}-01"})
            assert listed.status_code == 200
        async def open_and_close_a_session() -> str:
            async with websockets.connect(gateway.url.replace("http://", "ws://") + "/v1/realtime") as ws:
                return str(json.loads(await ws.recv())["type"])

        assert asyncio.run(open_and_close_a_session()) == "session.created"
        # Stopping the gateway sends what is still buffered; a batch goes out every 50 ms meanwhile.
        gateway.server.should_exit = True
        gateway.thread.join(timeout=30)
    ids = ("t-asr", "t-tts", "t-emb", "t-emb-bad", "t-chat", "t-fault", "t-models")
    assert wait_until(lambda: all(receiver.server_span(i) for i in ids), timeout=60), receiver.snapshot()

    def server(request_id: str, route: str, status: int) -> ReceivedSpan:
        span = receiver.server_span(request_id)
        assert span is not None
        method = "GET" if route == "/v1/models" else "POST"
        assert span.name == f"{method} {route}" and span.attributes["http.route"] == route
        assert span.attributes["http.request.method"] == method
        assert span.attributes["http.response.status_code"] == status
        assert span.service == "aistack"
        return span

    asr_span = server("t-asr", "/v1/audio/transcriptions", 200)
    assert asr_span.attributes["aistack.model"] == ASR_MODEL == asr.headers["x-aistack-model"]
    assert asr_span.status == UNSET
    steps = receiver.children(asr_span)
    assert set(steps) == {"queue.wait", "engine.transcription"}, steps
    queue = steps["queue.wait"]
    assert queue.attributes["aistack.device"] == "cpu" and queue.attributes["aistack.capability"] == "asr"
    assert queue.attributes["aistack.queue.depth"] == 0 and queue.attributes["aistack.queue.wait_s"] >= 0
    engine = steps["engine.transcription"]
    assert engine.attributes["aistack.model"] == ASR_MODEL and engine.attributes["aistack.engine"] == "faster-whisper"
    assert engine.attributes["aistack.audio_s"] > 2 and engine.status == UNSET

    tts_span = server("t-tts", "/v1/audio/speech", 200)
    steps = receiver.children(tts_span)
    assert set(steps) == {"queue.wait", "engine.speech"}, steps
    assert steps["engine.speech"].attributes["aistack.model"] == tts_span.attributes["aistack.model"] == tts.headers["x-aistack-model"]
    assert steps["engine.speech"].attributes["aistack.audio_s"] > 0.3

    emb_span = server("t-emb", "/v1/embeddings", 200)
    steps = receiver.children(emb_span)
    assert set(steps) == {"queue.wait", "engine.embeddings"}, steps
    assert steps["engine.embeddings"].attributes["aistack.model"] == "all-minilm-l6-v2"

    # A refused request: the engine step failed with the reason; the server span follows OpenTelemetry's
    # HTTP conventions (a 4xx is the caller's, not the server's, error).
    bad_span = server("t-emb-bad", "/v1/embeddings", 400)
    assert bad_span.status == UNSET
    failed = receiver.children(bad_span)["engine.embeddings"]
    assert failed.status == ERROR and "cannot shorten" in failed.status_message and failed.attributes["error.type"] == "malformed"

    chat_span = server("t-chat", "/v1/chat/completions", 200)
    relay = receiver.children(chat_span)["engine.llm"]
    assert relay.attributes["aistack.engine"] == "ollama" and relay.status == UNSET
    assert relay.attributes["http.response.status_code"] == 200

    fault_span = server("t-fault", "/v1/chat/completions", 500)
    assert fault_span.status == ERROR and fault_span.attributes["error.type"] == "500"
    relay = receiver.children(fault_span)["engine.llm"]
    assert relay.status == ERROR and "llama runner process has terminated" in relay.status_message

    # A caller's W3C traceparent: the request joins its trace.
    models_span = server("t-models", "/v1/models", 200)
    assert models_span.trace_id == caller_trace and models_span.parent_span_id == caller_span
    assert receiver.children(models_span) == {}
    # Every request its own trace otherwise.
    assert len({receiver.server_span(i).trace_id for i in ids}) == len(ids)  # type: ignore[union-attr]

    # The WebSocket session: one server span for as long as it was open.
    (session,) = [s for s in receiver.snapshot() if s.kind == SERVER and s.attributes.get("url.path") == "/v1/realtime"]
    assert session.name == "WebSocket /v1/realtime" and session.attributes["http.route"] == "/v1/realtime"
    assert session.status == UNSET


def test_engine_work_on_a_worker_thread_runs_in_the_requests_context() -> None:
    """What lets a span made inside an engine (on the device's worker thread) find the request's span."""
    request = ContextVar("request", default="none")
    scheduler = Scheduler(SchedulerSettings(cpu_slots=1))

    async def job() -> list[str]:
        request.set("request-7")
        lease = await scheduler.admit("cpu", "asr")

        def produce() -> Iterator[str]:
            yield f"{request.get()} on {threading.current_thread().name}"

        return [item async for item in scheduler.stream(lease, produce)]

    try:
        (seen,) = asyncio.run(job())
    finally:
        scheduler.shutdown()
    assert seen.startswith("request-7 on aistack-cpu"), seen


# -- nothing when it is not configured, or not installed ------------------------------------------

SERVE_ONE_REQUEST = """
import asyncio, logging, sys
import httpx
{prelude}
from aistack.app import create_app
from aistack.settings import Settings

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
app = create_app(Settings(cache_dir=sys.argv[1], llm={{"ollama": {{"enabled": False}}}}, tracing={tracing!r}))

async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:11500") as client:
        for path in ("/health", "/v1/models"):
            response = await client.get(path)
            assert response.status_code == 200, response.text

asyncio.run(main())
print("tracing modules:", sorted(m for m in sys.modules if m.startswith({packages!r})))
"""

# What the `tracing` extra adds. (OpenTelemetry's API alone is FastAPI's own dependency, which FastAPI imports.)
TRACING_PACKAGES = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.proto")

BLOCK_THE_TRACING_EXTRA = f"""
import importlib.abc, sys
class WithoutTheTracingExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith({TRACING_PACKAGES!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, WithoutTheTracingExtra())
"""


def serve_one_request(cache: Path, tracing: dict[str, Any], prelude: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    script = SERVE_ONE_REQUEST.format(prelude=prelude, tracing=tracing, packages=TRACING_PACKAGES)
    return subprocess.run([sys.executable, "-c", script, str(cache)], env=env, capture_output=True, text=True, timeout=120)


def test_without_an_endpoint_the_tracing_packages_are_never_imported(tmp_path: Path) -> None:
    done = serve_one_request(tmp_path, {})
    assert done.returncode == 0, done.stderr
    assert "tracing modules: []" in done.stdout, done.stdout


def test_with_an_endpoint_but_without_the_tracing_extra_it_serves_and_says_what_to_install_once(
        tmp_path: Path, receiver: OtlpReceiver) -> None:
    done = serve_one_request(tmp_path, {"otlp_endpoint": receiver.url}, prelude=BLOCK_THE_TRACING_EXTRA)
    assert done.returncode == 0, done.stderr
    assert "tracing modules: []" in done.stdout, done.stdout
    warnings = [line for line in done.stderr.splitlines() if "aistack.tracing" in line]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("WARNING") and "aistack[tracing]" in warnings[0] and receiver.url in warnings[0]
    assert receiver.posts == 0


def test_with_an_endpoint_the_same_script_exports_its_spans(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """The control for the two above: configured, the same script imports OpenTelemetry and exports
    (httpx's ASGI transport runs no lifespan: the spans go out as the provider shuts down at exit)."""
    done = serve_one_request(tmp_path, {"otlp_endpoint": receiver.url})
    assert done.returncode == 0, done.stderr
    assert "'opentelemetry.sdk.trace'" in done.stdout, done.stdout
    routes = sorted(s.attributes.get("http.route") for s in receiver.snapshot() if s.kind == SERVER)
    assert routes == ["/health", "/v1/models"], receiver.snapshot()

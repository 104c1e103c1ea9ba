"""The Prometheus metrics of one gateway (docs/metrics.md), on a registry the app owns (no module
globals: two apps in one process keep their own counts).

Counters and histograms are fed by listeners on the runtime's parts (scheduler, lifecycle, engine
events, LLM relay) and by the request middleware; gauges are read from those parts at each scrape.
Model labels are bounded: an id the inventory does not list counts as `other`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..runtime import Runtime

OTHER_MODEL = "other"
NO_MODEL = ""
UNMATCHED_ROUTE = "unmatched"
# Distinct model labels at most, whatever the listing holds (a listing of thousands of Ollama tags).
MAX_MODEL_LABELS = 200
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self, listed_models: Callable[[], frozenset[str]] = frozenset) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._listed_models = listed_models
        self._labelled: set[str] = set()
        r = self.registry
        self.requests = Counter("aistack_http_requests", "HTTP requests answered, by route template, model and status.",
                                ["route", "model", "status"], registry=r)
        self.request_seconds = Histogram("aistack_http_request_duration_seconds",
                                         "Time from a request's arrival to the end of its answer.",
                                         ["route", "model"], buckets=REQUEST_BUCKETS, registry=r)
        self.in_flight = Gauge("aistack_http_requests_in_flight", "HTTP requests being answered now.", registry=r)
        self.slot_wait = Histogram("aistack_slot_wait_seconds", "Time a job waited in its device's queue for a slot.",
                                   ["device"], buckets=WAIT_BUCKETS, registry=r)
        self.model_loads = Counter("aistack_model_loads", "Model loads finished, by model and outcome (loaded, failed).",
                                   ["model", "outcome"], registry=r)
        self.model_load_seconds = Histogram("aistack_model_load_duration_seconds", "Time a model load took.",
                                            ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.model_unloads = Counter("aistack_model_unloads", "Model unloads finished, by model.", ["model"], registry=r)
        self.model_unload_seconds = Histogram("aistack_model_unload_duration_seconds",
                                              "Time an unload took (freeing the model's memory).",
                                              ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.audio_seconds = Counter("aistack_audio_seconds",
                                     "Seconds of audio transcribed (input) or synthesized (output), by model.",
                                     ["direction", "model"], registry=r)
        self.llm_tokens = Counter("aistack_llm_tokens", "LLM tokens relayed, as the upstream reported them (prompt, completion).",
                                  ["model", "kind"], registry=r)

    def model_label(self, model_id: str | None) -> str:
        if not model_id or model_id == "-":
            return NO_MODEL
        if model_id in self._labelled:
            return model_id
        if model_id in self._listed_models() and len(self._labelled) < MAX_MODEL_LABELS:
            self._labelled.add(model_id)
            return model_id
        return OTHER_MODEL

    def observe_request(self, route: str, model_id: str | None, status: int, seconds: float) -> None:
        model = self.model_label(model_id)
        self.requests.labels(route, model, str(status)).inc()
        self.request_seconds.labels(route, model).observe(seconds)

    def watch(self, runtime: Runtime) -> None:
        """Listen to the runtime's parts, and read its gauges at each scrape."""
        runtime.scheduler.wait_listeners.append(lambda device, waited: self.slot_wait.labels(device).observe(waited))
        runtime.lifecycle.listeners.append(self._lifecycle_event)
        runtime.events.audio_listeners.append(
            lambda direction, model_id, seconds: self.audio_seconds.labels(direction, self.model_label(model_id)).inc(seconds)
        )
        runtime.llm.usage_listeners.append(self._usage)
        self.registry.register(RuntimeCollector(runtime, self.model_label))

    def _lifecycle_event(self, event: str, model_id: str, seconds: float) -> None:
        model = self.model_label(model_id)
        if event == "unloaded":
            self.model_unloads.labels(model).inc()
            self.model_unload_seconds.labels(model).observe(seconds)
        else:
            self.model_loads.labels(model, "loaded" if event == "loaded" else "failed").inc()
            self.model_load_seconds.labels(model).observe(seconds)

    def _usage(self, model_id: str, prompt: int, completion: int) -> None:
        model = self.model_label(model_id)
        if prompt:
            self.llm_tokens.labels(model, "prompt").inc(prompt)
        if completion:
            self.llm_tokens.labels(model, "completion").inc(completion)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeCollector(Collector):
    """Gauges read at scrape time: each device's queue and slots, each resident model's bytes, each
    upstream's reachability and probe latency, the realtime sessions open."""

    def __init__(self, runtime: Runtime, model_label: Callable[[str], str]) -> None:
        self._runtime = runtime
        self._model_label = model_label

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(live=True)

    def _families(self, live: bool = False) -> Iterator[Metric]:
        queue_depth = GaugeMetricFamily("aistack_device_queue_depth", "Requests waiting for a slot, per device.",
                                        labels=["device"])
        busy = GaugeMetricFamily("aistack_device_slots_busy", "Slots running a job now, per device.", labels=["device"])
        slots = GaugeMetricFamily("aistack_device_slots", "Slots (jobs that may run at once), per device.", labels=["device"])
        resident = GaugeMetricFamily("aistack_model_resident_bytes",
                                     "Approximate memory of each model loaded in the gateway (in-process engines).",
                                     labels=["model"])
        up = GaugeMetricFamily("aistack_upstream_up", "1 when the upstream (or engine) answered its latest probe with models.",
                               labels=["upstream"])
        probe = GaugeMetricFamily("aistack_upstream_probe_seconds", "How long the latest probe of each upstream took.",
                                  labels=["upstream"])
        realtime = GaugeMetricFamily("aistack_realtime_sessions", "Realtime (WebSocket) sessions open now.")
        if live:
            runtime = self._runtime
            for device, queue in runtime.scheduler.describe().items():
                queue_depth.add_metric([device], float(_number(queue.get("queued"))))
                busy.add_metric([device], float(_number(queue.get("busy"))))
                slots.add_metric([device], float(_number(queue.get("slots"))))
            sizes: dict[str, float] = {}
            for entry in runtime.lifecycle.entries():
                if entry.state == "loaded":
                    label = self._model_label(entry.card.id)
                    sizes[label] = sizes.get(label, 0.0) + entry.size_bytes
            for label, size in sizes.items():
                resident.add_metric([label], size)
            in_process = set(runtime.backends)
            snapshot = runtime.inventory.last_snapshot()
            if snapshot is not None:
                for status in snapshot.statuses:
                    if status.provider not in in_process:
                        up.add_metric([status.provider], 1.0 if status.cards else 0.0)
            for provider, seconds in runtime.inventory.probe_seconds.items():
                if provider not in in_process:
                    probe.add_metric([provider], seconds)
            # Whichever door opened them (the WebSocket one), the service holds each open session.
            realtime.add_metric([], float(len(runtime.realtime.sessions)))
        yield from (queue_depth, busy, slots, resident, up, probe, realtime)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0

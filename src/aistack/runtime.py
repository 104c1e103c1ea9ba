"""Everything a running gateway holds, built once from settings and kept on the app (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from .engines.base import Backend
from .engines.whisper import WhisperBackend
from .inventory import Inventory
from .observability.events import EngineEvents
from .scheduler import Scheduler
from .services.transcription import TranscriptionService
from .settings import Settings
from .weights.catalog import whisper_id_for_size
from .weights.resolver import WeightResolver


@dataclass
class Runtime:
    settings: Settings
    resolver: WeightResolver
    whisper: WhisperBackend
    inventory: Inventory
    scheduler: Scheduler
    events: EngineEvents
    transcription: TranscriptionService

    def prepare_weights(self) -> list[str]:
        """Blocking set-up done before serving: joins packaged weight pieces (with progress)."""
        return self.whisper.prepare()


def build_runtime(settings: Settings) -> Runtime:
    resolver = WeightResolver(settings.models_cache_dir, settings.model_paths)
    whisper = WhisperBackend(settings.whisper, resolver)
    backends: tuple[Backend, ...] = (whisper,)
    inventory = Inventory(backends, settings.probe_timeout_s, settings.inventory_ttl_s)
    scheduler = Scheduler()
    events = EngineEvents()
    transcription = TranscriptionService(
        inventory,
        {b.provider: b for b in backends},
        scheduler,
        events,
        default_whisper_id=whisper_id_for_size(settings.whisper.default_size),
    )
    return Runtime(settings, resolver, whisper, inventory, scheduler, events, transcription)

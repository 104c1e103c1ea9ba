"""What an in-process job needs before it runs: a slot on its model's device, then the loaded model."""

from __future__ import annotations

from collections.abc import Callable

from ..engines.base import (
    Embedder,
    EmbeddingBackend,
    InProcessBackend,
    LoadedModel,
    ModelCard,
    SpeechBackend,
    Synthesizer,
    Transcriber,
    TranscriptionBackend,
)
from ..errors import AistackError, ErrorKind
from ..lifecycle import ModelLifecycle
from ..scheduler import Lease, Scheduler


async def claim_transcriber(
    scheduler: Scheduler,
    lifecycle: ModelLifecycle,
    backend: TranscriptionBackend,
    card: ModelCard,
    on_lease: Callable[[Lease], None],
) -> tuple[Lease, Transcriber]:
    """A slot and the loaded speech-to-text model (see `claim`)."""
    lease, model = await claim(scheduler, lifecycle, backend, card, "asr", on_lease)
    if isinstance(model, Transcriber):
        return lease, model
    lease.release()
    raise _not_loaded_as(card, "a model that transcribes")


async def claim_synthesizer(
    scheduler: Scheduler,
    lifecycle: ModelLifecycle,
    backend: SpeechBackend,
    card: ModelCard,
    on_lease: Callable[[Lease], None],
) -> tuple[Lease, Synthesizer]:
    """A slot and the loaded text-to-speech model (see `claim`)."""
    lease, model = await claim(scheduler, lifecycle, backend, card, "tts", on_lease)
    if isinstance(model, Synthesizer):
        return lease, model
    lease.release()
    raise _not_loaded_as(card, "a model that synthesizes speech")


async def claim_embedder(
    scheduler: Scheduler,
    lifecycle: ModelLifecycle,
    backend: EmbeddingBackend,
    card: ModelCard,
    on_lease: Callable[[Lease], None],
) -> tuple[Lease, Embedder]:
    """A slot and the loaded embedding model (see `claim`)."""
    lease, model = await claim(scheduler, lifecycle, backend, card, "embeddings", on_lease)
    if isinstance(model, Embedder):
        return lease, model
    lease.release()
    raise _not_loaded_as(card, "a model that embeds")


async def claim(
    scheduler: Scheduler,
    lifecycle: ModelLifecycle,
    backend: InProcessBackend,
    card: ModelCard,
    capability: str,
    on_lease: Callable[[Lease], None],
) -> tuple[Lease, LoadedModel]:
    """Wait for a slot (503 busy when there is none soon enough), then for the model to be loaded.

    `on_lease` receives the slot as soon as it is granted, so the caller can make sure it is given
    back even if this coroutine is cancelled later. The model is checked back in when the slot is
    released. A load failure is a 500 naming the engine.
    """
    lease = await scheduler.admit(backend.device(card), capability)
    on_lease(lease)
    try:
        model = await lifecycle.checkout(card)
    except Exception as error:
        lease.release()
        raise AistackError(ErrorKind.UNKNOWN, f"{card.provider} could not load {card.id}: {error}", provider=card.provider) from None
    except BaseException:
        lease.release()
        raise
    lease.on_release(lambda: lifecycle.checkin(card.id))
    return lease, model


def _not_loaded_as(card: ModelCard, wanted: str) -> AistackError:
    # The lifecycle holds every capability's models in one place; a backend that loaded the wrong kind broke its contract.
    return AistackError(ErrorKind.UNKNOWN, f"{card.provider} loaded {card.id}, but not as {wanted}", provider=card.provider)

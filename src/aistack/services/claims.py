"""What an in-process job needs before it runs: a slot on its model's device, then the loaded model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engines.base import Backend, ModelCard
from ..errors import AistackError, ErrorKind
from ..lifecycle import ModelLifecycle
from ..scheduler import Lease, Scheduler


async def claim(
    scheduler: Scheduler,
    lifecycle: ModelLifecycle,
    backend: Backend[Any],
    card: ModelCard,
    capability: str,
    on_lease: Callable[[Lease], None],
) -> tuple[Lease, Any]:
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

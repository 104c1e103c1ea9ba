"""The lock that makes a second `aistack pull` of the same model wait for the first.

An flock on `.NAME.pull.lock` beside the model's cache folder, holding the PID of the pull that has
it (so the one waiting can say whom it waits for). The kernel lets go of it when that process
dies, however it dies, so a crashed pull never leaves a model locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .pull_errors import PullError, disk_error


@contextlib.contextmanager
def pull_lock(lock_path: Path, model_id: str, notify: Callable[[str], None], timeout_s: float | None) -> Iterator[None]:
    """Hold `lock_path` exclusively; while another process holds it, say so once and wait (up to `timeout_s`)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise disk_error(error, lock_path) from error
    try:
        waited_since: float | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited_since is None:
                    waited_since = time.monotonic()
                    owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    notify(f"waiting for another pull of {model_id} (PID {owner}) to finish")
                elif timeout_s is not None and time.monotonic() - waited_since > timeout_s:
                    raise PullError(f"another pull of {model_id} is still running ({lock_path} is locked)") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""What can go wrong in `aistack pull`, each with a message that says what to do."""

from __future__ import annotations

import errno
from pathlib import Path


class PullError(Exception):
    """A pull that failed, with a message that says what to do; `exit_code` for the CLI."""

    exit_code = 1


class UnknownModel(PullError):
    exit_code = 2


class HubUnreachable(PullError):
    pass


class HubAccessDenied(PullError):
    pass


class HubNotFound(PullError):
    pass


class VerificationFailed(PullError):
    pass


class TransferInterrupted(PullError):
    """The connection broke mid-file; what arrived is kept and the next attempt resumes it."""


class DiskError(PullError):
    pass


class TransientFailure(Exception):
    """A failure worth another attempt within the same pull (a dropped connection, a 5xx)."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


def disk_error(error: OSError, path: Path) -> DiskError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskError(f"no space left writing {path}; free some space or set AISTACK_CACHE_DIR to a disk with room "
                         "(what is downloaded so far is kept and the next pull resumes it)")
    reason = error.strerror or str(error)
    return DiskError(f"cannot write {path}: {reason}; check the folder, or set AISTACK_CACHE_DIR to a writable one")

"""Handing a process's memory back to the operating system after a model is unloaded.

Freeing a model returns its memory to the C allocator, not to the system. With glibc:
- `malloc_trim(0)` gives back the free pages of every arena; the free space at the top of a
  thread's arena (where CTranslate2's worker threads allocate) is not trimmed, so the number of
  arenas is capped at start (`M_ARENA_MAX`), which keeps that space in arenas malloc_trim reaches;
- the code pages of libraries the engines imported on first load (CTranslate2 alone is ~30 MB
  resident) stay counted in the resident set; `madvise(MADV_PAGEOUT)` on their read-only mappings
  hands them back once no model is loaded. Such pages are clean file pages: the kernel re-reads
  them from the file on the next load, nothing is lost.
On other platforms (musl, macOS, Windows) and older kernels every step is skipped.
This is for engines that decode inside the gateway (Piper, sherpa-onnx, Whisper with
`whisper.worker_process` off): even after it some of an engine's memory stays (CTranslate2's
decoding caches and threads, the libraries themselves), which is why Whisper runs by default in a
worker process whose exit gives everything back (see engines/worker_process.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("aistack.memory")

M_ARENA_MAX = -8  # glibc mallopt parameter
MADV_PAGEOUT = 21  # Linux 5.4+
MAPS = Path("/proc/self/maps")
STATM = Path("/proc/self/statm")


@dataclass(frozen=True)
class MemoryRelease:
    """What one release did: whether malloc_trim ran, library bytes advised out, resident set around it."""

    trimmed: bool
    paged_out_bytes: int
    rss_before: int | None
    rss_after: int | None


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")  # runs ldconfig: once is enough
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def resident_bytes() -> int | None:
    try:
        return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _mappings() -> list[tuple[int, int, str, str]]:
    """(start, end, permissions, path) of each file-backed mapping of this process."""
    try:
        lines = MAPS.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, _, end = fields[0].partition("-")
            found.append((int(start, 16), int(end, 16), fields[1], fields[5]))
    return found


def _is_library(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".so") or ".so." in name


class ProcessMemory:
    """Caps glibc's arenas when created (before engines start threads) and releases memory on demand."""

    def __init__(self, malloc_arena_max: int | None) -> None:
        self._libc = _glibc()
        self._libraries_at_start = frozenset(path for *_, path in _mappings() if _is_library(path))
        self.releases: list[MemoryRelease] = []
        if self._libc is not None and malloc_arena_max is not None:
            if not self._libc.mallopt(M_ARENA_MAX, malloc_arena_max):
                log.warning("glibc refused M_ARENA_MAX=%d", malloc_arena_max)

    def release(self, *, page_out_libraries: bool) -> MemoryRelease:
        """Collect garbage, trim the heap and, when asked (no model left loaded), page out engine libraries."""
        before = resident_bytes()
        gc.collect()
        trimmed = False
        paged_out = 0
        if self._libc is not None:
            self._libc.malloc_trim(0)
            trimmed = True
            if page_out_libraries:
                paged_out = self._page_out_libraries()
        release = MemoryRelease(trimmed, paged_out, before, resident_bytes())
        self.releases.append(release)
        return release

    def _page_out_libraries(self) -> int:
        """Advise out the read-only mappings of libraries loaded after start; the bytes advised."""
        assert self._libc is not None
        advised = 0
        for start, end, permissions, path in _mappings():
            # Only mappings that cannot hold written data: their pages come back from the file.
            if "w" in permissions or not _is_library(path) or path in self._libraries_at_start:
                continue
            if self._libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT) != 0:
                if ctypes.get_errno() == 22:  # EINVAL: a kernel older than 5.4
                    return advised
                continue
            advised += end - start
        return advised

"""A speech-to-text model hosted in a child process, so that unloading it gives all its memory back.

A native engine (CTranslate2, onnxruntime) keeps memory after its model is freed: allocator caches,
thread pools, its libraries' own pages; a Python process never unloads an imported library. A child
that exits takes all of that with it. The host knows nothing of any engine: it is given a
`TranscriberFactory` (a module path, a function name and picklable arguments), the child calls it
to build an in-process `Transcriber`, and `HostedTranscriber` is the parent's side of it, itself a
`Transcriber`.

Protocol: pickled messages (`multiprocessing.connection` framing) over a socket pair; the child is
a fresh interpreter (`subprocess`, which executes it at once: no fork of a threaded process runs
Python code, and the parent's `__main__` is not re-run as multiprocessing's "spawn" would). Each
job has an id; the child runs each job on its own thread, so a model with several workers serves
several jobs at once.
  parent -> child: ("build", factory, log level) first; ("job", id, audio, options), ("next", id),
                   ("stop", id), ("exit",)
  child -> parent: ("ready", pid) or ("load_failed", error) once; then per job ("info", id, info),
                   ("segment", id, segment), ("end", id, JobReport) or ("error", id, error);
                   and ("log", logger, level, message) for the child's log records.
Segments are decoded in lockstep: the child decodes the next segment only when the parent asks for
it, as the in-process engine does when its iterator is pulled, so a job the parent stops
(closing the segment iterator early) has decoded nothing past what was pulled, and its report
says how far it got. The child dies with the parent: its pipe reaches end-of-file and it exits.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..security import environment_without_secrets
from .base import ModelCard, Segment, TranscribeOptions, TranscriptionInfo

log = logging.getLogger("aistack.engines.worker_process")

# How long an asked-to-exit child has to close its model before it is killed by PID.
EXIT_TIMEOUT_S = 10.0
# How long a stopped job may take to finish the segment it is decoding before its iterator gives up on it.
STOP_TIMEOUT_S = 120.0
# Reports of finished jobs kept for reading (tests, diagnostics).
KEPT_REPORTS = 64


@dataclass(frozen=True)
class TranscriberFactory:
    """How the child builds its transcriber: `module.function(*args)`; everything must pickle."""

    module: str
    function: str
    args: tuple[Any, ...] = ()

    def build(self) -> Any:
        return getattr(importlib.import_module(self.module), self.function)(*self.args)


@dataclass(frozen=True)
class JobReport:
    """How a job ended in the child: segments it sent, whether it ran out of segments or was stopped,
    and the engine's own progress (what its segment iterator exposes as `progress`, e.g. pieces decoded)."""

    job_id: int
    segments: int
    ran_to_end: bool
    progress: Mapping[str, Any] = field(default_factory=dict)


class WorkerDied(RuntimeError):
    """The worker process exited while a job was waiting on it."""


# -- the parent's side ------------------------------------------------------------------------------

_DIED = ("died",)


class HostedTranscriber:
    """A `Transcriber` whose model lives in a child process; `close` ends the child.

    A child that dies fails the jobs waiting on it with `WorkerDied`; the next job starts a fresh one.
    """

    def __init__(self, card: ModelCard, factory: TranscriberFactory, name: str) -> None:
        self.card = card
        self._factory = factory
        self._name = name  # who the child is, in messages: "faster-whisper whisper-tiny.en"
        self._lock = threading.Lock()  # starting, closing and sending
        self._jobs: dict[int, queue.Queue[tuple[Any, ...]]] = {}
        self._job_ids = itertools.count(1)
        self._process: Any = None
        self._conn: Connection | None = None
        self._closed = False
        self.reports: deque[JobReport] = deque(maxlen=KEPT_REPORTS)
        self._start()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    # starting and ending

    def _start(self) -> None:
        """Start a child and wait until its model is loaded; the child's load error is raised here."""
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", f"from {__name__} import child_main; child_main({theirs.fileno()})"],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                env=environment_without_secrets(),  # engine code needs none of aistack's keys
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child holds the only other end: its exit is end-of-file here
        conn = Connection(ours.detach())
        try:
            conn.send(("build", self._factory, logging.getLogger("aistack").getEffectiveLevel()))
            reply = conn.recv()
        except (EOFError, OSError):
            conn.close()
            _end(process, self._name)
            raise WorkerDied(f"the {self._name} worker process exited while loading (exit code {process.returncode})") from None
        if reply[0] == "load_failed":
            conn.close()
            _end(process)
            raise reply[1]
        self._process, self._conn = process, conn
        threading.Thread(target=self._read, args=(conn, process), name=f"aistack-worker-reader-{process.pid}",
                         daemon=True).start()
        log.info("%s runs in worker process %d", self._name, process.pid)

    def close(self) -> None:
        """Ask the child to exit, wait for it, kill it by PID if it does not; waiting jobs fail."""
        with self._lock:
            self._closed = True
            process, conn = self._process, self._conn
            self._process = self._conn = None
            if process is None or conn is None:
                return
            try:
                conn.send(("exit",))
            except (OSError, ValueError):
                pass
        _end(process, self._name)
        with self._lock:  # the reader closes it too when the child goes: one at a time, so the second is a no-op
            conn.close()
        log.info("%s worker process %d ended (exit code %s)", self._name, process.pid, process.returncode)

    def _read(self, conn: Connection, process: Any) -> None:
        """Hand each message from the child to its job; when the child is gone, wake every job."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            kind = message[0]
            if kind == "log":
                _, name, level, text = message
                logging.getLogger(name).log(level, "%s", text)
                continue
            job = self._jobs.get(message[1])
            if job is not None:
                job.put(message)
        with self._lock:
            died = self._process is process
            if died:  # on its own, not closed: the next job starts a fresh one
                self._process = self._conn = None
            conn.close()
            waiting = list(self._jobs.values())
        if died:
            _end(process, self._name)
            log.error("%s worker process %d died (exit code %s)", self._name, process.pid, process.returncode)
        for job in waiting:
            job.put(_DIED + (process.pid, process.returncode))

    # jobs

    def _send(self, message: tuple[Any, ...]) -> None:
        """Send to the child; if it is gone, the reader has told (or will tell) every registered job."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                conn.send(message)
            except (OSError, ValueError):
                pass

    def _receive(self, job_id: int, job: queue.Queue[tuple[Any, ...]], timeout: float | None = None) -> tuple[Any, ...]:
        message = job.get(timeout=timeout)
        if message[0] == "died":
            _, pid, code = message
            raise WorkerDied(f"the {self._name} worker process {pid} died during this job (exit code {code}); "
                             "the next request starts it again")
        if message[0] == "error":
            raise message[2]
        return message

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> tuple[TranscriptionInfo, Iterator[Segment]]:
        job_id = next(self._job_ids)
        job: queue.Queue[tuple[Any, ...]] = queue.Queue()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} was unloaded")
            if self._conn is None:
                self._start()
            self._jobs[job_id] = job
        try:
            self._send(("job", job_id, audio, options))
            _, _, info = self._receive(job_id, job)
        except BaseException as error:
            if not isinstance(error, Exception):  # interrupted here: the child's job must not wait for us
                self._send(("stop", job_id))
            self._jobs.pop(job_id, None)
            raise
        return info, _JobSegments(self, job_id, job)

    def _stop(self, job_id: int, job: queue.Queue[tuple[Any, ...]]) -> None:
        """Tell the child to stop the job and wait until it has (it is idle between segments: at once)."""
        try:
            self._send(("stop", job_id))
            while True:
                message = self._receive(job_id, job, timeout=STOP_TIMEOUT_S)
                if message[0] == "end":
                    self.reports.append(message[2])
                    return
        except queue.Empty:
            log.error("%s worker did not stop job %d within %.0f s", self._name, job_id, STOP_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - a job being stopped has no one to tell
            log.warning("%s worker: stopping job %d: %s", self._name, job_id, error)


class _JobSegments:
    """One job's segments, each asked of the child when pulled. Closing it (or dropping it, even
    before the first pull) before the end stops the child's job and waits until it has stopped."""

    def __init__(self, host: HostedTranscriber, job_id: int, job: queue.Queue[tuple[Any, ...]]) -> None:
        self._host = host
        self._job_id = job_id
        self._job = job
        self._done = False

    def __iter__(self) -> _JobSegments:
        return self

    def __next__(self) -> Segment:
        if self._done:
            raise StopIteration
        try:
            self._host._send(("next", self._job_id))
            message = self._host._receive(self._job_id, self._job)
        except BaseException:
            self._finish()
            raise
        if message[0] == "end":
            self._host.reports.append(message[2])
            self._finish()
            raise StopIteration
        segment: Segment = message[2]  # what crosses the pipe is unpickled, so untyped
        return segment

    def close(self) -> None:
        if not self._done:
            self._host._stop(self._job_id, self._job)
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._host._jobs.pop(self._job_id, None)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the child may already be gone
            pass


def _end(process: subprocess.Popen[bytes], name: str = "") -> None:
    """Wait for the child to exit; past the timeout kill it by PID (Popen never signals a reaped PID)."""
    try:
        process.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("%s worker process %d did not exit within %.0f s; killing it", name, process.pid, EXIT_TIMEOUT_S)
        process.kill()
        process.wait()


# -- the child's side -------------------------------------------------------------------------------


class _PipeLogHandler(logging.Handler):
    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - a log line is never worth a job
            pass


def _picklable(error: BaseException) -> BaseException:
    """The error itself when it crosses the pipe intact, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")


def child_main(fd: int) -> None:
    """The worker process: build the transcriber, then serve jobs until told to exit or the parent is gone."""
    conn = Connection(fd)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    try:
        _, factory, log_level = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(send)]
    root.setLevel(log_level)
    try:
        transcriber = factory.build()
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        send(("load_failed", _picklable(error)))
        conn.close()
        os._exit(1)
    send(("ready", os.getpid()))
    jobs: dict[int, queue.Queue[str]] = {}
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the parent is gone: nobody is left to serve
                os._exit(0)
            kind = message[0]
            if kind == "exit":
                break
            if kind == "job":
                _, job_id, audio, options = message
                commands: queue.Queue[str] = queue.Queue()
                jobs[job_id] = commands
                threading.Thread(target=_run_job, args=(transcriber, job_id, audio, options, commands, send, jobs),
                                 name=f"job-{job_id}", daemon=True).start()
            elif kind in ("next", "stop"):
                running = jobs.get(message[1])
                if running is not None:
                    running.put(kind)
    finally:
        close = getattr(transcriber, "close", None)
        if close is not None:
            close()
    conn.close()
    os._exit(0)  # running job threads and native thread pools end with the process


def _run_job(transcriber: Any, job_id: int, audio: np.ndarray, options: TranscribeOptions,
             commands: queue.Queue[str], send: Any, jobs: dict[int, queue.Queue[str]]) -> None:
    segments: Iterator[Segment] | None = None
    sent = 0
    try:
        info, segments = transcriber.transcribe(audio, options)
        send(("info", job_id, info))
        while True:
            if commands.get() == "stop":
                send(("end", job_id, JobReport(job_id, sent, False, _progress(segments))))
                return
            segment = next(segments, None)
            if segment is None:
                send(("end", job_id, JobReport(job_id, sent, True, _progress(segments))))
                return
            send(("segment", job_id, segment))
            sent += 1
    except Exception as error:  # noqa: BLE001 - raised in the parent's job
        send(("error", job_id, _picklable(error)))
    finally:
        close = getattr(segments, "close", None)
        if close is not None:
            close()
        jobs.pop(job_id, None)


def _progress(segments: Any) -> dict[str, Any]:
    progress = getattr(segments, "progress", None)
    return dict(progress) if isinstance(progress, Mapping) else {}

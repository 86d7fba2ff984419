"""``cachegate serve --workers N``: N gateway processes sharing one listening socket, and their supervisor.

One gateway process saturates one core, so a host runs one per core. The supervisor (the process
the operator started) binds the socket, then starts each worker as a fresh interpreter running
``cachegate serve --listen-fd FD`` with the socket inherited: the kernel spreads accepted
connections over the processes, and each worker opens its own ports (store, index, counters,
upstream client) as a single process would. A fresh interpreter rather than ``fork``: the
supervisor never holds an event loop, threads or connections a child could inherit half-way.

What the workers share is shared through the backends: the control store and the cache index
(SQLite in WAL mode on the embedded default, with its busy timeout; PostgreSQL or Redis in
production), and the ledger journal's folder, where each process locks the segments it owns
(``gateway/journal.py``). Counters of ``/metrics`` are added up over the workers through
prometheus-client's multiprocess mode. What stays per worker: the per-key concurrency limit and
the limit on failed key attempts (each worker counts its own).

SIGTERM or SIGINT to the supervisor is passed to every worker, which drains as one process does
(``serving.py``); the supervisor waits for them, up to the sum of the shutdown deadlines and a
margin, then kills what is left. A worker that dies on its own is started again (after a pause
that grows while workers keep dying), so one crash costs that worker's connections, not the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cachegate.background import backoff_delays
from cachegate.config import ServerLimits
from cachegate.gateway.metrics import MULTIPROCESS_ENV

log = logging.getLogger("cachegate")

_STOP_MARGIN_SECONDS = 5.0
# uvicorn re-raises the signal it stopped on once it has shut down, so a worker that drained and
# stopped as asked ends by that signal (or with 0).
_STOPPED_AS_ASKED = frozenset({0, -signal.SIGTERM, -signal.SIGINT})
_SHUTDOWN_STEPS = 10  # the steps of Gateway.shutdown bounded by shutdown_close_seconds, counters included


def stop_deadline(limits: ServerLimits) -> float:
    """How long a worker may take to stop after SIGTERM before it is killed: every step of its
    shutdown (``Gateway.shutdown``) at its own deadline, and a margin."""
    return (
        limits.shutdown_drain_seconds
        + limits.shutdown_ledger_seconds
        + _SHUTDOWN_STEPS * limits.shutdown_close_seconds
        + _STOP_MARGIN_SECONDS
    )


class Supervisor:
    """Starts ``count`` workers on ``listener``, restarts the ones that die, and stops them all on a signal."""

    def __init__(self, listener: socket.socket, count: int, worker_args: Sequence[str], limits: ServerLimits) -> None:
        self._listener = listener
        self._count = count
        self._worker_args = list(worker_args)
        self._limits = limits
        self._stopping = asyncio.Event()
        self._workers: dict[int, asyncio.subprocess.Process] = {}  # slot -> process

    async def run(self) -> int:
        """Supervise until a stop signal; returns 0 once every worker has stopped."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        metrics_dir = Path(tempfile.mkdtemp(prefix="cachegate-metrics-"))
        try:
            slots = [asyncio.create_task(self._keep_running(slot, metrics_dir)) for slot in range(self._count)]
            await self._stopping.wait()
            log.info("stopping %d workers", len(self._workers))
            for process in self._workers.values():
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            await asyncio.gather(*slots)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0

    async def _keep_running(self, slot: int, metrics_dir: Path) -> None:
        """One worker slot: start a worker, and again whenever it dies, until the supervisor stops."""
        pauses = backoff_delays(0.5, 10.0)
        while not self._stopping.is_set():
            process = await self._start(slot, metrics_dir)
            self._workers[slot] = process
            waiting = asyncio.create_task(process.wait())
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if self._stopping.is_set():
                await self._wait_stopped(slot, process, waiting)
                return
            status = waiting.result()
            log.error("worker %d (pid %d) exited with status %s; starting it again", slot, process.pid, status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), next(pauses))

    async def _start(self, slot: int, metrics_dir: Path) -> asyncio.subprocess.Process:
        fd = self._listener.fileno()
        command = [sys.executable, "-m", "cachegate", *self._worker_args, "serve", "--listen-fd", str(fd)]
        process = await asyncio.create_subprocess_exec(
            *command, pass_fds=(fd,), env={**os.environ, MULTIPROCESS_ENV: str(metrics_dir)}
        )
        log.info("worker %d started (pid %d)", slot, process.pid)
        return process

    async def _wait_stopped(self, slot: int, process: asyncio.subprocess.Process, waiting: asyncio.Task[int]) -> None:
        deadline = stop_deadline(self._limits)
        try:
            status = await asyncio.wait_for(asyncio.shield(waiting), deadline)
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop within %s s; killing it", slot, process.pid, deadline)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            status = await waiting
        if status in _STOPPED_AS_ASKED:
            log.info("worker %d (pid %d) stopped", slot, process.pid)
        else:
            log.error("worker %d (pid %d) stopped with status %d", slot, process.pid, status)


def inherited_listener(fd: int) -> socket.socket:
    """The listening socket a supervisor handed down as file descriptor ``fd``."""
    listener = socket.socket(fileno=fd)
    if listener.type != socket.SOCK_STREAM:
        raise OSError(f"file descriptor {fd} is not a stream socket")
    return listener

"""SIGTERM as a normal way to stop, unwinding like Ctrl-C.

SLURM sends SIGTERM at a job's time limit, Snakemake and schedulers on cancel. Python's default
action ends the process on the spot, so no `finally` runs and the temporaries of
`fsutil.atomic_dir/atomic_path` stay behind. `sigterm_unwinds()` turns SIGTERM into `Terminated`
raised in the main thread; `held()` keeps SIGINT and SIGTERM back for the few steps that must
finish together (renaming an output into place, removing a temporary).

DataLoader workers are unaffected: torch installs its own C-level SIGTERM handler in each worker.
A SIGTERM to the whole process group (`kill -- -PGID`, SLURM's scancel and time limit) ends them
too; torch's SIGCHLD handler in the main process would then raise "DataLoader worker ... is
killed by signal: Terminated" while `Terminated` unwinds, replacing the one-line stop with a
traceback. Once SIGTERM has arrived the process is stopping, and a child's end is part of the
stop: SIGCHLD is let pass from then on (not given back when `sigterm_unwinds()` exits, since a
worker may die after the unwinding is done).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException like KeyboardInterrupt, so `except Exception` lets it
    through and only cleanup code sees it."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_status(self) -> int:
        """128 + signal number, the shell's convention (143 for SIGTERM)."""
        return 128 + self.signum


def _let_pass(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD while stopping: a child (a DataLoader worker) ended with the stop."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if hasattr(signal, "SIGCHLD"):  # not on Windows
        signal.signal(signal.SIGCHLD, _let_pass)
    raise Terminated(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread (the previous handler comes
    back on exit). An inherited SIG_IGN is respected; outside the main thread it does nothing,
    since Python only lets the main thread set handlers."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Keep SIGINT and SIGTERM back until the block ends, then deliver them to the handlers
    that were in place (so a stop lands before or after the block, never inside it). Only the
    main thread can do this; elsewhere the block runs unprotected."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = {}
    for s in _HELD:
        handler = signal.getsignal(s)
        if handler is not None:  # None: set outside Python, which we cannot put back
            old[s] = handler
            signal.signal(s, note)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)

"""Progress of long loops: a live line on a terminal, plain periodic lines in a log file.

A log file must stay readable (no carriage returns), and a short loop must stay silent there so
that the logs and test output of small runs do not change; on a terminal the line updates at most
a few times a second so that drawing it never costs more than the loop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


class Progress:
    """Counts items of one stage and reports count, share, rate and time left."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "items",
                 stream: IO[str] | None = None, every_s: float = 30.0,
                 tty: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.every_s = 0.2 if tty else every_s
        self.n = 0
        self.start = self.last = time.monotonic()
        self.printed = False
        self.shown = -1  # the count of the line last written

    def line(self) -> str:
        """`label: n/total unit (p%), r unit/s, ETA s`, with what is known."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.n / elapsed
        text = f"{self.label}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.2f} {self.unit}/s, {elapsed:.0f} s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", ~{(self.total - self.n) / rate:.0f} s left"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit()

    def close(self) -> None:
        """The final count, only where a line was already shown (short loops stay silent), and
        only if the last line shown has not already said it."""
        if self.printed:
            if self.shown != self.n:
                self._emit()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def _emit(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.printed, self.shown = True, self.n


def progress(items: Iterable[T], label: str, total: int | None = None, *, unit: str = "items",
             stream: IO[str] | None = None, every_s: float = 30.0) -> Iterator[T]:
    """Yield `items` unchanged while reporting progress (total: `len(items)` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = Progress(label, total, unit=unit, stream=stream, every_s=every_s)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()

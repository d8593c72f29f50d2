"""A one-line progress display on stderr for long commands, shown only on a terminal.

Piped or redirected output stays clean: when stderr is not a terminal (or
``TERM=dumb``) nothing is written. The line is redrawn at most every
``interval`` seconds and erased when the work is done, so the command's own
summary line follows on a clean line::

    with Progress("retrying", total=len(ids)) as progress:
        for key in ids:
            resend(key)
            progress.advance()

    for key in track(ids, "retrying"):      # the same, for a loop
        resend(key)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from types import TracebackType
from typing import TextIO, TypeVar

__all__ = ["Progress", "track"]

T = TypeVar("T")
_CLEAR = "\r\x1b[K"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Progress:
    """Shows ``label: done/total (pct%) rate/s, eta left`` on a terminal's stderr.

    ``total`` may be ``None`` (unknown: only the count and rate are shown).
    ``enabled`` forces the display on or off; by default it is on only when
    ``stream`` (default: ``sys.stderr``) is a terminal.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.interval = interval
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` more items done."""
        self.update(self.done + amount)

    def update(self, done: int) -> None:
        """Set the number of items done; redraw if ``interval`` has passed."""
        self.done = done
        if not self.enabled:
            return
        now = self._clock()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._drawn_at = now
            self.stream.write(_CLEAR + self.render(now))
            self.stream.flush()

    def render(self, now: float | None = None) -> str:
        """The progress line (without control characters)."""
        elapsed = (self._clock() if now is None else now) - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} ({min(self.done / self.total, 1.0):.0%})"
        if rate:
            text += f" {rate:,.0f}/s"
            if self.total and self.done < self.total:
                text += f", {_duration((self.total - self.done) / rate)} left"
        return text

    def close(self) -> None:
        """Erase the line (if one was drawn)."""
        if self.enabled and self._drawn_at is not None:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._drawn_at = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def track(
    items: Iterable[T], label: str, total: int | None = None, **options: object
) -> Iterator[T]:
    """Yield ``items``, showing progress (``total`` defaults to ``len(items)``)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with Progress(label, total, **options) as progress:  # type: ignore[arg-type]
        for item in items:
            yield item
            progress.advance()

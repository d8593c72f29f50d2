"""The chain badge: ``verify`` run in the background, with its progress.

Verifying a million rows takes seconds, far too long for a page, so the
viewer verifies on a thread of its own, on a second handle of the store
(:meth:`AuditStore.reopen`) so that pages keep being answered meanwhile.
A page shows the last result, or the progress of the run under way. A run
starts when the first page asks for the badge, when the last result is
older than ``stale_after`` seconds, and when someone presses "verify now".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import _stats
from ..errors import AuditError
from ..store import AuditStore, Verification

__all__ = ["ChainStatus", "ChainView"]


@dataclass(frozen=True, slots=True)
class ChainView:
    """What a badge shows: a result (with when it finished), or a run's progress."""

    running: bool
    checked: int
    total: int
    result: Verification | None
    error: str
    finished_at: float | None


class ChainStatus:
    """Background verification of one store; thread-safe."""

    def __init__(
        self, store: AuditStore, *, stale_after: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._checked = 0
        self._total = 0
        self._result: Verification | None = None
        self._error = ""
        self._finished_at: float | None = None

    def view(self, *, refresh: bool = True) -> ChainView:
        """The badge's state; starts a run first if none ran or the last one is stale."""
        if refresh:
            with self._lock:
                stale = self._finished_at is None or (
                    self._clock() - self._finished_at > self._stale_after
                )
            if stale:
                self.start()
        with self._lock:
            return ChainView(
                self._thread is not None, self._checked, self._total, self._result,
                self._error, self._finished_at,
            )

    def start(self) -> bool:
        """Start a run unless one is under way; whether one was started."""
        with self._lock:
            if self._thread is not None:
                return False
            self._checked = 0
            thread = threading.Thread(target=self._run, name="audit viewer verify", daemon=True)
            self._thread = thread
        thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run under way (if any) to finish; whether none is running."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _progress(self, checked: int) -> None:
        with self._lock:
            self._checked = checked

    def _run(self) -> None:
        result: Verification | None = None
        error = ""
        try:
            with self._store.reopen(readonly=True) as reader:
                total = reader.head().seq
                with self._lock:
                    self._total = total
                result = reader.verify(progress=self._progress)
        except AuditError as exc:  # a keyed store without its key, an unreadable file
            error = str(exc)
        except Exception as exc:  # never let the badge's thread die unnoticed
            error = f"verify failed: {type(exc).__name__}"
            _stats.note_failure("viewer verify", f"the viewer's verify failed: {exc!r}", error=exc)
        with self._lock:
            self._result = result
            self._error = error
            self._finished_at = self._clock()
            self._thread = None

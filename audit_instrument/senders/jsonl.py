"""A sender that appends each event as one JSON line to a file, and a reader for such files."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path

from .. import signals
from ..errors import AuditConfigError, AuditError, AuditValidationError, DeliveryError
from ..event import AuditEvent

__all__ = ["JsonlSender", "read_jsonl"]

logger = logging.getLogger("audit_instrument")


class JsonlSender:
    """Append one ``to_record()`` JSON object per line to ``path``.

    The file is created with mode ``0600`` (audit trails are private) and
    opened for appending; ``fsync=True`` also forces each line to disk. Lines
    from several threads never interleave: each is written under a lock. A
    line is never left half-written: if the disk is full (or any write
    fails), what was written of it is cut off again and ``send`` raises
    :class:`~audit_instrument.DeliveryError` (also reported on
    ``signals.event_failed``). One process should write a given file.

    >>> from audit_instrument import configure
    >>> configure(JsonlSender("audit.jsonl"))
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise AuditConfigError(f"{self.path}: is a directory, not a JSONL file")
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                           0o600)
        except OSError as error:
            raise AuditConfigError(
                f"{self.path}: cannot open for appending ({error.strerror})"
            ) from None

    def send(self, event: AuditEvent) -> None:
        """Append ``event`` as one line; the line is on the file whole, or not at all."""
        line = (event.to_json() + "\n").encode("utf-8")
        failure: DeliveryError | None = None
        with self._lock:
            fd = self._fd
            if fd is None:
                raise AuditError(f"{self!r} is closed")
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                written = 0
                while written < len(line):
                    count = os.write(fd, line[written:])
                    if count == 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += count
                if self.fsync:
                    os.fsync(fd)
            except OSError as error:
                self._undo(fd, start)
                failure = DeliveryError(
                    f"{self.path}: event {event.action!r} not written ({error.strerror}); "
                    "the file holds only whole lines", retryable=True)
        if failure is not None:
            signals.report_failed(event, self, failure)
            raise failure

    def _undo(self, fd: int, start: int) -> None:
        """Cut a partly written line off again (with the lock held)."""
        try:
            os.ftruncate(fd, start)
        except OSError as error:  # the file now ends in a torn line: read_jsonl skips it
            logger.error("audit_instrument: %s: could not remove a partly written line (%s)",
                         self.path, error.strerror)

    def close(self) -> None:
        """Close the file; later events raise :class:`~audit_instrument.AuditError`."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> JsonlSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JsonlSender path={str(self.path)!r}>"


def read_jsonl(path: str | os.PathLike[str], *, strict: bool = False) -> list[AuditEvent]:
    """Read back the events a :class:`JsonlSender` wrote.

    A line that is not a whole event (torn by a crash, or edited) is skipped,
    and the skipped line numbers are logged in one warning; with
    ``strict=True`` the first one raises
    :class:`~audit_instrument.AuditValidationError` instead.
    """
    events: list[AuditEvent] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                events.append(AuditEvent.from_dict(json.loads(line)))
            except (ValueError, TypeError) as error:
                if strict:
                    raise AuditValidationError(
                        f"line {number}", f"is not a whole event ({type(error).__name__})"
                    ) from None
                skipped.append(number)
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
        logger.warning("audit_instrument: %s: skipped %d line(s) that are not whole events: %s",
                       path, len(skipped), shown)
    return events

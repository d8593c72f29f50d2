"""A sender that appends each event as one JSON line to a file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from ..event import AuditEvent

__all__ = ["JsonlSender", "read_jsonl"]


class JsonlSender:
    """Append one ``to_record()`` JSON object per line to ``path``.

    The file is created with mode ``0600`` (audit trails are private), opened
    for appending, and flushed after every event; ``fsync=True`` also forces
    each line to disk. Lines from several threads never interleave: each is
    written in one ``write`` under a lock.

    >>> from audit_instrument import configure
    >>> configure(JsonlSender("audit.jsonl"))
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def send(self, event: AuditEvent) -> None:
        """Append ``event`` as one line."""
        line = event.to_json() + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file; later events raise ``ValueError``."""
        with self._lock:
            self._file.close()

    def __enter__(self) -> JsonlSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JsonlSender path={str(self.path)!r}>"


def read_jsonl(path: str | os.PathLike[str]) -> list[AuditEvent]:
    """Read back the events a :class:`JsonlSender` wrote."""
    with open(path, encoding="utf-8") as file:
        return [AuditEvent.from_dict(json.loads(line)) for line in file if line.strip()]

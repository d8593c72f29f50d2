"""The channel seam: what the engine sends events through, one call per batch.

The engine takes up to ``batch_size`` jobs, waits for its turn, and calls
:meth:`Channel.send` with their events. The :class:`~.http.Answer` says what
became of all of them: a 2xx status delivered them, a retryable status
(:data:`~.retry.RETRYABLE_STATUSES`) has them retried, any other refuses
them for good; :class:`~.http.NoAnswerError` means no answer (retried).

* :class:`HttpChannel` — an HTTP :class:`~.http.Destination` (WorkOS): one
  event per request, POSTed through a :class:`~.http.Poster`;
* a sender that delivers several events per call itself (the OpenTelemetry
  sender, through an exporter) gives the engine a channel of its own and a
  ``batch_size`` above 1.

A channel is made on the engine's first send, and again in a forked child.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import httpx

from .http import Answer, Destination, Poster, make_poster

if TYPE_CHECKING:
    from ..event import AuditEvent

__all__ = ["Channel", "HttpChannel"]


class Channel(Protocol):
    """What the engine sends events through (see the module docstring)."""

    def send(self, events: Sequence[AuditEvent]) -> Answer:
        """Deliver ``events``; raise :class:`~.http.NoAnswerError` if nothing answered."""
        ...

    def error_message(self, response: Answer) -> str:
        """The explanation of a failed answer, for errors and dead letters."""
        ...

    def thread_done(self) -> None:
        """The calling thread sends no more."""
        ...

    def close(self) -> None: ...


class HttpChannel:
    """One event per POST: ``destination`` builds the request, a :class:`Poster` sends it."""

    def __init__(self, destination: Destination, base_url: str, *, timeout: float,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.destination = destination
        self.poster: Poster = make_poster(base_url, timeout=timeout, transport=transport)

    def send(self, events: Sequence[AuditEvent]) -> Answer:
        path, body, headers = self.destination.request_parts(events[0])
        return self.poster.post(path, body, headers)

    def error_message(self, response: Answer) -> str:
        return self.destination.error_message(response)

    def thread_done(self) -> None:
        self.poster.thread_done()

    def close(self) -> None:
        self.poster.close()

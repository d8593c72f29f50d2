"""The WorkOS sender: events become ``POST /events`` (or ``/audit_logs/events``) requests.

This module speaks HTTP only — the request for an event, its headers, and
the server's error message. Queueing, retries, concurrency, exit and fork
handling live in :mod:`audit_instrument.delivery` and serve any HTTP sender.

>>> from audit_instrument import WorkOS, configure
>>> workos = WorkOS("sk_1234")                   # or WorkOS() with WORKOS_API_KEY set
>>> configure(workos)                            # every @audit / emit event goes to WorkOS
>>> handle = workos.create_event(event)          # doctest: +SKIP  (returns at once)
>>> handle.result(timeout=5)                     # doctest: +SKIP  (optional: wait)
>>> workos.shutdown(timeout=5)
0
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import httpx

from .._json import audit_logs_dict, legacy_dict
from ..delivery.engine import DeliveryEngine
from ..delivery.handle import DeliveryHandle
from ..delivery.http import Answer, route
from ..delivery.outbox import Outbox
from ..delivery.retry import RetryPolicy
from ..errors import AuditConfigError, AuditValidationError
from ..event import AuditEvent
from ..rules import check_legacy
from ._queued import QueuedSender
from .workos_exports import AuditLogExport, WorkOSExports

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_REQUESTS_PER_SECOND", "WorkOS"]

logger = logging.getLogger("audit_instrument")

DEFAULT_BASE_URL = "https://api.workos.com"
DEFAULT_REQUESTS_PER_SECOND = 95.0
"""5 % under WorkOS's documented limit of 6,000 requests per 60 s per IP (100/s): room
for the burst allowance, clock and network jitter, and a CLI check from the same host."""
API_KEY_ENV = "WORKOS_API_KEY"
_PATHS = {"events": "/events", "audit_logs": "/audit_logs/events"}


def _library_version() -> str:
    try:
        return metadata.version("audit_instrument")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0"


USER_AGENT = f"audit_instrument/{_library_version()} (python {platform.python_version()})"


class _Secret:
    """Holds the API key; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the WorkOS API key cannot be pickled")


def _check_api_key(api_key: object) -> str:
    if not api_key or not isinstance(api_key, str):
        raise AuditConfigError(
            f"no WorkOS API key: pass WorkOS(api_key='sk_...') or set the {API_KEY_ENV} "
            f"environment variable"
        )
    if not all("!" <= char <= "~" for char in api_key):
        # Never repeat the key: it may be a real one with a stray newline.
        raise AuditConfigError(
            f"the WorkOS API key must be printable ASCII without spaces or control "
            f"characters (it has {len(api_key)} characters; check for a stray newline)"
        )
    return api_key


def _as_event(event: AuditEvent | Mapping[str, Any], api: str = "audit_logs") -> AuditEvent:
    """``event`` (or the event a mapping describes), validated for ``api``'s format."""
    if not isinstance(event, AuditEvent):
        if not isinstance(event, Mapping):
            raise AuditValidationError(
                "event", "must be an AuditEvent or a mapping like AuditEvent.to_record()'s",
                event)
        event = AuditEvent.from_dict(event)
    if api == "events":
        check_legacy(event)  # refused here, in the caller, rather than cut or failed later
    return event


class WorkOS(QueuedSender):
    """Send audit events to WorkOS in the background, with retries.

    ``api_key`` defaults to the ``WORKOS_API_KEY`` environment variable.
    ``api="events"`` speaks the legacy ``POST /events`` format; ``"audit_logs"`` the
    current ``POST /audit_logs/events`` (``group`` → ``organization_id``;
    ``actor_type`` default ``"user"``, ``target_type`` default the action's
    category, optional schema ``version``).

    Delivery options: ``timeout`` per request; ``requests_per_second``
    paces requests (default :data:`DEFAULT_REQUESTS_PER_SECOND`, just under
    WorkOS's per-IP limit; lowered for a while after a 429) with ``burst``
    requests at once after a pause; the number in flight follows the rate
    and the latency, up to ``max_in_flight``; ``queue_size`` events held in
    memory and ``when_full`` (``"block"`` up to ``block_timeout`` seconds,
    or ``"drop"``); ``retry`` (:class:`~audit_instrument.delivery.RetryPolicy`)
    and/or ``deadline`` seconds per event; ``atexit_timeout`` for the flush
    at exit; ``outbox`` — a path (or
    :class:`~audit_instrument.delivery.Outbox`) to keep every event in SQLite
    until delivered, with ``durability="commit"`` (``create_event`` returns
    once it is on disk; the default) or ``"batch"`` (returns at once; on disk
    within 10 ms). See ``docs/workos.md``.

    >>> workos = WorkOS("sk_1234", api="audit_logs", outbox="audit-outbox.db")  # doctest: +SKIP
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api: Literal["events", "audit_logs"] = "events",
        actor_type: str = "user",
        target_type: str | None = None,
        version: int | None = None,
        timeout: float = 10.0,
        requests_per_second: float | None = DEFAULT_REQUESTS_PER_SECOND,
        burst: int | None = None,
        max_in_flight: int | None = None,
        queue_size: int = 10_000,
        when_full: Literal["block", "drop"] = "block",
        block_timeout: float = 0.1,
        retry: RetryPolicy | None = None,
        deadline: float | None = None,
        outbox: str | os.PathLike[str] | Outbox | None = None,
        durability: Literal["commit", "batch"] | None = None,
        atexit_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV)
        api_key = _check_api_key(api_key)
        if api not in _PATHS:
            raise AuditConfigError(f"api must be 'events' or 'audit_logs', not {api!r}")
        self._key = _Secret(api_key)
        self.base_url = route(base_url).base_url
        self.api = api
        self.actor_type = actor_type
        self.target_type = target_type
        self.version = version
        self._path = _PATHS[api]
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise AuditConfigError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        retry = retry or RetryPolicy()
        if deadline is not None:
            retry = replace(retry, deadline=deadline)
        if outbox is not None and not isinstance(outbox, Outbox):
            outbox = Outbox(outbox, durability=durability or "commit")
        elif durability is not None and (outbox is None or outbox.durability != durability):
            raise AuditConfigError(
                "durability applies to an outbox: pass outbox=PATH with it (or build the "
                "Outbox(path, durability=...) yourself)")
        self._exports = WorkOSExports(self._key.reveal, self.base_url, timeout=timeout,
                                      retry=retry, user_agent=USER_AGENT,
                                      error_message=self.error_message, transport=transport)
        self._engine = DeliveryEngine(
            self, base_url=self.base_url, timeout=timeout,
            requests_per_second=requests_per_second, burst=burst, max_in_flight=max_in_flight,
            queue_size=queue_size, when_full=when_full, block_timeout=block_timeout,
            retry=retry, outbox=outbox, atexit_timeout=atexit_timeout, transport=transport,
        )

    # -- public API (engine, outbox, send, flush, shutdown: QueuedSender) ----------------------
    def create_event(self, event: AuditEvent | Mapping[str, Any]) -> DeliveryHandle:
        """Queue ``event`` (an :class:`AuditEvent` or a legacy ``/events`` dict); return at once.

        A bad event raises :class:`~audit_instrument.AuditValidationError`
        here, in the caller. Delivery problems never raise: they settle the
        returned handle (``.result(timeout)``, ``await``, callbacks) with
        :class:`~audit_instrument.DeliveryError` and go out on the signals.
        """
        return self._engine.submit(_as_event(event, self.api))

    def create_events(
        self, events: Iterable[AuditEvent | Mapping[str, Any]]
    ) -> list[DeliveryHandle]:
        """Queue several events at once; return their handles in the same order.

        Every event is checked first: one bad event raises
        :class:`~audit_instrument.AuditValidationError` and none is queued.
        With an outbox the lot is committed together (one transaction, or
        two when only part of it fits the in-memory queue), so a bulk
        producer pays one disk flush per call rather than one per event.

        >>> handles = workos.create_events(events)     # doctest: +SKIP
        >>> workos.flush(30)                           # doctest: +SKIP
        0
        """
        return self._engine.submit_many([_as_event(event, self.api) for event in events])

    # -- audit-log exports (workos_exports.py) -------------------------------------------------
    def create_export(self, organization_id: str, range_start: datetime | str,
                      range_end: datetime | str, *, actions: Sequence[str] | None = None,
                      actor_names: Sequence[str] | None = None,
                      actor_ids: Sequence[str] | None = None,
                      targets: Sequence[str] | None = None) -> AuditLogExport:
        """Ask WorkOS for a CSV of ``organization_id``'s events between the two times.

        As the official SDK's ``audit_logs.create_export``: filters by
        action, actor name, actor id and target type. Bad arguments raise
        :class:`~audit_instrument.AuditValidationError`; a refusal raises
        :class:`~audit_instrument.senders.workos_exports.ExportError`.
        """
        return self._exports.create(organization_id, range_start, range_end, actions=actions,
                                    actor_names=actor_names, actor_ids=actor_ids,
                                    targets=targets)

    def get_export(self, audit_log_export_id: str) -> AuditLogExport:
        """The export's state (and, once ``ready``, its download URL)."""
        return self._exports.get(audit_log_export_id)

    def download_export(self, audit_log_export_id: str, path: str | os.PathLike[str], *,
                        timeout: float = 600.0, poll_interval: float = 1.0,
                        progress: bool | None = None) -> Path:
        """Wait (up to ``timeout`` s) until the export is ready, then stream its CSV to
        ``path``; a progress bar shows on a terminal (``progress`` forces it on or off).

        The CSV comes from a presigned URL on another host: the API key is
        never sent there. Written to a temporary file and renamed when
        complete; a failure leaves nothing at ``path``.
        """
        return self._exports.download(audit_log_export_id, path, timeout=timeout,
                                      poll_interval=poll_interval, progress=progress)

    def __enter__(self) -> WorkOS:
        return self

    def __repr__(self) -> str:
        durable = " outbox" if self._engine.outbox is not None else ""
        return f"<WorkOS {self.base_url} api={self.api}{durable}>"

    # -- the engine's Destination protocol -----------------------------------------------------
    def body(self, event: AuditEvent) -> dict[str, Any]:
        """The JSON object sent for ``event`` under this sender's ``api``."""
        if self.api == "events":
            return legacy_dict(event)
        return audit_logs_dict(event, actor_type=self.actor_type, target_type=self.target_type,
                               version=self.version)

    def request_parts(self, event: AuditEvent) -> tuple[str, bytes, Mapping[str, str]]:
        """Path, JSON body and headers of the request delivering ``event``."""
        body = json.dumps(self.body(event), ensure_ascii=False, separators=(",", ":"))
        headers = {
            "Authorization": "Bearer " + self._key.reveal(),
            "Content-Type": "application/json",
            "Idempotency-Key": event.idempotency_key,
            "User-Agent": USER_AGENT,
        }
        return self._path, body.encode(), headers

    def error_message(self, response: Answer) -> str:
        """WorkOS's ``message`` (and each of its ``errors``), else the start of the body."""
        try:
            data = response.json()
        except ValueError:
            return response.body[:300].decode("utf-8", "replace") or response.reason
        if not isinstance(data, dict):
            return str(data)[:300]
        message = str(data.get("message") or data.get("error") or response.reason)
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            details = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e)
                                for e in errors[:5])
            message = f"{message} ({details})"
        return message[:500]

"""The OpenTelemetry sender: each event as an OTel log record, exported by our delivery engine.

Records go out through an OpenTelemetry log exporter (by default the
OTLP/HTTP one, configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables),
but they are queued, batched, retried and counted by
:mod:`audit_instrument.delivery` — memory or the durable outbox, outcomes on
``event_delivered`` / ``event_failed`` / ``event_dropped`` and in
:func:`~audit_instrument.stats` — not by the SDK's batch processor, which
drops records silently when its queue is full.

Nothing goes into the application's own OpenTelemetry pipeline (its global
logger provider, its traces) unless ``logger_provider=`` asks for it: exports
run with instrumentation suppressed, as the SDK's own processors do.

Needs the ``otel`` extra: ``pip install 'audit_instrument[otel]'``.

>>> from audit_instrument import configure
>>> from audit_instrument.senders import OTelLogSender
>>> otel = OTelLogSender()          # doctest: +SKIP  (OTLP/HTTP, OTEL_EXPORTER_OTLP_* settings)
>>> configure(otel)                 # doctest: +SKIP
>>> otel.shutdown(timeout=5)        # doctest: +SKIP
0

The attribute names are in ``docs/opentelemetry.md`` and :func:`record_attributes`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext

from .._json import format_timestamp
from ..delivery.engine import DeliveryEngine
from ..delivery.handle import DeliveryHandle
from ..delivery.http import Answer, NoAnswerError, redact_url
from ..delivery.outbox import Outbox
from ..delivery.retry import RetryPolicy
from ..errors import AuditConfigError, AuditValidationError
from ..event import AuditEvent
from ..rules import MetadataValue
from ._queued import QueuedSender
from .workos import _library_version

__all__ = ["DEFAULT_BATCH_SIZE", "SCOPE_NAME", "OTelLogSender", "record_attributes"]

logger = logging.getLogger("audit_instrument")

SCOPE_NAME = "audit_instrument"
"""The instrumentation scope of every record: how a backend tells audit records apart."""
DEFAULT_BATCH_SIZE = 512
"""Records per export call (the SDK batch processor's default ``max_export_batch_size``)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DELIVERED = Answer(200, {}, b"")
_TRACES_KEPT = 100_000  # trace contexts of events not yet settled, at most
# Instrumented HTTP clients (requests, urllib3) make no spans for our exports while set:
# the key the SDK's own processors set around an export.
_SUPPRESS = otel_context._SUPPRESS_INSTRUMENTATION_KEY


# -- the record -----------------------------------------------------------------------------------
def _flatten(attributes: dict[str, Any], prefix: str,
             metadata: Mapping[str, MetadataValue]) -> None:
    for key, value in metadata.items():
        if isinstance(value, datetime):
            attributes[prefix + key] = format_timestamp(value)
        elif isinstance(value, Mapping):
            _flatten(attributes, prefix + key + ".", value)
        else:
            attributes[prefix + key] = value


def record_attributes(event: AuditEvent) -> dict[str, Any]:
    """The attributes of ``event``'s log record: flat, every name under ``audit.``.

    >>> from audit_instrument import AuditEvent
    >>> event = AuditEvent(group="org_1", action="user.login", action_type="C",
    ...                    actor_name="ann@example.com", actor_id="user_1",
    ...                    target_name="ann@example.com", target_id="user_1",
    ...                    metadata={"method": "sso", "device": {"os": "linux"}})
    >>> {k: v for k, v in record_attributes(event).items() if k != "audit.idempotency_key"}
    ... # doctest: +NORMALIZE_WHITESPACE
    {'audit.action': 'user.login', 'audit.action_type': 'C', 'audit.group': 'org_1',
     'audit.actor.id': 'user_1', 'audit.actor.name': 'ann@example.com',
     'audit.target.id': 'user_1', 'audit.target.name': 'ann@example.com',
     'audit.metadata.method': 'sso', 'audit.metadata.device.os': 'linux'}
    """
    attributes: dict[str, Any] = {
        "audit.action": event.action,
        "audit.action_type": event.action_type.value,
        "audit.group": event.group,
        "audit.actor.id": event.actor_id,
        "audit.actor.name": event.actor_name,
    }
    if event.actor_type is not None:
        attributes["audit.actor.type"] = event.actor_type
    if event.actor_metadata:
        _flatten(attributes, "audit.actor.metadata.", event.actor_metadata)
    for index, target in enumerate(event.targets):
        prefix = "audit.target." if index == 0 else f"audit.targets.{index}."
        attributes[prefix + "id"] = target.id
        attributes[prefix + "name"] = target.name
        if target.type is not None:
            attributes[prefix + "type"] = target.type
        if target.metadata:
            _flatten(attributes, prefix + "metadata.", target.metadata)
    if event.location:
        attributes["audit.location"] = event.location
    if event.user_agent:
        attributes["audit.user_agent"] = event.user_agent
    if event.version is not None:
        attributes["audit.version"] = event.version
    if event.metadata:
        _flatten(attributes, "audit.metadata.", event.metadata)
    attributes["audit.idempotency_key"] = event.idempotency_key
    return attributes


def _nanoseconds(when: datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND * 1000


def _log_record(event: AuditEvent, span: SpanContext | None) -> LogRecord:
    return LogRecord(
        timestamp=_nanoseconds(event.occurred_at),
        context=(otel_context.Context() if span is None
                 else trace.set_span_in_context(NonRecordingSpan(span))),
        severity_text="INFO",
        severity_number=SeverityNumber.INFO,
        body=event.action,
        attributes=record_attributes(event),
    )


def _describe(exporter: LogRecordExporter) -> str:
    endpoint = getattr(exporter, "_endpoint", None)  # the OTLP exporters keep their URL here
    name = type(exporter).__name__
    return f"{name} {redact_url(endpoint)}" if isinstance(endpoint, str) else name


# -- the channel the engine exports through ---------------------------------------------------
class _ExporterChannel:
    """One ``exporter.export()`` call per batch, with instrumentation suppressed."""

    def __init__(self, sender: OTelLogSender) -> None:
        self._sender = sender

    def send(self, events: Sequence[AuditEvent]) -> Answer:
        sender = self._sender
        records = [sender.readable_record(event) for event in events]
        token = otel_context.attach(otel_context.set_value(_SUPPRESS, True))
        try:
            result = sender.exporter.export(records)
        finally:
            otel_context.detach(token)
        if result == LogRecordExportResult.SUCCESS:
            return _DELIVERED
        raise NoAnswerError(f"{sender.where} returned FAILURE for {len(records)} record(s) "
                            f"(its log says why)", kind="export failed")

    def error_message(self, response: Answer) -> str:
        return response.body.decode("utf-8", "replace") or response.reason

    def thread_done(self) -> None:
        pass

    def close(self) -> None:
        self._sender._close_exporter()


# -- the sender ------------------------------------------------------------------------------------
class OTelLogSender(QueuedSender):
    """Send each audit event as an OpenTelemetry log record, with our delivery guarantees.

    ``exporter``: any OpenTelemetry ``LogRecordExporter``; ``None`` makes the
    OTLP/HTTP exporter the ``OTEL_EXPORTER_OTLP_*`` variables configure
    (endpoint, headers, timeout, compression, certificates). The sender owns
    it: :meth:`shutdown` shuts it down. ``resource`` defaults to
    ``Resource.create()`` (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).

    Each call to the exporter carries up to ``batch_size`` records; calls are
    never concurrent (the exporter contract). ``queue_size``, ``when_full``,
    ``block_timeout``, ``retry``/``deadline``, ``outbox``/``durability``,
    ``requests_per_second`` (export calls per second; default unpaced) and
    ``atexit_timeout`` mean what they mean on :class:`~audit_instrument.WorkOS`.

    ``logger_provider``: also emit each event, when it is sent, through this
    provider — the application's own pipeline, whose processors decide what
    becomes of it. Without it nothing enters the application's pipeline.

    The trace context current when an event is sent (an active span) is put
    on its record, for events delivered by this process.
    """

    def __init__(
        self,
        exporter: LogRecordExporter | None = None,
        *,
        resource: Resource | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        requests_per_second: float | None = None,
        queue_size: int = 10_000,
        when_full: Literal["block", "drop"] = "block",
        block_timeout: float = 0.1,
        retry: RetryPolicy | None = None,
        deadline: float | None = None,
        outbox: str | os.PathLike[str] | Outbox | None = None,
        durability: Literal["commit", "batch"] | None = None,
        atexit_timeout: float = 5.0,
        logger_provider: LoggerProvider | None = None,
    ) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

            exporter = OTLPLogExporter()
        elif not callable(getattr(exporter, "export", None)):
            raise AuditConfigError(f"exporter must be an OpenTelemetry LogRecordExporter, not "
                                   f"{type(exporter).__name__}")
        if resource is not None and not isinstance(resource, Resource):
            raise AuditConfigError(f"resource must be an opentelemetry.sdk.resources.Resource, "
                                   f"not {type(resource).__name__}")
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
        self.exporter = exporter
        self.where = _describe(exporter)
        self.resource = resource if resource is not None else Resource.create()
        self.scope = InstrumentationScope(SCOPE_NAME, _library_version())
        self._app_logger = (None if logger_provider is None else
                            logger_provider.get_logger(SCOPE_NAME, _library_version()))
        self._traces: dict[str, SpanContext] = {}
        self._exporter_lock = threading.Lock()
        self._exporter_closed = False
        self._engine = DeliveryEngine(
            self, channel=lambda: _ExporterChannel(self), where=self.where,
            batch_size=batch_size, max_in_flight=1, requests_per_second=requests_per_second,
            queue_size=queue_size, when_full=when_full, block_timeout=block_timeout,
            retry=retry, outbox=outbox, atexit_timeout=atexit_timeout,
        )

    # -- public API (engine, outbox, send, flush, shutdown: QueuedSender) ----------------------
    def create_event(self, event: AuditEvent | Mapping[str, Any]) -> DeliveryHandle:
        """Queue ``event`` (an :class:`AuditEvent` or a mapping like its ``to_record()``).

        A bad event raises :class:`~audit_instrument.AuditValidationError`
        here; delivery problems settle the returned handle and go out on the
        signals, as with :meth:`WorkOS.create_event <audit_instrument.WorkOS.create_event>`.
        """
        event = _as_event(event)
        self._emitted(event)
        return self._watch(event, self._engine.submit(event))

    def create_events(self, events: Iterable[AuditEvent | Mapping[str, Any]]
                      ) -> list[DeliveryHandle]:
        """Queue several events at once (one outbox transaction); handles in order."""
        checked = [_as_event(event) for event in events]
        for event in checked:
            self._emitted(event)
        handles = self._engine.submit_many(checked)
        return [self._watch(event, handle) for event, handle in zip(checked, handles)]

    def _stopped(self) -> None:
        self._close_exporter()

    def __enter__(self) -> OTelLogSender:
        return self

    def __repr__(self) -> str:
        durable = " outbox" if self._engine.outbox is not None else ""
        return f"<OTelLogSender {self.where}{durable}>"

    # -- records ---------------------------------------------------------------------------------
    def readable_record(self, event: AuditEvent) -> ReadableLogRecord:
        """The record exported for ``event``."""
        return ReadableLogRecord(_log_record(event, self._traces.get(event.idempotency_key)),
                                 self.resource, self.scope)

    def _emitted(self, event: AuditEvent) -> None:
        """Keep the caller's span for the record; emit into the app's pipeline if asked."""
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            traces = self._traces
            if len(traces) >= _TRACES_KEPT:
                try:  # forget the oldest (one whose handle was dropped unsettled)
                    del traces[next(iter(traces))]
                except (RuntimeError, StopIteration, KeyError):  # changed meanwhile
                    pass
            traces[event.idempotency_key] = span
        if self._app_logger is not None:
            self._app_logger.emit(_log_record(event, span if span.is_valid else None))

    def _watch(self, event: AuditEvent, handle: DeliveryHandle) -> DeliveryHandle:
        key = event.idempotency_key
        if key in self._traces:
            handle.add_done_callback(lambda _: self._traces.pop(key, None))
        return handle

    def _close_exporter(self) -> None:
        with self._exporter_lock:
            if self._exporter_closed:
                return
            self._exporter_closed = True
        try:
            self.exporter.shutdown()  # type: ignore[no-untyped-call]
        except Exception as exc:
            logger.warning("audit_instrument: shutting down %s failed: %r", self.where, exc)


def _as_event(event: AuditEvent | Mapping[str, Any]) -> AuditEvent:
    if isinstance(event, AuditEvent):
        return event
    if not isinstance(event, Mapping):
        raise AuditValidationError(
            "event", "must be an AuditEvent or a mapping like AuditEvent.to_record()'s", event)
    return AuditEvent.from_dict(event)

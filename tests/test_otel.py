"""OTelLogSender against a real OTLP/HTTP receiver on 127.0.0.1, through the SDK's exporter.

Bursts, a receiver that goes away and comes back (with and without the
outbox), the record's shape, trace context, and what stays out of the
application's own OpenTelemetry pipeline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from support.events import make_event
from support.otlp_receiver import OTLPReceiver
from support.waiting import wait_for
from support.workos import FAST

from audit_instrument import AuditEvent, Target, configure, emit, signals, stats
from audit_instrument.delivery import RetryPolicy
from audit_instrument.senders import OTelLogSender

ROOT = Path(__file__).resolve().parent.parent
SHORT = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, deadline=1.0)


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as running:
        yield running


@pytest.fixture
def make_sender() -> Iterator[Callable[..., OTelLogSender]]:
    made: list[OTelLogSender] = []

    def make(exporter: Any = None, **kwargs: Any) -> OTelLogSender:
        kwargs.setdefault("retry", FAST)
        sender = OTelLogSender(exporter, **kwargs)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.shutdown(timeout=2)


def _exporter(receiver: OTLPReceiver, timeout: float = 5.0) -> OTLPLogExporter:
    return OTLPLogExporter(endpoint=receiver.endpoint, timeout=timeout)


class Outcomes:
    """Every outcome reported on the return path, by idempotency key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered: list[str] = []
        self.failed: list[str] = []
        self.dropped: list[str] = []
        signals.event_delivered.connect(self._delivered, weak=False)
        signals.event_failed.connect(self._failed, weak=False)
        signals.event_dropped.connect(self._dropped, weak=False)

    def _delivered(self, event: AuditEvent, **_: Any) -> None:
        with self.lock:
            self.delivered.append(event.idempotency_key)

    def _failed(self, event: AuditEvent, **_: Any) -> None:
        with self.lock:
            self.failed.append(event.idempotency_key)

    def _dropped(self, event: AuditEvent, **_: Any) -> None:
        with self.lock:
            self.dropped.append(event.idempotency_key)

    def all(self) -> list[str]:
        with self.lock:
            return self.delivered + self.failed + self.dropped


# -- bursts ---------------------------------------------------------------------------------------
def test_a_burst_of_100k_events_arrives_whole_without_duplicates(
        make_sender: Callable[..., OTelLogSender]) -> None:
    # In memory, with the producer held back (when_full="block") while the exporter catches
    # up; benchmarks/bench_otel.py runs the same burst with defaults and with the outbox.
    count = 100_000
    with OTLPReceiver(record=False) as receiver:
        sender = make_sender(_exporter(receiver), block_timeout=60)
        events = [make_event(i) for i in range(count)]
        for event in events:
            sender.create_event(event)
        assert sender.flush(120) == 0
        assert receiver.count == count
        assert receiver.duplicates == 0 and receiver.without_key == 0
        assert receiver.keys == {event.idempotency_key for event in events}
        assert receiver.requests < count // 100  # batches, not one export per record
    counted = stats().senders[repr(sender)]  # what the return path reported
    assert (counted.delivered, counted.failed, counted.dropped) == (count, 0, 0)


def test_calls_to_the_exporter_are_batched_and_never_concurrent(
        make_sender: Callable[..., OTelLogSender]) -> None:
    class Watching(InMemoryLogRecordExporter):
        def __init__(self) -> None:
            super().__init__()
            self.running = 0
            self.most = 0
            self.sizes: list[int] = []

        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            self.running += 1
            self.most = max(self.most, self.running)
            self.sizes.append(len(batch))
            try:
                return super().export(batch)
            finally:
                self.running -= 1

    exporter = Watching()
    sender = make_sender(exporter, batch_size=100)
    sender.create_events([make_event(i) for i in range(2000)])
    assert sender.flush(30) == 0
    assert len(exporter.get_finished_logs()) == 2000
    assert exporter.most == 1
    assert max(exporter.sizes) == 100 and len(exporter.sizes) < 100


# -- the receiver goes away -----------------------------------------------------------------------
def test_receiver_down_for_a_while_with_the_outbox_everything_arrives_after_it_returns(
        tmp_path: Path, receiver: OTLPReceiver,
        make_sender: Callable[..., OTelLogSender]) -> None:
    outcomes = Outcomes()
    receiver.down()
    sender = make_sender(_exporter(receiver, timeout=0.5), outbox=tmp_path / "outbox.db",
                         retry=SHORT, queue_size=300)
    events = [make_event(i) for i in range(1000)]
    sender.create_events(events[:500])
    for event in events[500:]:
        sender.create_event(event)
    # attempts fail and the 1 s deadline passes: the events stay pending on disk
    wait_for(lambda: sender.engine.failed == 0 and sender.outbox is not None
             and sender.outbox.status().pending == 1000 and sender.engine._gate.paused_for() > 0,
             timeout=10)
    assert receiver.count == 0
    receiver.up()
    assert sender.flush(30) == 0
    assert receiver.count == 1000 and receiver.duplicates == 0
    assert sorted(outcomes.delivered) == sorted(e.idempotency_key for e in events)
    assert not outcomes.failed and not outcomes.dropped
    assert sender.outbox is not None and sender.outbox.status().pending == 0


def test_receiver_down_without_the_outbox_every_loss_is_reported(
        receiver: OTLPReceiver, make_sender: Callable[..., OTelLogSender]) -> None:
    outcomes = Outcomes()
    receiver.down()
    sender = make_sender(_exporter(receiver, timeout=0.5), retry=SHORT, queue_size=300,
                         when_full="drop")
    lost = [make_event(i) for i in range(1000)]
    handles = [sender.create_event(event) for event in lost]
    wait_for(lambda: len(outcomes.all()) == 1000, timeout=10)  # dropped, then out of time
    assert len(outcomes.dropped) == 700 and len(outcomes.failed) == 300
    assert sorted(outcomes.all()) == sorted(e.idempotency_key for e in lost)  # each once
    failures = [handle.exception(0) for handle in handles]
    assert sum("queue full" in str(error) for error in failures) == 700
    assert sum("export failed" in str(error) for error in failures) == 300
    counted = stats().senders[repr(sender)]
    assert (counted.delivered, counted.failed, counted.dropped) == (0, 300, 700)

    receiver.up()  # back: what is sent now arrives, what was given up on does not
    later = [make_event(i) for i in range(1000, 1100)]
    sender.create_events(later)
    assert sender.flush(30) == 0
    assert receiver.keys == {e.idempotency_key for e in later} and receiver.duplicates == 0
    assert sorted(outcomes.delivered) == sorted(receiver.keys)
    counted = stats().senders[repr(sender)]
    assert (counted.delivered, counted.failed, counted.dropped) == (100, 300, 700)


def test_an_exporter_that_fails_is_retried_by_our_engine(
        make_sender: Callable[..., OTelLogSender]) -> None:
    class Flaky(InMemoryLogRecordExporter):
        calls = 0

        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            self.calls += 1
            if self.calls <= 2:
                return LogRecordExportResult.FAILURE
            return super().export(batch)

    exporter = Flaky()
    sender = make_sender(exporter)
    handle = sender.create_event(make_event(1))
    assert handle.result(10).idempotency_key == handle.event.idempotency_key
    assert exporter.calls == 3 and len(exporter.get_finished_logs()) == 1


# -- what a record holds ---------------------------------------------------------------------------
def test_the_record_body_is_the_action_and_attributes_are_flat_under_audit(
        receiver: OTLPReceiver, make_sender: Callable[..., OTelLogSender]) -> None:
    sender = make_sender(_exporter(receiver),
                         resource=Resource.create({"service.name": "billing"}))
    event = AuditEvent(
        group="org_1", action="invoice.update", action_type="U",
        actor_name="ann@example.com", actor_id="user_1", actor_type="admin",
        actor_metadata={"role": "owner"},
        targets=[Target("inv_1", "Invoice 1", type="invoice", metadata={"total": 12.5}),
                 Target("cus_7", "Customer 7")],
        location="203.0.113.5", user_agent="curl/8.0", version=2,
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        metadata={"reason": "typo", "count": 3, "paid": False,
                  "due": datetime(2026, 2, 1, tzinfo=UTC), "address": {"city": "Oslo"}},
    )
    sender.create_event(event).result(10)
    [record] = receiver.records
    assert record.body == "invoice.update"
    assert record.attributes == {
        "audit.action": "invoice.update", "audit.action_type": "U", "audit.group": "org_1",
        "audit.actor.id": "user_1", "audit.actor.name": "ann@example.com",
        "audit.actor.type": "admin", "audit.actor.metadata.role": "owner",
        "audit.target.id": "inv_1", "audit.target.name": "Invoice 1",
        "audit.target.type": "invoice", "audit.target.metadata.total": 12.5,
        "audit.targets.1.id": "cus_7", "audit.targets.1.name": "Customer 7",
        "audit.location": "203.0.113.5", "audit.user_agent": "curl/8.0", "audit.version": 2,
        "audit.metadata.reason": "typo", "audit.metadata.count": 3,
        "audit.metadata.paid": False, "audit.metadata.due": "2026-02-01T00:00:00.000000Z",
        "audit.metadata.address.city": "Oslo",
        "audit.idempotency_key": event.idempotency_key,
    }
    assert record.time_unix_nano == 1767323045678901000
    assert (record.severity_text, record.severity_number) == ("INFO", 9)
    assert record.scope == "audit_instrument"
    assert record.resource["service.name"] == "billing"
    assert record.trace_id == ""  # no span was active


def test_the_callers_span_is_on_the_record(
        receiver: OTLPReceiver, make_sender: Callable[..., OTelLogSender]) -> None:
    sender = make_sender(_exporter(receiver))
    tracer = TracerProvider().get_tracer("app")
    with tracer.start_as_current_span("checkout") as span:
        handle = sender.create_event(make_event(1))
    handle.result(10)
    context = span.get_span_context()
    [record] = receiver.records
    assert record.trace_id == f"{context.trace_id:032x}"
    assert record.span_id == f"{context.span_id:016x}"
    wait_for(lambda: not sender._traces)  # forgotten once settled


def test_configure_sends_every_emitted_event(
        receiver: OTLPReceiver, make_sender: Callable[..., OTelLogSender]) -> None:
    sender = make_sender(_exporter(receiver))
    configure(sender)
    emit(make_event(3))
    assert sender.flush(10) == 0
    assert [r.attributes["audit.metadata.n"] for r in receiver.records] == [3]


# -- the application's own pipeline --------------------------------------------------------------
def test_nothing_enters_the_apps_pipeline_unless_asked(
        receiver: OTLPReceiver, make_sender: Callable[..., OTelLogSender]) -> None:
    app_exporter = InMemoryLogRecordExporter()
    app_logs = LoggerProvider()
    app_logs.add_log_record_processor(SimpleLogRecordProcessor(app_exporter))
    quiet = make_sender(_exporter(receiver))
    quiet.create_event(make_event(1)).result(10)
    assert app_exporter.get_finished_logs() == ()

    asked = make_sender(_exporter(receiver), logger_provider=app_logs)
    asked.create_event(make_event(2)).result(10)
    [mirrored] = app_exporter.get_finished_logs()
    assert mirrored.log_record.body == "tweet.delete"
    assert mirrored.instrumentation_scope is not None
    assert mirrored.instrumentation_scope.name == "audit_instrument"
    assert receiver.count == 2


def test_exports_run_with_instrumentation_suppressed(
        make_sender: Callable[..., OTelLogSender]) -> None:
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

    seen: list[object] = []

    class Looking(InMemoryLogRecordExporter):
        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            seen.append(get_value(_SUPPRESS_INSTRUMENTATION_KEY))
            return super().export(batch)

    make_sender(Looking()).create_event(make_event(1)).result(10)
    assert seen == [True]


# -- configuration --------------------------------------------------------------------------------
def test_no_exporter_means_otlp_http_as_the_environment_configures_it(
        receiver: OTLPReceiver, make_sender: Callable[..., OTelLogSender],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer s3cret")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    sender = make_sender()
    sender.create_event(make_event(1)).result(10)
    assert receiver.headers[-1]["x-tenant"] == "acme"
    assert receiver.records[0].resource["service.name"] == "checkout"
    assert repr(sender) == f"<OTelLogSender OTLPLogExporter {receiver.endpoint}>"
    assert "s3cret" not in repr(sender) and "s3cret" not in repr(stats())


def test_shutdown_shuts_the_exporter_down_once(make_sender: Callable[..., OTelLogSender]) -> None:
    class Counting(InMemoryLogRecordExporter):
        shutdowns = 0

        def shutdown(self) -> None:
            self.shutdowns += 1
            super().shutdown()

    exporter = Counting()
    sender = make_sender(exporter)
    sender.create_event(make_event(1))
    assert sender.shutdown(5) == 0
    assert sender.shutdown(5) == 0
    assert exporter.shutdowns == 1


@pytest.mark.parametrize("kwargs", [
    {"exporter": object()}, {"resource": {"service.name": "x"}}, {"batch_size": 0},
    {"durability": "batch"}, {"retry": 3},
])
def test_bad_options_are_config_errors(kwargs: dict[str, Any]) -> None:
    from audit_instrument import AuditConfigError

    kwargs.setdefault("exporter", InMemoryLogRecordExporter())
    with pytest.raises(AuditConfigError):
        OTelLogSender(**kwargs)


def test_importing_the_senders_does_not_import_opentelemetry() -> None:
    code = ("import sys, audit_instrument.senders, audit_instrument; "
            "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert done.stdout.strip() == "False"


def test_the_example_of_docs_opentelemetry_runs_as_written(
        receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from support.docs import python_blocks

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    [(_, example)] = python_blocks("docs/opentelemetry.md")[:1]
    exec(compile(example, "docs/opentelemetry.md", "exec"), {})
    [record] = receiver.records
    assert record.body == "invoice.update"
    assert record.attributes["audit.target.name"] == "Invoice inv_1"
    assert record.attributes["audit.actor.name"] == "ann@example.com"
    assert record.attributes["audit.metadata.total"] == 12.5


@pytest.mark.parametrize("kwargs", [
    {}, {"base_url": "http://127.0.0.1:9", "batch_size": 10},
    {"base_url": "http://127.0.0.1:9", "channel": lambda: None},
])
def test_the_engine_takes_a_base_url_or_a_channel_exactly(kwargs: dict[str, Any]) -> None:
    from audit_instrument import AuditConfigError
    from audit_instrument.delivery import DeliveryEngine

    with pytest.raises(AuditConfigError, match="exactly one"):
        DeliveryEngine(object(), **kwargs)

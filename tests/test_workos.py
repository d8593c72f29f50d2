"""The WorkOS sender against a real loopback server: wire format, keys, errors, security."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support.events import TWEET_UPDATE, USER_LOGIN, make_event
from support.workos import API_KEY, FAST
from support.workos_server import Fault, WorkOSServer

from audit_instrument import (
    AuditConfigError,
    AuditValidationError,
    DeliveryError,
    configure,
    emit,
    signals,
)
from audit_instrument.context import audit_actor, current_context
from audit_instrument.event import AuditEvent
from audit_instrument.senders.memory import MemorySender
from audit_instrument.senders.workos import WorkOS

MakeWorkOS = Callable[..., WorkOS]

AUDIT_LOGS_BODY = {
    "organization_id": "user_1",
    "event": {
        "action": "tweet.update",
        "occurred_at": "2019-05-01T01:15:55.619Z",
        "actor": {"id": "user_1", "type": "user", "name": "user@email.com"},
        "targets": [{"id": "tweet_5", "type": "tweet", "name": "user@email.com"}],
        "context": {"location": "1.1.1.1"},
        "metadata": {"body_was": "What time is the event", "body": "What time is the event?"},
    },
}


@pytest.mark.parametrize("legacy", [TWEET_UPDATE, USER_LOGIN], ids=["tweet.update", "user.login"])
def test_events_api_sends_the_legacy_json_and_headers(
    server: WorkOSServer, make_workos: MakeWorkOS, legacy: dict[str, Any]
) -> None:
    workos = make_workos()
    handle = workos.create_event(legacy)
    handle.result(timeout=5)
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/events")
    assert request.json() == legacy
    assert list(request.json()) == list(legacy)  # the legacy format's key order
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == handle.event.idempotency_key
    assert request.headers["user-agent"].startswith("audit_instrument/")


def test_audit_logs_api_maps_the_event(server: WorkOSServer, make_workos: MakeWorkOS) -> None:
    workos = make_workos(api="audit_logs")
    workos.create_event({**TWEET_UPDATE, "location": "1.1.1.1"}).result(timeout=5)
    [request] = server.requests
    assert request.path == "/audit_logs/events"
    assert request.json() == AUDIT_LOGS_BODY


def test_audit_logs_types_and_version_are_overridable(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos(api="audit_logs", actor_type="admin", target_type="post", version=2)
    workos.create_event(USER_LOGIN).result(timeout=5)
    body = server.requests[0].json()["event"]
    assert body["actor"]["type"] == "admin"
    assert body["targets"][0]["type"] == "post"
    assert body["version"] == 2
    assert body["context"] == {"location": "1.1.1.1"}


def test_key_from_environment(
    server: WorkOSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKOS_API_KEY", API_KEY)
    workos = WorkOS(base_url=server.url)
    try:
        workos.create_event(USER_LOGIN).result(timeout=5)
    finally:
        workos.shutdown(2)
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_constructor_key_wins_over_environment(
    server: WorkOSServer, make_workos: MakeWorkOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKOS_API_KEY", "sk_from_env")
    make_workos(api_key=API_KEY).create_event(USER_LOGIN).result(timeout=5)
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_missing_key_says_where_it_is_read_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKOS_API_KEY", raising=False)
    with pytest.raises(AuditConfigError, match="WORKOS_API_KEY"):
        WorkOS()


@pytest.mark.parametrize(
    "url", ["http://api.workos.com", "http://10.0.0.1:8000", "ftp://x", "nope"])
def test_plain_http_is_refused_unless_loopback(url: str) -> None:
    with pytest.raises(AuditConfigError, match="base_url"):
        WorkOS(API_KEY, base_url=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9",
                                 "https://api.workos.com"])
def test_https_and_loopback_are_accepted(url: str) -> None:
    workos = WorkOS(API_KEY, base_url=url)
    assert workos.base_url == url
    assert workos.shutdown(0) == 0  # nothing was queued


def test_bad_event_raises_in_the_caller_and_sends_nothing(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos()
    with pytest.raises(AuditValidationError, match="action"):
        workos.create_event({**TWEET_UPDATE, "action": "tweet"})
    with pytest.raises(AuditValidationError, match="event"):
        workos.create_event("not an event")  # type: ignore[arg-type]
    assert workos.flush(1) == 0
    assert server.request_count == 0


def test_wrong_key_fails_at_once_with_the_servers_message(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos(api_key="sk_wrong")
    error = workos.create_event(USER_LOGIN).exception(timeout=5)
    assert isinstance(error, DeliveryError)
    assert error.status == 401 and not error.retryable
    assert "Unauthorized" in str(error)
    assert server.request_count == 1


def test_invalid_event_4xx_is_not_retried(server: WorkOSServer, make_workos: MakeWorkOS) -> None:
    server.reject_actions["tweet.update"] = (400, "metadata.body is too long")
    failed: list[tuple[AuditEvent, dict[str, Any]]] = []
    signals.event_failed.connect(lambda e, **kw: failed.append((e, kw)), weak=False)
    workos = make_workos()
    handle = workos.create_event(TWEET_UPDATE)
    with pytest.raises(DeliveryError, match=r"metadata\.body is too long") as caught:
        handle.result(timeout=5)
    assert caught.value.status == 400
    assert server.request_count == 1
    assert [e for e, _ in failed] == [handle.event]
    assert failed[0][1]["destination"] is workos
    assert failed[0][1]["error"] is caught.value


def test_configure_connects_send_and_signals_report_delivery(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos()
    delivered: list[AuditEvent] = []
    signals.event_delivered.connect(lambda e, **kw: delivered.append(e), weak=False)
    configure(workos)
    sent = [make_event(n) for n in range(5)]
    for item in sent:
        emit(item)
    assert workos.flush(5) == 0
    assert {r.idempotency_key for r in server.requests} == {e.idempotency_key for e in sent}
    assert sorted(delivered, key=lambda e: e.target_id) == sorted(sent, key=lambda e: e.target_id)


def test_send_never_raises_even_after_shutdown(make_workos: MakeWorkOS) -> None:
    workos = make_workos()
    workos.shutdown(1)
    dropped: list[str] = []
    signals.event_dropped.connect(lambda e, **kw: dropped.append(kw["reason"]), weak=False)
    handle = workos.send(make_event())
    assert handle is not None and isinstance(handle.exception(0), DeliveryError)
    assert dropped == ["shut down"]


def test_delivery_runs_outside_the_callers_audit_context(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    """The sender's own work never sees the caller's actor, so it can't emit audit events."""
    workos = make_workos()
    memory = MemorySender()
    configure(workos, memory)
    seen: list[object] = []
    with audit_actor(id="user_1", name="user@email.com", group="org_1"):
        handle = workos.create_event(make_event())
        handle.add_done_callback(lambda h: seen.append(current_context().actor_id))
        emit(make_event(1))
    assert workos.flush(5) == 0
    assert seen == [None]
    assert len(memory) == 1  # only the event emitted above; delivery emitted none
    assert server.request_count == 2


@pytest.mark.parametrize("transport", [None, "httpx"], ids=["default-pool", "httpx-transport"])
def test_api_key_never_in_reprs_errors_or_logs(
    server: WorkOSServer, caplog: pytest.LogCaptureFixture, transport: str | None
) -> None:
    secret = "sk_very_secret_1234567890"
    server.api_key = secret
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    workos = WorkOS(secret, base_url=server.url, retry=FAST,
                    transport=httpx.HTTPTransport() if transport else None)
    try:
        server.script(503, Fault.reset())  # a retry, then a dropped connection
        ok = workos.create_event(make_event(1))
        ok.exception(timeout=5)
        server.api_key = "sk_other"
        bad = workos.create_event(make_event(2))
        error = bad.exception(timeout=5)
        texts = [repr(workos), str(workos), repr(workos.engine), repr(ok), repr(bad),
                 str(error), repr(error), caplog.text, repr(vars(workos))]
    finally:
        workos.shutdown(2)
    assert error is not None and error.status == 401
    for text in texts:
        assert secret not in text
    assert "retrying in" in caplog.text  # DEBUG records were captured
    if transport:  # httpcore logged each connection and request: those were checked too
        assert any(r.name.startswith("httpcore") for r in caplog.records)


def test_handle_repr_and_result_value(server: WorkOSServer, make_workos: MakeWorkOS) -> None:
    workos = make_workos()
    handle = workos.create_event(USER_LOGIN)
    assert handle.result(timeout=5) == handle.event
    assert handle.done() and handle.delivered
    assert repr(handle) == "<DeliveryHandle user.login delivered>"
    assert json.loads(server.requests[0].body)["action"] == "user.login"


def test_send_reports_an_event_the_legacy_format_cannot_carry(
    server: WorkOSServer, make_workos: MakeWorkOS, caplog: pytest.LogCaptureFixture
) -> None:
    """configure()'s path never raises: the refusal is reported, counted and logged once."""
    from audit_instrument import Target, signals, stats

    workos = make_workos(api="events")
    failed: list[Any] = []
    signals.event_failed.connect(lambda event, **kw: failed.append(kw), weak=False)
    two_targets = make_event(1, target_id=None, target_name=None,
                             targets=[Target("tweet_1", "t"), Target("user_2", "u")])
    with caplog.at_level(logging.ERROR, "audit_instrument"):
        assert workos.send(two_targets) is None
        assert workos.send(two_targets) is None
    assert [kw["destination"] for kw in failed] == [workos, workos]
    assert "targets" in str(failed[0]["error"])
    assert len([r for r in caplog.records if "could not queue" in r.getMessage()]) == 1
    [(_, sender_stats)] = stats().senders.items()
    assert sender_stats.failed == 2
    assert workos.flush(5) == 0 and server.accepted_count == 0

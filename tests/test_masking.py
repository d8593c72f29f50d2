"""Masking happens when an event is built, on every path, and a masked value never shows."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from support.events import TWEET_UPDATE, make_event
from support.workos_server import WorkOSServer

from audit_instrument import (
    DEFAULT_MASK,
    AuditConfigError,
    AuditEvent,
    AuditStore,
    AuditValidationError,
    Target,
    audit,
    audit_actor,
    configure,
    emit,
    settings,
    signals,
)
from audit_instrument.rules import is_masked
from audit_instrument.senders import MemorySender
from audit_instrument.senders.workos import WorkOS

SECRET = "hunter2SECRET"
SECRETS = {"password": SECRET, "note": "kept", "auth": {"token": SECRET, "n": 1}}
MASKED = {"password": "[masked]", "note": "kept", "auth": {"token": "[masked]", "n": 1}}


@pytest.mark.parametrize(
    "key",
    ["password", "Password", "user_password", "passwd", "pwd", "secret", "client_secret",
     "token", "accessToken", "api_key", "apiKey", "X-API-Key", "x_api_key", "Authorization",
     "cookie", "Set-Cookie", "session", "sessionId", "private", "privateKey", "PRIVATE_KEY",
     "credential", "credentials", "credit_card", "creditCard", "CreditCardNumber",
     "card-number", "cvv"],
)
def test_default_mask_covers_common_secret_keys_in_any_case_or_style(key: str) -> None:
    assert is_masked(key)
    assert make_event(metadata={key: "value"}).metadata[key] == "[masked]"


@pytest.mark.parametrize("key", ["body", "author", "email", "title", "count", "ip"])
def test_default_mask_leaves_ordinary_keys(key: str) -> None:
    assert not is_masked(key)


def test_emit_of_a_hand_built_event_is_masked() -> None:
    memory = MemorySender()
    configure(memory)
    emit(make_event(metadata=SECRETS))
    assert memory.events[0].metadata == MASKED


def test_audit_decorator_and_block_are_masked() -> None:
    memory = MemorySender()
    configure(memory)

    @audit("account.update", "U", target=("acct_1", "Account"), metadata=lambda: SECRETS)
    def change() -> None: ...

    with audit_actor(id="user_1", name="user@email.com", group="organization_1"):
        change()
        with audit("account.update", "U", target=("acct_1", "Account")) as event:
            event.metadata.update(SECRETS)
    assert [dict(e.metadata) for e in memory.events] == [MASKED, MASKED]


def test_from_dict_and_every_metadata_map_are_masked() -> None:
    event = AuditEvent.from_dict({
        **TWEET_UPDATE, "metadata": SECRETS, "actor_metadata": {"sessionId": SECRET},
        "targets": [{"id": "tweet_5", "name": "t", "metadata": {"apiKey": SECRET}}],
        "target_id": None, "target_name": None,
    })
    assert event.metadata == MASKED
    assert event.actor_metadata == {"sessionId": "[masked]"}
    assert event.targets[0].metadata == {"apiKey": "[masked]"}
    assert SECRET not in event.to_json() and SECRET not in repr(event)


def test_workos_create_event_of_a_dict_sends_it_masked(
    server: WorkOSServer, make_workos: Callable[..., WorkOS]
) -> None:
    workos = make_workos()
    workos.create_event({**TWEET_UPDATE, "metadata": SECRETS}).result(timeout=5)
    [request] = server.requests
    assert request.json()["metadata"] == MASKED
    assert SECRET.encode() not in request.body


def test_audit_store_keeps_only_the_masked_value(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditStore(path) as store:
        store.send(make_event(metadata=SECRETS))
        assert store.query().items[0].event.metadata == MASKED
    with sqlite3.connect(path) as conn:
        [(record,)] = conn.execute("SELECT record FROM events").fetchall()
    assert SECRET not in record


def test_a_masked_value_is_never_checked_so_never_shown() -> None:
    event = make_event(metadata={"password": b"hunter2SECRET", "Set-Cookie": [SECRET],
                                 "api": {"token": object()}})
    assert event.metadata == {"password": "[masked]", "Set-Cookie": "[masked]",
                              "api": {"token": "[masked]"}}
    with pytest.raises(AuditValidationError) as caught:
        make_event(metadata={"password": b"hunter2SECRET", "other": object()})
    assert caught.value.field == "metadata.other"


def test_audit_never_reports_a_masked_value(caplog: pytest.LogCaptureFixture) -> None:
    invalid = []
    signals.event_invalid.connect(lambda sender, error: invalid.append(error), weak=False)
    configure(MemorySender())

    @audit("account.update", "U", target=("acct_1", "Account"),
           metadata=lambda: {"password": b"hunter2SECRET", "other": object()})
    def change() -> None: ...

    with caplog.at_level(logging.DEBUG), audit_actor(id="u", name="u", group="g"):
        change()
    assert [error.field for error in invalid] == ["metadata.other"]
    assert SECRET not in caplog.text


def test_errors_inside_masked_maps_do_not_show_masked_values() -> None:
    event = make_event(metadata={"credentials": {"pwd": SECRET, "bad": [SECRET]}})
    assert event.metadata == {"credentials": "[masked]"}  # masked whole: nothing inside checked
    with pytest.raises(AuditValidationError) as caught:
        make_event(metadata={"auth": {"pwd": SECRET, "bad": object()}})
    assert caught.value.field == "metadata.auth.bad"
    assert SECRET not in str(caught.value)


def test_configure_mask_replaces_the_patterns_and_refuses_bad_ones() -> None:
    configure(mask=["Email-Address"])
    assert make_event(metadata={"emailAddress": "a@b.c", "password": "p"}).metadata == {
        "emailAddress": "[masked]", "password": "p"}
    assert settings.mask == ("email-address",)
    configure(mask=[])
    assert make_event(metadata={"password": "p"}).metadata == {"password": "p"}
    for bad in ("password", [""], ["--"], [None], 5):
        with pytest.raises(AuditConfigError):
            configure(mask=bad)  # type: ignore[arg-type]
    assert settings.mask == ()  # a refused mask changes nothing
    configure(mask=DEFAULT_MASK)
    assert make_event(metadata={"password": "p"}).metadata == {"password": "[masked]"}


def test_target_metadata_is_masked_when_built_alone() -> None:
    assert Target("a", "b", metadata={"privateNote": SECRET}).metadata == {
        "privateNote": "[masked]"}

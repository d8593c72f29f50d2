"""The demo's tweet service records the events its story promises."""

from __future__ import annotations

import pytest

from audit_instrument import configure, settings
from audit_instrument.demo import ORGANIZATION, LoginError, TweetService, request, run_demo
from audit_instrument.senders import MemorySender


def test_demo_story_records_seven_events() -> None:
    events = run_demo(MemorySender())
    summary = [(e.action, e.actor_id, e.target_id) for e in events]
    assert summary == [
        ("user.login", "user_1", "user_1"),
        ("tweet.create", "user_1", "tweet_1"),
        ("tweet.update", "user_1", "tweet_1"),
        ("user.login", "user_2", "user_2"),
        ("user.login", "user_2", "user_2"),
        ("tweet.create", "user_2", "tweet_2"),
        ("tweet.delete", "user_2", "tweet_2"),
    ]
    assert {e.group for e in events} == {ORGANIZATION}
    login, create, update, failed, login_bob, _, delete = events
    assert dict(update.metadata) == {
        "body_was": "What time is the event", "body": "What time is the event?"
    }
    assert dict(create.metadata) == {"body": "What time is the event"}
    assert dict(delete.metadata) == {"body_was": "8pm, see you there"}
    assert dict(failed.metadata) == {
        "method": "password", "outcome": "failure", "error": "LoginError"
    }
    assert dict(login_bob.metadata) == {"method": "password"}
    assert login.actor_name == "alice@example.com" and login.location == "203.0.113.5"
    assert failed.user_agent.startswith("TweetApp/")
    assert len({e.idempotency_key for e in events}) == 7


def test_demo_restores_the_previous_configuration() -> None:
    mine = MemorySender()
    configure(mine)
    run_demo(MemorySender())
    assert settings.senders == (mine,)
    assert settings.strict is False
    assert len(mine) == 0  # the demo's events went only to the demo's senders


def test_failed_login_propagates_and_is_recorded() -> None:
    memory = MemorySender()
    configure(memory)
    service = TweetService()
    service.add_user("user_9", "eve@example.com", "secret")
    with request(None, "192.0.2.1", "curl/8"), pytest.raises(LoginError):
        service.login("nobody@example.com", "guess")
    [event] = memory.events
    assert (event.actor_id, event.metadata["outcome"]) == ("nobody@example.com", "failure")


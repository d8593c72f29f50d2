"""The one event factory of the suite, and the WorkOS documentation's two example events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from audit_instrument import AuditEvent

__all__ = [
    "T0",
    "TWEET_UPDATE",
    "TWEET_UPDATE_JSON",
    "USER_LOGIN",
    "make_event",
    "tweet_update_example",
    "user_login_example",
]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
"""When event number 0 happened; event ``i`` happened ``i`` minutes later."""

TWEET_UPDATE: dict[str, Any] = {
    "group": "user_1", "action": "tweet.update", "action_type": "U",
    "actor_name": "user@email.com", "actor_id": "user_1",
    "target_name": "user@email.com", "target_id": "tweet_5", "location": "",
    "occurred_at": "2019-05-01T01:15:55.619355Z",
    "metadata": {"body_was": "What time is the event", "body": "What time is the event?"},
}
"""The legacy ``POST /events`` example of an update, as a dict."""

TWEET_UPDATE_JSON = (
    '{"group":"user_1","action":"tweet.update","action_type":"U",'
    '"actor_name":"user@email.com","actor_id":"user_1",'
    '"target_name":"user@email.com","target_id":"tweet_5","location":"",'
    '"occurred_at":"2019-05-01T01:15:55.619355Z",'
    '"metadata":{"body_was":"What time is the event","body":"What time is the event?"}}'
)
"""The body the legacy ``POST /events`` clients send for :data:`TWEET_UPDATE`, byte for byte."""

USER_LOGIN: dict[str, Any] = {
    "group": "foo-corp.com", "action": "user.login", "action_type": "C",
    "actor_name": "user@email.com", "actor_id": "user_1",
    "target_name": "user@email.com", "target_id": "user_1", "location": "1.1.1.1",
    "occurred_at": "2019-05-01T01:15:55.619355Z", "metadata": {},
}
"""The legacy ``POST /events`` example of a login, as a dict."""


def make_event(i: int = 0, **fields: Any) -> AuditEvent:
    """Event number ``i``, valid and distinct.

    Actions cycle create/update/delete (``i % 3``), actors ``user_0..3``,
    targets ``tweet_0..4``, groups ``organization_1..2``; ``occurred_at`` is
    :data:`T0` plus ``i`` minutes. ``fields`` override any of them
    (``occurred_at=None`` means now).
    """
    values: dict[str, Any] = {
        "group": f"organization_{i % 2 + 1}",
        "action": ("tweet.create", "tweet.update", "tweet.delete")[i % 3],
        "action_type": "CUD"[i % 3],
        "actor_name": f"user{i % 4}@example.com",
        "actor_id": f"user_{i % 4}",
        "target_name": f"user{i % 4}@example.com",
        "target_id": f"tweet_{i % 5}",
        "location": "203.0.113.5",
        "occurred_at": T0 + timedelta(minutes=i),
        "metadata": {"n": i},
    }
    values.update(fields)
    return AuditEvent(**values)


def tweet_update_example(**fields: Any) -> AuditEvent:
    """:data:`TWEET_UPDATE` as an event; ``fields`` override any of it."""
    return AuditEvent(**{**TWEET_UPDATE, **fields})


def user_login_example(**fields: Any) -> AuditEvent:
    """:data:`USER_LOGIN` as an event; ``fields`` override any of it."""
    return AuditEvent(**{**USER_LOGIN, **fields})

"""The demo: a small tweet service instrumented with audit_instrument.

``python -m audit_instrument demo`` runs :func:`run_demo` into ``./audit.db``
(the local store) and ``./audit.jsonl``. It needs no account and no server.
The service shows the three ways to instrument code:

- ``@audit(...)`` on methods, with ``snapshot=``/``fields=`` so an update
  records ``body_was`` / ``body`` and a delete records what was deleted;
- ``with audit(...) as event:`` around a login, with ``on_error="emit"`` so
  a failed attempt is recorded too (``outcome="failure"``);
- ``audit_actor(...)`` / ``audit_context(...)`` as a web middleware would
  bind them once per request (:func:`request`).

>>> from audit_instrument.senders import MemorySender
>>> memory = MemorySender()
>>> events = run_demo(memory)
>>> [event.action for event in events][:3]
['user.login', 'tweet.create', 'tweet.update']
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .config import configure, settings
from .context import audit_actor, audit_context
from .event import AuditEvent
from .instrument import audit
from .senders.memory import MemorySender

__all__ = ["ORGANIZATION", "LoginError", "Tweet", "TweetService", "User", "request", "run_demo"]

ORGANIZATION = "organization_1"


@dataclass
class User:
    """An account. ``audit_actor(user)`` reads its ``id`` and ``email``."""

    id: str
    email: str
    password_sha256: str  # demo only: use a real password hash (argon2, scrypt) in an app


@dataclass
class Tweet:
    """A tweet; its ``body`` is the field the audit trail follows."""

    id: int
    author: User
    body: str


class LoginError(Exception):
    """Wrong email or password."""


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


class TweetService:
    """An in-memory tweet service whose writes are audited."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.tweets: dict[int, Tweet] = {}
        self._ids = itertools.count(1)

    def add_user(self, user_id: str, email: str, password: str) -> User:
        """Create an account (not audited: it is the demo's setup)."""
        user = User(user_id, email, _digest(password))
        self.users[email] = user
        return user

    def login(self, email: str, password: str) -> User:
        """Check the password; the attempt is recorded whether it succeeds or not."""
        user = self.users.get(email)
        party = user or {"id": email, "email": email}
        with audit("user.login", "C", target=party, on_error="emit") as event:
            event.actor = party
            event.metadata["method"] = "password"
            if user is None or not hmac.compare_digest(user.password_sha256, _digest(password)):
                raise LoginError(f"wrong email or password for {email}")
        return user

    @audit(
        "tweet.create", "C",
        target=lambda result: (f"tweet_{result.id}", result.author.email),
        metadata=lambda result: {"body": result.body},
    )
    def create_tweet(self, author: User, body: str) -> Tweet:
        """Post a tweet; the event carries its body."""
        tweet = Tweet(next(self._ids), author, body)
        self.tweets[tweet.id] = tweet
        return tweet

    @audit(
        "tweet.update", "U",
        target=lambda self, tweet_id: (f"tweet_{tweet_id}", self.tweets[tweet_id].author.email),
        snapshot=lambda self, tweet_id: self.tweets.get(tweet_id),
        fields=["body"],
    )
    def update_tweet(self, tweet_id: int, body: str) -> Tweet:
        """Edit a tweet; the event has ``body_was`` and ``body``."""
        tweet = self.tweets[tweet_id]
        tweet.body = body
        return tweet

    @audit(
        "tweet.delete", "D",
        target=lambda tweet_id, result: (f"tweet_{tweet_id}", result.author.email),
        snapshot=lambda self, tweet_id: self.tweets.get(tweet_id),
        fields=["body"],
    )
    def delete_tweet(self, tweet_id: int) -> Tweet:
        """Delete a tweet; the event keeps what it said (``body_was``)."""
        return self.tweets.pop(tweet_id)


@contextmanager
def request(user: User | None, ip: str, user_agent: str) -> Iterator[None]:
    """What a web middleware does once per request: bind who and where."""
    if user is None:  # not logged in yet
        with audit_context(group=ORGANIZATION, location=ip, user_agent=user_agent):
            yield
    else:
        with audit_actor(user, group=ORGANIZATION, location=ip, user_agent=user_agent):
            yield


def _story(service: TweetService) -> None:
    alice = service.add_user("user_1", "alice@example.com", "correct horse")
    bob = service.add_user("user_2", "bob@example.com", "battery staple")
    alice_browser = ("203.0.113.5", "Mozilla/5.0 (Macintosh) Safari/605.1.15")
    bob_phone = ("198.51.100.7", "TweetApp/2.4 (iPhone; iOS 17.1)")

    with request(None, *alice_browser):
        service.login("alice@example.com", "correct horse")
    with request(alice, *alice_browser):
        tweet = service.create_tweet(alice, "What time is the event")
    with request(alice, *alice_browser):
        service.update_tweet(tweet.id, "What time is the event?")
    with request(None, *bob_phone):
        try:
            service.login("bob@example.com", "battery stable")  # a typo
        except LoginError:
            pass
        service.login("bob@example.com", "battery staple")
    with request(bob, *bob_phone):
        reply = service.create_tweet(bob, "8pm, see you there")
    with request(bob, *bob_phone):
        service.delete_tweet(reply.id)


def run_demo(*senders: object) -> list[AuditEvent]:
    """Run the tweet service's story with ``senders`` configured; return its events.

    Two users: alice logs in, posts a tweet and edits it; bob mistypes his
    password (a failed login, recorded), logs in, posts a reply and deletes
    it. Strict mode is on while it runs, so a broken declaration would
    raise. The previous configuration is restored afterwards.
    """
    recorded = MemorySender()
    previous, was_strict = settings.senders, settings.strict
    configure(*senders, recorded, strict=True)
    try:
        _story(TweetService())
    finally:
        configure(*previous, strict=was_strict)
    return list(recorded.events)

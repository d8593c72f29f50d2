"""Model capture on PostgreSQL, recorded both ways, with one set of expectations.

A test runs its changes through :class:`Recording` in one of two modes:

* ``after_commit`` — events are held by the ORM's transaction and emitted
  when it commits; the PostgreSQL store is a sender like any other;
* ``in_transaction`` — every transaction of the test runs inside
  ``store.in_transaction(conn)``: events are written in the transaction that
  made the change, chained once it has committed, and only then handed to
  the other senders.

:meth:`Recording.events` returns what was recorded once everything has
settled, after checking that the store and the other senders agree: the
same events, each once, in the chain's order, nothing left pending, the
chain intact.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

from audit_instrument import AuditEvent, audit_actor, configure, signals
from audit_instrument.store import AuditStore
from audit_instrument.testing import CapturedEvents, capture_events

from .postgres import Cluster, PgSchema
from .waiting import wait_for

__all__ = ["ACTOR", "MODES", "Recording", "app_schema", "lock_waiters", "recording"]

MODES = ("after_commit", "in_transaction")
ACTOR = {"id": "user_1", "email": "ada@example.com"}


class Recording:
    """Where a test's events go in its mode, and what reached the store and the others."""

    def __init__(self, mode: str, store: AuditStore, pg: PgSchema,
                 others: CapturedEvents) -> None:
        self.mode = mode
        self.store = store
        self.pg = pg
        self.others = others  # a sender beside the store
        self.threads: dict[str, str] = {}  # idempotency key -> the thread that handed it on
        signals.event_emitted.connect(self._note_thread, weak=False)

    def _note_thread(self, event: AuditEvent, **kwargs: object) -> None:
        self.threads[event.idempotency_key] = threading.current_thread().name

    @property
    def transactional(self) -> bool:
        return self.mode == "in_transaction"

    def block(self, conn: object) -> AbstractContextManager[None]:
        """``store.in_transaction(conn)`` in the ``in_transaction`` mode; nothing otherwise."""
        if self.transactional:
            return self.store.in_transaction(conn)
        return contextlib.nullcontext()

    def pending(self) -> int:
        return int(self.pg.execute("SELECT count(*) FROM {s}.pending")[0][0])

    def _settled(self) -> bool:
        transactions = self.store._transactions
        assert transactions is not None
        return not transactions._held and self.pending() == 0

    def events(self, count: int, *, transactional: bool | None = None) -> list[AuditEvent]:
        """The ``count`` events recorded so far, once they are all stored and handed on.

        Checks that the store holds exactly the events the other sender got,
        each once and in the chain's order, that nothing is pending and that
        ``verify`` passes; and that they went the way of the mode (or of
        ``transactional``): written in the transaction, so handed on by the
        store's chaining thread once it learnt of the commit, or emitted by
        the test's own thread at the commit.
        """
        wait_for(lambda: len(self.others.events) >= count, timeout=15)
        wait_for(self._settled, timeout=15)
        got = list(self.others.events)
        keys = [event.idempotency_key for event in got]
        assert len(set(keys)) == len(keys), "an event was handed on twice"
        stored = [item.event for item in sorted(self.store.iter_events(), key=lambda s: s.seq)]
        assert stored == got, "the store and the other senders disagree"
        assert len(got) == count, [event.action for event in got]
        result = self.store.verify()
        assert result.ok and result.pending == 0 and result.rows == count, str(result)
        chained = {key: self.threads[key].startswith("audit-instrument-chain") for key in keys}
        expected = self.transactional if transactional is None else transactional
        assert set(chained.values()) <= {expected}, chained
        return got

    def nothing(self) -> None:
        """Nothing was recorded, and nothing waits to be."""
        wait_for(self._settled, timeout=15)
        assert self.others.events == [] and self.store.count() == 0


@contextlib.contextmanager
def recording(mode: str, pg: PgSchema) -> Iterator[Recording]:
    """A store on ``pg`` configured as a sender, another sender beside it, and :data:`ACTOR`
    (group ``org_1``) as the actor of the block."""
    store = AuditStore(pg.url)
    configure(store)
    try:
        with capture_events() as others, audit_actor(ACTOR, group="org_1"):
            yield Recording(mode, store, pg, others)
    finally:
        configure()
        store.close()


@contextlib.contextmanager
def app_schema(cluster: Cluster, name: str) -> Iterator[str]:
    """A schema of its own for an application's tables (beside the stores' schemas)."""
    schema = f"{name}_{os.getpid()}"
    cluster.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        cluster.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def lock_waiters(cluster: Cluster) -> int:
    """How many sessions of the test database wait for a lock (a row another one holds)."""
    rows = cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND datname = current_database()")
    return int(rows[0][0])

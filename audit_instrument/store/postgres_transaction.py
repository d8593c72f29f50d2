"""Events that commit or roll back with the caller's transaction (PostgreSQL stores).

``with store.in_transaction(conn): ...`` writes every event the store
receives inside the block — ``@audit`` calls, ``with audit(...)``, ``emit``,
``store.send`` — through the caller's connection, into the caller's open
transaction, as a row of the ``pending`` table. Nothing there touches the
chain head, so concurrent transactions never wait for each other.

What happens next is learnt from the database, whatever the driver: each
pending row records its transaction's id (``pg_current_xact_id()``), and
the store's watcher thread asks ``pg_xact_status`` about the ids it holds
(at once when the block ends, then at growing intervals up to
:data:`CHECK_MAX` seconds while the transaction stays open). Once one has
committed, the watcher chains the committed pending rows (positions are
assigned then, under the head lock, so a late commit is never skipped),
reports the events delivered, and hands them to the other senders (WorkOS,
files, …); the events of a rolled-back transaction (or savepoint) reach
nobody. Every writing store also looks for committed pending rows every
:data:`POLL` seconds, so rows whose writer died after its commit are
chained by any other store instance.

Supported connections: a psycopg 3 ``Connection``; a SQLAlchemy
``Connection`` or ``Session`` on a PostgreSQL engine; Django's
``connection`` (or ``connections[alias]``) with the PostgreSQL backend.
Async connections are not (events are emitted from synchronous code). How
each is written through is in :mod:`.postgres_caller`.

ORM capture (``integrations._emission``) meets the block through three seams:
:func:`transaction_connection` tells it whether a change was made through
the connection the block writes through (then its events are emitted at
once and written in that transaction), :func:`written_together` writes a
bulk change's events in few statements, and :func:`outside_block` hands the
events of work committed elsewhere straight to the senders.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import _stats, signals
from .._json import canonical_json
from ..errors import AuditConfigError, AuditError, DeliveryError
from ..event import AuditEvent
from .chain import Linker, Seal
from .postgres_caller import Driver, Insert, caller_insert

if TYPE_CHECKING:
    from .audit_store import AuditStore
    from .postgres import PostgresBackend

__all__ = [
    "CHECK_MAX",
    "POLL",
    "Transactions",
    "current_scope",
    "outside_block",
    "transaction_connection",
    "written_together",
]

logger = logging.getLogger("audit_instrument")

_BATCH = 1000
"""Events per ``INSERT`` of :func:`written_together`."""
CHECK_MIN = 0.002
"""Seconds before the first look at a transaction's outcome after its block ended."""
CHECK_MAX = 0.1
"""The longest wait between two looks at a transaction still open."""
POLL = 1.0
"""Seconds between two looks for committed pending rows that no one here is waiting for."""


# -- the scope of a block -----------------------------------------------------------------


@dataclass(slots=True)
class _Written:
    """An event written as a pending row, waiting for its transaction's outcome."""

    id: int
    event: AuditEvent
    hand_on: bool  # emitted (so the other senders get it), not sent to the store directly


@dataclass(slots=True)
class _Block:
    """One ``in_transaction`` block: where its events go, and what was written."""

    store: AuditStore
    conn: object
    insert: Insert
    driver: Driver
    sql: str  # INSERT of one record
    sql_many: str  # INSERT of an array of records
    written: dict[str, list[_Written]] = field(default_factory=dict)  # by transaction id
    failures: list[Exception] = field(default_factory=list)  # one per event not written
    batch: list[AuditEvent] | None = None  # inside written_together(): taken, not written yet

    def send(self, event: AuditEvent, *, hand_on: bool = False) -> None:
        """Write ``event`` in the caller's transaction; raise DeliveryError if that fails."""
        self._write([event], hand_on)

    def take(self, event: AuditEvent) -> None:
        """An event emitted inside the block (the diverted ``event_emitted``)."""
        if self.batch is not None:
            self.batch.append(event)
        else:
            self.take_all([event])

    def take_all(self, events: list[AuditEvent]) -> None:
        """Emitted events, written in as few statements as can be; failures noted, not raised
        (the block raises when it ends)."""
        for start in range(0, len(events), _BATCH):
            try:
                self._write(events[start:start + _BATCH], True)
            except DeliveryError as error:
                _stats.note_failure(
                    f"in_transaction {self.store._where}",
                    str(error), error=error,
                )

    def _write(self, events: list[AuditEvent], hand_on: bool) -> None:
        try:
            if len(events) == 1:
                rows = self.insert(self.sql, canonical_json(events[0]))
            else:  # the rows' ids follow the array's order
                records = json.dumps([canonical_json(e) for e in events], ensure_ascii=False)
                rows = sorted(self.insert(self.sql_many, records))
        except Exception as error:
            what = f"event {events[0].action!r}" if len(events) == 1 else f"{len(events)} events"
            failure = DeliveryError(
                f"{self.store._where}: could not write {what} in the caller's transaction "
                f"({error})"
            )
            self.failures.extend([failure] * len(events))
            for event in events:
                signals.report_failed(event, self.store, failure)
            raise failure from error
        for event, (id_, xid) in zip(events, rows, strict=True):
            self.written.setdefault(xid, []).append(_Written(id_, event, hand_on))


@dataclass(frozen=True, slots=True)
class _HandingOn:
    """Set while a committed block's events go to the other senders: the store skips them."""

    store: AuditStore

    def send(self, event: AuditEvent) -> None:
        """Nothing to do: the event was written in the transaction that committed."""


_scope: ContextVar[_Block | _HandingOn | None] = ContextVar(
    "audit_instrument_store_transaction", default=None
)


def current_scope() -> _Block | _HandingOn | None:
    """The ``in_transaction`` block (or hand-on) this context is in, if any."""
    return _scope.get()


def transaction_connection() -> object | None:
    """The DB-API (psycopg) connection the ``in_transaction`` block of this context writes
    through; ``None`` outside a block (or while its connection has none).

    The seam for ORM capture: a change made through this same connection
    belongs to the transaction the block writes in, so its events are
    emitted at once — the block writes them there, and a rollback (or a
    savepoint rollback) undoes them with the change — instead of being held
    for the commit. Asking never begins a transaction.
    """
    scope = _scope.get()
    if not isinstance(scope, _Block):
        return None
    try:
        return scope.driver()
    except Exception:  # a closed or failed connection: nothing is written through it
        return None


@contextmanager
def outside_block() -> Iterator[None]:
    """Events emitted inside go to the senders at once, as if no ``in_transaction`` block
    were open in this context.

    For work that has committed already — ORM capture hands on the events
    of a committed transaction this way: the block's transaction is not
    theirs, and tying them to it would lose them if it rolled back.
    """
    if not isinstance(_scope.get(), _Block):
        yield
        return
    token = _scope.set(None)
    try:
        with signals.divert(_to_senders):
            yield
    finally:
        _scope.reset(token)


def _to_senders(event: AuditEvent) -> None:
    signals.dispatch(signals.event_emitted, event)


@contextmanager
def written_together() -> Iterator[None]:
    """Events the ``in_transaction`` block of this context takes inside are written when it
    ends, in one statement per :data:`_BATCH` events rather than one each.

    For the many events of one change made at one moment (ORM capture of a
    bulk statement): ``benchmarks/bench_orm_postgres.py`` compares a
    10,000-row bulk update written so with the events written one by one.
    Nothing may commit or roll back a savepoint inside: the events are
    written in the transaction (and savepoint) open when it ends.
    """
    scope = _scope.get()
    if not isinstance(scope, _Block) or scope.batch is not None:
        yield
        return
    scope.batch = []
    try:
        yield
    finally:
        events, scope.batch = scope.batch, None
        if events:
            scope.take_all(events)


# -- the watcher: outcomes, chaining, handing on ------------------------------------------


class Transactions:
    """A store's transactional writes: blocks, and the thread that settles them."""

    def __init__(self, store: AuditStore, backend: PostgresBackend) -> None:
        # The thread holds the store weakly: a store dropped without close() stops it.
        self._store_ref = weakref.ref(store)
        self._where = store._where
        key = store._key
        self._linker: Callable[[Seal | None], Linker] = lambda seal: Linker(
            seal, key, self._where)
        self._backend = backend
        self.poll = POLL
        self._setup()
        self._start()

    def _setup(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held: dict[str, list[_Written]] = {}
        self._delay = CHECK_MIN
        self._due = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"audit-instrument-chain {self._where}", daemon=True
        )
        self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: the parent's held events stay the parent's; a thread of our own."""
        self._setup()
        self._start()

    @contextmanager
    def block(self, conn: object) -> Iterator[None]:
        """``store.in_transaction(conn)``: see the module."""
        current = _scope.get()
        if isinstance(current, _Block):
            if current.store is self._store_ref() and current.conn is conn:
                yield  # nested in a block of the same store and connection: one block
                return
            raise AuditConfigError(
                "in_transaction() blocks of different stores or connections cannot be nested"
            )
        if self._closed:
            raise AuditError(f"{self._where}: the store is closed")
        insert, driver = caller_insert(conn)
        store = self._store_ref()
        assert store is not None  # the caller holds it
        block = _Block(store, conn, insert, driver, self._backend.insert_pending,
                       self._backend.insert_pending_many)
        token = _scope.set(block)
        try:
            with signals.divert(block.take):
                yield
        finally:
            _scope.reset(token)
            self._hold(block.written)
        if block.failures:
            raise DeliveryError(
                f"{len(block.failures)} event(s) of this in_transaction block could not be "
                f"written in the transaction: roll it back (first: {block.failures[0]})"
            )

    def _hold(self, written: dict[str, list[_Written]]) -> None:
        if not written:
            return
        with self._cond:
            for xid, items in written.items():
                self._held.setdefault(xid, []).extend(items)
            self._delay = CHECK_MIN
            self._due = time.monotonic()  # the transaction may have ended in the block
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Settle what can be settled, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    wake = next_poll if not self._held else min(next_poll, self._due)
                    if now >= wake:
                        break
                    self._cond.wait(wake - now)
                closed = self._closed
                held = dict(self._held)
            if self._store_ref() is None:  # dropped without close(): nobody to settle for
                self._backend.close()
                return
            try:
                if held:
                    self._settle(held)
                elif time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll
                    if self._backend.any_pending():
                        self._chain()
            except Exception as error:
                _stats.note_failure(
                    f"chaining {self._where}",
                    f"{self._where}: could not settle transactional "
                    f"writes, trying again ({error})", error=error,
                )
                with self._cond:
                    self._due = time.monotonic() + CHECK_MAX
            if closed:
                self._give_up()
                return

    def _settle(self, held: dict[str, list[_Written]]) -> None:
        outcomes = self._backend.outcomes(list(held))
        ended = {xid: status for xid, status in outcomes.items() if status != "in progress"}
        with self._cond:
            for xid in ended:
                self._held.pop(xid, None)
            if len(ended) < len(held):
                self._due = time.monotonic() + self._delay
                self._delay = min(self._delay * 2, CHECK_MAX)
        committed = [item for xid, status in ended.items() if status == "committed"
                     for item in held[xid]]
        if not committed:
            return
        try:
            self._chain()
        except Exception as error:  # the rows are safe in pending; POLL chains them later
            _stats.note_failure(
                f"chaining {self._where}",
                f"{self._where}: could not chain committed events "
                f"yet ({error})", error=error,
            )
        kept = self._backend.kept(
            [item.id for item in committed], [item.event.idempotency_key for item in committed]
        )
        self._hand_on([item for item in committed if item.event.idempotency_key in kept])

    def _chain(self) -> None:
        self._backend.chain_pending(self._linker)

    def _hand_on(self, items: list[_Written]) -> None:
        store = self._store_ref()
        if store is None:
            return
        for item in items:
            signals.report_delivered(item.event, store)
        others = [item.event for item in items if item.hand_on]
        if others:
            contextvars.Context().run(_dispatch, store, others)

    def _give_up(self) -> None:
        with self._cond:
            left = sum(len(items) for items in self._held.values())
            self._held.clear()
        if left:
            _stats.note_failure(
                f"closed with open transactions {self._where}",
                f"{self._where} closed while {left} event(s) waited for "
                "their transaction to end: they are in the store if it commits, but the other "
                "senders will not get them",
                level=logging.WARNING,
            )


def _dispatch(store: AuditStore, events: list[AuditEvent]) -> None:
    """Hand committed events to every sender but ``store`` (it has them)."""
    _scope.set(_HandingOn(store))
    for event in events:
        signals.dispatch(signals.event_emitted, event)

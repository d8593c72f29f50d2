"""When a captured change's events go out: held for the commit, or written in the caller's
transaction.

Each ORM holds a change's events until its transaction commits and then
hands them on with :func:`emit_all`. Inside ``store.in_transaction(conn)``
of a PostgreSQL store, when the change was made through the connection the
block writes through (:func:`in_caller_transaction`), it emits them at once
with :func:`emit_in_transaction` instead: the block writes them in that
open transaction, so they commit or roll back (savepoints included) with
the change. The seams on the store's side are in
:mod:`audit_instrument.store.postgres_transaction`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .. import signals
from ..event import AuditEvent
from ..instrument import warn_discarded
from ..store.postgres_transaction import (
    outside_block,
    transaction_connection,
    written_together,
)

__all__ = ["capturing", "emit_all", "emit_in_transaction", "in_caller_transaction"]


def capturing() -> bool:
    """Whether any sender listens; if not, warn once (as ``@audit`` does) and capture nothing."""
    if signals.event_emitted.receivers:
        return True
    warn_discarded()
    return False


def emit_all(events: Iterable[AuditEvent]) -> None:
    """Hand the events of committed work to the senders, in order.

    Straight to them even inside an ``in_transaction`` block: the work has
    committed, and the block's transaction (another one, or a later one on
    the same connection) is not theirs.
    """
    with outside_block():
        for event in events:
            signals.emit_built(event)


def emit_in_transaction(events: Iterable[AuditEvent]) -> None:
    """Emit the events of a change made in the transaction an ``in_transaction`` block writes
    in (see :func:`in_caller_transaction`): the block writes them there, all together."""
    with written_together():
        for event in events:
            signals.emit_built(event)


def in_caller_transaction(driver: Callable[[], object]) -> bool:
    """Whether events emitted now are written in the transaction of the change just made.

    True inside ``store.in_transaction(conn)`` (a PostgreSQL store) when
    ``conn`` writes through the DB-API connection ``driver()`` returns —
    the one the change was made through, so the same open transaction.
    Each ORM's ``_hold`` then emits the change's events at once
    (:func:`emit_in_transaction`) instead of holding them for the commit:
    the block writes them in that transaction, and a rollback or a savepoint
    rollback undoes them with the change. ``driver`` is called only inside a
    block.
    """
    target = transaction_connection()
    if target is None:
        return False
    try:
        return driver() is target
    except Exception:  # no connection to be found: the events wait for the commit as usual
        return False

"""Events wait for their transaction: emitted when it commits, dropped when it rolls back.

Inside ``store.in_transaction(...)`` of a PostgreSQL store on the session's
own connection, they are emitted at once instead: the block writes them in
the open transaction, which commits or rolls back (savepoints included) with
the change itself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy.orm import Mapper, Session, SessionTransaction

from ...event import AuditEvent
from .._changes import net_changes
from .._emission import emit_all, emit_in_transaction, in_caller_transaction

_HELD = "audit_instrument.held"  # session.info: {transaction: events it would commit}
_RELEASED = "audit_instrument.released"  # session.info: savepoints released, not yet closed


# -- transactions ---------------------------------------------------------------------------------
Held = list[tuple[AuditEvent, Collection[str]]]
"""Events waiting for a commit, each with the audited columns of its model."""


def _hold(session: Session, mapper: Mapper[Any],
          events: Iterable[tuple[AuditEvent, Collection[str]]]) -> None:
    """Keep ``events`` of rows of ``mapper`` (each with its model's audited columns) with the
    innermost transaction (a savepoint, else the session's).

    This is the one place events wait for their transaction — unless an
    ``in_transaction`` block writes through the connection the session uses
    for ``mapper``: then they are emitted now, and the block writes them in
    that transaction.
    """
    events = list(events)
    if not events:
        return
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # not inside a transaction: nothing can undo it any more
        emit_all(event for event, _ in events)
        return
    if _in_block(session, mapper):  # one flush writes a row once; net_changes to be sure
        emit_in_transaction(net_changes(events))
        return
    held: dict[SessionTransaction, Held] = session.info.setdefault(_HELD, {})
    held.setdefault(transaction, []).extend(events)


def _in_block(session: Session, mapper: Mapper[Any] | None) -> bool:
    """Whether an ``in_transaction`` block writes through the connection ``session`` uses for
    ``mapper`` (its default bind for ``None``)."""
    bind_arguments = None if mapper is None else {"mapper": mapper}
    return in_caller_transaction(
        lambda: session.connection(bind_arguments=bind_arguments).connection.driver_connection)


def _before_commit(session: Session) -> None:
    """Events held from before an ``in_transaction`` block, committed inside it on the same
    connection: written in the transaction now, before its ``COMMIT``, like the rest of the
    block's (emitted after it, the block would write them in the next transaction)."""
    held: dict[SessionTransaction, Held] | None = session.info.get(_HELD)
    if not held or session.get_nested_transaction() is not None or not _in_block(session, None):
        return
    events = [item for items in held.values() for item in items]
    held.clear()
    emit_in_transaction(net_changes(events))


def _after_commit(session: Session) -> None:
    held: dict[SessionTransaction, Held] | None = session.info.get(_HELD)
    if not held:
        return
    savepoint = session.get_nested_transaction()
    if savepoint is not None:  # RELEASE SAVEPOINT: its events now belong to the enclosing one
        session.info.setdefault(_RELEASED, set()).add(savepoint)
        return
    root = session.get_transaction()
    events = held.pop(root, None) if root is not None else None
    if events:  # autoflush may have written a row several times: one event per row
        emit_all(net_changes(events))


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    held: dict[SessionTransaction, Held] | None = session.info.get(_HELD)
    if not held:
        return
    events = held.pop(transaction, None)
    released: set[SessionTransaction] = session.info.get(_RELEASED) or set()
    if transaction in released:
        released.discard(transaction)
        if events:
            parent = transaction.parent
            while parent is not None and not parent.nested and parent.parent is not None:
                parent = parent.parent
            if parent is None:
                emit_all(event for event, _ in events)
            else:
                held.setdefault(parent, []).extend(events)
    # otherwise rolled back (or closed without commit): its events are dropped



"""Events wait for their transaction: emitted when it commits, dropped when it rolls back."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy.orm import Session, SessionTransaction

from ...event import AuditEvent
from .._changes import emit_all, net_changes

_HELD = "audit_instrument.held"  # session.info: {transaction: events it would commit}
_RELEASED = "audit_instrument.released"  # session.info: savepoints released, not yet closed


# -- transactions ---------------------------------------------------------------------------------
Held = list[tuple[AuditEvent, Collection[str]]]
"""Events waiting for a commit, each with the audited columns of its model."""


def _hold(session: Session, events: Iterable[tuple[AuditEvent, Collection[str]]]) -> None:
    """Keep ``events`` (with their model's audited columns) with the innermost transaction
    (a savepoint, else the session's).

    This is the one place events wait for their transaction. Writing them
    into the database inside that same transaction instead (a store that
    shares the application's database) would happen here, on
    ``session.connection()``: a savepoint rollback or a rollback would then
    undo them with the rest of the work.
    """
    events = list(events)
    if not events:
        return
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # not inside a transaction: nothing can undo it any more
        emit_all(event for event, _ in events)
        return
    held: dict[SessionTransaction, Held] = session.info.setdefault(_HELD, {})
    held.setdefault(transaction, []).extend(events)


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



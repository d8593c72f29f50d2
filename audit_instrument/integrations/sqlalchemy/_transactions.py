"""Events wait for their transaction: emitted when it commits, dropped when it rolls back."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy.orm import Session, SessionTransaction

from ...event import AuditEvent
from .._changes import emit_all, net_changes
from ._plan import _PLANS

_HELD = "audit_instrument.held"  # session.info: {transaction: events it would commit}
_RELEASED = "audit_instrument.released"  # session.info: savepoints released, not yet closed


# -- transactions ---------------------------------------------------------------------------------
def _hold(session: Session, events: Iterable[AuditEvent]) -> None:
    """Keep ``events`` with the innermost transaction (a savepoint, else the session's).

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
        emit_all(events)
        return
    held: dict[SessionTransaction, list[AuditEvent]] = session.info.setdefault(_HELD, {})
    held.setdefault(transaction, []).extend(events)


def _after_commit(session: Session) -> None:
    held: dict[SessionTransaction, list[AuditEvent]] | None = session.info.get(_HELD)
    if not held:
        return
    savepoint = session.get_nested_transaction()
    if savepoint is not None:  # RELEASE SAVEPOINT: its events now belong to the enclosing one
        session.info.setdefault(_RELEASED, set()).add(savepoint)
        return
    root = session.get_transaction()
    events = held.pop(root, None) if root is not None else None
    if events:
        emit_all(net_changes(events, _columns_of))


def _columns_of(event: AuditEvent) -> Collection[str] | None:
    """The audited columns of the model an event is about (autoflush may write a row several
    times in one transaction: :func:`net_changes` folds them into one event)."""
    category = event.action.rpartition(".")[0]
    plan = next((plan for plan in _PLANS.values() if plan.audit.category == category), None)
    return plan.columns if plan is not None else None


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    held: dict[SessionTransaction, list[AuditEvent]] | None = session.info.get(_HELD)
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
                emit_all(events)
            else:
                held.setdefault(parent, []).extend(events)
    # otherwise rolled back (or closed without commit): its events are dropped



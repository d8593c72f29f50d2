"""Objects the unit of work wrote: their events, built when the flush is done."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import InstanceState, Mapper, Session, UOWTransaction
from sqlalchemy.orm.attributes import History, set_committed_value

from ... import signals
from ...event import AuditEvent
from .._emission import capturing
from ._plan import _CHUNK, _Plan, _plan_of
from ._transactions import _hold

_FLUSHED = "audit_instrument.flushed"  # session.info: (kind, state) written by this flush
_OLD = "audit_instrument.old"  # session.info: {state: stored values of attrs set while expired}


# -- the unit of work -----------------------------------------------------------------------------
def _recorder(kind: str) -> Any:
    def record(mapper: Mapper[Any], connection: object, target: object) -> None:
        state = inspect(target)
        session = state.session
        if session is not None:
            session.info.setdefault(_FLUSHED, []).append((kind, state))

    return record


def _before_flush(session: Session, context: UOWTransaction, instances: object) -> None:
    """Start this flush's list, and read the stored values events need but objects lack."""
    session.info[_FLUSHED] = []  # left over from a flush that failed: that work was not done
    session.info[_OLD] = {}
    if signals.event_emitted.receivers and (session.dirty or session.deleted):
        _read_old_values(session)


def _read_old_values(session: Session) -> None:
    """Read, in this transaction, what update and delete events show but objects don't hold.

    An expired attribute (after a commit, ``expire()``) is loaded as usual
    (``set_committed_value``): a foreign key the flush is about to change
    through a relationship then shows its old id. An attribute assigned
    while expired has no old value in its history: that is kept aside for
    the event. Reading here, inside the flush, also works for
    ``AsyncSession``, which cannot load attributes when they are set.
    """
    wanted: dict[_Plan, list[tuple[InstanceState[Any], set[str], set[str]]]] = {}
    for obj in (*session.dirty, *session.deleted):
        plan = _plan_of(type(obj))
        if plan is None:
            continue
        state = inspect(obj)
        if state.key is None:
            continue
        unloaded = set(state.unloaded & plan.loaded)
        overwritten = {key for key in plan.columns if key in state.dict
                       and _old_unknown(state.attrs[key].history)}
        if unloaded or overwritten:
            wanted.setdefault(plan, []).append((state, unloaded, overwritten))
    old: dict[InstanceState[Any], dict[str, Any]] = session.info[_OLD]
    for plan, items in wanted.items():
        states = {tuple(state.key[1]): (state, unloaded, overwritten)  # type: ignore[index]
                  for state, unloaded, overwritten in items}
        pks = list(states)
        for start in range(0, len(pks), _CHUNK):
            query = plan.select(plan.pk_in(pks[start:start + _CHUNK]))
            for row in session.execute(query):
                state, unloaded, overwritten = states[tuple(row[:len(plan.pk_keys)])]
                values = row._mapping
                obj = state.obj()
                for key in unloaded:
                    set_committed_value(obj, key, values[key])
                old[state] = {key: values[key] for key in overwritten}


def _old_unknown(history: History) -> bool:
    return bool(history.added) and not history.deleted and not history.unchanged


def _after_flush(session: Session, context: UOWTransaction) -> None:
    written: list[tuple[str, InstanceState[Any]]] = session.info.pop(_FLUSHED, None) or []
    if not written or not capturing():
        return
    old: dict[InstanceState[Any], dict[str, Any]] = session.info.get(_OLD) or {}
    runs: list[tuple[_Plan, list[tuple[AuditEvent, Collection[str]]]]] = []  # by model, in order
    for kind, state in written:
        plan = _plan_of(state.class_)
        if plan is None:
            continue
        if not runs or runs[-1][0] is not plan:
            runs.append((plan, []))
        runs[-1][1].extend((event, plan.columns)
                           for event in plan.flush_events(kind, state, old.get(state, {})))
    for plan, events in runs:
        _hold(session, plan.mapper, events)



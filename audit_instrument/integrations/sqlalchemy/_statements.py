"""ORM insert, update and delete statements: one event per row they change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, inspect
from sqlalchemy.engine import Result, Row
from sqlalchemy.orm import ORMExecuteState, configure_mappers

from ... import _stats as stats
from ...config import settings
from ...errors import AuditValidationError
from ...event import AuditEvent
from .._emission import capturing
from ._plan import _CHUNK, _Plan, _plan_of
from ._transactions import _hold


# -- statements -----------------------------------------------------------------------------------
def _on_execute(state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    mapper = state.bind_mapper
    if mapper is None:
        return None
    if not mapper.configured:  # a statement before any query: audit_model takes effect now
        configure_mappers()
    plan = _plan_of(mapper.class_)
    if plan is None or not capturing():
        return None
    if state.is_insert:
        return _bulk_insert(state, plan)
    return _bulk_change(state, plan)


def _read(state: ORMExecuteState, plan: _Plan, query: Any,
          params: object = None) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Run ``query`` (from :meth:`_Plan.select`) in the statement's transaction: rows by key."""
    rows = state.session.execute(query, params if isinstance(params, dict) else None,
                                 bind_arguments=state.bind_arguments)
    width = len(plan.pk_keys)
    keys = list(rows.keys())
    return {tuple(row[:width]): dict(zip(keys, row)) for row in rows}


def _read_pks(state: ORMExecuteState, plan: _Plan,
              pks: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for start in range(0, len(pks), _CHUNK):
        found.update(_read(state, plan, plan.select(plan.pk_in(pks[start:start + _CHUNK]))))
    return found


def _bulk_change(state: ORMExecuteState, plan: _Plan) -> Result[Any]:
    """An ORM ``update()``/``delete()``: read the rows it will change, run it, read them again."""
    statement: Any = state.statement
    params = state.parameters
    where = statement.whereclause
    if isinstance(params, list):  # bulk UPDATE by primary key: one parameter set per row
        try:
            pks = [tuple(row[key] for key in plan.pk_keys) for row in params]
        except KeyError:
            pks = []
        chunks = [plan.pk_in(pks[i:i + _CHUNK]) for i in range(0, len(pks), _CHUNK)]
        before: dict[tuple[Any, ...], dict[str, Any]] = {}
        for chunk in chunks:
            before.update(_read(state, plan, plan.select(chunk if where is None
                                                   else and_(chunk, where))))
    else:
        before = _read(state, plan, plan.select(where), params)
    result = state.invoke_statement()
    events: list[AuditEvent] = []
    if state.is_delete:
        for pk, row in before.items():
            events.extend(plan.row_events("delete", pk, row, None))
    else:
        after = _read_pks(state, plan, list(before))
        for pk, row in before.items():
            if pk in after:
                events.extend(plan.row_events("update", pk, row, after[pk]))
        if len(after) < len(before):
            stats.note_failure(
                f"bulk update of {plan.audit.category}: rows not found again",
                f"update({plan.mapper.class_.__name__}): {len(before) - len(after)} updated "
                f"rows could not be read back by primary key (was the primary key changed?); "
                f"they are not recorded",
            )
    _hold(state.session, plan.mapper, [(event, plan.columns) for event in events])
    return result


def _bulk_insert(state: ORMExecuteState, plan: _Plan) -> Result[Any] | None:
    """An ORM ``insert()``: have it return the new primary keys, then read the rows."""
    statement: Any = state.statement
    category = plan.audit.category
    many = isinstance(state.parameters, list)
    dialect = state.session.get_bind(**state.bind_arguments).dialect
    if getattr(statement, "_post_values_clause", None) is not None:
        problem = "an upsert (ON CONFLICT) cannot tell new rows from updated ones"
    elif not (dialect.insert_executemany_returning if many else dialect.insert_returning):
        problem = f"the {dialect.name} database cannot return the new rows (INSERT … RETURNING)"
    else:
        problem = None
    if problem is not None:
        error = AuditValidationError(f"insert({plan.mapper.class_.__name__})",
                                     f"not recorded: {problem}")
        if settings.strict:
            raise error
        stats.note_failure(f"bulk insert of {category}: {problem}", str(error))
        return None
    keys = [plan.mapper.get_property(key).class_attribute for key in plan.pk_keys]
    if len(statement.exported_columns):  # the caller asked for RETURNING: keep its rows
        frozen = state.invoke_statement().freeze()
        pks = [pk for row in frozen.data if (pk := _pk_in_row(plan, row)) is not None]
        if len(pks) < len(frozen.data):
            stats.note_failure(
                f"bulk insert of {category}: RETURNING without the primary key",
                f"insert({plan.mapper.class_.__name__}).returning(...) returns neither the "
                f"objects nor their primary key, so the new rows are not recorded",
            )
        result: Result[Any] = frozen()
    else:
        result = state.invoke_statement(statement=statement.returning(*keys))
        pks = [tuple(row) for row in result.all()]
    after = _read_pks(state, plan, pks)
    events: list[AuditEvent] = []
    for pk, row in after.items():
        events.extend(plan.row_events("create", pk, None, row))
    _hold(state.session, plan.mapper, [(event, plan.columns) for event in events])
    return result


def _pk_in_row(plan: _Plan, row: Any) -> tuple[Any, ...] | None:
    """The primary key in a row of the caller's RETURNING: an object's, or the key columns."""
    if isinstance(row, plan.mapper.class_):
        return plan.pk_of_state(inspect(row))
    if not isinstance(row, Row):
        return None
    for value in row:
        if isinstance(value, plan.mapper.class_):
            return plan.pk_of_state(inspect(value))
    mapping = row._mapping
    if all(key in mapping for key in plan.pk_keys):
        return tuple(mapping[key] for key in plan.pk_keys)
    return None



"""SQLAlchemy 2.x: every committed insert, update and delete of a model is an audit event.

>>> from audit_instrument.integrations.sqlalchemy import audit_model
>>> audit_model(Tweet, target_name="title")          # doctest: +SKIP

After it, every change of ``Tweet`` rows through a :class:`~sqlalchemy.orm.Session`
(or an :class:`~sqlalchemy.ext.asyncio.AsyncSession`, which runs one) is
recorded, when its transaction commits:

* the unit of work (``session.add``, attribute changes, ``session.delete``,
  cascades): ``tweet.create`` (C) with ``<field>`` metadata, ``tweet.update``
  (U) with ``<field>_was``/``<field>`` for the fields that changed,
  ``tweet.delete`` (D) with ``<field>_was``; many-to-many collections as
  comma-separated related ids (``tags_added``, ``tags_removed``; ``tags`` on
  create);
* ORM statements run by the session: ``session.execute(update(Tweet)...)``
  and ``delete(Tweet)...`` (the affected rows are read in the same
  transaction before the statement runs, and updated ones again after it),
  ``update(Tweet)`` with a list of rows (bulk update by primary key) and
  ``insert(Tweet)`` (one event per inserted row; needs ``INSERT …
  RETURNING``: SQLite 3.35+, PostgreSQL, MariaDB 10.5+).

Events are built when the change is flushed (so they carry the actor, group
and location of that moment) and held by the session's transaction: a
commit hands them to the senders, a rollback drops them, and rolling back a
savepoint (``begin_nested()``) drops those of the work it undid.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, event, inspect, select, tuple_
from sqlalchemy.engine import Result, Row
from sqlalchemy.orm import (
    ColumnProperty,
    InstanceState,
    Mapper,
    ORMExecuteState,
    RelationshipProperty,
    Session,
    SessionTransaction,
    UOWTransaction,
)
from sqlalchemy.orm.attributes import History, set_committed_value

from .. import _stats as stats
from ..config import settings
from ..errors import AuditConfigError, AuditValidationError
from ..event import AuditEvent
from ._changes import (
    ModelAudit,
    TargetName,
    build_events,
    capturing,
    changed,
    created,
    deleted,
    emit_all,
    id_texts,
    net_changes,
)

__all__ = ["audit_model"]

_PLANS: dict[type, _Plan] = {}
_FOUND: dict[type, _Plan | None] = {}  # class -> its plan or an audited base's (cache)
_FLUSHED = "audit_instrument.flushed"  # session.info: (kind, state) written by this flush
_OLD = "audit_instrument.old"  # session.info: {state: stored values of attrs set while expired}
_HELD = "audit_instrument.held"  # session.info: {transaction: events it would commit}
_RELEASED = "audit_instrument.released"  # session.info: savepoints released, not yet closed
_CHUNK = 500  # primary keys per "IN (...)" of a read-back
_installed = False


class _Plan:
    """What capture needs to know about one audited mapper, worked out when it is configured."""

    __slots__ = ("audit", "columns", "loaded", "mapper", "pk_keys", "relations")

    def __init__(self, mapper: Mapper[Any], options: dict[str, Any]) -> None:
        columns = {prop.key: prop for prop in mapper.column_attrs}
        relations = {prop.key: prop for prop in mapper.relationships
                     if prop.secondary is not None}
        self.mapper = mapper
        self.pk_keys = tuple(mapper.get_property_by_column(column).key
                             for column in mapper.primary_key)
        self.audit = ModelAudit(
            mapper.class_,
            available=list(columns),
            collections=list(relations),
            default=[key for key in (*columns, *relations) if key not in self.pk_keys],
            **options,
        )
        self.columns: dict[str, ColumnProperty[Any]] = {
            key: columns[key] for key in self.audit.columns
        }
        self.relations: dict[str, RelationshipProperty[Any]] = {
            key: relations[key] for key in self.audit.collections
        }
        name = self.audit.target_name
        self.loaded = {*self.columns, *([name] if isinstance(name, str) else [])}

    # -- rows and objects ---------------------------------------------------------------
    def pk_of_state(self, state: InstanceState[Any]) -> tuple[Any, ...]:
        if state.identity is not None:
            return tuple(state.identity)
        return tuple(state.dict.get(key) for key in self.pk_keys)

    def select(self, where: ColumnElement[bool] | None) -> Any:
        """``SELECT <primary key>, <audited columns>`` of the rows ``where`` picks, locked."""
        keys = dict.fromkeys((*self.pk_keys, *self.columns))
        columns = [self.mapper.get_property(key).columns[0].label(key) for key in keys]
        query = select(*columns).select_from(self.mapper.selectable)
        if where is not None:
            query = query.where(where)
        return query.with_for_update()

    def pk_in(self, pks: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
        columns = [self.mapper.get_property(key).columns[0] for key in self.pk_keys]
        if len(columns) == 1:
            single: ColumnElement[bool] = columns[0].in_([pk[0] for pk in pks])
            return single
        return tuple_(*columns).in_(pks)

    def name(self, obj: object, target_id: str) -> str:
        """The target name; a failing ``target_name=`` is reported and the id used instead."""
        try:
            return self.audit.name_of(obj, target_id)
        except Exception as error:
            if settings.strict:
                raise
            stats.note_failure(
                f"target_name of {self.audit.category}: {type(error).__name__}",
                f"target_name= of audit_model({self.mapper.class_.__name__}) failed, the "
                f"target id is used instead: {type(error).__name__}: {error}",
                error=error,
            )
            return target_id

    def name_of_row(self, values: Mapping[str, Any], target_id: str) -> str:
        """The target name of a row read by a bulk statement (a callable gets a transient
        object holding the row's values, never added to a session)."""
        spec = self.audit.target_name
        if spec is None:
            return target_id
        if isinstance(spec, str) and spec in values:
            value = values[spec]
            return target_id if value is None or value == "" else str(value)
        obj = self.mapper.class_manager.new_instance()
        obj.__dict__.update(values)
        return self.name(obj, target_id)

    # -- events ---------------------------------------------------------------------------
    def row_events(self, kind: str, pk: tuple[Any, ...], before: Mapping[str, Any] | None,
                   after: Mapping[str, Any] | None) -> list[AuditEvent]:
        """Events of one row changed by a statement (values keyed by attribute)."""
        target_id = self.audit.target_id(pk)
        if kind == "create":
            assert after is not None
            metadata = created({key: after.get(key) for key in self.columns})
            return build_events(self.audit, kind, target_id,
                                self.name_of_row(after, target_id), metadata)
        assert before is not None
        if kind == "delete":
            metadata = deleted({key: before.get(key) for key in self.columns})
            return build_events(self.audit, kind, target_id,
                                self.name_of_row(before, target_id), metadata)
        assert after is not None
        metadata = changed({key: before.get(key) for key in self.columns},
                           {key: after.get(key) for key in self.columns})
        if not metadata:
            return []
        return build_events(self.audit, kind, target_id,
                            self.name_of_row(after, target_id), metadata)

    def flush_events(self, kind: str, state: InstanceState[Any],
                     old: Mapping[str, Any]) -> list[AuditEvent]:
        """Events of one object the unit of work inserted, updated or deleted; ``old`` holds
        stored values of attributes assigned while expired."""
        lists: list[tuple[str, list[str]]] = []
        if kind == "create":
            metadata = created({key: state.dict.get(key) for key in self.columns})
            for key in self.relations:
                added = state.attrs[key].history.added
                if added:
                    lists.append((key, id_texts(self.pk_of_state(inspect(obj)) for obj in added)))
        elif kind == "delete":
            metadata = deleted({key: old[key] if key in old else _committed(state, key)
                                for key in self.columns})
        else:
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            for key in self.columns:
                history = state.attrs[key].history
                if history.added or history.deleted:
                    if history.deleted:
                        before[key] = history.deleted[0]
                    elif key in old:
                        before[key] = old[key]
                    after[key] = history.added[0] if history.added else None
            metadata = changed(before, after)
            for key in self.relations:
                history = state.attrs[key].history
                for suffix, objects in (("_added", history.added),
                                        ("_removed", history.deleted)):
                    if objects:
                        lists.append((key + suffix,
                                      id_texts(self.pk_of_state(inspect(obj)) for obj in objects)))
            if not metadata and not lists:
                return []
        target_id = self.audit.target_id(self.pk_of_state(state))
        name = self.name(state.obj(), target_id) if self.audit.target_name else target_id
        return build_events(self.audit, kind, target_id, name, metadata, lists)


def _committed(state: InstanceState[Any], key: str) -> Any:
    """The value ``key`` had in the database (before changes not flushed yet)."""
    history = state.attrs[key].history
    if history.deleted:
        return history.deleted[0]
    if history.unchanged:
        return history.unchanged[0]
    return state.dict.get(key)


def _plan_of(cls: type) -> _Plan | None:
    """The plan of ``cls`` or of its nearest audited base class."""
    try:
        return _FOUND[cls]
    except KeyError:
        pass
    plan = next((_PLANS[base] for base in cls.__mro__ if base in _PLANS), None)
    _FOUND[cls] = plan
    return plan


# -- declaring ------------------------------------------------------------------------------------
def audit_model(
    model: type,
    *,
    category: str | None = None,
    fields: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    target_name: TargetName = None,
) -> type:
    """Record every committed insert, update and delete of ``model`` as an audit event.

    ``category`` (default: the class name in snake case, ``BlogPost`` →
    ``blog_post``) makes the actions ``<category>.create``/``.update``/
    ``.delete`` and target ids ``<category>_<primary key>``. ``fields``
    lists the attributes recorded (default: every column attribute except the
    primary key, and every many-to-many relationship); ``exclude`` leaves
    some out. ``target_name`` is an attribute name or a callable taking the
    object; by default the target name is the target id. Masked keys
    (``configure(mask=...)``) are recorded as ``"[masked]"``.

    Returns ``model``, so it may be used as a class decorator. The names are
    checked when SQLAlchemy configures its mappers (at once if it already
    has, else at the first query or ``configure_mappers()``): a wrong one
    raises :class:`~audit_instrument.AuditConfigError`.
    """
    mapper: object = inspect(model, raiseerr=False)
    if not isinstance(mapper, Mapper) or mapper.class_ is not model:
        raise AuditConfigError(f"audit_model() takes a mapped class, not {model!r}")
    options: dict[str, Any] = {"category": category, "fields": fields, "exclude": exclude,
                               "target_name": target_name}
    _install()
    if mapper.configured:
        _configure(mapper, options)
    else:
        event.listen(mapper, "mapper_configured",
                     lambda configured, cls: _configure(configured, options), once=True)
    return model


def _configure(mapper: Mapper[Any], options: dict[str, Any]) -> None:
    new = mapper.class_ not in _PLANS
    plan = _Plan(mapper, options)
    _PLANS[mapper.class_] = plan
    _FOUND.clear()
    if not new:
        return
    for kind, name in (("create", "after_insert"), ("update", "after_update"),
                       ("delete", "after_delete")):
        event.listen(mapper, name, _recorder(kind), propagate=True)


def _install() -> None:
    """Listen to every Session (and so every AsyncSession), once."""
    global _installed
    if _installed:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "do_orm_execute", _on_execute)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_transaction_end", _after_transaction_end)
    _installed = True


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
    from .. import signals

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
    events: list[AuditEvent] = []
    for kind, state in written:
        plan = _plan_of(state.class_)
        if plan is not None:
            events.extend(plan.flush_events(kind, state, old.get(state, {})))
    _hold(session, events)


# -- statements -----------------------------------------------------------------------------------
def _on_execute(state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    mapper = state.bind_mapper
    plan = _plan_of(mapper.class_) if mapper is not None else None
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
    return {tuple(row[:width]): dict(row._mapping) for row in rows}


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
    _hold(state.session, events)
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
    _hold(state.session, events)
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


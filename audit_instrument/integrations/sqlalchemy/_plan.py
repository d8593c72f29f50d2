"""What capture knows about each audited mapper, and reading its rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, inspect, select, tuple_
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper, RelationshipProperty

from ... import _stats as stats
from ...config import settings
from ...event import AuditEvent
from .._changes import ModelAudit, build_events, changed, created, deleted, id_texts

_PLANS: dict[type, _Plan] = {}
_FOUND: dict[type, _Plan | None] = {}  # class -> its plan or an audited base's (cache)
_CHUNK = 500  # primary keys per "IN (...)" of a read-back


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



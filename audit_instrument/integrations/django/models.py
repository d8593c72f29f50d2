"""Django: every committed create, update and delete of a model is an audit event.

::

    from audit_instrument.integrations.django import AuditedQuerySet, audit_model

    class Tweet(models.Model):
        body = models.TextField()
        author = models.ForeignKey(User, on_delete=models.CASCADE)
        tags = models.ManyToManyField(Tag)
        objects = AuditedQuerySet.as_manager()   # update(), bulk_create(), bulk_update()

    audit_model(Tweet)

Recorded: ``save()`` (``tweet.create`` with ``<field>`` metadata, or
``tweet.update`` with ``<field>_was``/``<field>`` for what changed — the old
values are read from the database in ``pre_save``), ``delete()`` and
``QuerySet.delete()`` (Django sends ``post_delete`` for each row: one event
each), many-to-many ``add``/``remove``/``clear``/``set`` (``tags_added``,
``tags_removed``: comma-separated ids), and, through
:class:`AuditedQuerySet`, ``QuerySet.update()``, ``bulk_create()`` and
``bulk_update()``, which send no model signals. Foreign keys are recorded by
id (``author_id``).

Events are built when the change is made (with the actor, group and location
of that moment) and handed to the senders by ``transaction.on_commit``: not
at all if the transaction rolls back, and not for the work a rolled-back
savepoint undid. Outside ``atomic()`` Django commits every statement, so
events go out at once. Inside ``store.in_transaction(connection)`` (a
PostgreSQL store, the same database connection) they are written in the
transaction as the change is made, and commit or roll back with it.
"""

from __future__ import annotations

import contextvars
import functools
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core import checks  # type: ignore[import-untyped]
from django.db import connections, models, transaction  # type: ignore[import-untyped]
from django.db.models.fields.related import (  # type: ignore[import-untyped]
    lazy_related_operation,
)
from django.db.models.signals import (  # type: ignore[import-untyped]
    m2m_changed,
    post_delete,
    post_save,
    pre_save,
)

from ... import _stats as stats
from ...config import settings
from ...errors import AuditConfigError
from ...event import AuditEvent
from .._changes import (
    ModelAudit,
    TargetName,
    build_events,
    changed,
    deleted,
    id_texts,
)
from .._changes import (
    created as created_metadata,
)
from .._emission import capturing, emit_all, emit_in_transaction, in_caller_transaction

__all__ = ["AuditedManager", "AuditedQuerySet", "AuditedQuerySetMixin", "audit_model"]

_PLANS: dict[type, _Plan] = {}
_THROUGH: dict[type, tuple[_Plan, str]] = {}  # through model -> (plan of the owner, field name)
_BEFORE: weakref.WeakKeyDictionary[Any, dict[str, Any] | None] = weakref.WeakKeyDictionary()
_M2M: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()
_CHUNK = 500  # primary keys per "IN (...)"
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "audit_instrument_django_bulk", default=False)  # inside a bulk call already recording


class _Plan:
    """What capture needs to know about one audited model."""

    __slots__ = ("_readers", "audit", "fields", "model", "pk")

    def __init__(self, model: type, options: dict[str, Any]) -> None:
        meta = model._meta  # type: ignore[attr-defined]
        concrete = {field.attname: field for field in meta.concrete_fields}
        many = {field.name: field for field in meta.many_to_many}
        self.model = model
        self.pk: str = meta.pk.attname
        self.audit = ModelAudit(
            model,
            available=list(concrete),
            collections=list(many),
            default=[name for name in (*concrete, *many) if name != self.pk],
            aliases={field.name: field.attname for field in meta.concrete_fields},
            **options,
        )
        self.fields: dict[str, Any] = {key: concrete[key] for key in self.audit.columns}
        self._readers: dict[tuple[str, tuple[str, ...]], _RowReader] = {}

    def keys(self, names: Iterable[str] | None) -> list[str]:
        """The audited attnames among field names or attnames (all of them for ``None``)."""
        if names is None:
            return list(self.fields)
        wanted = set()
        for name in names:
            try:
                wanted.add(self.model._meta.get_field(name).attname)  # type: ignore[attr-defined]
            except Exception:  # not a field: Django's own call reports it
                continue
        return [key for key in self.fields if key in wanted]

    def values(self, instance: Any, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The loaded values of the audited fields (deferred ones are not read), as the
        database would give them back."""
        loaded = instance.__dict__
        out: dict[str, Any] = {}
        for key in self.fields if keys is None else keys:
            if key in loaded:
                value = loaded[key]
                if value is not None:
                    try:
                        value = self.fields[key].to_python(value)
                    except Exception:  # left as it is: Django's save() would have refused it
                        pass
                out[key] = value
        return out

    def read_one(self, using: str, pk: Any, keys: Sequence[str]) -> dict[str, Any] | None:
        """The stored values of ``keys`` of the row ``pk`` (``None`` if there is none)."""
        wanted = (using, tuple(keys))
        reader = self._readers.get(wanted)
        if reader is None:
            reader = self._readers[wanted] = _RowReader(self.model, using, keys)
        return reader.read(pk)

    def read(self, using: str, pks: Sequence[Any], keys: Sequence[str],
             *, lock: bool = False) -> dict[Any, dict[str, Any]]:
        """The stored values of ``keys`` of rows ``pks``, by primary key."""
        manager = self.model._base_manager.db_manager(using)  # type: ignore[attr-defined]
        found: dict[Any, dict[str, Any]] = {}
        for start in range(0, len(pks), _CHUNK):
            query = manager.filter(pk__in=pks[start:start + _CHUNK])
            if lock and connections[using].features.has_select_for_update:
                query = query.select_for_update()
            for row in query.values(self.pk, *keys):
                found[row.pop(self.pk)] = row
        return found

    def target(self, instance: Any, pk: Any) -> tuple[str, str]:
        target_id = self.audit.target_id(pk)
        try:
            name = (str(instance) if self.audit.target_name is None
                    else self.audit.name_of(instance, target_id))
        except Exception as error:
            if settings.strict:
                raise
            stats.note_failure(
                f"target_name of {self.audit.category}: {type(error).__name__}",
                f"the target name of a {self.model.__name__} could not be read, the target id "
                f"is used instead: {type(error).__name__}: {error}",
                error=error,
            )
            name = target_id
        return target_id, name or target_id

    def events(self, kind: str, instance: Any, metadata: Mapping[str, Any],
               lists: Sequence[tuple[str, Sequence[str]]] = ()) -> list[AuditEvent]:
        target_id, name = self.target(instance, instance.pk)
        return build_events(self.audit, kind, target_id, name, metadata, lists)


class _RowReader:
    """``SELECT <columns> FROM <table> WHERE <pk> = %s`` for one model, database and set of
    fields, written once, with the values converted as the ORM converts them.

    ``pre_save`` reads the stored row before every ``save()``: through the
    QuerySet API, building and compiling the query costs about ten times
    the SELECT itself, and that read alone was more than half of what
    capture added to a save (``benchmarks/bench_orm.py``, Django part).
    """

    __slots__ = ("columns", "connection", "pk_field", "sql")

    def __init__(self, model: Any, using: str, keys: Sequence[str]) -> None:
        meta = model._meta
        connection = connections[using]
        quote = connection.ops.quote_name
        fields = [meta.get_field(next(f.name for f in meta.concrete_fields if f.attname == key))
                  for key in keys]
        self.connection = connection
        self.pk_field = meta.pk
        self.sql = (f"SELECT {', '.join(quote(field.column) for field in fields) or 'NULL'} "
                    f"FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s")
        self.columns: list[tuple[str, Any, list[Any]]] = []
        for key, field in zip(keys, fields):
            column = field.get_col(meta.db_table)
            converters = (connection.ops.get_db_converters(column)
                          + column.get_db_converters(connection))
            self.columns.append((key, column, converters))

    def read(self, pk: Any) -> dict[str, Any] | None:
        connection = self.connection
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [self.pk_field.get_db_prep_value(pk, connection)])
            row = cursor.fetchone()
        if row is None:
            return None
        values: dict[str, Any] = {}
        for (key, column, converters), value in zip(self.columns, row):
            for convert in converters:
                value = convert(value, column, connection)
            values[key] = value
        return values


def _hold(using: str, events: list[AuditEvent]) -> None:
    """Hand ``events`` to the senders when the transaction commits (at once outside one).

    The one place events wait for their transaction — unless an
    ``in_transaction`` block writes through the connection of ``using``
    inside ``atomic()``: then they are emitted now, and the block writes
    them in that transaction (a savepoint rollback undoes them with the
    change). Outside ``atomic()`` the change has committed already, so its
    events go to the senders at once, block or not.
    """
    if not events:
        return
    if in_caller_transaction(lambda: _atomic_connection(using)):
        emit_in_transaction(events)
        return
    transaction.on_commit(functools.partial(emit_all, events), using=using)


def _atomic_connection(using: str) -> object:
    """The DB-API connection of ``using`` inside ``atomic()``; ``None`` in autocommit."""
    connection = connections[using]
    return connection.connection if connection.in_atomic_block else None


# -- declaring ------------------------------------------------------------------------------------
def audit_model(
    model: type,
    *,
    category: str | None = None,
    fields: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    target_name: TargetName = None,
) -> type:
    """Record every committed create, update and delete of ``model`` as an audit event.

    ``category`` (default: the class name in snake case) makes the actions
    ``<category>.create``/``.update``/``.delete`` and target ids
    ``<category>_<pk>``. ``fields`` lists the fields recorded (default: every
    concrete field but the primary key, and every many-to-many field; a
    foreign key is recorded by id as ``<name>_id``); ``exclude`` leaves some
    out. ``target_name`` is an attribute name or a callable taking the
    instance; by default ``str(instance)``. Give the model an
    :class:`AuditedQuerySet` manager so that ``update()``, ``bulk_create()``
    and ``bulk_update()`` are recorded too. Returns ``model``.
    """
    meta: Any = getattr(model, "_meta", None)
    if not (isinstance(model, type) and issubclass(model, models.Model)) or meta.abstract:
        raise AuditConfigError(f"audit_model() takes a concrete Django model, not {model!r}")
    plan = _Plan(model, {"category": category, "fields": fields, "exclude": exclude,
                         "target_name": target_name})
    first = model not in _PLANS
    _PLANS[model] = plan
    if not first:
        return model
    uid = f"audit_instrument:{meta.label}"
    pre_save.connect(_pre_save, sender=model, weak=False, dispatch_uid=uid)
    post_save.connect(_post_save, sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(_post_delete, sender=model, weak=False, dispatch_uid=uid)
    for field in meta.many_to_many:
        lazy_related_operation(_connect_through, model, field.remote_field.through,
                               name=field.name)
    return model


def _connect_through(model: type, through: type, *, name: str) -> None:
    _THROUGH[through] = (_PLANS[model], name)
    m2m_changed.connect(_m2m_changed, sender=through, weak=False,
                        dispatch_uid=f"audit_instrument:{through._meta.label}")  # type: ignore[attr-defined]


# -- model signals --------------------------------------------------------------------------------
def _pre_save(sender: type, instance: Any, using: str, update_fields: Any = None,
              **kwargs: Any) -> None:
    """Read the row as stored, before the save changes it."""
    plan = _PLANS.get(sender)
    if plan is None or instance.pk is None or not capturing():
        return
    _BEFORE[instance._state] = plan.read_one(using, instance.pk, plan.keys(update_fields))


def _post_save(sender: type, instance: Any, created: bool, using: str, update_fields: Any = None,
               **kwargs: Any) -> None:
    before = _BEFORE.pop(instance._state, None)
    plan = _PLANS.get(sender)
    if plan is None or not capturing():
        return
    if created:
        _hold(using, plan.events("create", instance, created_metadata(plan.values(instance))))
        return
    # no stored row was found before (or capture just started): old values unknown
    metadata = changed(before or {}, plan.values(instance, plan.keys(update_fields)))
    if metadata:
        _hold(using, plan.events("update", instance, metadata))


def _post_delete(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    plan = _PLANS.get(sender)
    if plan is not None and capturing():
        _hold(using, plan.events("delete", instance, deleted(plan.values(instance))))


def _m2m_changed(sender: type, instance: Any, action: str, reverse: bool, model: type,
                 pk_set: set[Any] | None, using: str, **kwargs: Any) -> None:
    """``add``/``remove``/``clear`` of a many-to-many field of an audited model.

    ``clear`` names no ids, and ``remove`` names ids that may not be related:
    the ids really related are read in ``pre_clear``/``pre_remove``.
    """
    if action not in ("pre_remove", "pre_clear", "post_add", "post_remove", "post_clear"):
        return
    if not capturing():
        return
    plan, name = _THROUGH[sender]
    field = plan.model._meta.get_field(name)  # type: ignore[attr-defined]
    ours, theirs = field.m2m_field_name(), field.m2m_reverse_field_name()
    if reverse:  # instance is on the other side: the audited rows are the related ones
        ours, theirs = theirs, ours
    if action.startswith("pre_"):
        links = sender._base_manager.db_manager(using).filter(  # type: ignore[attr-defined]
            **{ours: instance.pk})
        if pk_set is not None:
            links = links.filter(**{f"{theirs}__in": pk_set})
        _M2M[instance._state] = set(links.values_list(theirs, flat=True))
        return
    ids = pk_set if action == "post_add" else _M2M.pop(instance._state, set())
    if not ids:
        return
    key = name + ("_added" if action == "post_add" else "_removed")
    events: list[AuditEvent] = []
    if not reverse:
        events = plan.events("update", instance, {}, [(key, id_texts(ids))])
    else:
        manager = plan.model._base_manager.db_manager(using)  # type: ignore[attr-defined]
        for start in range(0, len(ordered := sorted(ids, key=str)), _CHUNK):
            for owner in manager.filter(pk__in=ordered[start:start + _CHUNK]):
                events.extend(plan.events("update", owner, {}, [(key, [str(instance.pk)])]))
    _hold(using, events)


# -- statements Django sends no signals for -------------------------------------------------------
class AuditedQuerySetMixin:
    """Records ``update()``, ``bulk_create()`` and ``bulk_update()`` of audited models.

    Mix it into a custom QuerySet (``class MyQuerySet(AuditedQuerySetMixin,
    models.QuerySet)``); for models that are not audited it changes nothing.
    ``delete()`` needs nothing: Django sends ``post_delete`` for each row.
    """

    model: Any
    db: str

    def _audit_plan(self) -> _Plan | None:
        plan = _PLANS.get(self.model)
        if plan is None or _recording.get() or not capturing():
            return None
        return plan

    def update(self, **kwargs: Any) -> int:
        plan = self._audit_plan()
        keys = plan.keys(kwargs) if plan is not None else []
        if plan is None or not keys:
            return super().update(**kwargs)  # type: ignore[misc,no-any-return]
        using = self.db
        with transaction.atomic(using=using, savepoint=False):
            pks = list(self.values_list(plan.pk, flat=True))  # type: ignore[attr-defined]
            before = plan.read(using, pks, keys, lock=True)
            count: int = super().update(**kwargs)  # type: ignore[misc]
            events: list[AuditEvent] = []
            manager = plan.model._base_manager.db_manager(using)  # type: ignore[attr-defined]
            for start in range(0, len(pks), _CHUNK):
                for obj in manager.filter(pk__in=pks[start:start + _CHUNK]):
                    metadata = changed(before.get(obj.pk, {}), plan.values(obj, keys))
                    if metadata:
                        events.extend(plan.events("update", obj, metadata))
            _hold(using, events)
        return count

    def bulk_update(self, objs: Iterable[Any], fields: Sequence[str],
                    batch_size: int | None = None) -> int:
        plan = self._audit_plan()
        keys = plan.keys(fields) if plan is not None else []
        if plan is None or not keys:
            return super().bulk_update(objs, fields, batch_size)  # type: ignore[misc,no-any-return]
        objs = list(objs)
        using = self.db
        with transaction.atomic(using=using, savepoint=False):
            before = plan.read(using, [obj.pk for obj in objs], keys, lock=True)
            token = _recording.set(True)  # Django's bulk_update runs update(): not twice
            try:
                count: int = super().bulk_update(objs, fields, batch_size)  # type: ignore[misc]
            finally:
                _recording.reset(token)
            events: list[AuditEvent] = []
            for obj in objs:
                metadata = changed(before.get(obj.pk, {}), plan.values(obj, keys))
                if metadata:
                    events.extend(plan.events("update", obj, metadata))
            _hold(using, events)
        return count

    def bulk_create(
        self,
        objs: Iterable[Any],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Sequence[str] | None = None,
        unique_fields: Sequence[str] | None = None,
    ) -> list[Any]:
        plan = self._audit_plan()
        made: list[Any] = super().bulk_create(  # type: ignore[misc]
            objs, batch_size=batch_size, ignore_conflicts=ignore_conflicts,
            update_conflicts=update_conflicts, update_fields=update_fields,
            unique_fields=unique_fields,
        )
        if plan is None:
            return made
        name = plan.model.__name__
        if ignore_conflicts or update_conflicts:
            stats.note_failure(
                f"bulk_create of {plan.audit.category} with conflicts",
                f"{name}.objects.bulk_create(ignore_conflicts/update_conflicts) is not "
                f"recorded: it cannot tell new rows from existing ones",
            )
            return made
        events: list[AuditEvent] = []
        for obj in made:
            if obj.pk is None:
                stats.note_failure(
                    f"bulk_create of {plan.audit.category} without primary keys",
                    f"{name}.objects.bulk_create() is not recorded on a database that does not "
                    f"return the new primary keys",
                )
                return made
            events.extend(plan.events("create", obj, created_metadata(plan.values(obj))))
        _hold(self.db, events)
        return made


class AuditedQuerySet(AuditedQuerySetMixin, models.QuerySet):  # type: ignore[misc]
    """A QuerySet recording ``update()``, ``bulk_create()`` and ``bulk_update()``:
    ``objects = AuditedQuerySet.as_manager()``."""


AuditedManager = models.Manager.from_queryset(AuditedQuerySet)
"""A manager over :class:`AuditedQuerySet`: ``objects = AuditedManager()``."""


@checks.register()  # type: ignore[untyped-decorator]
def check_managers(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``audit_instrument.W001``: an audited model whose default manager would not record
    ``update()``, ``bulk_create()`` or ``bulk_update()``."""
    found = []
    for model in _PLANS:
        queryset = model._default_manager._queryset_class  # type: ignore[attr-defined]
        if not issubclass(queryset, AuditedQuerySetMixin):
            found.append(checks.Warning(
                f"{model.__name__} is audited, but {model.__name__}._default_manager does not "
                f"record update(), bulk_create() or bulk_update()",
                hint="objects = AuditedQuerySet.as_manager() (or mix AuditedQuerySetMixin "
                     "into its QuerySet)",
                obj=model,
                id="audit_instrument.W001",
            ))
    return found

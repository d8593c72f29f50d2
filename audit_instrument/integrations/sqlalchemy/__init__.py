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
savepoint (``begin_nested()``) drops those of the work it undid. Inside
``store.in_transaction(session)`` (a PostgreSQL store, the session's own
connection) they are written in the transaction as the change is flushed,
and commit or roll back with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, Session

from ...errors import AuditConfigError
from .._changes import TargetName
from ._plan import _FOUND, _PLANS, _Plan
from ._statements import _on_execute
from ._transactions import _after_commit, _after_transaction_end, _before_commit
from ._unit_of_work import _after_flush, _before_flush, _recorder

_installed = False


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
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_transaction_end", _after_transaction_end)
    _installed = True



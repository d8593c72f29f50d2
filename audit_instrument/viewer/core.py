""":class:`Viewer`: the web viewer's pages and API, independent of any web framework.

An adapter (WSGI, ASGI, Flask, Django, the standalone server) turns its
request into a :class:`ViewRequest`, calls the application's ``authorize``
with the framework's own request, and hands both to :meth:`Viewer.handle`,
which returns a :class:`ViewResponse`. Routes, below the viewer's root:

==========================  ===================================================
``GET /``                   the events, newest first: filters, chart, paging
``GET /event?id=KEY``       one event in full (by idempotency key)
``GET /chart.svg``          the activity chart of the current filters
``GET /api/events``         ``{"events": [<record>, ...], "next_cursor": ...}``
``GET /export.csv``         every event of the current filters, as CSV
``GET /export.jsonl``       the same as JSON lines
``GET /chain``              the hash chain's state (``POST /verify``: verify now)
``GET /viewer.css``         the stylesheet (and ``/favicon.svg``, the icon)
==========================  ===================================================

Filters (query parameters): ``actor``, ``action``, ``target``, ``group``
(ids), ``since`` (inclusive) and ``until`` (exclusive) as ISO dates or
times or ages (``7d``, ``12h``); ``limit`` and ``cursor`` for pages.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from .. import _stats
from ..errors import AuditConfigError, AuditValidationError
from ..event import AuditEvent
from ..store import ActivityCount, AuditStore
from ..store.query import make_filters
from . import _pages
from ._access import AllGroups, Scoped, groups_from
from ._assets import CSS, ICON
from ._chain import ChainStatus
from ._chart import draw
from ._html import Safe
from ._record import Reader, read_event, reader_from
from .export import csv_chunks, jsonl_chunks

__all__ = ["CSP", "ViewRequest", "ViewResponse", "Viewer"]

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""The Content-Security-Policy of every answer: no script at all, styles from the viewer only."""

_SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_AGE = re.compile(r"(\d{1,6})\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PAGE_LIMIT = 500
_API_LIMIT = 1000
_CHART_DAYS = 30
_ASSETS = {
    "/viewer.css": ("text/css; charset=utf-8", CSS.encode("utf-8")),
    "/favicon.svg": ("image/svg+xml", ICON.encode("utf-8")),
}


@dataclass(frozen=True, slots=True)
class ViewRequest:
    """A request as the viewer sees it.

    ``path`` is below the viewer's ``root`` (the path it is mounted at,
    ``""`` at the top): ``"/"``, ``"/event"``. ``query`` holds the first
    value of each parameter. ``host`` and ``origin`` are the ``Host`` and
    ``Origin`` headers (``origin`` ``None`` when absent), for the same-origin
    check of ``POST``; ``fetch_site`` is ``Sec-Fetch-Site``.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    root: str = ""
    client: str = ""
    user_agent: str = ""
    host: str = ""
    origin: str | None = None
    fetch_site: str | None = None


@dataclass(slots=True)
class ViewResponse:
    """An answer: status, headers, and the body (bytes, or pieces for a download)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterator[bytes]


class _UnrecordedError(Exception):
    """The read could not be recorded, so it is refused."""


def _response(status: int, content_type: str, body: bytes | Iterator[bytes],
              *extra: tuple[str, str]) -> ViewResponse:
    return ViewResponse(status, [("Content-Type", content_type), *_SECURITY_HEADERS, *extra], body)


def _html(status: int, page: Safe) -> ViewResponse:
    return _response(status, "text/html; charset=utf-8", page.encode("utf-8"))


def _json(status: int, value: object) -> ViewResponse:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _response(status, "application/json; charset=utf-8", body)


def _when(name: str, text: str | None) -> datetime | str | None:
    """A time filter: an age like ``7d`` becomes that long before now; ISO text is kept."""
    if not text:
        return None
    match = _AGE.fullmatch(text.strip())
    if match:
        amount, unit = match.groups()
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
        except OverflowError:
            raise AuditValidationError(name, "is too long an age", text) from None
    return text.strip()


class Viewer:
    """The audit log viewer over ``store``, for a framework adapter to serve.

    ``authorize(request)`` is mandatory: given the framework's own request,
    it returns the set of groups the caller may read, :data:`ALL_GROUPS`,
    or an empty set (403); raising :class:`PermissionError` is a 403 too.
    ``actor(request)`` optionally tells who is reading (a user object, a
    mapping with ``id``, an ``(id, name)`` tuple); without it the actor of
    the request's audit scope is used, and a read by nobody known is refused.
    ``record(event)`` receives each ``audit_log.view`` / ``audit_log.export``
    event (default: :func:`audit_instrument.emit`, to the configured
    senders); if it raises, the read is refused. ``group`` is the group of
    those events when neither the request nor the caller names one.
    ``stale_after`` is how old (seconds) the chain badge's last verify may be.
    """

    def __init__(
        self,
        store: AuditStore,
        *,
        authorize: Callable[..., Any],
        actor: Callable[..., Any] | None = None,
        record: Callable[[AuditEvent], object] | None = None,
        group: str = "audit_log",
        stale_after: float = 600.0,
    ) -> None:
        if not isinstance(store, AuditStore):
            raise AuditConfigError(f"the viewer needs an AuditStore, not {type(store).__name__}")
        if not callable(authorize):
            raise AuditConfigError(
                "authorize is required: a function(request) returning the set of groups the "
                "caller may read, or audit_instrument.viewer.ALL_GROUPS"
            )
        if actor is not None and not callable(actor):
            raise AuditConfigError("actor must be a function(request) returning who reads")
        if record is None:
            from ..signals import emit

            record = emit
        make_filters(group=group)
        self.store = store
        self.authorize = authorize
        self.actor = actor
        self._record = record
        self.group = group
        self.chain = ChainStatus(store, stale_after=stale_after)
        self._routes: dict[str, Callable[[ViewRequest, Scoped, Reader], ViewResponse]] = {
            "/": self._list, "/event": self._event, "/chart.svg": self._chart_svg,
            "/api/events": self._api, "/export.csv": self._export, "/export.jsonl": self._export,
            "/chain": self._chain_page,
        }

    # -- entry ---------------------------------------------------------------------------------

    def ask(self, request: object) -> tuple[object, object]:
        """``authorize(request)`` and ``actor(request)`` for a synchronous framework.

        An exception is returned, not raised, for :meth:`handle` to answer.
        """
        try:
            answer = self.authorize(request)
        except Exception as error:
            return error, None
        if inspect.isawaitable(answer):
            close = getattr(answer, "close", None)
            if close is not None:
                close()
            return AuditConfigError(
                "authorize() returned an awaitable: this framework calls it synchronously"
            ), None
        try:
            actor = None if self.actor is None else self.actor(request)
        except Exception as error:
            return error, None
        return answer, actor

    async def ask_async(self, request: object) -> tuple[object, object]:
        """:meth:`ask` for an async framework: ``authorize`` and ``actor`` may be async."""
        try:
            answer = self.authorize(request)
            if inspect.isawaitable(answer):
                answer = await answer
            actor = None if self.actor is None else self.actor(request)
            if inspect.isawaitable(actor):
                actor = await actor
        except Exception as error:
            return error, None
        return answer, actor

    @staticmethod
    def needs_authorization(path: str) -> bool:
        """Whether ``path`` reads anything (everything but the stylesheet and icon)."""
        return path not in _ASSETS

    def handle(
        self, request: ViewRequest, answer: object, actor: object = None
    ) -> ViewResponse:
        """Answer ``request``; ``answer`` is what ``authorize`` returned (or raised)."""
        root = request.root
        asset = _ASSETS.get(request.path)
        if asset is not None:
            return _response(200, *asset)
        if isinstance(answer, PermissionError):
            answer = frozenset()
        if isinstance(answer, BaseException):
            _stats.note_failure("viewer authorize", f"authorize() raised {answer!r}", error=answer)
            return _html(500, _pages.error_page(500, "authorization failed", root))
        try:
            groups = groups_from(answer)
        except AuditConfigError as error:
            _stats.note_failure("viewer authorize", str(error), error=error)
            return _html(500, _pages.error_page(500, "authorization failed", root))
        if not groups:
            return _html(403, _pages.error_page(403, "you may not read this audit log", root))
        reader = reader_from(actor, location=request.client, user_agent=request.user_agent)
        if reader is None:
            return _html(403, _pages.error_page(
                403, "who is reading could not be told, and every read of the audit log is "
                "recorded: give the viewer actor=, or mount it inside audit_instrument's "
                "middleware", root))
        scoped = Scoped(self.store, groups)
        if request.path == "/verify":
            return self._verify(request, scoped)
        route = self._routes.get(request.path)
        if route is None:
            return _html(404, _pages.error_page(404, "no such page", root))
        if request.method != "GET":
            return _html(405, _pages.error_page(405, "only GET here", root))
        try:
            return route(request, scoped, reader)
        except _UnrecordedError:
            return _html(503, _pages.error_page(
                503, "this read could not be recorded in the audit log, so it was refused; "
                "try again", root))

    # -- shared pieces -------------------------------------------------------------------------

    def _filters(self, query: Mapping[str, str]) -> tuple[dict[str, str | None], dict[str, Any]]:
        """The filters as given (for the form and links) and as the store takes them."""
        shown = {name: (query.get(name) or "").strip() or None for name in _pages.FILTERS}
        wanted: dict[str, Any] = {name: shown[name] for name in ("actor", "action", "target",
                                                                   "group")}
        wanted["since"] = _when("since", shown["since"])
        wanted["until"] = _when("until", shown["until"])
        checked = make_filters(**wanted)  # raises AuditValidationError naming the filter
        wanted["since"], wanted["until"] = checked.since, checked.until
        return shown, wanted

    @staticmethod
    def _limit(query: Mapping[str, str], most: int) -> int:
        text = query.get("limit") or "50"
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise AuditValidationError("limit", f"must be a whole number from 1 to {most}", text)
        return int(text)

    def _record_read(
        self, action: str, reader: Reader, scoped: Scoped, filters: Mapping[str, Any],
        *, group: str | None = None, **metadata: str | int,
    ) -> None:
        group = group or filters.get("group")
        if not (group and scoped.allows(group)):
            own = scoped.groups
            if not isinstance(own, AllGroups) and len(own) == 1:
                group = next(iter(own))
            else:
                group = reader.group or self.group
        query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
        try:
            event = read_event(action, reader, group=group,
                               metadata={**({"filters": query} if query else {}), **metadata})
            self._record(event)
        except Exception as error:
            _stats.note_failure("viewer record", f"a read could not be recorded: {error!r}",
                                error=error)
            raise _UnrecordedError from error

    def _badge(self, scoped: Scoped, root: str) -> Safe:
        return _pages.chain_badge(self.chain.view(), root, everything=scoped.everything)

    def _activity(self, scoped: Scoped, wanted: Mapping[str, Any]) -> tuple[Safe, str]:
        """:meth:`_chart` of the filters, or a note why there is none."""
        try:
            return self._chart(scoped, wanted)
        except OverflowError:  # a range at the ends of the calendar
            return Safe(""), "No chart: the time range reaches past the years 1 to 9999."

    def _chart(self, scoped: Scoped, wanted: Mapping[str, Any]) -> tuple[Safe, str]:
        """The chart of the filters (group, action, time; not actor or target) and its note.

        Without ``since`` it covers the last 30 days, or less where the events begin
        later (at least a day); spans up to 3 days are drawn by the hour, longer ones
        by the day (at most 366).
        """
        until = wanted["until"]
        if until is not None:  # exclusive: the last instant in range is just before it
            end = datetime.fromisoformat(until) - timedelta(microseconds=1)
        else:
            newest = scoped.newest({"group": wanted["group"], "action": wanted["action"]})
            end = newest.event.occurred_at if newest else datetime.now(UTC)
        since = wanted["since"]
        start = datetime.fromisoformat(since) if since else end - timedelta(days=_CHART_DAYS)
        unit, first, buckets, counts = self._counts(scoped, wanted, min(start, end), end)
        if since is None and counts and counts[0].bucket > first:
            start = min(counts[0].bucket, end - timedelta(days=1))
            unit, first, buckets, counts = self._counts(scoped, wanted, start, end)
        span = (f"{first:%Y-%m-%d} to {end:%Y-%m-%d}" if unit == "day"
                else f"{first:%Y-%m-%d %H:00} to {end:%Y-%m-%d %H:%M}")
        title = f"Events per {unit} by action, {span} (UTC)"
        note = title
        if wanted["actor"] or wanted["target"]:
            note += "; the chart counts every actor and target"
        if counts is None:
            counts = []
            note = ("This store keeps no activity counts yet (an older schema opened "
                    "read-only): open it for writing once to upgrade it.")
        return draw(counts, unit=unit, first=first, buckets=buckets, title=title), note

    @staticmethod
    def _counts(
        scoped: Scoped, wanted: Mapping[str, Any], start: datetime, end: datetime
    ) -> tuple[str, datetime, int, list[ActivityCount] | None]:
        """The unit, first bucket, number of buckets and counts from ``start`` to ``end``."""
        unit = "hour" if end - start <= timedelta(days=3) else "day"
        if unit == "day" and end - start > timedelta(days=366):
            start = end - timedelta(days=366)
        if unit == "hour":
            first = start.replace(minute=0, second=0, microsecond=0)
            buckets = int((end - first) / timedelta(hours=1)) + 1
            last = first + timedelta(hours=buckets)
        else:
            first = start.replace(hour=0, minute=0, second=0, microsecond=0)
            buckets = (end.date() - first.date()).days + 1
            last = first + timedelta(days=buckets)
        counts = scoped.activity(unit=unit, since=first, until=last, group=wanted["group"],
                                 action=wanted["action"])
        return unit, first, buckets, counts

    # -- routes --------------------------------------------------------------------------------

    def _list(self, request: ViewRequest, scoped: Scoped, reader: Reader) -> ViewResponse:
        query = request.query
        shown = {name: (query.get(name) or "").strip() or None for name in _pages.FILTERS}
        cursor = query.get("cursor") or None
        limit = 50
        error = ""
        items: list[Any] = []
        next_cursor = None
        chart, note = Safe(""), ""
        try:
            shown, wanted = self._filters(query)
            limit = self._limit(query, _PAGE_LIMIT)
            items, next_cursor = scoped.page(wanted, limit, cursor)
            chart, note = self._activity(scoped, wanted)
        except AuditValidationError as problem:
            error, wanted = str(problem), {}
        self._record_read("audit_log.view", reader, scoped, wanted, page="list",
                          events=len(items))
        groups = None if isinstance(scoped.groups, AllGroups) else sorted(scoped.groups)
        view = _pages.ListView(
            request.root, shown, items, next_cursor, cursor, limit, groups, scoped.everything,
            chart, note, error,
        )
        return _html(400 if error else 200, _pages.list_page(view, self._badge(scoped,
                                                                                request.root)))

    def _event(self, request: ViewRequest, scoped: Scoped, reader: Reader) -> ViewResponse:
        key = request.query.get("id") or ""
        item = scoped.get(key) if key else None
        if item is None:  # missing and not theirs look the same
            return _html(404, _pages.error_page(404, "no such event", request.root))
        self._record_read("audit_log.view", reader, scoped, {}, group=item.event.group,
                          page="event", event=key)
        page = _pages.event_page(item, request.root, self._badge(scoped, request.root),
                                 everything=scoped.everything)
        return _html(200, page)

    def _chart_svg(self, request: ViewRequest, scoped: Scoped, reader: Reader) -> ViewResponse:
        try:
            _, wanted = self._filters(request.query)
        except AuditValidationError as problem:
            return _response(400, "text/plain; charset=utf-8", str(problem).encode("utf-8"))
        chart, _ = self._activity(scoped, wanted)
        self._record_read("audit_log.view", reader, scoped, wanted, page="chart")
        return _response(200, "image/svg+xml", chart.encode("utf-8"))

    def _api(self, request: ViewRequest, scoped: Scoped, reader: Reader) -> ViewResponse:
        try:
            _, wanted = self._filters(request.query)
            limit = self._limit(request.query, _API_LIMIT)
            items, next_cursor = scoped.page(wanted, limit, request.query.get("cursor") or None)
        except AuditValidationError as problem:
            return _json(400, {"error": {"field": problem.field, "message": str(problem)}})
        self._record_read("audit_log.view", reader, scoped, wanted, page="api",
                          events=len(items))
        return _json(200, {"events": [item.event.to_record() for item in items],
                           "next_cursor": next_cursor})

    def _export(self, request: ViewRequest, scoped: Scoped, reader: Reader) -> ViewResponse:
        fmt = "csv" if request.path.endswith(".csv") else "jsonl"
        try:
            _, wanted = self._filters(request.query)
        except AuditValidationError as problem:
            return _response(400, "text/plain; charset=utf-8", str(problem).encode("utf-8"))
        self._record_read("audit_log.export", reader, scoped, wanted, format=fmt)
        rows = scoped.records(wanted)
        body = csv_chunks(rows) if fmt == "csv" else jsonl_chunks(rows)
        name = f"audit-log-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
        kind = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"
        return _response(200, kind, body,
                         ("Content-Disposition", f'attachment; filename="{name}"'))

    def _chain_page(self, request: ViewRequest, scoped: Scoped, reader: Reader) -> ViewResponse:
        view = self.chain.view()
        badge = _pages.chain_badge(view, request.root, everything=scoped.everything)
        return _html(200, _pages.chain_page(view, request.root, badge,
                                            everything=scoped.everything))

    def _verify(self, request: ViewRequest, scoped: Scoped) -> ViewResponse:
        """``POST /verify``: start a verify now (callers who see every group, same origin)."""
        root = request.root
        if request.method != "POST":
            return _html(405, _pages.error_page(405, "use the Verify now button", root))
        if not scoped.everything:
            return _html(403, _pages.error_page(403, "only readers of every group may", root))
        same_site = request.fetch_site in (None, "same-origin")
        origin_host = urlsplit(request.origin).netloc if request.origin else request.host
        if not same_site or origin_host.lower() != request.host.lower():
            return _html(403, _pages.error_page(403, "cross-site request refused", root))
        self.chain.start()
        return _response(303, "text/plain; charset=utf-8", b"", ("Location", f"{root}/chain"))

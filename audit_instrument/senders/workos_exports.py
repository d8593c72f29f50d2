"""WorkOS audit-log exports: create one, read its state, download its CSV.

The requests are those of the official ``workos`` SDK's
``client.audit_logs.create_export`` / ``get_export``: ``POST
/audit_logs/exports`` with a JSON body (``None`` filters left out, datetimes
as ``2026-01-31T12:00:00.000Z``) and ``GET /audit_logs/exports/{id}``, with
the API key as a bearer token; 429, 5xx and network errors are retried a few
times with backoff.

A ready export has a presigned URL on another host (file storage, valid
about 10 minutes). The CSV is fetched from it **without** the API key — the
signature in the URL is the credential — through :func:`~..delivery.http.route`'s
rule (https, or plain http to loopback), written to a temporary file beside
the target and renamed into place when complete, so a failed download leaves
nothing half-written. The URL's query (its signature) is never shown in a
repr or an error.

Used through :class:`~audit_instrument.WorkOS`:

>>> export = workos.create_export("org_1", "2026-01-01T00:00:00Z",
...                               "2026-02-01T00:00:00Z")              # doctest: +SKIP
>>> workos.download_export(export.id, "audit-january.csv")            # doctest: +SKIP
PosixPath('audit-january.csv')
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ..delivery.http import Answer, route
from ..delivery.retry import RetryPolicy, is_retryable_status
from ..errors import AuditConfigError, AuditError, AuditValidationError
from ..rules import as_utc, check_text, parse_timestamp

__all__ = ["AuditLogExport", "ExportError", "WorkOSExports"]

_ATTEMPTS = 4  # one try and three retries, as the official SDK
_CHUNK = 64 * 1024
_STATES = ("pending", "ready", "error", "expired")


class ExportError(AuditError):
    """An export could not be created, read or downloaded.

    ``status`` is the HTTP status that said so (``None`` for network errors,
    timeouts and exports in the ``error`` or ``expired`` state).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _without_query(url: str) -> str:
    return url.split("?", 1)[0] + ("?…" if "?" in url else "")


@dataclass(frozen=True, slots=True)
class AuditLogExport:
    """An audit-log export as WorkOS describes it (the official SDK's ``AuditLogExport``).

    ``state`` is ``"pending"``, ``"ready"``, ``"error"`` or ``"expired"``;
    ``url`` (presigned, short-lived) is set once it is ready. The repr
    leaves out the URL's signature.
    """

    id: str
    state: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    url: str | None = field(default=None, repr=False)
    object: str = "audit_log_export"

    @property
    def ready(self) -> bool:
        return self.state == "ready" and bool(self.url)

    @classmethod
    def from_dict(cls, data: Any) -> AuditLogExport:
        """Read WorkOS's JSON answer; :class:`ExportError` if it is not an export."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) \
                or not isinstance(data.get("state"), str):
            raise ExportError("WorkOS answered with something that is not an audit-log export")
        url = data.get("url")
        return cls(id=data["id"], state=data["state"], created_at=_when(data.get("created_at")),
                   updated_at=_when(data.get("updated_at")),
                   url=url if isinstance(url, str) and url else None,
                   object=str(data.get("object", "audit_log_export")))

    def __repr__(self) -> str:
        url = "" if self.url is None else f", url={_without_query(self.url)!r}"
        return f"AuditLogExport(id={self.id!r}, state={self.state!r}{url})"


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except (ValueError, AuditValidationError):
        return None


def _range_value(name: str, value: object) -> tuple[str, datetime]:
    """What is sent for a range bound (as the SDK sends it), and the time it means."""
    when = parse_timestamp(name, value)
    if isinstance(value, datetime):  # the SDK's form: UTC, milliseconds, Z
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z"), when
    assert isinstance(value, str)
    return value, when


def _names(name: str, value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise AuditValidationError(name, "must be a list of strings", value)
    return [check_text(f"{name}[{index}]", item, required=True)
            for index, item in enumerate(value)]


def export_request(organization_id: object, range_start: object, range_end: object, *,
                   actions: object = None, actor_names: object = None, actor_ids: object = None,
                   targets: object = None) -> dict[str, Any]:
    """The JSON body of ``POST /audit_logs/exports``, checked (``AuditValidationError``)."""
    start, start_at = _range_value("range_start", range_start)
    end, end_at = _range_value("range_end", range_end)
    if end_at <= start_at:
        raise AuditValidationError("range_end", "must be later than range_start")
    body: dict[str, Any] = {
        "organization_id": check_text("organization_id", organization_id, required=True),
        "range_start": start,
        "range_end": end,
    }
    for name, value in (("actions", actions), ("actor_names", actor_names),
                        ("actor_ids", actor_ids), ("targets", targets)):
        names = _names(name, value)
        if names is not None:
            body[name] = names
    return body


class WorkOSExports:
    """The export calls of one :class:`~audit_instrument.WorkOS` sender (its key and URL)."""

    def __init__(self, key: Callable[[], str], base_url: str, *, timeout: float,
                 retry: RetryPolicy, user_agent: str, error_message: Callable[[Answer], str],
                 transport: httpx.BaseTransport | None = None) -> None:
        self._key = key
        self._route = route(base_url)
        self._timeout = timeout
        self._retry = retry
        self._user_agent = user_agent
        self._error_message = error_message
        self._transport = transport

    # -- the API host --------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        # trust_env=False: no proxy or .netrc credentials from the environment beyond
        # what route() decided; SSL_CERT_FILE/DIR still read for verification.
        return httpx.Client(
            transport=self._transport, timeout=self._timeout, trust_env=False,
            proxy=None if self._transport is not None else self._route.proxy,
            verify=httpx.create_ssl_context(trust_env=True)
            if self._route.base_url.startswith("https:") else True)

    def _call(self, client: httpx.Client, method: str, path: str,
              body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": "Bearer " + self._key(), "User-Agent": self._user_agent,
                   "Accept": "application/json"}
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        if method == "POST":  # the same key on every retry: one export, however many tries
            headers["Idempotency-Key"] = str(uuid.uuid4())
        what = f"{method} {path}"
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                response = client.request(method, self._route.base_url + path, content=content,
                                          headers=headers)
            except httpx.TransportError as exc:
                if attempt == _ATTEMPTS:
                    raise ExportError(f"{what}: no answer from {self._route.base_url} "
                                      f"({type(exc).__name__})") from None
                time.sleep(self._retry.backoff(attempt))
                continue
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return response.json()
                except ValueError:
                    raise ExportError(f"{what}: the answer is not JSON", status=status) from None
            if is_retryable_status(status) and attempt < _ATTEMPTS:
                wait = self._retry.server_wait(response.headers.get("retry-after"))
                time.sleep(wait if wait is not None else self._retry.backoff(attempt))
                continue
            answer = Answer(status, {k.lower(): v for k, v in response.headers.items()},
                            response.content)
            raise ExportError(f"{what}: HTTP {status}: {self._error_message(answer)}",
                              status=status)
        raise AssertionError("unreachable")  # pragma: no cover

    def create(self, organization_id: str, range_start: datetime | str,
               range_end: datetime | str, **filters: Sequence[str] | None) -> AuditLogExport:
        body = export_request(organization_id, range_start, range_end, **filters)
        with self._client() as client:
            return AuditLogExport.from_dict(self._call(client, "POST", "/audit_logs/exports",
                                                       body))

    def get(self, audit_log_export_id: str) -> AuditLogExport:
        with self._client() as client:
            return self._get(client, audit_log_export_id)

    def _get(self, client: httpx.Client, export_id: str) -> AuditLogExport:
        check_text("audit_log_export_id", export_id, required=True)
        if "/" in export_id or "?" in export_id or "#" in export_id:
            raise AuditValidationError("audit_log_export_id", "must not contain / ? or #",
                                       export_id)
        return AuditLogExport.from_dict(self._call(client, "GET",
                                                   f"/audit_logs/exports/{export_id}"))

    # -- waiting and downloading ---------------------------------------------------------------
    def download(self, audit_log_export_id: str, path: str | os.PathLike[str], *,
                 timeout: float = 600.0, poll_interval: float = 1.0,
                 progress: bool | None = None) -> Path:
        target = Path(path)
        if target.is_dir():
            raise AuditConfigError(f"{target}: is a directory; give the CSV file's path")
        deadline = time.monotonic() + timeout
        with self._client() as client:
            for renewed in (False, True):
                export = self._ready(client, audit_log_export_id, deadline, poll_interval)
                try:
                    self._fetch(export, target, progress)
                    return target
                except _ExpiredError as refused:  # the URL lives ~10 minutes: reading the
                    if renewed:               # export again gives a new one
                        raise ExportError(f"export {export.id}: the download URL was refused "
                                          f"(HTTP {refused.status})",
                                          status=refused.status) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _ready(self, client: httpx.Client, export_id: str, deadline: float,
               poll_interval: float) -> AuditLogExport:
        """The export once it is ready (polling with growing waits until ``deadline``)."""
        wait = poll_interval
        while True:
            export = self._get(client, export_id)
            if export.ready:
                return export
            if export.state != "pending":
                raise ExportError(f"export {export_id} is {export.state!r}: nothing to download"
                                  + (" (create a new one)" if export.state in _STATES else ""))
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExportError(f"export {export_id} is still pending: gave up waiting")
            time.sleep(min(wait, left))
            wait = min(wait * 1.5, 10.0)

    def _fetch(self, export: AuditLogExport, target: Path, progress: bool | None) -> None:
        from .._progress import Progress

        assert export.url is not None
        try:
            where = route(export.url)
        except AuditConfigError:
            raise ExportError(f"export {export.id}: its download URL is refused (https only, "
                              f"or plain http to a loopback address)") from None
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            # Its own client: nothing of the API host's (no key, no custom transport).
            with httpx.Client(proxy=where.proxy, trust_env=False, timeout=self._timeout,
                              follow_redirects=False,
                              verify=httpx.create_ssl_context(trust_env=True)
                              if export.url.startswith("https:") else True) as client, \
                    client.stream("GET", export.url,
                                  headers={"User-Agent": self._user_agent}) as response:
                if response.status_code in (401, 403):
                    raise _ExpiredError(response.status_code)
                if response.status_code != 200:
                    raise ExportError(f"export {export.id}: download answered HTTP "
                                      f"{response.status_code}", status=response.status_code)
                size = response.headers.get("content-length")
                total = int(size) if size and size.isdigit() else None
                with Progress(f"{export.id} (bytes)", total, enabled=progress) as bar, \
                        open(partial, "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                        bar.advance(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(partial, target)
        except httpx.TransportError as exc:
            raise ExportError(f"export {export.id}: download failed "
                              f"({type(exc).__name__})") from None
        finally:
            partial.unlink(missing_ok=True)


class _ExpiredError(Exception):
    """The presigned URL was refused (expired): read the export again for a new one."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

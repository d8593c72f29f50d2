"""A two-tenant store with hostile values, and who may read what, for the viewer tests.

``organization_1`` is alice's, ``organization_2`` bob's; the admin reads
both. Every event of organization 2 carries the marker ``ORG2SECRET`` (in
its action, target and metadata) so a test can look for it anywhere an
answer might leak it. One event of organization 1 holds hostile text in
every field a person can fill: markup, quote-breaking strings, spreadsheet
formulas.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from audit_instrument import AuditEvent, Target
from audit_instrument.store import AuditStore
from audit_instrument.viewer import ALL_GROUPS

from .events import T0

__all__ = [
    "HOSTILE",
    "HOSTILE_ACTION",
    "MARKER",
    "ORG1",
    "ORG2",
    "groups_of",
    "hostile_event",
    "tenant_store",
]

ORG1, ORG2 = "organization_1", "organization_2"
MARKER = "ORG2SECRET"

HOSTILE: dict[str, Any] = {
    "actor_name": '<script>alert("actor")</script>',
    "actor_id": '"><img src=x onerror=alert(1)>',
    "target_name": "'; alert('target'); '",
    "target_id": "</td><script>alert(2)</script>",
    "location": "=HYPERLINK(\"http://evil.example\",\"click\")",
    "user_agent": "+cmd|' /C calc'!A0",
    "metadata": {
        "note": "<b onmouseover=alert(3)>bold</b>",
        "title_was": "\"double\" & 'single' </textarea>",
        "title": "@SUM(1+1)<script>alert(4)</script>",
        "amount": "-2+3",
    },
}


def hostile_event(i: int = 0) -> AuditEvent:
    """An event of organization 1 with hostile text everywhere."""
    return AuditEvent(
        group=ORG1, action="document.update", action_type="U",
        occurred_at=T0 + timedelta(minutes=1000 + i), idempotency_key=f"hostile-{i}",
        targets=[Target(HOSTILE["target_id"], HOSTILE["target_name"]),
                 Target("second<i>", "'\"><svg onload=alert(5)>")],
        **{k: v for k, v in HOSTILE.items() if not k.startswith("target")},
    )


def _event(i: int, group: str) -> AuditEvent:
    mine = group == ORG1
    who = "alice" if mine else "bob"
    return AuditEvent(
        group=group,
        action="document.update" if mine else f"secret.{MARKER.lower()}",
        action_type="U",
        actor_id=f"{who}_{i % 3}", actor_name=f"{who}{i % 3}@example.com",
        target_id=f"doc_{i}" if mine else f"{MARKER}_doc_{i}",
        target_name=f"Document {i}",
        location="203.0.113.5",
        occurred_at=T0 + timedelta(minutes=i),
        metadata={"title_was": f"draft {i}", "title": f"final {i}"} if mine
        else {"title_was": f"{MARKER} {i}", "title": f"{MARKER} {i}!"},
        idempotency_key=f"{group}-{i}",
    )


HOSTILE_ACTION = '"><script>alert(6)</script>.x'
"""An action name is ``category.name`` without spaces: markup fits."""


def tenant_store(path: Path, n: int = 40) -> AuditStore:
    """A writable store with ``n`` events of each organisation (interleaved in time) and two
    hostile events of organisation 1; the caller closes it."""
    store = AuditStore(path)
    for i in range(n):
        store.send(_event(2 * i, ORG1))
        store.send(_event(2 * i + 1, ORG2))
    store.send(hostile_event())
    store.send(AuditEvent(
        group=ORG1, action=HOSTILE_ACTION, action_type="C", actor_id="alice_0",
        actor_name="alice0@example.com", target_id="doc_0", target_name="Document 0",
        occurred_at=T0 + timedelta(minutes=1001), idempotency_key="hostile-action",
    ))
    return store


def groups_of(user: str | None) -> object:
    """What an application's ``authorize`` answers for ``user``."""
    return {"alice": {ORG1}, "bob": {ORG2}, "admin": ALL_GROUPS}.get(user or "", set())

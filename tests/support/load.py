"""Concurrent requests from many users, and the check that every event names the right one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from audit_instrument import AuditEvent

__all__ = ["assert_attributed", "hammer"]


def hammer(
    url: str,
    *,
    users: int = 30,
    requests: int = 300,
    headers: Callable[[int], Mapping[str, str]],
    method: str = "POST",
) -> dict[str, int]:
    """Send ``requests`` requests at once, round-robin from ``users`` users.

    Request ``i`` carries ``?rid=r<i>`` and ``headers(user)``. Every answer
    must be 2xx. Returns which user sent which request id.
    """
    sent = {f"r{i}": i % users for i in range(requests)}

    async def run() -> None:
        limits = httpx.Limits(max_connections=requests, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(rid: str, user: int) -> None:
                answer = await client.request(method, url, params={"rid": rid},
                                              headers=dict(headers(user)))
                assert answer.is_success, (answer.status_code, answer.text[:500])

            await asyncio.gather(*(one(rid, user) for rid, user in sent.items()))

    asyncio.run(run())
    return sent


def assert_attributed(
    events: Iterable[AuditEvent], sent: Mapping[str, int], actor_id: Callable[[int], str],
    *, group: Callable[[int], str] | None = None, per_request: int = 1,
) -> None:
    """Every request has exactly ``per_request`` events, each naming the user who sent it."""
    by_rid: dict[str, list[AuditEvent]] = {}
    for event in events:
        rid = event.metadata.get("rid")
        assert isinstance(rid, str), f"event without a request id: {event!r}"
        by_rid.setdefault(rid, []).append(event)
    lost = sorted(set(sent) - set(by_rid), key=lambda r: int(r[1:]))
    assert not lost, f"{len(lost)} of {len(sent)} requests recorded no event: {lost[:10]}"
    wrong: list[Any] = []
    for rid, found in by_rid.items():
        user = sent[rid]
        assert len(found) == per_request, (rid, [e.action for e in found])
        for event in found:
            if event.actor_id != actor_id(user) or (group and event.group != group(user)):
                wrong.append((rid, user, event.actor_id, event.group))
    assert not wrong, f"{len(wrong)} events misattributed: {wrong[:10]}"

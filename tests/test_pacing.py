"""Pacing: requests per second instead of a thread count, slowing down on 429, one budget per
shared outbox; and the fake server's rate limiter that these are measured against."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support.events import make_event
from support.workos import FAST
from support.workos_server import Recorded, WorkOSServer

from audit_instrument.delivery import Pacer, default_max_in_flight
from audit_instrument.delivery.pacing import PaceState, current_rate
from audit_instrument.senders.workos import DEFAULT_REQUESTS_PER_SECOND, WorkOS

MakeWorkOS = Callable[..., WorkOS]


def _busiest_second(requests: list[Recorded]) -> int:
    """The most requests that arrived within any one second."""
    times = sorted(r.at for r in requests)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


# -- the pacer on its own --------------------------------------------------------------------
def test_slots_are_one_interval_apart_after_a_burst() -> None:
    pacer = Pacer(100.0, burst=3)
    slots = [pacer.next_slot() for _ in range(8)]
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert all(gap == pytest.approx(0.01) for gap in gaps)
    assert slots[2] <= slots[0] + 0.03  # the first three may go at once: the burst


def test_a_429_cuts_the_rate_once_per_episode_and_pauses_everyone() -> None:
    pacer = Pacer(100.0, burst=1)
    sent_before = pacer.next_slot()
    pacer.throttled(2.0, sent_at=sent_before)
    assert pacer.rate == pytest.approx(70.0)
    assert pacer.next_slot() >= sent_before + 1.9  # everyone waits for Retry-After
    pacer.throttled(None, sent_at=sent_before)  # sent before the cut: no second cut
    assert pacer.rate == pytest.approx(70.0, rel=1e-3)  # (recovering from the cut already)


def test_the_rate_recovers_gradually_up_to_the_configured_one() -> None:
    state = PaceState(tat=0.0, rate=50.0, cut_at=1000.0)
    assert current_rate(state, 100.0, 1000.0) == 50.0
    assert current_rate(state, 100.0, 1010.0) == pytest.approx(50.0 * 1.05 ** 10)
    assert current_rate(state, 100.0, 1100.0) == 100.0
    assert current_rate(PaceState(0.0, 0.0, 0.0), 100.0, 5.0) == 100.0  # never cut


def test_a_stopped_engine_interrupts_a_wait_for_a_slot() -> None:
    pacer = Pacer(0.01, burst=1)  # one request per 100 s
    stopped = threading.Event()
    assert pacer.wait_turn(stopped)
    stopped.set()
    assert not pacer.wait_turn(stopped)  # returned at once, not after 100 s


def test_default_cap_never_limits_below_the_rate_at_50_ms() -> None:
    for rate in (DEFAULT_REQUESTS_PER_SECOND, 100.0, 1000.0):
        assert default_max_in_flight(rate) / 0.05 >= rate
    workos = WorkOS("sk_test", base_url="http://127.0.0.1:9")
    try:
        engine = workos.engine
        assert engine.requests_per_second == DEFAULT_REQUESTS_PER_SECOND
        assert engine.max_in_flight / 0.05 >= DEFAULT_REQUESTS_PER_SECOND
    finally:
        workos.shutdown(0)


# -- the fake server's limiter -----------------------------------------------------------------
def test_the_fake_server_limits_a_sliding_second_with_retry_after(server: WorkOSServer) -> None:
    server.rate_limit = 10
    statuses: list[tuple[int, str | None]] = []
    with httpx.Client(base_url=server.url) as client:
        for n in range(15):
            answer = client.post("/events", json=make_event(n).to_dict(),
                                 headers={"Authorization": "Bearer sk_test"})
            statuses.append((answer.status_code, answer.headers.get("retry-after")))
    assert [s for s, _ in statuses].count(201) == 10
    assert statuses[10:] == [(429, "1")] * 5
    assert server.rate_limited == 5


# -- pacing against the server -----------------------------------------------------------------
def test_paced_under_the_servers_limit_there_is_no_429(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    server.rate_limit = 50
    workos = make_workos(requests_per_second=30)
    handles = workos.create_events([make_event(n) for n in range(60)])
    assert workos.flush(30) == 0 and all(h.delivered for h in handles)
    assert server.rate_limited == 0
    # rate + burst, and room for the jitter of a server sharing this busy process
    assert _busiest_second(server.requests) <= 30 + 1 + 9


def test_over_the_servers_limit_the_rate_drops_and_nothing_is_lost(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    from audit_instrument.delivery import RetryPolicy

    server.rate_limit = 20
    workos = make_workos(requests_per_second=40,
                         retry=RetryPolicy(initial_backoff=0.01, max_backoff=1.0, deadline=60))
    handles = workos.create_events([make_event(n) for n in range(45)])
    assert workos.flush(60) == 0 and all(h.delivered for h in handles)
    assert server.rate_limited >= 1
    assert server.accepted_count == 45 and server.duplicates == 0
    rate = workos.engine.rate
    assert rate is not None and rate < 40


def test_requests_in_flight_follow_the_latency(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    server.latency = 0.05
    far = make_workos(requests_per_second=200)
    assert far.flush(0) == 0
    far.create_events([make_event(n) for n in range(60)])
    assert far.flush(30) == 0
    wanted = math.ceil(200 * 0.05)  # Little's law: rate x latency
    assert wanted <= far.engine.in_flight_target <= 3 * wanted
    server.latency = 0.0
    near = make_workos(requests_per_second=200, retry=FAST)
    near.create_events([make_event(n) for n in range(100, 140)])
    assert near.flush(30) == 0
    assert near.engine.in_flight_target < far.engine.in_flight_target


_SHARER = textwrap.dedent("""
    import sys
    from audit_instrument import AuditEvent
    from audit_instrument.senders.workos import WorkOS
    url, path, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    workos = WorkOS("sk_test", base_url=url, outbox=path, requests_per_second=20,
                    atexit_timeout=0)
    workos.create_events([AuditEvent(group="org_1", action="user.login", action_type="C",
                                     actor_name="a@b.c", actor_id="user_1", target_name="t",
                                     target_id=f"{tag}-{n}") for n in range(30)])
    print("LEFT", workos.flush(60), flush=True)
    workos.shutdown(5)
""")


@pytest.mark.slow
def test_processes_sharing_an_outbox_share_one_budget(server: WorkOSServer, tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    WorkOS("sk_test", base_url=server.url, outbox=path).shutdown(0)  # the file exists
    children = [subprocess.Popen([sys.executable, "-c", _SHARER, server.url, str(path), tag],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for tag in ("a", "b")]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert "LEFT 0" in out
    assert server.accepted_count == 60
    # Two budgets of 20/s would send the 60 in ~1.5 s, ~40 in a second; one shared
    # budget takes ~3 s, ~20 in a second (a loaded machine only slows it down, or
    # bunches a few arrivals at this in-process server).
    times = sorted(r.at for r in server.requests)
    assert times[-1] - times[0] >= 2.4
    assert _busiest_second(server.requests) <= 30

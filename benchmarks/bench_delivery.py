"""WorkOS delivery: this library beside the official ``workos`` SDK, same server, same run.

Run:  python benchmarks/bench_delivery.py [--events 3000] [--peer-venv DIR]

The loopback WorkOS stand-in (``tests/support/workos_server.py``) runs in its own
process. The official SDK (``workos`` from PyPI) is installed on first run
into its own virtualenv (default ``/tmp/audit_instrument-bench-peer``), never
into this project's environment, and driven there as its users do: a loop of
``client.audit_logs.create_event(...)``. Both sides send the Audit Logs API.

Printed: caller-side p50/p99 µs per ``create_event`` and delivery rate
(events/s until the server accepted all), with ratios from this run. As in
the SDK loop, the event object is built before the timed call; a second p50
row times ``create_event(seed_dict)``, validation and building included.
Targets: caller p50 <= 0.02x the SDK's; delivery rate >= 1.5x the SDK's.
A second table shows the measurement behind the engine's concurrency model:
httpx's sync pool from worker threads vs ``httpx.AsyncClient`` in one loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

from audit_instrument.event import AuditEvent
from audit_instrument.senders.workos import WorkOS

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "support" / "workos_server.py"
SEED = {
    "group": "org_1", "action": "tweet.update", "action_type": "U",
    "actor_name": "user@email.com", "actor_id": "user_1",
    "target_name": "user@email.com", "target_id": "tweet_5", "location": "1.1.1.1",
    "metadata": {"body_was": "What time is the event", "body": "What time is the event?"},
}

PEER_SCRIPT = textwrap.dedent("""
    import datetime, json, sys, time
    from workos import WorkOSClient
    from workos.audit_logs import (AuditLogEvent, AuditLogEventActor, AuditLogEventContext,
                                   AuditLogEventTarget)
    url, count = sys.argv[1], int(sys.argv[2])
    client = WorkOSClient(api_key="sk_test", client_id="client_bench", base_url=url)
    def event():
        return AuditLogEvent(
            action="tweet.update", occurred_at=datetime.datetime.now(datetime.timezone.utc),
            actor=AuditLogEventActor(id="user_1", type="user", name="user@email.com"),
            targets=[AuditLogEventTarget(id="tweet_5", type="tweet", name="user@email.com")],
            context=AuditLogEventContext(location="1.1.1.1"),
            metadata={"body_was": "What time is the event", "body": "What time is the event?"})
    client.audit_logs.create_event(organization_id="org_1", event=event())  # warm-up
    times = []
    start = time.perf_counter()
    for _ in range(count):
        built = event()
        t0 = time.perf_counter_ns()
        client.audit_logs.create_event(organization_id="org_1", event=built)
        times.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - start
    print(json.dumps({"times": times, "elapsed": elapsed}))
""")


class Server:
    """The test server in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = "http://127.0.0.1:" + self.proc.stdout.readline().split()[1]

    def call(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        with urllib.request.urlopen(self.url + path, data=data, timeout=30) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def _peer_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing the official workos SDK into {venv} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "workos>=5"], check=True)
    return python


def _percentiles(times_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(times_ns)
    return (ordered[len(ordered) // 2] / 1000.0, ordered[int(len(ordered) * 0.99)] / 1000.0)


def bench_ours(server: Server, count: int) -> dict[str, float]:
    server.call("/_reset", {})
    workos = WorkOS("sk_test", base_url=server.url, api="audit_logs")
    workos.create_event(SEED).result(30)  # warm-up: threads and connections up
    server.call("/_reset", {})
    times: list[int] = []
    dict_times: list[int] = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for n in range(count):
        if n % 2:  # like the SDK loop: the event object is built before the timed call
            built = AuditEvent.from_dict(SEED)
            t0 = clock()
            workos.create_event(built)
            times.append(clock() - t0)
        else:  # the seed's dict: validation and building included in the timed call
            t0 = clock()
            workos.create_event(SEED)
            dict_times.append(clock() - t0)
    left = workos.flush(120)
    elapsed = time.perf_counter() - start
    workos.shutdown(5)
    accepted = server.call("/_stats")["accepted"]
    assert left == 0 and accepted == count, (left, accepted)
    p50, p99 = _percentiles(times)
    dict_p50, _ = _percentiles(dict_times)
    return {"p50": p50, "p99": p99, "dict_p50": dict_p50, "rate": count / elapsed}


def bench_peer(server: Server, count: int, python: Path) -> dict[str, float]:
    server.call("/_reset", {})
    done = subprocess.run([str(python), "-c", PEER_SCRIPT, server.url, str(count)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    accepted = server.call("/_stats")["accepted"]
    assert accepted == count + 1, accepted
    p50, p99 = _percentiles(result["times"])
    return {"p50": p50, "p99": p99, "rate": count / result["elapsed"]}


def bench_models(server: Server, count: int, in_flight: int) -> tuple[float, float]:
    """Requests/s: sync httpx.Client shared by threads vs AsyncClient in one loop."""
    body = json.dumps({"organization_id": "org_1", "event": {
        "action": "a.b", "occurred_at": "2019-05-01T01:15:55.619Z", "actor": {},
        "targets": [], "context": {}}}).encode()
    headers = {"Authorization": "Bearer sk_test", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    url = server.url + "/audit_logs/events"

    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for n in range(count):
        work.put(n)
    client = httpx.Client(limits=limits)

    def worker() -> None:
        while True:
            try:
                n = work.get_nowait()
            except queue.Empty:
                return
            client.post(url, content=body, headers={**headers, "Idempotency-Key": f"s{n}"})

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sync_rate = count / (time.perf_counter() - start)
    client.close()

    async def run_async() -> float:
        async with httpx.AsyncClient(limits=limits) as aclient:
            gate = asyncio.Semaphore(in_flight)

            async def one(n: int) -> None:
                async with gate:
                    await aclient.post(url, content=body,
                                       headers={**headers, "Idempotency-Key": f"a{n}"})

            began = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(count)))
            return count / (time.perf_counter() - began)

    return sync_rate, asyncio.run(run_async())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many rounds")
    parser.add_argument("--peer-venv", type=Path,
                        default=Path(os.environ.get("BENCH_PEER_VENV",
                                                    "/tmp/audit_instrument-bench-peer")))
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="simulated server latency for the second scenario (0: skip)")
    parser.add_argument("--latency-events", type=int, default=300)
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args(argv)
    python = _peer_python(args.peer_venv)
    server = Server()
    try:
        ours: list[dict[str, float]] = []
        peer: list[dict[str, float]] = []
        for _ in range(args.rounds):  # interleaved, so machine noise hits both sides
            ours.append(bench_ours(server, args.events))
            peer.append(bench_peer(server, args.events, python))
        slow_ours: list[dict[str, float]] = []
        slow_peer: list[dict[str, float]] = []
        if args.latency_ms > 0:
            server.call("/_control", {"latency": args.latency_ms / 1000.0})
            for _ in range(args.rounds):
                slow_ours.append(bench_ours(server, args.latency_events))
                slow_peer.append(bench_peer(server, args.latency_events, python))
            server.call("/_control", {"latency": 0.0})
        models = [] if args.skip_models else [
            (n, *bench_models(server, 1500, n)) for n in (1, 4, 16, 64)]
    finally:
        server.stop()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"\nWorkOS delivery, {args.rounds} rounds (medians), server in its own process, "
          f"Audit Logs API\n")
    print(f"| {'':60} | {'audit_instrument':>16} | {'workos SDK':>10} | {'ratio':>7} | target |")
    print(f"| {'-' * 60} | {'-' * 16}:| {'-' * 10}:| {'-' * 7}:| ------ |")
    scenarios = [(f"loopback, {args.events} ev", ours, peer)]
    if slow_ours:
        scenarios.append((f"{args.latency_ms:g} ms latency, {args.latency_events} ev",
                          slow_ours, slow_peer))
    for scenario, mine, theirs in scenarios:
        for label, key, unit, target in (
            ("caller p50 create_event", "p50", "µs", "<= 0.02x"),
            ("caller p99 create_event", "p99", "µs", ""),
            ("caller p50, from the seed dict", "dict_p50", "µs", ""),
            ("delivery rate", "rate", "ev/s", ">= 1.5x"),
        ):
            a = med(mine, key)
            b = med(theirs, "p50" if key == "dict_p50" else key)
            name = f"{scenario}: {label} ({unit})"
            print(f"| {name:60} | {a:16.1f} | {b:10.1f} | {a / b:6.3f}x | {target:6} |")
    if models:
        print("\nConcurrency model (requests/s, 1500 requests, same server):\n")
        print("| in flight | sync httpx.Client, N threads | httpx.AsyncClient, 1 loop | ratio |")
        print("| ---:| ---:| ---:| ---:|")
        for n, sync_rate, async_rate in models:
            print(f"| {n} | {sync_rate:.0f} | {async_rate:.0f} | {sync_rate / async_rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

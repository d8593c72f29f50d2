"""WorkOS delivery: this library beside the official ``workos`` SDK, same server, same run.

Run:  python benchmarks/bench_delivery.py [--quick] [--peer-venv DIR]

The WorkOS stand-in (``tests/support/workos_server.py``) runs in its own
process, with the latency and rate limit each scenario sets. The official
SDK (``workos`` from PyPI) is installed on first run into its own virtualenv
(default ``/tmp/audit_instrument-bench-peer``), never into this project's
environment, and driven as its users do: ``client.audit_logs.create_event``
from 1 or 16 threads. Both sides send the Audit Logs API.

Scenarios (one run; the loopback one takes medians of ``--rounds``):

1. **Loopback** (no latency, no limit): caller p50/p99 per ``create_event``
   and delivery rate, ours unpaced (``requests_per_second=None``) against
   the SDK from one thread. Targets: caller p50 <= 0.02x, rate >= 1.5x.
   For reference, the HTTP stack alone: one thread POSTing through an
   ``httpx.HTTPTransport`` (no engine), its rate and CPU per request, on
   loopback and 50 ms away.
2. **50 ms latency, server limited to 100/s** (WorkOS's 6,000 per 60 s):
   ours with defaults against the SDK from 1 and 16 threads. Target: ours
   >= 90 events/s with 0 429s.
3. **50 ms latency, no limit, ``requests_per_second=1000``**: target >= 900
   events/s at <= 300 µs of client CPU per event (this process's CPU time,
   ``create_event`` from the dict included, divided by the events).
4. **50 ms latency, server limited to 50/s, ours configured for 100/s**:
   target 429s < 5 % of requests after the first 10 s, nothing lost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

from audit_instrument.delivery import RetryPolicy
from audit_instrument.event import AuditEvent
from audit_instrument.senders.workos import WorkOS

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "support" / "workos_server.py"
LEGACY_EVENT = {
    "group": "org_1", "action": "tweet.update", "action_type": "U",
    "actor_name": "user@email.com", "actor_id": "user_1",
    "target_name": "user@email.com", "target_id": "tweet_5", "location": "1.1.1.1",
    "metadata": {"body_was": "What time is the event", "body": "What time is the event?"},
}

PEER_SCRIPT = textwrap.dedent("""
    import datetime, json, sys, threading, time
    from workos import WorkOSClient
    from workos.audit_logs import (AuditLogEvent, AuditLogEventActor, AuditLogEventContext,
                                   AuditLogEventTarget)
    url, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = WorkOSClient(api_key="sk_test", client_id="client_bench", base_url=url)
    def event():
        return AuditLogEvent(
            action="tweet.update", occurred_at=datetime.datetime.now(datetime.timezone.utc),
            actor=AuditLogEventActor(id="user_1", type="user", name="user@email.com"),
            targets=[AuditLogEventTarget(id="tweet_5", type="tweet", name="user@email.com")],
            context=AuditLogEventContext(location="1.1.1.1"),
            metadata={"body_was": "What time is the event", "body": "What time is the event?"})
    client.audit_logs.create_event(organization_id="org_1", event=event())  # warm-up
    times, failed = [], []
    def work(n):
        for _ in range(n):
            built = event()
            t0 = time.perf_counter_ns()
            try:
                client.audit_logs.create_event(organization_id="org_1", event=built)
            except Exception as exc:
                failed.append(type(exc).__name__)
            times.append(time.perf_counter_ns() - t0)
    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(count // threads,)) for _ in range(threads)]
    for w in workers: w.start()
    for w in workers: w.join()
    elapsed = time.perf_counter() - start
    print(json.dumps({"times": times, "elapsed": elapsed, "failed": len(failed)}))
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

    def setup(self, *, latency: float = 0.0, rate_limit: float | None = None) -> None:
        self.call("/_control", {"latency": latency, "rate_limit": rate_limit})
        self.call("/_reset", {})

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


def _late_429_share(stats: dict[str, Any], after: float = 10.0) -> tuple[int, int]:
    """(429s, requests) counted by the server after its first ``after`` seconds."""
    late = [(requests, limited) for second, requests, limited in stats["seconds"]
            if second >= after]
    return sum(limited for _, limited in late), sum(requests for requests, _ in late)


def run_ours(server: Server, count: int, **options: Any) -> dict[str, float]:
    """Deliver ``count`` events through a WorkOS sender; rate, caller times, CPU per event."""
    workos = WorkOS("sk_test", base_url=server.url, api="audit_logs",
                    retry=RetryPolicy(deadline=3600.0), **options)
    workos.create_event(LEGACY_EVENT).result(60)  # warm-up: threads and connections up
    server.call("/_reset", {})
    times: list[int] = []
    dict_times: list[int] = []
    clock = time.perf_counter_ns
    cpu = time.process_time()
    start = time.perf_counter()
    for n in range(count):
        if n % 2:  # like the SDK loop: the event object is built before the timed call
            built = AuditEvent.from_dict(LEGACY_EVENT)
            t0 = clock()
            workos.create_event(built)
            times.append(clock() - t0)
        else:  # from the dict: validation and building included in the timed call
            t0 = clock()
            workos.create_event(LEGACY_EVENT)
            dict_times.append(clock() - t0)
    left = workos.flush(600)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    workos.shutdown(5)
    stats = server.call("/_stats")
    assert left == 0 and stats["accepted"] == count, (left, stats["accepted"], count)
    p50, p99 = _percentiles(times)
    limited, late = _late_429_share(stats)
    return {"p50": p50, "p99": p99, "dict_p50": _percentiles(dict_times)[0],
            "rate": count / elapsed, "cpu_us": cpu / count * 1e6,
            "requests": stats["requests"], "rate_limited": stats["rate_limited"],
            "late_429": limited, "late_requests": late}


def run_peer(server: Server, count: int, python: Path, threads: int = 1) -> dict[str, float]:
    server.call("/_reset", {})
    done = subprocess.run([str(python), "-c", PEER_SCRIPT, server.url, str(count), str(threads)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    stats = server.call("/_stats")
    p50, p99 = _percentiles(result["times"])
    delivered = count - result["failed"]
    return {"p50": p50, "p99": p99, "rate": delivered / result["elapsed"],
            "requests": stats["requests"], "rate_limited": stats["rate_limited"],
            "failed": result["failed"]}


def run_bare(server: Server, count: int) -> dict[str, float]:
    """The HTTP stack alone: one thread POSTing through an httpx.HTTPTransport."""
    server.call("/_reset", {})
    body = json.dumps(WorkOS("sk_test", base_url=server.url, api="audit_logs",
                             requests_per_second=None).body(AuditEvent.from_dict(LEGACY_EVENT))).encode()
    transport = httpx.HTTPTransport()
    url = httpx.URL(server.url + "/audit_logs/events")
    extensions = {"timeout": httpx.Timeout(10.0).as_dict()}
    cpu = time.process_time()
    start = time.perf_counter()
    for n in range(count):
        request = httpx.Request("POST", url, content=body, extensions=extensions, headers={
            "Authorization": "Bearer sk_test", "Content-Type": "application/json",
            "Idempotency-Key": f"bare-{n}"})
        response = transport.handle_request(request)
        response.read()
        response.close()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    transport.close()
    return {"rate": count / elapsed, "cpu_us": cpu / count * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=3000, help="loopback events per round")
    parser.add_argument("--rounds", type=int, default=3, help="loopback: medians of this many")
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--peer-venv", type=Path,
                        default=Path(os.environ.get("BENCH_PEER_VENV",
                                                    "/tmp/audit_instrument-bench-peer")))
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0

    def n(count: int) -> int:
        return max(50, int(count * scale))

    python = _peer_python(args.peer_venv)
    server = Server()
    try:
        ours: list[dict[str, float]] = []
        peer: list[dict[str, float]] = []
        bare: list[dict[str, float]] = []
        server.setup()
        for _ in range(args.rounds):  # interleaved, so machine noise hits both sides
            ours.append(run_ours(server, n(args.events), requests_per_second=None))
            peer.append(run_peer(server, n(args.events), python))
            bare.append(run_bare(server, n(args.events)))
        server.setup(latency=0.05, rate_limit=100)
        default = run_ours(server, n(1500))
        sdk_1 = run_peer(server, n(200), python, threads=1)
        sdk_16 = run_peer(server, n(1500), python, threads=16)
        server.setup(latency=0.05)
        bare_far = run_bare(server, n(200))
        fast = run_ours(server, n(10_000), requests_per_second=1000)
        server.setup(latency=0.05, rate_limit=50)
        limited = run_ours(server, n(1500), requests_per_second=100)
    finally:
        server.stop()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"\n1. Loopback, {n(args.events)} events, {args.rounds} rounds (medians); ours "
          f"unpaced, the SDK from one thread\n")
    print(f"| {'':34} | {'audit_instrument':>16} | {'workos SDK':>10} | {'ratio':>7} | target |")
    print(f"| {'-' * 34} | {'-' * 16}:| {'-' * 10}:| {'-' * 7}:| ------ |")
    for label, key, target in (("caller p50 create_event (µs)", "p50", "<= 0.02x"),
                               ("caller p99 create_event (µs)", "p99", ""),
                               ("caller p50, from the dict (µs)", "dict_p50", ""),
                               ("delivery rate (events/s)", "rate", ">= 1.5x")):
        a, b = med(ours, key), med(peer, "p50" if key == "dict_p50" else key)
        print(f"| {label:34} | {a:16.1f} | {b:10.1f} | {a / b:6.3f}x | {target:6} |")
    print(f"\nThe HTTP stack alone (one thread, httpx.HTTPTransport, no engine): loopback "
          f"{med(bare, 'rate'):.0f} requests/s at {med(bare, 'cpu_us'):.0f} µs CPU each; "
          f"50 ms away {bare_far['cpu_us']:.0f} µs CPU each")

    print("\n2-4. Server 50 ms away (one run)\n")
    print("| scenario | sender | events/s | requests | 429s | 429s after 10 s | "
          "client CPU/event | target |")
    print("| --- | --- | ---:| ---:| ---:| ---:| ---:| --- |")

    def row(scenario: str, sender: str, r: dict[str, float], target: str) -> None:
        late = (f"{r['late_429']:.0f} / {r['late_requests']:.0f} "
                f"({r['late_429'] / max(1.0, r['late_requests']):.1%})"
                if "late_429" in r else "")
        cpu = f"{r['cpu_us']:.0f} µs" if "cpu_us" in r else ""
        print(f"| {scenario} | {sender} | {r['rate']:.1f} | {r['requests']:.0f} | "
              f"{r['rate_limited']:.0f} | {late} | {cpu} | {target} |")

    row("limit 100/s", "audit_instrument, defaults", default, ">= 90/s, 0 429s")
    row("limit 100/s", "workos SDK, 1 thread", sdk_1, "peer")
    row("limit 100/s", "workos SDK, 16 threads", sdk_16, "peer")
    row("no limit", "audit_instrument, requests_per_second=1000", fast,
        ">= 900/s, <= 300 µs")
    row("limit 50/s", "audit_instrument, requests_per_second=100", limited,
        "< 5 % 429s after 10 s, none lost")
    print(f"\nratios: defaults vs SDK 1 thread {default['rate'] / sdk_1['rate']:.1f}x, "
          f"vs SDK 16 threads {default['rate'] / sdk_16['rate']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

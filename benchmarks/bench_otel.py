"""Audit events into OpenTelemetry: OTelLogSender beside the SDK's own logging pipeline.

Run:  python benchmarks/bench_otel.py [--events 100000] [--rounds 1]

A burst of ``--events`` audit events, as fast as one thread can hand them
over, to an OTLP/HTTP receiver (``tests/support/otlp_receiver.py``: decodes
every ``ExportLogsServiceRequest`` with ``opentelemetry-proto`` and counts
distinct records by their ``audit.idempotency_key``) running in its own
process. Every side exports through the SDK's ``OTLPLogExporter`` to the same
receiver, with the same attributes per record; each runs in a fresh process:

* **SDK**: ``logging`` → ``LoggingHandler`` → ``BatchLogRecordProcessor``
  (defaults: queue 2,048, batches of 512) → ``OTLPLogExporter``; the records
  carry ``record_attributes(event)`` as ``extra``. Then ``force_flush``.
* **ours, memory**: ``OTelLogSender(exporter)`` with defaults
  (``queue_size=10_000``, ``when_full="block"``, ``block_timeout=0.1``).
* **ours, outbox batch**: the same with ``outbox=PATH, durability="batch"``.

Printed per side: events received by the collector / sent, duplicates, what
the sender reported (dropped, failed), wall time, and CPU per event (this
process's CPU time from the first event to the end of the flush, over the
events sent — the exporter's encoding included). With ``--rounds`` > 1,
medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECEIVER = ROOT / "tests" / "support" / "otlp_receiver.py"
SIDES = ("sdk", "memory", "outbox")
LABELS = {"sdk": "SDK LoggingHandler + BatchLogRecordProcessor",
          "memory": "OTelLogSender, memory (defaults)",
          "outbox": "OTelLogSender, outbox durability=\"batch\""}


def _events(count: int) -> list[Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.events import make_event

    return [make_event(i) for i in range(count)]


def run_side(side: str, endpoint: str, count: int) -> dict[str, Any]:
    """One side, in this (fresh) process: hand over ``count`` events, flush."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    from audit_instrument import stats
    from audit_instrument.senders.otel import OTelLogSender, record_attributes

    events = _events(count)
    exporter = OTLPLogExporter(endpoint=endpoint)
    result: dict[str, Any] = {"dropped": 0, "failed": 0}
    if side == "sdk":
        import logging

        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider = LoggerProvider()
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        log = logging.getLogger("bench.audit")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(LoggingHandler(logger_provider=provider))
        cpu, start = time.process_time(), time.perf_counter()
        for event in events:
            log.info(event.action, extra=record_attributes(event))
        provider.force_flush(600_000)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - start
        provider.shutdown()
    else:
        options: dict[str, Any] = {}
        if side == "outbox":
            options = {"outbox": Path(tempfile.mkdtemp()) / "otel-outbox.db",
                       "durability": "batch"}
        sender = OTelLogSender(exporter, **options)
        cpu, start = time.process_time(), time.perf_counter()
        for event in events:
            sender.create_event(event)
        left = sender.flush(600)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - start
        counted = stats().senders[repr(sender)]
        result.update(dropped=counted.dropped, failed=counted.failed, left=left)
        sender.shutdown(5)
    result.update(cpu_us=cpu / count * 1e6, wall=wall)
    return result


class Receiver:
    """The OTLP receiver in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(RECEIVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.base = "http://127.0.0.1:" + self.proc.stdout.readline().split()[1]
        self.endpoint = self.base + "/v1/logs"

    def call(self, path: str) -> dict[str, int]:
        with urllib.request.urlopen(self.base + path, data=b"", timeout=30) as answer:
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="medians of this many runs")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child's job
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(run_side(args.side, args.endpoint, args.events)))
        return 0

    receiver = Receiver()
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        for _ in range(args.rounds):  # interleaved, so machine noise hits every side
            for side in SIDES:
                receiver.call("/_reset")
                done = subprocess.run(
                    [sys.executable, __file__, "--side", side, "--endpoint", receiver.endpoint,
                     "--events", str(args.events)],
                    capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row.update(receiver.call("/_stats"))
                rows[side].append(row)
    finally:
        receiver.stop()

    def med(side: str, key: str) -> float:
        return statistics.median(float(row[key]) for row in rows[side])

    print(f"\nA burst of {args.events:,} events to an OTLP/HTTP receiver (OTLPLogExporter on "
          f"every side), {args.rounds} round(s), medians\n")
    print("| sender | received / sent | duplicates | reported dropped | reported failed | "
          "wall (s) | CPU per event sent |")
    print("| --- | ---:| ---:| ---:| ---:| ---:| ---:|")
    for side in SIDES:
        received = med(side, "received")
        reported = ("— (not reported)" if side == "sdk" else f"{med(side, 'dropped'):,.0f}")
        failed = "—" if side == "sdk" else f"{med(side, 'failed'):,.0f}"
        print(f"| {LABELS[side]} | {received:,.0f} / {args.events:,} "
              f"({received / args.events:.1%}) | {med(side, 'duplicates'):,.0f} | {reported} | "
              f"{failed} | {med(side, 'wall'):.1f} | {med(side, 'cpu_us'):.0f} µs |")
    def per_delivered(side: str) -> float:  # CPU per event that reached the receiver
        return med(side, "cpu_us") * args.events / max(1.0, med(side, "received"))

    delivered = med("memory", "received") / max(1.0, med("sdk", "received"))
    print(f"\nours (memory) / the SDK: delivered {delivered:.1f}x; "
          f"CPU per event sent {med('memory', 'cpu_us') / med('sdk', 'cpu_us'):.2f}x, "
          f"per event delivered {per_delivered('memory') / per_delivered('sdk'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

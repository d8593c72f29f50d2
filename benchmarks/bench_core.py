"""Per-call cost of ``@audit`` beside a bare call, wrapt, stdlib logging and an OpenTelemetry span.

Run:  python benchmarks/bench_core.py        (needs: pip install -e '.[bench]')

Every variant is timed in the same process, interleaved over several rounds,
and the median ns/call is reported with ratios (medians of per-round ratios),
so machine noise mostly cancels out. Guardrails: ``@audit`` with one
in-memory receiver <= 0.20x the OTel span decorator and below a stdlib
``logging`` call that writes one JSON line (the peer a team would otherwise
reach for); ``@audit`` with no receivers <= 1.5x a wrapt pass-through.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from typing import Any

import wrapt

from audit_instrument import audit, audit_actor, configure
from audit_instrument.senders import MemorySender


def _variants() -> dict[str, tuple[Callable[[], Any], Callable[[], None]]]:
    """name -> (the call to time, a reset run before each round)."""

    def bare(tweet_id: int, body: str) -> int:
        return tweet_id

    @wrapt.decorator
    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    wrapped = passthrough(bare)
    audited = audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "author"))(
        bare
    )

    tweets = {5: {"body": "What time is the event", "author": "user@email.com"}}

    @audit(
        "tweet.update",
        "U",
        target=lambda tweet_id: (f"tweet_{tweet_id}", tweets[tweet_id]["author"]),
        snapshot=lambda tweet_id: tweets[tweet_id],
        fields=["body"],
    )
    def update(tweet_id: int, body: str) -> None:
        tweets[tweet_id]["body"] = body

    bodies = ["What time is the event", "What time is the event?"]
    counter = [0]

    def snapshot_call() -> None:
        counter[0] ^= 1
        update(5, bodies[counter[0]])

    memory = MemorySender()

    def no_receivers() -> None:
        configure()

    def one_receiver() -> None:
        memory.clear()
        configure(memory)

    json_log = logging.getLogger("bench.audit")
    json_log.propagate = False
    json_log.setLevel(logging.INFO)
    stream = io.StringIO()
    json_log.addHandler(logging.StreamHandler(stream))

    def log_json_line() -> None:  # what auditing by hand through logging looks like
        json_log.info(json.dumps({"action": "tweet.update", "actor_id": "user_1",
                                  "target_id": "tweet_5", "group": "organization_1"}))

    def no_receivers_empty_log() -> None:
        stream.seek(0)
        stream.truncate()
        configure()

    variants: dict[str, tuple[Callable[[], Any], Callable[[], None]]] = {
        "bare call": (lambda: bare(5, "x"), no_receivers),
        "wrapt pass-through": (lambda: wrapped(5, "x"), no_receivers),
        "@audit, no receivers": (lambda: audited(5, "x"), no_receivers),
        "@audit, memory receiver": (lambda: audited(5, "x"), one_receiver),
        "@audit + snapshot, memory": (snapshot_call, one_receiver),
        "logging one JSON line": (log_json_line, no_receivers_empty_log),
    }
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        print("(opentelemetry-sdk not installed: pip install -e '.[bench]')", file=sys.stderr)
        return variants

    class NoOpExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
    tracer = provider.get_tracer("bench")
    traced = tracer.start_as_current_span("tweet.update")(bare)
    variants["OTel span decorator"] = (lambda: traced(5, "x"), no_receivers)
    return variants


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=5_000, help="calls per round")
    args = parser.parse_args(argv)
    logging.getLogger("audit_instrument").setLevel(logging.ERROR)  # the no-receiver warning

    variants = _variants()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with audit_actor(id="user_1", name="user@email.com", group="organization_1"):
        for _ in range(args.rounds):
            for name, (call, reset) in variants.items():
                reset()
                seconds = timeit.timeit(call, number=args.number)
                samples[name].append(seconds / args.number * 1e9)
    configure()

    def ratio(name: str, base: str) -> float:
        """Median over rounds of the per-round ratio: neighbours in time share the noise."""
        return statistics.median(a / b for a, b in zip(samples[name], samples[base]))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    has_otel = "OTel span decorator" in samples
    print(f"{'variant':<28}{'ns/call':>10}{'x wrapt':>10}{'x OTel':>10}")
    for name, ns in medians.items():
        otel = f"{ratio(name, 'OTel span decorator'):>10.3f}" if has_otel else f"{'-':>10}"
        print(f"{name:<28}{ns:>10.0f}{ratio(name, 'wrapt pass-through'):>10.2f}{otel}")
    no_recv = ratio("@audit, no receivers", "wrapt pass-through")
    print(f"\n@audit, no receivers / wrapt pass-through = {no_recv:.2f} (target <= 1.5)")
    logged = ratio("@audit, memory receiver", "logging one JSON line")
    print(f"@audit, memory receiver / logging a JSON line = {logged:.2f} (target < 1)")
    if has_otel:
        one = ratio("@audit, memory receiver", "OTel span decorator")
        print(f"@audit, memory receiver / OTel span      = {one:.3f} (target <= 0.20)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

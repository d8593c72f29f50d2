"""Requests/s of a minimal uvicorn app, plain vs. AuditMiddleware + one ``@audit`` event.

Run:  python benchmarks/bench_asgi.py          (needs only: pip install -e '.[test]')

Both apps authenticate the request (an outer middleware sets
``scope["user"]``) and call the same ``read_doc``; the instrumented one adds
``AuditMiddleware`` (actor, group, location and user agent from the request)
and ``@audit`` on ``read_doc``, recording one event per request into a
MemorySender. Each is served by uvicorn (h11) in its own process, pinned to
one CPU; a stdlib asyncio keep-alive load generator on the other CPU loads
them in turn, 0.4 s windows in ABBA/BAAB blocks, so drifts in the machine's
speed cancel out. Where a process's objects land in memory changes its
speed by 10% or more with identical code (the same code read 0.80 or 0.91
depending only on the script's path), so each server process draws a random
memory layout and the blocks are spread over 24 pairs of fresh processes;
``--same`` (the plain app against itself) shows what is left of the noise.
The ratio is the median of the per-block ratios. Also printed: requests per server
CPU-second (from /proc). Target: ratio >= 0.9.

Deterministic figures (valgrind): ``--instructions``, the server's
instructions per request; ``--misses``, cache misses of one request with the
CPU caches flushed before it, which is how a busy server runs our code, and
what its cost follows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from typing import Any

PATH = "/doc/doc_1"
_LEAD_IN = 0.05  # seconds of each window not counted: every connection is busy by then


# -- the apps (in the server process) --------------------------------------------------------


def _apps() -> dict[str, Any]:
    """Plain and instrumented apps that differ only in what this library adds.

    Both authenticate the request (an outer middleware sets ``scope["user"]``,
    as a session lookup would) and call the same ``read_doc``; the
    instrumented ones add ``AuditMiddleware`` inside authentication, which
    reads that user, and ``@audit`` on ``read_doc``.
    """
    from audit_instrument import audit, configure
    from audit_instrument.integrations.asgi import AuditMiddleware
    from audit_instrument.senders import MemorySender

    memory = MemorySender()
    configure(memory)
    body = b'{"ok":true}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
    }
    done = {"type": "http.response.body", "body": body}

    def read_doc(doc_id: str) -> None:
        return None

    audited_read_doc = audit("doc.read", "R",
                             target=lambda doc_id: (doc_id, "Quarterly report"))(read_doc)

    def authenticate(app: Any) -> Any:
        async def authenticated(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                for name, value in scope["headers"]:
                    if name == b"x-user":
                        scope["user"] = {"id": value.decode(), "email": "user@example.com"}
                        break
            await app(scope, receive, send)

        return authenticated

    def handler(read: Any) -> Any:
        async def handle(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/__events":  # how many events, then start afresh
                count = str(len(memory)).encode()
                memory.clear()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(count)).encode())]})
                await send({"type": "http.response.body", "body": count})
                return
            read(scope["path"].rsplit("/", 1)[-1])
            await send(start)
            await send(done)

        return handle

    plain = authenticate(handler(read_doc))
    audited = authenticate(AuditMiddleware(handler(audited_read_doc), group="org_1",
                                           trusted_proxies=["127.0.0.1"]))

    # the same with a minimal Starlette app: one route, one JSON response
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def endpoint(read: Any) -> Any:
        async def read_endpoint(request: Request) -> Response:
            read(request.path_params["doc_id"])
            return JSONResponse({"ok": True})

        return read_endpoint

    async def events(request: Request) -> Response:
        count = len(memory)
        memory.clear()
        return Response(str(count))

    starlette_plain = Starlette(
        routes=[Route("/doc/{doc_id}", endpoint(read_doc)), Route("/__events", events)],
        middleware=[Middleware(authenticate)],
    )
    starlette_audited = Starlette(
        routes=[Route("/doc/{doc_id}", endpoint(audited_read_doc)), Route("/__events", events)],
        middleware=[Middleware(authenticate),
                    Middleware(AuditMiddleware, group="org_1", trusted_proxies=["127.0.0.1"])],
    )
    return {"plain": plain, "audited": audited,
            "starlette-plain": starlette_plain, "starlette-audited": starlette_audited}


def _pin(cpu: int) -> None:
    """Keep servers on one CPU and the load generator on another (Linux), less noise."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


_LAYOUT_ENV = "AUDIT_BENCH_LAYOUT"
_layout_padding: list[object] = []


def _shift_layout() -> None:
    """Move this process's heap by the amount its parent drew (see ``_layout_env``).

    Done before uvicorn and the apps are imported, so every object they
    allocate lands elsewhere; the environment variable's own length moves
    the stack.
    """
    objects = len(os.environ.get(_LAYOUT_ENV, ""))
    # strings: the garbage collector does not track them, so collections are unchanged
    _layout_padding.extend(str(n) * 3 for n in range(objects * 4))


def _serve(variant: str) -> None:
    _shift_layout()
    import uvicorn

    _pin(0)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # connections wait in the backlog until uvicorn is up
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(_apps()[variant], log_level="warning", access_log=False,
                            lifespan="off", proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])


# -- the load generator (in its own process) -------------------------------------------------


def _request(port: int) -> bytes:
    """The request every load run sends: a user, a proxy hop, a user agent."""
    return (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench/1.0\r\n"
        "X-User: user_1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
    ).encode()


async def _alternate(ports: dict[str, int], blocks: int, window: float,
                     connections: int) -> None:
    """Load each server in turn, ``window`` seconds at a time, ABBA then BAAB.

    Every server keeps its own keep-alive connections. A window sends
    requests until its deadline and counts the answers that arrive in its
    last ``window`` seconds; then it waits for the answers still in flight,
    so no server works during another's window. Prints one JSON line per
    block: requests/s of each window, by variant.
    """
    loop = asyncio.get_running_loop()
    streams = {
        variant: [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
        for variant, port in ports.items()
    }
    requests = {variant: _request(port) for variant, port in ports.items()}
    served = dict.fromkeys(ports, 0)

    async def worker(variant: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     counting_from: float, until: float) -> int:
        counted = 0
        request = requests[variant]
        while loop.time() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            served[variant] += 1
            if counting_from <= loop.time() <= until:
                counted += 1
        return counted

    async def run(variant: str) -> float:
        started = loop.time()
        counting_from, until = started + _LEAD_IN, started + _LEAD_IN + window
        counts = await asyncio.gather(*(worker(variant, reader, writer, counting_from, until)
                                        for reader, writer in streams[variant]))
        return sum(counts) / window

    first, second = list(ports)
    for block in range(blocks):
        order = [first, second] if block % 2 == 0 else [second, first]
        rates: dict[str, list[float]] = {first: [], second: []}
        for variant in order + order[::-1]:
            rates[variant].append(await run(variant))
        print(json.dumps({"rates": rates, "served": served}), flush=True)
    for pairs in streams.values():
        for _, writer in pairs:
            writer.close()


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _events(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /__events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return int(data.split(b"\r\n\r\n", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=48,
                        help="blocks of 4 windows (ABBA / BAAB); each variant has two per block")
    parser.add_argument("--pairs", type=int, default=24,
                        help="pairs of server processes the blocks are spread over; each "
                             "process draws its own memory layout, which changes its speed "
                             "by 10%% or more")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the layouts drawn (default: a new one each run)")
    parser.add_argument("--window", type=float, default=0.4, help="measured seconds per window")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--app", choices=["asgi", "starlette", "both"], default="both",
                        help="raw ASGI app, minimal Starlette app, or both (default)")
    parser.add_argument("--same", action="store_true",
                        help="serve the plain app twice: the ratio this machine's noise "
                             "alone gives (should be ~1.0)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count server instructions per request under callgrind "
                             "(deterministic; needs valgrind, ~2 minutes per app)")
    parser.add_argument("--misses", action="store_true",
                        help="also count cache misses of one request with cold caches, under "
                             "callgrind's cache simulator (deterministic; needs valgrind)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--cold", help=argparse.SUPPRESS)
    parser.add_argument("--cold-count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.cold:
        _cold_requests(args.cold, args.cold_count)
        return
    if args.load:
        _pin(1)
        ports = json.loads(args.load)
        asyncio.run(_alternate(ports, args.blocks, args.window, args.connections))
        return

    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    apps = ["asgi", "starlette"] if args.app == "both" else [args.app]
    for app in apps:
        prefix = "" if app == "asgi" else "starlette-"
        title = "raw ASGI app" if app == "asgi" else "minimal Starlette app"
        print(f"{title} under uvicorn (h11), {args.connections} keep-alive connections, "
              f"{args.pairs} pairs of processes with random memory layouts (--seed {args.seed}):")
        _compare(prefix, args)
        for wanted, flag, compare in ((args.instructions, "--instructions", _compare_instructions),
                                      (args.misses, "--misses", _compare_misses)):
            if not wanted:
                continue
            if shutil.which("valgrind") is None:
                print(f"  ({flag}: valgrind is not installed; skipped)")
            else:
                compare(prefix)


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


class _Pair:
    """What one pair of server processes gave."""

    def __init__(self) -> None:
        self.rps: dict[str, list[float]] = {"plain": [], "audited": []}
        self.block_ratios: list[float] = []
        self.cpu_ratio: float | None = None


def _layout_env(rng: random.Random) -> dict[str, str]:
    """The environment of one server process, with a random memory layout.

    Where a process's objects land in memory (and so which of them share
    cache sets) follows from everything allocated before them: the same
    code read 0.80 or 0.91 depending only on the script's path or an unused
    ``PYTHONPATH`` entry. Each server process therefore draws its own layout
    (a padding of 0-1,023 characters here, and four times as many small
    objects allocated before uvicorn starts), and the ratio is a median over
    many layouts rather than one lucky or unlucky one.
    """
    return {**os.environ, _LAYOUT_ENV: "x" * rng.randrange(1024)}


def _run_pair(names: dict[str, str], first: str, args: argparse.Namespace,
              rng: random.Random) -> _Pair:
    """Start both servers (``first`` first), load them in turn, stop them."""
    pair = _Pair()
    order = [first, "audited" if first == "plain" else "plain"]
    servers = {
        variant: subprocess.Popen(
            [sys.executable, __file__, "--serve", names[variant]], stdout=subprocess.PIPE,
            text=True, env=_layout_env(rng),
        )
        for variant in order
    }
    try:
        ports = {v: int(servers[v].stdout.readline()) for v in ("plain", "audited")}  # type: ignore[union-attr]
        counting = not args.same
        if counting:
            _events(ports["audited"])  # count from zero
        cpu_before = {v: _cpu_seconds(p.pid) for v, p in servers.items()}
        load = subprocess.run(
            [sys.executable, __file__, "--load", json.dumps(ports), "--blocks",
             str(args.blocks // args.pairs), "--window", str(args.window),
             "--connections", str(args.connections)],
            capture_output=True, text=True, check=False,
        )
        if load.returncode:
            raise SystemExit(f"load generator failed:\n{load.stderr}")
        cpu_after = {v: _cpu_seconds(p.pid) for v, p in servers.items()}
        served: dict[str, int] = {}
        for line in load.stdout.splitlines():
            block = json.loads(line)
            for variant, rates in block["rates"].items():
                pair.rps[variant].extend(rates)
            served = block["served"]
            pair.block_ratios.append(statistics.fmean(block["rates"]["audited"])
                                     / statistics.fmean(block["rates"]["plain"]))
        if counting and (recorded := _events(ports["audited"])) != served["audited"]:
            raise SystemExit(f"{recorded} events recorded for {served['audited']} requests")
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)
    per_cpu = {}
    for variant in servers:
        before, after = cpu_before[variant], cpu_after[variant]
        if before is not None and after is not None and after > before:
            per_cpu[variant] = served[variant] / (after - before)
    if len(per_cpu) == 2:
        pair.cpu_ratio = per_cpu["audited"] / per_cpu["plain"]
    return pair


def _compare(prefix: str, args: argparse.Namespace) -> None:
    names = {"plain": prefix + "plain", "audited": prefix + ("plain" if args.same else "audited")}
    other = "plain again" if args.same else "instrumented"
    rps: dict[str, list[float]] = {"plain": [], "audited": []}
    block_ratios: list[float] = []
    cpu_ratios: list[float] = []
    rng = random.Random(args.seed)
    for number in range(args.pairs):
        first = "plain" if number % 2 == 0 else "audited"
        pair = _run_pair(names, first, args, rng)
        for variant, rates in pair.rps.items():
            rps[variant].extend(rates)
        block_ratios.extend(pair.block_ratios)
        if pair.cpu_ratio is not None:
            cpu_ratios.append(pair.cpu_ratio)
        cpu = "" if pair.cpu_ratio is None else f", per server CPU-second {pair.cpu_ratio:.3f}"
        print(f"    processes {number + 1} ({first if first == 'plain' else other} started "
              f"first): ratio {statistics.median(pair.block_ratios):.3f}{cpu}", flush=True)
    print(f"  plain          median {statistics.median(rps['plain']):8,.0f} req/s")
    print(f"  {other:<14} median {statistics.median(rps['audited']):8,.0f} req/s"
          + ("" if args.same else " (one @audit event recorded per request, checked)"))
    if cpu_ratios:
        print(f"  requests per server CPU-second: ratio {statistics.median(cpu_ratios):.3f} "
              "(median over process pairs)")
    low, high = _quartiles(block_ratios)
    ratio = statistics.median(block_ratios)
    verdict = "" if args.same else f"  (target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})"
    print(f"  ratio {other}/plain {ratio:.3f}: median of {len(block_ratios)} blocks, "
          f"middle half {low:.3f}-{high:.3f}{verdict}")


# -- instructions per request (deterministic; needs valgrind) ---------------------------------


def _request_sync(port: int, count: int, connections: int = 4) -> None:
    """``count`` requests over a few keep-alive connections, answers read in full."""
    request = _request(port)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        done = 0
        while done < count:
            batch = sockets[: min(connections, count - done)]
            for sock in batch:
                sock.sendall(request)
            for sock in batch:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(int(line[15:]) for line in head.split(b"\r\n")
                              if line[:15].lower() == b"content-length:")
                while len(body) < length:
                    body += sock.recv(65536)
            done += len(batch)
    finally:
        for sock in sockets:
            sock.close()


def _instructions(name: str, count: int, directory: str) -> int:
    """Instructions the server process ran, start to stop, having answered ``count`` requests."""
    out = os.path.join(directory, f"callgrind.{name}.{count}")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--serve", name],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        _request_sync(port, count)
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn stops; callgrind writes its totals
        proc.wait(600)
    with open(out) as profile:
        for line in profile:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def _compare_instructions(prefix: str) -> None:
    """Server instructions per request, plain vs instrumented, under callgrind.

    The difference between a short and a long run cancels start-up and
    shutdown, leaving the cost of one request. Unlike requests/s this does
    not move with the machine's load; it does not see cache misses either.
    """
    import tempfile

    short, long = 200, 1200
    per_request: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as directory:
        for variant in ("plain", "audited"):
            name = prefix + variant
            counts = [_instructions(name, n, directory) for n in (short, long)]
            per_request[variant] = (counts[1] - counts[0]) // (long - short)
    plain, audited = per_request["plain"], per_request["audited"]
    print(f"  server instructions per request  plain {plain:,}, instrumented {audited:,} "
          f"(+{audited - plain:,}): {plain / audited:.3f}x the requests/s at equal "
          "instructions per second")


# -- cache misses of a request with cold caches (deterministic; needs valgrind) -----------------

_FLUSH_BYTES = 16 << 20  # more than the last-level cache: everything is cold again


def _cold_requests(name: str, count: int) -> None:
    """Call app ``name`` directly ``count`` times, evicting the CPU caches before each call.

    Between two requests a busy server runs hundreds of thousands of its own
    instructions and the kernel's: what a request touches comes from memory.
    """
    app = _apps()[name]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
             "query_string": b"", "root_path": "", "state": {},
             "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1.0"),
                         (b"x-user", b"user_1"), (b"x-forwarded-for", b"203.0.113.7")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    flush = bytearray(_FLUSH_BYTES)
    line = bytes(_FLUSH_BYTES // 64)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def run() -> None:
        for _ in range(count):
            flush[::64] = line  # one write per cache line
            await app(dict(scope), receive, send)

    asyncio.run(run())


def _misses(name: str, count: int, directory: str) -> tuple[int, int]:
    """(instructions, L1 instruction + data misses) of ``count`` cold requests, whole run."""
    out = os.path.join(directory, f"cachegrind.{name}.{count}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--cold", name, "--cold-count", str(count)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    with open(out) as profile:
        events: list[str] = []
        for text in profile:
            if text.startswith("events:"):
                events = text.split()[1:]
            elif text.startswith(("summary:", "totals:")):
                totals = dict(zip(events, map(int, text.split()[1:]), strict=False))
                return totals["Ir"], totals["I1mr"] + totals["D1mr"] + totals["D1mw"]
    raise RuntimeError(f"no totals in {out}")


def _compare_misses(prefix: str) -> None:
    """Cache misses per request with cold caches, plain vs instrumented (callgrind's simulator).

    On a busy server nearly everything our code touches has been evicted
    between requests, so its cost follows the cache lines it touches more
    than its instructions. The difference between 100 and 300 requests
    leaves one request; the flush's own misses are the same in both apps.
    """
    import tempfile

    short, long = 100, 300
    per_request: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as directory:
        for variant in ("plain", "audited"):
            runs = [_misses(prefix + variant, n, directory) for n in (short, long)]
            per_request[variant] = (
                (runs[1][0] - runs[0][0]) / (long - short),
                (runs[1][1] - runs[0][1]) / (long - short),
            )
    plain_ir, plain_miss = per_request["plain"]
    audited_ir, audited_miss = per_request["audited"]
    flush = _FLUSH_BYTES // 64
    print(f"  cold request (caches flushed), L1 misses beyond the flush's {flush:,}: "
          f"plain {plain_miss - flush:,.0f}, instrumented {audited_miss - flush:,.0f} "
          f"(+{audited_miss - plain_miss:,.0f}); instructions +{audited_ir - plain_ir:,.0f}")


if __name__ == "__main__":
    main()

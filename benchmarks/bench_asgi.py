"""Requests/s of a minimal uvicorn app, plain vs. AuditMiddleware + one ``@audit`` event.

Run:  python benchmarks/bench_asgi.py          (needs only: pip install -e '.[test]')

Both apps are served by uvicorn, each in its own process, at the same time;
a stdlib asyncio HTTP/1.1 keep-alive load generator runs in a third process
(faster than an httpx client, so the server is what is measured). Runs
alternate in ABBA/BAAB blocks; the ratio reported is the median of the
per-block ratios, so slow drifts in machine load cancel out. Also printed:
median requests/s of each, and requests per server CPU-second (read from
/proc), which other processes on a busy machine disturb much less.
Target: ratio >= 0.9.
``--instructions`` adds a figure that does not move with the machine's load:
instructions the server runs per request, counted under callgrind (valgrind).
The instrumented app binds actor, group, location and user agent from each
request and records one event into a MemorySender (emptied between rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

PATH = "/doc/doc_1"


# -- the apps (in the server process) --------------------------------------------------------


def _apps() -> dict[str, Any]:
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

    async def plain(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(done)

    @audit("doc.read", "R", target=lambda doc_id: (doc_id, "Quarterly report"))
    def read_doc(doc_id: str) -> None:
        return None

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/__events":  # how many events, then start afresh
            count = str(len(memory)).encode()
            memory.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(count)).encode())]})
            await send({"type": "http.response.body", "body": count})
            return
        read_doc(scope["path"].rsplit("/", 1)[-1])
        await send(start)
        await send(done)

    def user(scope: Any) -> object:  # as a session lookup would: from the request
        for name, value in scope["headers"]:
            if name == b"x-user":
                return {"id": value.decode(), "email": "user@example.com"}
        return None

    audited = AuditMiddleware(handler, actor=user, group="org_1", trusted_proxies=["127.0.0.1"])

    # the same with a minimal Starlette app: one route, one JSON response
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def plain_endpoint(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def audited_endpoint(request: Request) -> Response:
        read_doc(request.path_params["doc_id"])
        return JSONResponse({"ok": True})

    async def events(request: Request) -> Response:
        count = len(memory)
        memory.clear()
        return Response(str(count))

    starlette_plain = Starlette(routes=[Route("/doc/{doc_id}", plain_endpoint)])
    starlette_audited = Starlette(
        routes=[Route("/doc/{doc_id}", audited_endpoint), Route("/__events", events)],
        middleware=[Middleware(AuditMiddleware, actor=user, group="org_1",
                               trusted_proxies=["127.0.0.1"])],
    )
    return {"plain": plain, "audited": audited,
            "starlette-plain": starlette_plain, "starlette-audited": starlette_audited}


def _pin(cpu: int) -> None:
    """Keep servers on one CPU and the load generator on another (Linux), less noise."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def _serve(variant: str) -> None:
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


async def _load(port: int, seconds: float, connections: int, warmup: float) -> dict[str, float]:
    request = _request(port)
    counting = False
    count = 0
    total = 0
    stop = False

    async def worker() -> None:
        nonlocal count, total
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            total += 1
            if counting:
                count += 1
        writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(warmup)
    counting, started = True, time.perf_counter()
    await asyncio.sleep(seconds)
    counting, elapsed = False, time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks)
    return {"requests": count, "seconds": elapsed, "rps": count / elapsed, "all_requests": total}


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(port: int, pid: int, args: argparse.Namespace) -> tuple[float, float | None]:
    """(requests/s, requests per server CPU-second) of one load run."""
    cpu_before = _cpu_seconds(pid)
    run = subprocess.run(
        [sys.executable, __file__, "--load", str(port), "--seconds", str(args.seconds),
         "--connections", str(args.connections)],
        check=False, capture_output=True, text=True, timeout=args.seconds + 60,
    )
    cpu_after = _cpu_seconds(pid)
    if run.returncode:
        raise SystemExit(f"load generator failed:\n{run.stderr}")
    result = json.loads(run.stdout)
    per_cpu = None
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        # includes the warm-up; the same for both variants
        per_cpu = result["all_requests"] / (cpu_after - cpu_before)
    return float(result["rps"]), per_cpu


def _events(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /__events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return int(data.split(b"\r\n\r\n", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6,
                        help="blocks of 4 runs (ABBA / BAAB); each variant runs twice per block")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--app", choices=["asgi", "starlette", "both"], default="both",
                        help="raw ASGI app, minimal Starlette app, or both (default)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count server instructions per request under callgrind "
                             "(deterministic; needs valgrind, ~2 minutes per app)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.load:
        _pin(1)
        print(json.dumps(asyncio.run(_load(args.load, args.seconds, args.connections, 0.3))))
        return

    apps = ["asgi", "starlette"] if args.app == "both" else [args.app]
    for app in apps:
        prefix = "" if app == "asgi" else "starlette-"
        title = "raw ASGI app" if app == "asgi" else "minimal Starlette app"
        print(f"{title} under uvicorn (h11), {args.connections} keep-alive connections:")
        _compare(prefix, args)
        if args.instructions:
            if shutil.which("valgrind") is None:
                print("  (--instructions: valgrind is not installed; skipped)")
            else:
                _compare_instructions(prefix)


def _compare(prefix: str, args: argparse.Namespace) -> None:
    names = {"plain": prefix + "plain", "audited": prefix + "audited"}
    servers = {
        variant: subprocess.Popen(
            [sys.executable, __file__, "--serve", name], stdout=subprocess.PIPE, text=True
        )
        for variant, name in names.items()
    }
    try:
        ports = {variant: int(proc.stdout.readline()) for variant, proc in servers.items()}  # type: ignore[union-attr]
        rps: dict[str, list[float]] = {"plain": [], "audited": []}
        cpu: dict[str, list[float]] = {"plain": [], "audited": []}
        block_ratios: list[float] = []
        events: list[int] = []
        for block in range(args.rounds):
            order = ["plain", "audited"] if block % 2 == 0 else ["audited", "plain"]
            seen: dict[str, list[float]] = {"plain": [], "audited": []}
            for variant in order + order[::-1]:  # ABBA, then BAAB
                rate, per_cpu = _round(ports[variant], servers[variant].pid, args)
                seen[variant].append(rate)
                rps[variant].append(rate)
                if per_cpu is not None:
                    cpu[variant].append(per_cpu)
                if variant == "audited":
                    events.append(_events(ports["audited"]))
            block_ratios.append(statistics.fmean(seen["audited"]) / statistics.fmean(seen["plain"]))
            print(f"    block {block + 1}: plain {statistics.fmean(seen['plain']):8,.0f} req/s, "
                  f"instrumented {statistics.fmean(seen['audited']):8,.0f} req/s, "
                  f"ratio {block_ratios[-1]:.3f}", flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)

    plain = statistics.median(rps["plain"])
    audited = statistics.median(rps["audited"])
    ratio = statistics.median(block_ratios)
    print(f"  plain                            median {plain:8,.0f} req/s")
    print(f"  AuditMiddleware + @audit event   median {audited:8,.0f} req/s "
          f"({min(events):,}..{max(events):,} events recorded per round)")
    if cpu["plain"] and cpu["audited"]:
        cpu_ratio = statistics.median(cpu["audited"]) / statistics.median(cpu["plain"])
        print(f"  requests per server CPU-second   plain {statistics.median(cpu['plain']):,.0f}, "
              f"instrumented {statistics.median(cpu['audited']):,.0f}, ratio {cpu_ratio:.3f} "
              "(less disturbed by other load)")
    print(f"  ratio instrumented/plain (median of per-block ratios) {ratio:.3f}  "
          f"(target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})")


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




if __name__ == "__main__":
    main()

"""Load test of the HTTP endpoint: concurrent keep-alive clients against ``python -m distgnn.serve``.

    python -m benchmarks.serve_load --export exports/serve-bench --clients 4 --requests 10000 --k 10 \
        --threads 1,0 --index flat,hnsw --out benchmarks/out/serve

For each combination of ``--index`` and ``--threads`` (comma-separated lists; ``--threads 0`` leaves
FAISS/torch at their default OpenMP threads): starts the server as a subprocess on 127.0.0.1 and a
free port (a separate process, so its RSS is its own; sampled with psutil), then ``--clients``
threads, each with one keep-alive ``http.client.HTTPConnection``, send ``--warmup`` untimed and then
``--requests`` timed ``GET /recommend`` requests for random known users (a per-request timeout;
every loop ends by itself: after its count, or at ``--max-seconds``). A request counts as an error
unless it answers 200 with one result for the user asked, at most ``k`` items.

Reports latency percentiles (ms), throughput (timed requests / wall time of the timed phase), errors,
and the server's RSS after loading, after warm-up, at the end and at its peak (MiB, sampled every
0.2 s), so growth over the run shows, and the 1-minute load average before and after (the machine may
be shared). Writes one JSON per run and prints a markdown table. Clients
and server share the machine's cores: on a small machine the figures include the clients' cost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psutil

import distgnn

HOST = "127.0.0.1"  # loopback only: this load test never talks to another machine
MIB = 1 << 20


def start_server(
    export: str, *, index: str, threads: int, log_file: Path, start_timeout_s: float
) -> tuple[subprocess.Popen, int]:
    """``python -m distgnn.serve`` on a free port of 127.0.0.1; returns the process and its port."""
    cmd = [
        sys.executable,
        "-m",
        "distgnn.serve",
        "--export",
        export,
        "--host",
        HOST,
        "--port",
        "0",
        "--index",
        index,
        "--threads",
        str(threads),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file.open("w"), text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(start_timeout_s)
    if not line or not line[0].startswith(f"listening on http://{HOST}:"):
        proc.kill()
        proc.wait()
        raise SystemExit(
            f"server did not start within {start_timeout_s} s: {line[0] if line else ''!r}; see {log_file}"
        )
    port = int(line[0].split()[2].rsplit(":", 1)[1])
    return proc, port


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Client:
    """One thread's keep-alive connection and its timed latencies."""

    def __init__(self, port: int, user_ids: list[str], *, k: int, index: str, timeout_s: float, seed: int):
        self.port, self.k, self.index, self.timeout_s = port, k, index, timeout_s
        self.users = np.random.default_rng(seed).choice(np.asarray(user_ids, dtype=object), 1 << 16)
        self.sent = 0
        self.latencies_s: list[float] = []
        self.errors: dict[str, int] = {}
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=self.timeout_s)

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def request(self, *, timed: bool) -> None:
        user = self.users[self.sent % len(self.users)]
        self.sent += 1
        path = f"/recommend?user_id={quote(user)}&k={self.k}&index={self.index}"
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as err:  # timeout, reset: a fresh connection
            self._error(type(err).__name__)
            self.conn.close()
            self.conn = self._connect()
            return
        elapsed_s = time.perf_counter() - t0
        if response.status != 200:
            self._error(f"HTTP {response.status}")
            return
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            self._error("not a results object")
            return
        if len(results) != 1 or results[0]["user_id"] != user or not 0 < len(results[0]["items"]) <= self.k:
            self._error("wrong answer")
            return
        if timed:
            self.latencies_s.append(elapsed_s)

    def run(self, *, warmup: int, requests: int, warm: threading.Barrier, deadline: list[float]) -> None:
        try:
            for _ in range(warmup):
                self.request(timed=False)
            warm.wait()
            for _ in range(requests):
                if time.perf_counter() > deadline[0]:
                    self._error("stopped at --max-seconds")
                    break
                self.request(timed=True)
        finally:
            self.conn.close()


def rss_mib(proc: psutil.Process) -> float:
    return proc.memory_info().rss / MIB


def run_once(args: argparse.Namespace, user_ids: list[str], *, index: str, threads: int, out: Path) -> dict:
    load_before = os.getloadavg()[0]  # the machine may be shared: record how busy it was
    log_file = out / f"server-{index}-t{threads}.log"
    proc, port = start_server(
        args.export, index=index, threads=threads, log_file=log_file, start_timeout_s=args.start_timeout_s
    )
    server = psutil.Process(proc.pid)
    try:
        rss = {"start": rss_mib(server)}
        clients = [
            Client(port, user_ids, k=args.k, index=index, timeout_s=args.timeout_s, seed=args.seed + i)
            for i in range(args.clients)
        ]
        warm = threading.Barrier(args.clients + 1)
        deadline = [float("inf")]  # set once warm-up is over
        workers = [
            threading.Thread(
                target=c.run,
                kwargs={"warmup": args.warmup, "requests": args.requests, "warm": warm, "deadline": deadline},
                daemon=True,
            )
            for c in clients
        ]
        for w in workers:
            w.start()
        warm.wait(timeout=args.max_seconds)
        rss["after_warmup"] = rss_mib(server)
        t0 = time.perf_counter()
        deadline[0] = t0 + args.max_seconds
        peak = rss["after_warmup"]
        while alive := [w for w in workers if w.is_alive()]:
            alive[0].join(0.2)
            peak = max(peak, rss_mib(server))
        wall_s = time.perf_counter() - t0
        rss["end"] = rss_mib(server)
        rss["peak"] = peak
    finally:
        exit_code = stop_server(proc)
    latencies_ms = np.array([t for c in clients for t in c.latencies_s]) * 1e3
    errors: dict[str, int] = {}
    for c in clients:
        for kind, count in c.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99]) if latencies_ms.size else (float("nan"),) * 3
    return {
        "index": index,
        "threads": threads,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "k": args.k,
        "ok": int(latencies_ms.size),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(latencies_ms.max()) if latencies_ms.size else float("nan"),
        "mean_ms": float(latencies_ms.mean()) if latencies_ms.size else float("nan"),
        "throughput_rps": latencies_ms.size / wall_s,
        "wall_s": wall_s,
        "server_rss_mib": {name: round(value, 1) for name, value in rss.items()},
        "server_exit_code": exit_code,
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| index | OMP threads | clients x requests | p50 ms | p90 ms | p99 ms | max ms | req/s | errors "
        "| server RSS MiB start / warm / end (peak) | load avg before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = r["server_rss_mib"]
        lines.append(
            f"| {r['index']} | {r['threads'] or 'default'} | {r['clients']} x {r['requests_per_client']:,} "
            f"| {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} "
            f"| {r['throughput_rps']:.0f} | {r['errors']} "
            f"| {rss['start']:.0f} / {rss['after_warmup']:.0f} / {rss['end']:.0f} ({rss['peak']:.0f}) "
            f"| {r['load_average_1min'][0]:.1f} / {r['load_average_1min'][1]:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="export folder (python -m distgnn.export)")
    parser.add_argument("--clients", type=int, default=4, help="client threads, one keep-alive connection each")
    parser.add_argument("--requests", type=int, default=10_000, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per client first")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument(
        "--threads",
        default="1",
        help="comma-separated server --threads values (OpenMP threads per handler; 0 = default)",
    )
    parser.add_argument("--index", default="flat", help="comma-separated indexes to load-test, one server each")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="per-request timeout")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop a run's timed phase after this long")
    parser.add_argument("--start-timeout-s", type=float, default=120.0, help="wait this long for the server")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users asked for")
    parser.add_argument("--out", default="benchmarks/out/serve", help="folder for the JSON results and server logs")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.warmup < 0 or args.k < 1:
        parser.error("--clients, --requests and --k must be positive, --warmup not negative")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    user_ids = distgnn.load_export(args.export).user_ids.to_pylist()
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
    }
    rows = []
    for index in args.index.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            row = run_once(args, user_ids, index=index, threads=threads, out=out)
            row.update(export=args.export, machine=machine)
            (out / f"serve-{index}-t{threads}-c{args.clients}.json").write_text(json.dumps(row, indent=2))
            rows.append(row)
            print(markdown([row]).splitlines()[-1], flush=True)
    print(f"\n{args.export}: {len(user_ids):,} users; {machine['cpu_count']} CPUs; clients and server on one machine\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()

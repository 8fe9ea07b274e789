"""Serve an export's recommendations over HTTP (JSON), on 127.0.0.1 unless told otherwise.

    python -m distgnn.serve --export exports/my-run [--port 8000] [--index hnsw]
    curl 'http://127.0.0.1:8000/recommend?user_id=17&k=10'

The endpoints and their errors are described in :mod:`distgnn.serving.http`. Ctrl-C or SIGTERM
stops the server: no new connections, the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys

import distgnn
from distgnn.core.cli import configure_logging, run_command
from distgnn.core.config import CommandParser
from distgnn.serving.http import make_server

log = logging.getLogger(__name__)


def serve(export_dir: str, *, host: str, port: int, verify: bool, index: str, threads: int) -> int:
    """Load the export, listen, print where, and serve until Ctrl-C or SIGTERM."""
    export = distgnn.load_export(export_dir, verify=verify)
    server = make_server(export, host, port, threads, index=index)
    # SIGTERM (service managers, `kill`) stops the same way as Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(
        f"listening on {server.url} ({server.num_users:,} users, {server.num_items:,} items from {export_dir}; "
        f"indexes {', '.join(server.index_names)}, default {index}); Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m distgnn.serve",
        description="Serve top-k recommendations of an export as JSON over HTTP: "
        "GET /healthz, GET /recommend?user_id=17&k=10, POST /recommend "
        '{"user_ids": [...]} or {"history": [item ids]} (cold start).',
    )
    parser.add_argument(
        "--export", required=True, help="export folder written by python -m distgnn.export (or its URI, s3://...)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only). The endpoint has no "
        "authentication: binding another interface (e.g. 0.0.0.0) exposes it to the network, "
        "so do that deliberately, behind a proxy or firewall",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 = any free port, printed (default: 8000)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every export file's sha256 against the manifest before serving (reads all files)",
    )
    parser.add_argument(
        "--index",
        default="flat",
        help="index searched when a request names none; requests may name any of the export's indexes (default: flat)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OpenMP threads (FAISS and torch) per request-handler thread; 0 = leave the libraries' "
        "defaults (all cores each). 1 because handlers run concurrently: default threads "
        "oversubscribe the cores and multiply tail latency (default: 1)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    if args.threads < 0:
        parser.error(f"--threads must be 0 or more, got {args.threads}")
    configure_logging()
    return run_command(
        lambda: serve(
            args.export, host=args.host, port=args.port, verify=args.verify, index=args.index, threads=args.threads
        )
    )


if __name__ == "__main__":
    sys.exit(main())

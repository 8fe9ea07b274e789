"""python -m distgnn.partition: split a graph directory into parts, one per worker
(:mod:`distgnn.data.partition`)."""

from __future__ import annotations

import sys

from distgnn.core.cli import configure_logging, run_command
from distgnn.core.config import CommandParser
from distgnn.data.partition import METHODS, write_partitions


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m distgnn.partition",
        description="Partition a prepared graph directory (from python -m distgnn.prepare) into parts, one per "
        "worker, written to DIR/parts/. Replaces an existing parts/ folder.",
    )
    parser.add_argument("--graph", required=True, metavar="DIR", help="prepared graph directory")
    parser.add_argument(
        "--partitions",
        required=True,
        type=int,
        metavar="P",
        help="number of parts, usually the number of training workers",
    )
    parser.add_argument(
        "--method",
        default="metis",
        choices=METHODS,
        help="metis: fewest edges between parts, parts balanced by edges (needs pymetis); "
        "random: uniform random part per node; hash: part from the node id alone, "
        "no global view needed (default: metis)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of METIS, the random draw or the hash (default: 0)")
    args = parser.parse_args(argv)
    configure_logging()
    return run_command(lambda: write_partitions(args.graph, args.partitions, method=args.method, seed=args.seed) and 0)


if __name__ == "__main__":
    sys.exit(main())

"""python -m distgnn.partition: split a graph directory into parts, one per worker
(:mod:`distgnn.data.partition`)."""

from __future__ import annotations

import sys

from distgnn.core.cli import configure_logging, run_command
from distgnn.core.config import CommandParser
from distgnn.core.errors import ConfigError
from distgnn.data.partition import CHOICES, write_partitions


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
        default="auto",
        choices=CHOICES,
        help="auto: metis when its predicted memory fits --memory_gb, else ldg (the choice and why are logged); "
        "metis: fewest edges between parts, parts balanced by edges, holds the whole graph several times over; "
        "ldg: streaming balanced partitioner, reads the graph in chunks, cuts more edges than metis and far "
        "fewer than hash; random: uniform random part per node; hash: part from the node id alone, "
        "no global view needed (default: auto)",
    )
    parser.add_argument(
        "--memory_gb",
        type=float,
        default=None,
        metavar="GB",
        help="memory budget that --method auto decides by (default: half of the memory available now)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of METIS, LDG, the random draw or the hash (default: 0)"
    )
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        if args.memory_gb is not None and not args.memory_gb > 0:
            raise ConfigError(f"config key 'memory_gb': expected a positive number of GB, got {args.memory_gb}")
        write_partitions(args.graph, args.partitions, method=args.method, seed=args.seed, memory_gb=args.memory_gb)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

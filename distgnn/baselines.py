"""python -m distgnn.baselines: item-kNN and popularity under training's evaluation protocol."""

from __future__ import annotations

import sys
import time

from distgnn.core.cli import configure_logging, run_command
from distgnn.core.config import CommandParser
from distgnn.data.graph import load_graph
from distgnn.eval.protocol import evaluate_item_knn_baseline, evaluate_popularity_baseline


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m distgnn.baselines",
        description="Test metrics of the item-kNN and popularity baselines on a prepared graph directory, "
        "under training's protocol (full ranking, training and validation items excluded).",
    )
    parser.add_argument("--graph", required=True, metavar="DIR", help="prepared graph directory")
    parser.add_argument("--neighbors", type=int, default=100, help="most similar items each item keeps (default: 100)")
    parser.add_argument(
        "--plain-cosine",
        action="store_true",
        help="count every co-occurrence as 1 (textbook item-kNN) instead of 1 / the user's "
        "number of items (default: inverse user degree, the stronger baseline)",
    )
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split to score (default: test)")
    parser.add_argument("--ks", default="20", help="comma-separated cut-offs K (default: 20)")
    parser.add_argument("--batch-size", type=int, default=1024, help="users scored at once (default: 1024)")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        graph, ks = load_graph(args.graph), tuple(int(k) for k in args.ks.split(","))
        t0 = time.perf_counter()
        rows = {
            "item-kNN": evaluate_item_knn_baseline(
                graph,
                args.split,
                ks,
                neighbors=args.neighbors,
                batch_size=args.batch_size,
                inverse_user_degree=not args.plain_cosine,
            )
        }
        seconds = time.perf_counter() - t0
        rows["popularity"] = evaluate_popularity_baseline(graph, args.split, ks, batch_size=args.batch_size)
        names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
        print(f"| baseline | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
        for name, metrics in rows.items():
            print(f"| {name} | {' | '.join(f'{metrics[n]:.4f}' for n in names)} |")
        print(f"{args.split} users: {metrics['num_users']:.0f}; item-kNN took {seconds:.1f} s")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

"""python -m distgnn.recommend: top-k unseen items for users of an export (:mod:`distgnn.serving.recommend`)."""

from __future__ import annotations

import json
import sys

from distgnn.core.cli import configure_logging, run_command, user_path
from distgnn.core.config import CommandParser
from distgnn.serving.exact import RunScorer
from distgnn.serving.recommend import (
    items_from_file,
    load_export,
    output_paths,
    users_from_file,
    write_recommendations,
)
from distgnn.serving.rerank import DEFAULT_POOL


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m distgnn.recommend",
        description="Recommend the top-k unseen items for users of an export: a few users on stdout "
        "(--user-ids), or every user / the users of a file into Parquet or CSV (--all-users, --users-file "
        "with --output), optionally re-ranked (--exclude-items, --boost-items, --mmr-lambda).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", help="export folder written by python -m distgnn.export (or its URI, s3://...)")
    source.add_argument(
        "--run",
        help="a training run directory instead of an export: its best model scores the whole catalogue "
        "exactly for --user-ids (on stdout). The way to serve a pair model (model.name ncf, which has "
        "no export: an MLP scores each pair, so no ANN index ranks as it does); re-ranking options, "
        "--all-users and --users-file need an export",
    )
    parser.add_argument("--user-ids", help="comma-separated raw user ids, as in the input data")
    parser.add_argument("--all-users", action="store_true", help="every user of the export, in index order")
    parser.add_argument(
        "--users-file",
        metavar="FILE",
        help="file of raw user ids: a .parquet file with a user_id column; or text, either a CSV whose "
        "header names a user_id column or one id per line without header. Answered in file order, "
        "repeats kept. An unknown id is an error naming the file, its rows and the count, unless "
        "--skip-unknown-users",
    )
    parser.add_argument(
        "--skip-unknown-users",
        action="store_true",
        help="leave out the ids of --users-file the export does not know, with one warning giving "
        "their count and first rows (a file with no known id is still an error)",
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (default: 10)")
    parser.add_argument("--index", default="flat", help="which of the export's indexes to search (default: flat)")
    parser.add_argument(
        "--format",
        default="table",
        choices=("table", "csv", "json"),
        help="output format on stdout, without --output (default: table)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="file to write (required with --all-users and --users-file): columns user_id, rank, "
        "item_id, score, ids as the export's raw strings. Streamed in chunks of users, written "
        "under a temporary name, fsynced and renamed; FILE.distgnn.json records what wrote it. An "
        "existing file is replaced only if distgnn wrote it as recommendations (or with --overwrite)",
    )
    parser.add_argument(
        "--output-format",
        default="auto",
        choices=("auto", "parquet", "csv", "both"),
        help="auto: from the suffix of --output (.parquet or .csv); parquet/csv: that format, its "
        "suffix added to --output when it has none; both: OUTPUT.parquet and OUTPUT.csv (a .parquet "
        "or .csv suffix of --output dropped first) (default: auto)",
    )
    parser.add_argument(
        "--chunk-size",
        metavar="USERS",
        type=int,
        default=4096,
        help="users searched and re-ranked at once when writing --output; bounds memory, does not "
        "change the result (default: 4096)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="also replace an existing --output file distgnn did not write"
    )
    parser.add_argument(
        "--mmr-lambda",
        metavar="LAMBDA",
        type=float,
        default=1.0,
        help="maximal marginal relevance: pick the k items from the best --pool greedily by "
        "lambda * relevance - (1 - lambda) * max cosine similarity to the items already picked "
        "(relevance: score + boost, scaled per user to [0, 1] over the pool). From 0 to 1; 1.0 = "
        "off, the plain order (default: 1.0)",
    )
    parser.add_argument(
        "--pool",
        metavar="N",
        type=int,
        default=DEFAULT_POOL,
        help=f"candidates per user MMR picks from, raised to --k when smaller (default: {DEFAULT_POOL})",
    )
    parser.add_argument(
        "--exclude-items",
        metavar="FILE",
        help="text file of raw item ids, one per line (or a CSV with an item_id header): never "
        "recommended. Unknown ids are skipped with one warning giving their count and first rows; "
        "a file with no known id is an error",
    )
    parser.add_argument(
        "--boost-items",
        metavar="FILE",
        help="text file of raw item ids as --exclude-items: --boost is added to their score before "
        "MMR, and they are scored exactly, so a boosted item anywhere in the catalogue can enter "
        "the top k. Unknown ids as in --exclude-items; an excluded item stays excluded",
    )
    parser.add_argument(
        "--boost",
        metavar="WEIGHT",
        type=float,
        help="weight added to the score of each --boost-items item, in the units of the export's "
        "scores (see the score column; negative demotes); required with --boost-items",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every file's sha256 against the manifest before answering (reads the whole "
        "export once: ~60 ms for the synthetic default, ~0.3 s for Gowalla). Without it, "
        "the manifest's structure, the file names and sizes are still checked",
    )
    args = parser.parse_args(argv)
    given = {"--user-ids": args.user_ids is not None, "--all-users": args.all_users, "--users-file": args.users_file}
    chosen = [name for name, value in given.items() if value]
    if len(chosen) != 1:
        parser.error(f"give exactly one of --user-ids, --all-users, --users-file (got {', '.join(chosen) or 'none'})")
    if args.output is None and args.user_ids is None:
        parser.error(f"{chosen[0]} writes a file: give --output")
    if (args.boost_items is None) != (args.boost is None):
        parser.error("--boost-items and --boost go together")
    if args.skip_unknown_users and not args.users_file:
        parser.error("--skip-unknown-users applies to --users-file only")

    if args.run and (
        args.output or args.user_ids is None or args.mmr_lambda != 1.0 or args.exclude_items or args.boost_items
    ):
        parser.error("--run answers --user-ids on stdout only; the other options need an --export")

    configure_logging()

    def body() -> int:
        if args.run:
            scorer = RunScorer(user_path(args.run, "--run"))
            print_table(
                scorer.recommend([u.strip() for u in args.user_ids.split(",") if u.strip()], args.k), args.format
            )
            return 0
        export = load_export(args.export, verify=args.verify)
        exclude = boost = None
        if args.exclude_items:
            exclude = items_from_file(export, user_path(args.exclude_items, "--exclude-items"))[0]
        if args.boost_items:
            boosted = items_from_file(export, user_path(args.boost_items, "--boost-items"))[0]
            boost = dict.fromkeys(boosted.tolist(), args.boost)
        rerank = {"mmr_lambda": args.mmr_lambda, "pool": args.pool, "exclude": exclude, "boost": boost}
        if args.output is None:
            user_ids = [u.strip() for u in args.user_ids.split(",") if u.strip()]
            print_table(export.recommend(user_ids, args.k, index=args.index, **rerank), args.format)
            return 0
        if args.all_users:
            rows = None
        elif args.users_file:
            rows = users_from_file(
                export, user_path(args.users_file, "--users-file"), skip_unknown=args.skip_unknown_users
            )
        else:
            rows = export.user_index([u.strip() for u in args.user_ids.split(",") if u.strip()])
        outputs = output_paths(user_path(args.output, "--output", output=True), args.output_format)
        write_recommendations(
            export,
            outputs,
            rows=rows,
            k=args.k,
            index=args.index,
            rules=export.rerank_rules(**rerank),
            chunk_size=args.chunk_size,
            overwrite=args.overwrite,
            settings={
                "users": "all" if args.all_users else args.users_file or "--user-ids",
                "exclude_items": args.exclude_items,
                "boost_items": args.boost_items,
                "boost": args.boost,
            },
            progress=True,
        )
        return 0

    return run_command(body)


def print_table(result, fmt: str) -> None:
    """``result`` (user_id, rank, item_id, score) on stdout as a table, CSV or JSON."""
    if fmt == "json":
        print(json.dumps(result.to_pylist()))
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    else:
        print(f"{'user_id':>10} {'rank':>4} {'item_id':>12} {'score':>8}")
        for row in result.to_pylist():
            print(f"{row['user_id']:>10} {row['rank']:>4} {row['item_id']:>12} {row['score']:8.4f}")


if __name__ == "__main__":
    sys.exit(main())

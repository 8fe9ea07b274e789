"""python -m distgnn.export: exact full-graph embeddings of a run's best model as Parquet, plus FAISS
indexes over the items (:mod:`distgnn.serving.export`)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from distgnn.core.cli import configure_logging, run_command, user_path
from distgnn.core.config import CommandParser
from distgnn.core.storage import download, is_uri, upload
from distgnn.serving.export import export


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        prog="python -m distgnn.export",
        description="Compute exact full-graph embeddings of a training run's "
        "best model and build FAISS indexes over the items.",
    )
    parser.add_argument(
        "--run",
        required=True,
        help="run directory written by python -m distgnn.train, or its copy on storage "
        "(s3://bucket/runs/NAME, as --run.storage writes it)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="export folder to write; written under a temporary name and renamed when complete. "
        "An existing folder is replaced only if it is an earlier export. A URI "
        "(s3://bucket/exports/NAME) is written locally first, then copied there",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="also replace an existing non-empty folder that distgnn did not write (never a run or graph directory)",
    )
    parser.add_argument(
        "--indexes",
        default="flat,ivf",
        help="comma-separated index types: flat, ivf, ivfpq, hnsw, or FAISS factory strings (default: flat,ivf)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16"),
        help="storage type of the embeddings in Parquet (default: float32)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=65536,
        help="destination nodes per chunk in layer-wise inference; bounds memory (default: 65536)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="how many processes compute the embeddings: 1 = this process (default); N > 1 = "
        "N Ray actors, each holding a contiguous range of the graph's rows (about equal "
        "edges) and computing those rows of every layer. Joins the Ray cluster of "
        "RAY_ADDRESS when set, else starts a local Ray. The embeddings are the same "
        "either way (to float rounding)",
    )
    parser.add_argument(
        "--use-gpu",
        default="auto",
        choices=("auto", "true", "false"),
        help="build FAISS indexes on a GPU: auto = when faiss sees one (default: auto)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    use_gpu = {"auto": "auto", "true": True, "false": False}[args.use_gpu]

    def body() -> None:
        run = user_path(args.run, "--run")
        output = user_path(args.output, "--output", output=True)
        if is_uri(run):  # a run directory on object storage: a local copy, without Ray's checkpoints
            run = str(download(run, skip=("ray",)))
        local_output = Path(tempfile.mkdtemp(prefix="distgnn-export-")) / "export" if is_uri(output) else output
        export(
            run,
            local_output,
            indexes=tuple(i for i in args.indexes.split(",") if i),
            dtype=args.dtype,
            chunk_size=args.chunk_size,
            use_gpu=use_gpu,
            workers=args.workers,
            overwrite=args.overwrite,
        )
        if is_uri(output):
            upload(Path(local_output), output)

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

"""Stage 3: exact full-graph embeddings of every user and item, as Parquet, plus FAISS indexes.

    python -m distgnn.export --run runs/my-run --output exports/my-run --indexes flat,ivf

The export folder (written under a temporary name, renamed when complete)::

    manifest.json            model, run, dims, counts, metric, test metrics recomputed from the
                             embeddings, index parameters, checksums, distgnn version
    users.parquet            raw_id (string), index (int64), embedding (fixed_size_list<float32|float16>)
    items.parquet            same for items
    seen.parquet             user, item indices of every known interaction (excluded when recommending)
    index-<type>.faiss       one FAISS index per requested type, over the item embeddings
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import distgnn
from distgnn.cli import configure_logging, run_command
from distgnn.checkpoint import BEST_MODEL, load_model_state
from distgnn.config import TrainJobConfig, build_config
from distgnn.errors import DataError
from distgnn.files import atomic_folder, checksums
from distgnn.graph import Graph, load_graph
from distgnn.index import build_index, save_index
from distgnn.rundir import CONFIG_FILE, RESULTS_FILE
from distgnn.train import evaluate, final_embeddings, make_model, scoring_metric

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def load_run(run_dir: str | Path) -> tuple[TrainJobConfig, torch.nn.Module, Graph, dict]:
    """The job config, the best model (weights loaded) and the graph of a training run."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, BEST_MODEL):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir}: not a finished training run ({name} is missing)")
    import yaml

    job = build_config(TrainJobConfig, yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    graph = load_graph(job.graph)
    model = make_model(job, graph)
    state = load_model_state(run_dir / BEST_MODEL)
    model.load_state_dict(state["model"])
    model.eval()
    return job, model, graph, state["info"]


def embedding_table(raw_ids: pa.Array, vectors: np.ndarray, dtype: str) -> pa.Table:
    """``raw_id, index, embedding`` with the embedding as a fixed-size list (readable anywhere)."""
    values = vectors.astype(np.float16 if dtype == "float16" else np.float32)
    flat = pa.array(values.reshape(-1))
    return pa.table({"raw_id": raw_ids, "index": pa.array(np.arange(len(values), dtype=np.int64)),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, values.shape[1])})


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(raw_ids [n], vectors [n, d] float32)`` from an export's users/items Parquet file."""
    table = pq.read_table(path)
    emb = table["embedding"].combine_chunks()
    dim = emb.type.list_size
    vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return table["raw_id"].to_numpy(zero_copy_only=False), vectors


def export(run_dir: str | Path, output: str | Path, *, indexes: tuple[str, ...] = ("flat", "ivf"),
           dtype: str = "float32", chunk_size: int = 65536, use_gpu: str = "auto") -> Path:
    """Compute, check and write an export; returns its folder."""
    t0 = time.perf_counter()
    job, model, graph, info = load_run(run_dir)
    emb = final_embeddings(model, graph, job.optim.loss, chunk_size=chunk_size, progress=True)
    user_emb, item_emb = emb[: graph.num_users], emb[graph.num_users:]
    log.info("computed exact embeddings of %s nodes in %.1f s", f"{graph.num_nodes:,}", time.perf_counter() - t0)

    # Same protocol and code as training's final test, so the two must agree.
    test = evaluate(emb, graph, "test", job.eval.ks, batch_size=job.eval.batch_size)
    results_file = Path(run_dir) / RESULTS_FILE
    trained = json.loads(results_file.read_text())["test"] if results_file.exists() else {}
    for key, value in trained.items():
        if key != "num_users" and abs(value - test[key]) > 1e-4:
            log.warning("%s from the export (%.5f) differs from training's (%.5f)", key, test[key], value)

    users = pq.read_table(graph.path / "users.parquet")["raw_id"]
    items = pq.read_table(graph.path / "items.parquet")["raw_id"]
    seen_user, seen_item = [], []
    for name in ("train", "val", "test"):
        t = pq.read_table(graph.path / f"{name}.parquet", columns=["user", "item"])
        seen_user.append(t["user"].to_numpy())
        seen_item.append(t["item"].to_numpy())

    with atomic_folder(output) as tmp:
        pq.write_table(embedding_table(users, user_emb.numpy(), dtype), tmp / "users.parquet")
        pq.write_table(embedding_table(items, item_emb.numpy(), dtype), tmp / "items.parquet")
        pq.write_table(pa.table({"user": np.concatenate(seen_user), "item": np.concatenate(seen_item)}),
                       tmp / "seen.parquet")
        index_info = {}
        for index_type in indexes:
            t1 = time.perf_counter()
            index = build_index(item_emb.numpy(), index_type, metric="ip", use_gpu=use_gpu)
            save_index(index, tmp / f"index-{index_type}.faiss")
            index_info[index_type] = {"file": f"index-{index_type}.faiss", "ntotal": int(index.ntotal),
                                      "build_s": round(time.perf_counter() - t1, 3)}
        manifest: dict[str, Any] = {
            "distgnn_version": distgnn.__version__,
            "run": str(Path(run_dir).resolve()),
            "graph": str(graph.path.resolve()),
            "model": job.model.name,
            "best_epoch": info.get("epoch"),
            "dim": int(emb.shape[1]),
            "dtype": dtype,
            # Vectors are stored ready for inner-product search (already normalised for cosine).
            "metric": scoring_metric(job.optim.loss),
            "num_users": graph.num_users,
            "num_items": graph.num_items,
            "test_metrics": test,
            "indexes": index_info,
        }
        manifest["checksums"] = checksums(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("wrote %s in %.1f s: test %s", output, time.perf_counter() - t0,
             "  ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "num_users"))
    return Path(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distgnn.export",
                                     description="Compute exact full-graph embeddings of a training run's "
                                                 "best model and build FAISS indexes over the items.")
    parser.add_argument("--run", required=True, help="run directory written by distgnn.train")
    parser.add_argument("--output", required=True, help="export folder to write (replaced atomically)")
    parser.add_argument("--indexes", default="flat,ivf",
                        help="comma-separated index types: flat, ivf, ivfpq, hnsw, or FAISS factory strings "
                             "(default: flat,ivf)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                        help="storage type of the embeddings in Parquet (default: float32)")
    parser.add_argument("--chunk-size", type=int, default=65536,
                        help="destination nodes per chunk in layer-wise inference; bounds memory (default: 65536)")
    parser.add_argument("--use-gpu", default="auto", choices=("auto", "true", "false"),
                        help="build FAISS indexes on a GPU: auto = when faiss sees one (default: auto)")
    args = parser.parse_args(argv)
    configure_logging()
    use_gpu = {"auto": "auto", "true": True, "false": False}[args.use_gpu]
    return run_command(lambda: export(args.run, args.output, indexes=tuple(i for i in args.indexes.split(",") if i),
                                      dtype=args.dtype, chunk_size=args.chunk_size, use_gpu=use_gpu) and 0)


if __name__ == "__main__":
    sys.exit(main())

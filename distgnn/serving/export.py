"""Stage 3: exact full-graph embeddings of every user and item, as Parquet, plus FAISS indexes.

    python -m distgnn.export --run runs/my-run --output exports/my-run --indexes flat,ivf
    python -m distgnn.export --run runs/my-run --output exports/my-run --workers 4   # on Ray actors

Embeddings are exact: layer-wise inference over the whole graph, in this process or, with
``--workers N``, on N Ray actors that each own a range of destination rows (:mod:`distgnn.serving.inference`).

The export folder (written under a temporary name, renamed when complete; ``manifest.json`` is
written last, so a folder without one is incomplete)::

    manifest.json            model, run, dims, counts, metric, test metrics recomputed from the
                             embeddings, index parameters, inference workers and time, checksums,
                             distgnn version
    users.parquet            raw_id (string), index (int64), embedding (fixed_size_list<float32|float16>)
    items.parquet            same for items
    seen.parquet             user, item indices of every known interaction (excluded when recommending)
    index-<type>.faiss       one FAISS index per requested type, over the item embeddings
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distgnn.core.checkpoint import BEST_MODEL, load_model_into
from distgnn.core.config import TrainJobConfig, build_config
from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import atomic_folder, check_replaceable, checksums, inside, sha256_file
from distgnn.core.rundir import CONFIG_FILE, RESULTS_FILE
from distgnn.core.version import VERSION
from distgnn.data.graph import Graph, load_graph, verify_graph_dir
from distgnn.eval.protocol import evaluate_job
from distgnn.nn.models import exact_vectors, model_from_config, scoring_vectors
from distgnn.serving.index import build_index, save_index
from distgnn.serving.inference import distributed_embeddings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def load_run(run_dir: str | Path) -> tuple[TrainJobConfig, torch.nn.Module, Graph, dict]:
    """The job config, the best model (weights loaded) and the graph of a training run."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, BEST_MODEL):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir}: not a finished training run ({name} is missing)")
    import yaml

    try:
        tree = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{run_dir / CONFIG_FILE}: not valid YAML ({err})") from None
    job = build_config(TrainJobConfig, tree)
    if not job.graph:
        raise DataError(f"{run_dir / CONFIG_FILE}: names no graph directory (key 'graph')")
    verify_graph_dir(job.graph)  # checksums: a damaged graph must not export degraded embeddings
    graph = load_graph(job.graph)
    model = model_from_config(job.model, graph, task=job.task)
    try:  # a partitioned run's tables come shard by shard (model.pt says where)
        info = load_model_into(run_dir / BEST_MODEL, model)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{run_dir / BEST_MODEL}: weights do not fit the model of {CONFIG_FILE} ({first})") from None
    model.eval()
    return job, model, graph, info


def embedding_table(raw_ids: pa.Array, vectors: np.ndarray) -> pa.Table:
    """``raw_id, index, embedding`` with the embedding as a fixed-size list (readable anywhere);
    the list's value type is ``vectors``' dtype (float32 or float16)."""
    flat = pa.array(vectors.reshape(-1))
    return pa.table(
        {
            "raw_id": raw_ids,
            "index": pa.array(np.arange(len(vectors), dtype=np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


ROWS_PER_WRITE = 1 << 18  # rows of embeddings encoded at a time (one Parquet row group)


def write_embeddings(path: Path, raw_ids: pa.ChunkedArray, vectors: np.ndarray) -> None:
    """:func:`embedding_table` written a row group of :data:`ROWS_PER_WRITE` rows at a time, so
    encoding holds one group, never the whole table (the vectors are read in place)."""
    with pq.ParquetWriter(path, embedding_table(raw_ids[:0], vectors[:0]).schema) as writer:
        for start in range(0, len(vectors), ROWS_PER_WRITE):
            table = embedding_table(raw_ids[start : start + ROWS_PER_WRITE], vectors[start : start + ROWS_PER_WRITE])
            writer.write_table(table.set_column(1, "index", pa.array(np.arange(start, start + table.num_rows))))


def write_seen(path: Path, graph_dir: Path) -> None:
    """``seen.parquet``: the user, item indices of every known interaction (train, val, test), one
    split at a time."""
    writer = None
    try:
        for name in ("train", "val", "test"):
            t = pq.read_table(graph_dir / f"{name}.parquet", columns=["user", "item"])
            writer = writer or pq.ParquetWriter(path, t.schema.remove_metadata())
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(raw_ids [n], vectors [n, d] float32)`` from an export's users/items Parquet file."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    if not {"raw_id", "embedding"} <= set(table.column_names) or not pa.types.is_fixed_size_list(
        table.schema.field("embedding").type
    ):
        raise DataError(
            f"{path}: expected columns raw_id and embedding (fixed-size list), got "
            f"{', '.join(f'{f.name}: {f.type}' for f in table.schema)}"
        )
    emb = table["embedding"].combine_chunks()
    dim = emb.type.list_size
    vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return table["raw_id"].to_numpy(zero_copy_only=False), vectors


EXPORT_FILES = ("users.parquet", "items.parquet", "seen.parquet")


def read_manifest(path: str | Path, *, verify: bool = False) -> dict:
    """The manifest of a complete export folder, after checks that cost little: its structure, every
    file it names inside the folder and of the recorded size. ``verify`` also checks every file's
    sha256 (a read of the whole folder). An incomplete folder (a crashed export's temporary folder:
    the manifest is written last) or a damaged one raises DataError naming the folder or file."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such export folder")
    file = path / MANIFEST
    if not file.is_file():
        raise DataError(
            f"{path}: not a complete export folder (no {MANIFEST}, which is written last); run python -m distgnn.export"
        )
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{file}: not valid JSON ({err})") from None
    for key, kind in (
        ("checksums", dict),
        ("sizes", dict),
        ("indexes", dict),
        ("num_users", int),
        ("num_items", int),
        ("dim", int),
    ):
        if not isinstance(manifest.get(key), kind):
            raise DataError(
                f"{file}: key '{key}' is missing or not a {kind.__name__}; the export is "
                "incomplete or from another tool"
            )
    listed = set(manifest["checksums"])
    needed = set(EXPORT_FILES) | {
        entry.get("file") if isinstance(entry, dict) else None for entry in manifest["indexes"].values()
    }
    if needed - listed or listed != set(manifest["sizes"]):
        missing = sorted(str(n) for n in (needed - listed) | (listed ^ set(manifest["sizes"])))
        raise DataError(f"{file}: no checksum or size recorded for {', '.join(missing)}")
    for name, digest in manifest["checksums"].items():
        target = inside(path, name, MANIFEST)
        if not target.is_file():
            raise DataError(f"{path}: file {name} listed in {MANIFEST} is missing")
        if target.stat().st_size != manifest["sizes"][name]:
            raise DataError(
                f"{target}: {target.stat().st_size} bytes, {MANIFEST} records "
                f"{manifest['sizes'][name]}; the export is truncated or damaged"
            )
        if verify and sha256_file(target) != digest:
            raise DataError(f"{target}: checksum differs from {MANIFEST}; the export is damaged")
    return manifest


def exact_embeddings(
    model: torch.nn.Module, job: TrainJobConfig, graph: Graph, *, workers: int, chunk_size: int
) -> tuple[torch.Tensor, dict]:
    """``[N, d]`` scoring vectors as training evaluates them (:func:`exact_vectors`), in this process
    (``workers=1``) or on ``workers`` Ray actors; and a record of how (for the manifest)."""
    t0 = time.perf_counter()
    if workers == 1:
        emb, info = exact_vectors(model, graph, job, chunk_size=chunk_size, progress=True), {}
    else:
        emb, info = distributed_embeddings(model, job, graph, num_workers=workers, chunk_size=chunk_size, progress=True)
        emb = scoring_vectors(
            emb, model, cosine=job.cosine_scores, temperature=job.optim.temperature, num_users=graph.num_users
        )  # as exact_vectors does
    return emb, {
        "workers": workers,
        "chunk_size": chunk_size,
        "embedding_s": round(time.perf_counter() - t0, 3),
        **info,
    }


def export(
    run_dir: str | Path,
    output: str | Path,
    *,
    indexes: tuple[str, ...] = ("flat", "ivf"),
    dtype: str = "float32",
    chunk_size: int = 65536,
    use_gpu: str = "auto",
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Compute, check and write an export; returns its folder. ``workers > 1`` computes the
    embeddings on that many Ray actors (:mod:`distgnn.serving.inference`); the result is the same.
    ``output`` is replaced only if it is an earlier export (or, with ``overwrite``, a folder
    distgnn did not write)."""
    if workers < 1:
        raise ConfigError(f"--workers: expected at least 1, got {workers}")
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size: expected at least 1 row, got {chunk_size}")
    if not indexes:
        raise ConfigError("--indexes: expected at least one index type")
    check_replaceable(Path(output), "export", overwrite=overwrite)  # before the expensive part
    t0 = time.perf_counter()
    job, model, graph, info = load_run(run_dir)
    if model.pair_model:
        raise ConfigError(
            f"--run: {run_dir} trained model.name {job.model.name}, which scores a (user, item) pair with an MLP: "
            "no inner product of a user vector and an item vector ranks as it does, so no ANN index can serve it. "
            "Serve it by exact scoring of the catalogue: python -m distgnn.recommend --run RUN (see its --help)"
        )
    emb, inference = exact_embeddings(model, job, graph, workers=workers, chunk_size=chunk_size)
    log.info(
        "computed exact embeddings of %s nodes in %.1f s (%s)",
        f"{graph.num_nodes:,}",
        inference["embedding_s"],
        "in process" if workers == 1 else f"{workers} Ray workers",
    )

    # Same protocol and code as training's final test, so the two must agree.
    test = evaluate_job(emb, graph, "test", job.eval, task=job.task)
    results_file = Path(run_dir) / RESULTS_FILE
    trained = json.loads(results_file.read_text())["test"] if results_file.exists() else {}
    for key, value in trained.items():
        if key != "num_users" and abs(value - test[key]) > 1e-4:
            log.warning("%s from the export (%.5f) differs from training's (%.5f)", key, test[key], value)

    users = pq.read_table(graph.path / "users.parquet")["raw_id"]
    items = pq.read_table(graph.path / "items.parquet")["raw_id"]
    # Round to the storage type first, so the indexes hold exactly the vectors the files hold
    # (float32: the vectors themselves, no copy).
    stored = np.asarray(emb.numpy(), dtype=np.float16 if dtype == "float16" else np.float32)
    user_vec, item_vec = stored[: graph.num_users], stored[graph.num_users :]

    with atomic_folder(output, kind="export", overwrite=overwrite) as tmp:
        write_embeddings(tmp / "users.parquet", users, user_vec)
        write_embeddings(tmp / "items.parquet", items, item_vec)
        write_seen(tmp / "seen.parquet", graph.path)
        index_info = {}
        for index_type in indexes:
            t1 = time.perf_counter()
            index = build_index(
                np.ascontiguousarray(item_vec, dtype=np.float32), index_type, metric="ip", use_gpu=use_gpu
            )
            save_index(index, tmp / f"index-{index_type}.faiss")
            index_info[index_type] = {
                "file": f"index-{index_type}.faiss",
                "ntotal": int(index.ntotal),
                "build_s": round(time.perf_counter() - t1, 3),
            }
        manifest: dict[str, Any] = {
            "distgnn_version": VERSION,
            "run": str(Path(run_dir).resolve()),
            "graph": str(graph.path.resolve()),
            "model": job.model.name,
            "best_epoch": info.get("epoch"),
            "dim": int(emb.shape[1]),
            "dtype": dtype,
            # Vectors are stored ready for inner-product search (already normalised for cosine).
            "metric": job.scoring_metric,
            "num_users": graph.num_users,
            "num_items": graph.num_items,
            "test_metrics": test,
            "inference": inference,
            "indexes": index_info,
        }
        manifest["checksums"] = checksums(tmp)
        manifest["sizes"] = {name: (tmp / name).stat().st_size for name in manifest["checksums"]}
        # Last: a folder with a manifest is a complete one (see read_manifest).
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info(
        "wrote %s in %.1f s: test %s",
        output,
        time.perf_counter() - t0,
        "  ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "num_users"),
    )
    return Path(output)

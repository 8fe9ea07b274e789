"""Stage 1: raw interaction logs -> a graph directory (Parquet tables + memory-mappable CSR arrays).

    python -m distgnn.prepare --input ratings.csv --user_col userId --item_col movieId \
        --time_col timestamp --split temporal --output data/ml
    python -m distgnn.prepare --input s3://bucket/logs/ --format parquet --memory_gb 8 --output data/big

Layout of the graph directory (all written under a temporary name, renamed when complete)::

    meta.json                      counts, split, schema, source, checksums of every file below
                                   [, edge_weight, feature_columns, sample]
    users.parquet, items.parquet   id maps: dense index -> raw id (string) [, raw feature columns of
                                   --user_features/--item_features/--item_feature_cols, null where none]
    train.parquet, val.parquet, test.parquet
                                   user, item (dense indices) [, timestamp] [, rating]
                                   [, weight float32: --duplicates count or --event_weights]
    graph/indptr.npy, graph/indices.npy
                                   CSR of the training graph, both directions, homogeneous numbering
                                   (users 0..U-1, items U..U+I-1), rows sorted
    features/user.npy, features/item.npy   optional float32 node features
    parts/                         optional, with --partitions P: one folder per part (distgnn.data.partition)

How it runs, in bounded memory: the readers (:mod:`distgnn.data.readers`) stream the log batch by batch,
each checked (:mod:`distgnn.data.checks`), into a DuckDB table on disk; the relational steps
(:mod:`distgnn.data.split`) run as SQL there, out of core within ``memory_gb``; the split files and the
CSR are streamed out of DuckDB (:mod:`distgnn.data.writing`). Only per-node arrays (id maps, features,
the row pointer) are held in memory. The same log gives the same graph directory whatever
``memory_gb`` and ``threads`` are.

Bad input fails before anything is written, with one line (DataError or ConfigError) naming the file, the
row (1-based data row: the header is not counted) or the column, and what was expected. What works, and how:
ids are text as written, without surrounding whitespace (empty ids, NaN and missing-value markers fail);
extra columns are ignored; timestamps are int64 ordering keys (negative ones too; fractional or beyond
int64 fail); ratings must be finite; bytes that are not UTF-8 fail naming their row; users and items that
filters (keep_events, min_rating) leave without interactions are absent, and nothing left fails; an empty
val or test split is logged as a warning saying why. The output folder may not be the current folder or
above it, hold an input, or sit below a file (:func:`~distgnn.data.checks.check_output_path`).

Order of the steps: read (keep_events), min_rating, sample_fraction (whole users), ids (dense indices in
order of first appearance), repeated pairs (a pair in several given files goes to the most held-out one;
then first/last/error/count, with weights), held-out rows of given files whose ids never train are dropped,
min_item_interactions, split (target_events: only pairs with a target event are held out), cold-start
users, write. Feature tables are joined by raw id when writing (:func:`~distgnn.data.features.feature_matrix`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from distgnn.core.config import PrepareConfig, config_to_dict
from distgnn.core.errors import DataError
from distgnn.core.files import atomic_folder
from distgnn.data.checks import (
    check_output_path,
    check_prepare_config,
    input_paths,
    option_names,
    parse_event_weights,
    short,
)
from distgnn.data.features import FeatureTable, read_feature_tables, write_node_tables
from distgnn.data.graph import write_meta
from distgnn.data.partition import write_partitions
from distgnn.data.readers import ITEM_FEATURE_PREFIX, TEST, TRAIN, VAL, Log, read_interactions
from distgnn.data.split import (
    DROPPED,
    cold_start,
    compact_ids,
    count,
    deduplicate_pairs,
    drop_unseen_held_out,
    empty_split_reasons,
    held_out_pairs_win,
    registered,
    replace_table,
    split_labels,
    split_sizes,
)
from distgnn.data.writing import query_batches, write_csr, write_parquet

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
# DuckDB's share of memory_gb; the rest holds a batch and the per-node arrays
ENGINE_SHARE = 0.75


@contextmanager
def engine(folder: Path, *, memory_gb: float, threads: int) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB database in ``folder`` (created, and removed afterwards) that keeps within
    ``ENGINE_SHARE * memory_gb`` and spills the rest to ``folder``."""
    folder.mkdir(parents=True, exist_ok=False)
    con = duckdb.connect(str(folder / "prepare.duckdb"))
    try:
        con.execute(f"SET memory_limit = '{max(64, int(ENGINE_SHARE * memory_gb * 1024))}MB'")
        con.execute(f"SET threads = {threads or os.cpu_count() or 1}")
        con.execute(f"SET temp_directory = '{folder / 'spill'}'")
        con.execute("SET preserve_insertion_order = true")  # tables made with ORDER BY keep it
        yield con
    finally:
        con.close()
        shutil.rmtree(folder, ignore_errors=True)


def stage(con: duckdb.DuckDBPyConnection, data: Log) -> int:
    """Read the log into the table ``log``, numbering rows in reading order (``seq``); returns the count.
    A reader's error (a bad row) is raised as it is, not as DuckDB's wrapping of it."""
    schema = pa.schema([("seq", pa.int64()), *data.schema])
    failure: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        seq = 0
        # a bar for a person at a terminal (disable=None: off when stderr is not one, as in logs and tests)
        with tqdm(desc="reading", unit=" rows", unit_scale=True, disable=None) as bar:
            try:
                for batch in data.read():
                    n = batch.num_rows
                    yield pa.record_batch([pa.array(np.arange(seq, seq + n)), *batch.columns], schema=schema)
                    seq += n
                    bar.update(n)
            except BaseException as err:
                failure.append(err)
                raise

    try:
        with registered(con, "log__stream", pa.RecordBatchReader.from_batches(schema, batches())):
            con.execute("CREATE TABLE log AS SELECT * FROM log__stream")
    except duckdb.Error:
        if failure:
            raise failure[0] from None
        raise
    return count(con, "SELECT * FROM log")


def filter_min_rating(con: duckdb.DuckDBPyConnection, min_rating: float, source: str) -> None:
    """Keep interactions rated at least ``min_rating`` (-inf keeps all). Users and items left without
    any interaction are absent from the graph; none left at all is an error."""
    if min_rating == -np.inf:
        return
    total = count(con, "SELECT * FROM log")
    kept = count(con, f"SELECT * FROM log WHERE rating >= {float(min_rating)!r}")
    if kept == 0:
        low, high = con.execute("SELECT min(rating), max(rating) FROM log").fetchall()[0]
        raise DataError(
            f"{source}: no interactions left: min_rating {min_rating:g} keeps none of the "
            f"{total:,} (ratings range from {low:g} to {high:g})"
        )
    replace_table(con, "log", f"SELECT * FROM log WHERE rating >= {float(min_rating)!r} ORDER BY seq")
    log.info("kept %s of %s interactions rated >= %g", f"{kept:,}", f"{total:,}", min_rating)


def sample_users(con: duckdb.DuckDBPyConnection, fraction: float, *, seed: int) -> None:
    """Keep a random ``fraction`` of the users (at least one), each with all their rows: the users in
    order of first appearance, drawn by ``np.random.default_rng(seed).choice``."""
    if fraction >= 1:
        return
    users = con.sql("SELECT user FROM log GROUP BY user ORDER BY min(seq)").to_arrow_table()["user"]
    num_kept = max(1, int(np.floor(len(users) * fraction + 0.5)))
    chosen = np.random.default_rng(seed).choice(len(users), size=num_kept, replace=False)
    total = count(con, "SELECT * FROM log")
    with registered(con, "kept_users", pa.table({"user": users.take(pa.array(np.sort(chosen)))})):
        replace_table(con, "log", "SELECT * FROM log WHERE user IN (SELECT user FROM kept_users) ORDER BY seq")
    log.info(
        "sample_fraction %g: kept %s of %s users, %s of %s interactions",
        fraction,
        f"{num_kept:,}",
        f"{len(users):,}",
        f"{count(con, 'SELECT * FROM log'):,}",
        f"{total:,}",
    )


def encode_ids(con: duckdb.DuckDBPyConnection, columns: tuple[str, ...]) -> None:
    """Dense 0-based indices in order of first appearance: id maps ``user_ids``/``item_ids`` (raw_id, u|i)
    and the working table ``t`` (seq, file, row, u, i, ord, and the log's other columns but events and
    item features). ``ord`` is a row's time: its timestamp, or its reading order."""
    for kind, code in (("user", "u"), ("item", "i")):
        con.execute(
            f"""CREATE TABLE {kind}_ids AS SELECT {kind} AS raw_id,
                    (row_number() OVER (ORDER BY min(seq)) - 1)::BIGINT AS {code}
                FROM log GROUP BY {kind} ORDER BY {code}"""
        )
    kept = [c for c in columns if c in ("timestamp", "rating", "weight", "target", "given")]
    ord_ = "log.timestamp" if "timestamp" in columns else "log.seq"
    con.execute(
        f"""CREATE TABLE t AS SELECT log.seq, log.file, log.row, user_ids.u, item_ids.i, {ord_} AS ord
                {"".join(f", log.{c}" for c in kept)}
            FROM log JOIN user_ids ON log.user = user_ids.raw_id JOIN item_ids ON log.item = item_ids.raw_id
            ORDER BY log.seq"""
    )


def first_item_values(con: duckdb.DuckDBPyConnection, names: list[str], source: str) -> FeatureTable:
    """The item_feature_cols of the log as a categorical FeatureTable: each item's value in its first row
    (in reading order, empty values included)."""
    picks = ", ".join(f'arg_min_null(log."{ITEM_FEATURE_PREFIX}{n}", log.seq) AS "{n}"' for n in names)
    table = con.sql(
        f"""SELECT item_ids.raw_id, {picks} FROM log JOIN item_ids ON log.item = item_ids.raw_id
            GROUP BY item_ids.i, item_ids.raw_id ORDER BY item_ids.i"""
    ).to_arrow_table()
    return FeatureTable(source, table["raw_id"].combine_chunks(), table.select(names), tuple(names))


def id_map(con: duckdb.DuckDBPyConnection, kind: str) -> pa.Array:
    code = "u" if kind == "user" else "i"
    return con.sql(f"SELECT raw_id FROM {kind}_ids ORDER BY {code}").to_arrow_table()["raw_id"].combine_chunks()


def prepare(cfg: PrepareConfig) -> Path:
    """Run the whole stage; returns the graph directory. Nothing is left behind if it fails."""
    t0 = time.perf_counter()
    check_prepare_config(cfg)
    out = Path(cfg.output)
    check_output_path(out, input_paths(cfg))
    feature_tables = read_feature_tables(cfg)
    data = read_interactions(cfg)
    event_weights = parse_event_weights(cfg.event_weights)
    targets = option_names(cfg.target_events, "target_events")
    item_columns = option_names(cfg.item_feature_cols, "item_feature_cols")
    with atomic_folder(out, kind="graph", overwrite=cfg.overwrite) as tmp:
        work = Path(cfg.work_dir) / f"prepare-{os.getpid()}-{time.time_ns()}" if cfg.work_dir else tmp / ".work"
        with engine(work, memory_gb=cfg.memory_gb, threads=cfg.threads) as con:
            num_read = stage(con, data)
            log.info("read %s interactions from %s", f"{num_read:,}", data.source)
            filter_min_rating(con, cfg.min_rating, data.source)
            sample_users(con, cfg.sample_fraction, seed=cfg.seed)
            encode_ids(con, data.columns)
            if item_columns:
                source = f"{data.source} (item_feature_cols)"
                feature_tables["item"].append(first_item_values(con, item_columns, source))
            if targets and count(con, "SELECT * FROM t WHERE target") == 0:
                found = con.execute(
                    "SELECT event FROM log WHERE event IS NOT NULL GROUP BY event ORDER BY min(seq) LIMIT 10"
                ).fetchall()
                raise DataError(
                    f"{data.source}: target_events {cfg.target_events!r} matches no value of event column "
                    f"'{cfg.event_col}' (values found: {', '.join(short(e, 20) for (e,) in found)})"
                )
            con.execute("DROP TABLE log")
            given = "given" in data.columns
            if given and cfg.duplicates != "error":
                dropped = held_out_pairs_win(con, "t")
                if dropped:
                    log.info(
                        "dropped %s rows of pairs that are also in a more held-out part (test, then val)",
                        f"{dropped:,}",
                    )
            merged = deduplicate_pairs(
                con, "t", cfg.duplicates, files=data.files, weight=bool(event_weights), target=bool(targets)
            )
            if merged:
                log.info("merged %s repeated (user, item) rows (policy: %s)", f"{merged:,}", cfg.duplicates)
            num_unseen = 0
            if given and data.given_files:
                num_unseen = drop_unseen_held_out(con, "t")
                if num_unseen:
                    log.info(
                        "dropped %s held-out rows whose user or item has no row in the training part %s",
                        f"{num_unseen:,}",
                        given_file_names(cfg)[0],
                    )
                compact_ids(con, "t", "user_ids", "u")
                compact_ids(con, "t", "item_ids", "i")
            if cfg.min_item_interactions > 1:
                keep_items(con, cfg.min_item_interactions, data.source)
            num_users = count(con, "SELECT * FROM user_ids")
            num_items = count(con, "SELECT * FROM item_ids")
            val_fraction = 0.0 if cfg.val_input else cfg.val_fraction  # a validation file replaces the carving
            split_labels(
                con,
                "t",
                method=cfg.split,
                val_fraction=val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.seed,
                num_users=num_users,
                eligible=bool(targets),
            )
            held, most = split_sizes(con, "t", method=cfg.split, eligible=bool(targets))
            for reason in empty_split_reasons(
                held,
                most,
                method=cfg.split,
                val_fraction=val_fraction,
                test_fraction=cfg.test_fraction,
                eligible=bool(targets),
            ):
                log.warning("%s", reason)
            if cfg.cold_fraction > 0:
                cold_start(con, "t", cfg.cold_fraction, cfg.cold_items, seed=cfg.seed)
            weighted = cfg.duplicates == "count" or bool(event_weights)
            extra = [c for c in ("timestamp", "rating") if c in data.columns]
            counts = write_splits(con, tmp, extra, weighted=weighted)
            features, feature_columns = write_node_tables(
                tmp,
                {"user": id_map(con, "user"), "item": id_map(con, "item")},
                feature_tables,
                data,
                max_categories=cfg.max_categories,
            )
            write_csr(con, f"SELECT u, i FROM t WHERE label = {TRAIN}", num_users, num_items, tmp / "graph")
            num_eligible = count(con, "SELECT * FROM t WHERE target") if targets else 0
            num_dropped = count(con, f"SELECT * FROM t WHERE label = {DROPPED}")
        split = {
            "method": cfg.split,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
        }
        if data.given_files:
            split["files"] = {name: file for name, file in zip(SPLIT_NAMES, given_file_names(cfg))}
            split["num_dropped_unseen"] = num_unseen
        if targets:
            split["target_events"] = targets
            split["num_eligible_pairs"] = num_eligible
        if cfg.cold_fraction > 0:
            split["cold_start"] = {"fraction": cfg.cold_fraction, "items": cfg.cold_items, "num_dropped": num_dropped}
        meta = {
            "format_version": FORMAT_VERSION,
            "source": data.source,
            "num_users": num_users,
            "num_items": num_items,
            "num_interactions": counts,
            "split": split,
            "columns": ["user", "item", *extra, *(["weight"] if weighted else [])],
            "features": features,
        }
        if feature_columns:
            meta["feature_columns"] = feature_columns
        if weighted:
            meta["edge_weight"] = {"duplicates": cfg.duplicates, "event_weights": event_weights or None}
        if cfg.sample_fraction < 1:
            meta["sample"] = {"fraction": cfg.sample_fraction, "seed": cfg.seed}
        meta["node_numbering"] = "users 0..num_users-1, items num_users..num_users+num_items-1"
        meta["prepare_config"] = config_to_dict(cfg)
        write_meta(tmp, meta)
    log.info(
        "wrote %s: %s users, %s items, train/val/test %s/%s/%s interactions in %.1f s",
        out,
        f"{num_users:,}",
        f"{num_items:,}",
        *(f"{counts[s]:,}" for s in SPLIT_NAMES),
        time.perf_counter() - t0,
    )
    if cfg.partitions > 1:
        write_partitions(out, cfg.partitions, method=cfg.partition_method, seed=cfg.seed)
    return out


def given_file_names(cfg: PrepareConfig) -> list[str]:
    """The train/val/test files of a split given as files (val empty without --val_input)."""
    return [str(Path(name)) if name else "" for name in (cfg.input, cfg.val_input, cfg.test_input)]


def keep_items(con: duckdb.DuckDBPyConnection, minimum: int, source: str) -> None:
    """Drop the pairs of items with fewer than ``minimum`` (user, item) pairs, then renumber. One pass,
    not an iterated k-core: users keep whatever pairs their kept items leave them."""
    con.execute("CREATE OR REPLACE TABLE item_pairs AS SELECT i, count(*) AS n FROM t GROUP BY i")
    total_items = count(con, "SELECT * FROM item_pairs")
    kept_items = count(con, f"SELECT * FROM item_pairs WHERE n >= {minimum}")
    total = count(con, "SELECT * FROM t")
    replace_table(con, "t", f"SELECT * FROM t WHERE i IN (SELECT i FROM item_pairs WHERE n >= {minimum}) ORDER BY seq")
    con.execute("DROP TABLE item_pairs")
    kept = count(con, "SELECT * FROM t")
    log.info(
        "min_item_interactions %d: kept %s of %s items, %s of %s (user, item) pairs",
        minimum,
        f"{kept_items:,}",
        f"{total_items:,}",
        f"{kept:,}",
        f"{total:,}",
    )
    if kept == 0:
        raise DataError(f"{source}: min_item_interactions {minimum} keeps no item")
    compact_ids(con, "t", "user_ids", "u")
    compact_ids(con, "t", "item_ids", "i")


SPLIT_TYPES = {
    "user": pa.int64(),
    "item": pa.int64(),
    "timestamp": pa.int64(),
    "rating": pa.float32(),
    "weight": pa.float32(),
}


def write_splits(con: duckdb.DuckDBPyConnection, folder: Path, extra: list[str], *, weighted: bool) -> dict[str, int]:
    """``train/val/test.parquet``: user, item [, timestamp] [, rating] [, weight float32], in reading order."""
    names = ["user", "item", *extra, *(["weight"] if weighted else [])]
    schema = pa.schema([(n, SPLIT_TYPES[n]) for n in names])
    select = ", ".join(["u AS user", "i AS item", *extra, *(["weight::FLOAT AS weight"] if weighted else [])])
    counts = {}
    for code, name in zip((TRAIN, VAL, TEST), SPLIT_NAMES):
        batches = query_batches(con, f"SELECT {select} FROM t WHERE label = {code} ORDER BY seq")
        counts[name] = write_parquet(folder / f"{name}.parquet", schema, batches)
    return counts

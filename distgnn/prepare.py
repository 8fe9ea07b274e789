"""Stage 1: raw interaction logs -> a graph directory (Parquet tables + memory-mappable CSR arrays).

    python -m distgnn.prepare --input ratings.csv --user_col userId --item_col movieId \
        --time_col timestamp --split temporal --output data/ml

Layout of the graph directory (all written under a temporary name, renamed when complete)::

    meta.json                      counts, split, schema, source, checksums of every file below
    users.parquet, items.parquet   id maps: dense index -> raw id (string)
    train.parquet, val.parquet, test.parquet
                                   user, item (dense indices) [, timestamp] [, rating]
    graph/indptr.npy, graph/indices.npy
                                   CSR of the training graph, both directions, homogeneous numbering
                                   (users 0..U-1, items U..U+I-1), rows sorted
    features/user.npy, features/item.npy   optional float32 node features
    parts/                         optional, with --partitions P: one folder per part (distgnn.partition)
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from distgnn.cli import configure_logging, run_command
from distgnn.config import PrepareConfig, config_from_args, config_to_dict, make_parser
from distgnn.errors import ConfigError, DataError
from distgnn.files import atomic_folder, checksums

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


@dataclass(frozen=True)
class Interactions:
    """Raw interactions after reading: one row per event, ids still raw strings."""

    table: pa.Table  # columns: user, item (string) [, timestamp int64] [, rating float32] [, given_split int8]
    source: str
    user_features: tuple[np.ndarray, np.ndarray] | None = None  # (raw ids [n] str, values [n, F] float32)
    item_features: tuple[np.ndarray, np.ndarray] | None = None


# ---------------------------------------------------------------------------------------------------
# Readers


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such file ({what})")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty, expected {what}")
    return path


def _read_delimited(path: Path, names: list[str], delimiter: str, what: str,
                    types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Read a headerless delimited file with pyarrow; parse errors become DataError naming the file."""
    _require_file(path, what)
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types or {}),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"{path}: cannot parse as {what}: {err}") from None


def _read_double_colon(path: Path, names: list[str], what: str) -> pa.Table:
    """MovieLens-1M '::'-separated files (latin-1). pyarrow takes one-byte delimiters only, so the
    file is re-encoded with a single separator in memory first."""
    _require_file(path, what)
    text = path.read_bytes().decode("latin-1").replace("::", "\t")
    rows = [r for r in text.split("\n") if r]
    bad = next((i for i, r in enumerate(rows) if r.count("\t") != len(names) - 1), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + 1}: expected {len(names)} '::'-separated fields "
                        f"({', '.join(names)}), got {rows[bad]!r}")
    cols = list(zip(*(r.split("\t") for r in rows)))
    return pa.table({n: pa.array(c) for n, c in zip(names, cols)})


def _interaction_table(table: pa.Table, path: Path, user: str, item: str, timestamp: str = "",
                       rating: str = "") -> pa.Table:
    """Select and type the interaction columns, with errors naming the file and the column."""
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected interactions")
    out = {}
    for role, col in (("user", user), ("item", item), ("timestamp", timestamp), ("rating", rating)):
        if not col:
            continue
        if col not in table.column_names:
            raise DataError(f"{path}: missing {role} column '{col}' (columns: {', '.join(table.column_names)})")
        values = table[col]
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise DataError(f"{path}: row {row + 1}: empty value in {role} column '{col}'")
        target = {"user": pa.string(), "item": pa.string(), "timestamp": pa.int64(), "rating": pa.float32()}[role]
        try:
            out[role] = pc.cast(values, target) if role in ("user", "item") or values.type != target else values
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            if role == "timestamp" and pa.types.is_timestamp(values.type):
                out[role] = pc.cast(pc.cast(values, pa.timestamp("s")), pa.int64())
                continue
            raise DataError(f"{path}: {role} column '{col}': expected {target} values ({err})") from None
    return pa.table(out)


def read_table_file(path: Path, cfg: PrepareConfig) -> pa.Table:
    """A generic CSV or Parquet interaction file with configurable column names."""
    _require_file(path, "an interactions file (CSV or Parquet)")
    if path.suffix == ".parquet" or cfg.format == "parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    else:
        try:
            read_opts = pacsv.ReadOptions(autogenerate_column_names=not cfg.csv_header)
            table = pacsv.read_csv(path, read_options=read_opts)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataError(f"{path}: cannot parse as CSV: {err}") from None
    if cfg.event_col:
        if cfg.event_col not in table.column_names:
            raise DataError(f"{path}: missing event column '{cfg.event_col}' "
                            f"(columns: {', '.join(table.column_names)})")
        if cfg.keep_events:
            keep = pa.array([e.strip() for e in cfg.keep_events.split(",")])
            table = table.filter(pc.is_in(pc.cast(table[cfg.event_col], pa.string()), value_set=keep))
            if table.num_rows == 0:
                raise DataError(f"{path}: no rows with {cfg.event_col} in {{{cfg.keep_events}}}")
    return _interaction_table(table, path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col)


def _one_hot(columns: list[np.ndarray]) -> np.ndarray:
    """One-hot encode categorical columns side by side: [n, sum of category counts] float32."""
    blocks = []
    for col in columns:
        _, codes = np.unique(col, return_inverse=True)
        block = np.zeros((col.size, codes.max() + 1), dtype=np.float32)
        block[np.arange(col.size), codes] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def _genre_features(genres: np.ndarray) -> np.ndarray:
    """Multi-hot genres from 'A|B|C' strings."""
    vocab = sorted({g for s in genres for g in s.split("|")})
    pos = {g: i for i, g in enumerate(vocab)}
    out = np.zeros((genres.size, len(vocab)), dtype=np.float32)
    rows, cols = zip(*((r, pos[g]) for r, s in enumerate(genres) for g in s.split("|")))
    out[list(rows), list(cols)] = 1.0
    return out


def read_movielens_100k(path: Path, cfg: PrepareConfig) -> Interactions:
    folder = path if path.is_dir() else path.parent
    names = ["user", "item", "rating", "timestamp"]
    types = {"user": pa.string(), "item": pa.string(), "rating": pa.float32(), "timestamp": pa.int64()}
    if cfg.split == "given":
        parts = []
        for name, split in (("ua.base", TRAIN), ("ua.test", TEST)):
            t = _read_delimited(folder / name, names, "\t", "MovieLens-100K user\\titem\\trating\\ttimestamp", types)
            parts.append(t.append_column("given_split", pa.array(np.full(t.num_rows, split, np.int8))))
        table = pa.concat_tables(parts)
    else:
        file = path if path.is_file() else folder / "u.data"
        table = _read_delimited(file, names, "\t", "MovieLens-100K user\\titem\\trating\\ttimestamp", types)
    user_features = item_features = None
    if (folder / "u.user").is_file():
        users = _read_delimited(folder / "u.user", ["id", "age", "gender", "occupation", "zip"], "|",
                                "MovieLens-100K users", {"id": pa.string(), "zip": pa.string()})
        age_bucket = np.digitize(users["age"].to_numpy(), [18, 25, 35, 45, 50, 56])
        user_features = (users["id"].to_numpy(zero_copy_only=False), _one_hot(
            [age_bucket, users["gender"].to_numpy(zero_copy_only=False),
             users["occupation"].to_numpy(zero_copy_only=False)]))
    if (folder / "u.item").is_file():
        rows = [r.split("|") for r in (folder / "u.item").read_bytes().decode("latin-1").splitlines() if r]
        ids = np.array([r[0] for r in rows])
        item_features = (ids, np.array([[float(x) for x in r[-19:]] for r in rows], dtype=np.float32))
    return Interactions(table, f"movielens-100k:{folder}", user_features, item_features)


def read_movielens_1m(path: Path, cfg: PrepareConfig) -> Interactions:
    folder = path if path.is_dir() else path.parent
    if (folder / "ratings.dat").is_file():
        raw = _read_double_colon(folder / "ratings.dat", ["user", "item", "rating", "timestamp"],
                                 "MovieLens-1M ratings.dat (UserID::MovieID::Rating::Timestamp)")
        table = _interaction_table(raw, folder / "ratings.dat", "user", "item", "timestamp", "rating")
    else:
        file = folder / "ratings.parquet"
        _require_file(file, "MovieLens-1M ratings (ratings.dat or ratings.parquet)")
        table = _interaction_table(pq.read_table(file), file, "userID", "movieID")
    user_features = item_features = None
    if (folder / "users.dat").is_file():
        u = _read_double_colon(folder / "users.dat", ["id", "gender", "age", "occupation", "zip"],
                               "MovieLens-1M users.dat")
        user_features = (u["id"].to_numpy(zero_copy_only=False), _one_hot(
            [u[c].to_numpy(zero_copy_only=False) for c in ("gender", "age", "occupation")]))
    if (folder / "movies.dat").is_file():
        m = _read_double_colon(folder / "movies.dat", ["id", "title", "genres"], "MovieLens-1M movies.dat")
        item_features = (m["id"].to_numpy(zero_copy_only=False),
                         _genre_features(m["genres"].to_numpy(zero_copy_only=False)))
    return Interactions(table, f"movielens-1m:{folder}", user_features, item_features)


def read_movielens_latest(path: Path, cfg: PrepareConfig) -> Interactions:
    file = path / "ratings.csv" if path.is_dir() else path
    _require_file(file, "MovieLens ratings.csv (userId,movieId,rating,timestamp)")
    try:
        raw = pacsv.read_csv(file)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(f"{file}: cannot parse as CSV: {err}") from None
    table = _interaction_table(raw, file, "userId", "movieId", "timestamp", "rating")
    item_features = None
    movies = file.parent / "movies.csv"
    if movies.is_file():
        m = pacsv.read_csv(movies)
        item_features = (pc.cast(m["movieId"], pa.string()).to_numpy(zero_copy_only=False),
                         _genre_features(m["genres"].to_numpy(zero_copy_only=False)))
    return Interactions(table, f"movielens-latest:{file}", None, item_features)


def _read_adjacency_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LightGCN's 'user item item ...' lines. A loop over lines (one per user) is fine: the parsing
    itself is numpy's, and a user line is thousands of times bigger than the loop overhead."""
    _require_file(path, "LightGCN adjacency lines 'user item item ...'")
    from tqdm import tqdm

    users, items = [], []
    with open(path) as fh, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
                                disable=path.stat().st_size < 50_000_000) as bar:
        for lineno, line in enumerate(fh, 1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                ids = np.array(line.split(), dtype=np.int64)
            except ValueError:
                raise DataError(f"{path}: row {lineno}: expected integer ids 'user item item ...', "
                                f"got {line[:60].strip()!r}") from None
            users.append(np.full(ids.size - 1, ids[0]))
            items.append(ids[1:])
    if not users:
        raise DataError(f"{path}: no rows, expected 'user item item ...' lines")
    return np.concatenate(users), np.concatenate(items)


def read_lightgcn(path: Path, cfg: PrepareConfig) -> Interactions:
    folder = path if path.is_dir() else path.parent
    parts = []
    for name, split in (("train.txt", TRAIN), ("test.txt", TEST)):
        u, i = _read_adjacency_lines(folder / name)
        parts.append(pa.table({"user": pa.array(u.astype(str)), "item": pa.array(i.astype(str)),
                               "given_split": pa.array(np.full(u.size, split, np.int8))}))
    return Interactions(pa.concat_tables(parts), f"lightgcn:{folder}")


def read_synthetic(cfg: PrepareConfig) -> Interactions:
    from distgnn.synthetic import generate

    s = generate(cfg.synthetic)
    table = pa.table({"user": pa.array(s.user.astype(str)), "item": pa.array(s.item.astype(str)),
                      "timestamp": pa.array(s.timestamp)})
    item_ids = np.arange(cfg.synthetic.num_items).astype(str)
    return Interactions(table, "synthetic", None, (item_ids, s.item_features))


def detect_format(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    names = {p.name for p in path.iterdir()} if path.is_dir() else {path.name}
    if {"train.txt", "test.txt"} <= names:
        return "lightgcn"
    if "u.data" in names or "ua.base" in names:
        return "ml-100k"
    if "ratings.dat" in names or ("ratings.parquet" in names and "movies.dat" in names):
        return "ml-1m"
    if "ratings.csv" in names and path.is_dir():
        return "ml-latest"
    if path.is_file() and path.suffix in (".csv", ".tsv", ".txt", ".parquet"):
        return "parquet" if path.suffix == ".parquet" else "csv"
    raise DataError(f"{path}: cannot tell the input format; pass --format")


def read_interactions(cfg: PrepareConfig) -> Interactions:
    if cfg.format == "synthetic" or (not cfg.input and cfg.format == "auto"):
        return read_synthetic(cfg)
    if not cfg.input:
        raise ConfigError(f"config key 'input': required for format '{cfg.format}'")
    path = Path(cfg.input)
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    if cfg.split == "given" and fmt not in ("ml-100k", "lightgcn"):
        raise ConfigError(f"config key 'split': format '{fmt}' ships no split of its own; "
                          "use random, temporal or leave_one_out")
    readers = {"ml-100k": read_movielens_100k, "ml-1m": read_movielens_1m, "ml-latest": read_movielens_latest,
               "lightgcn": read_lightgcn}
    if fmt in readers:
        return readers[fmt](path, cfg)
    return Interactions(read_table_file(path, cfg), f"{fmt}:{path}")


# ---------------------------------------------------------------------------------------------------
# Pure transformations


def encode_ids(raw: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense 0-based indices in order of first appearance, and the raw id of each index."""
    encoded = pc.dictionary_encode(raw).combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


def deduplicate(user: np.ndarray, item: np.ndarray, order: np.ndarray, policy: str, *,
                source: str = "input") -> np.ndarray:
    """Row indices to keep so each (user, item) pair appears once.

    ``order`` ranks rows in time (timestamp, or file position); ``first`` keeps the earliest row of a
    pair, ``last`` the latest, ``error`` raises on the first repeated pair.
    """
    key = user * (int(item.max()) + 1) + item
    by_time = np.lexsort((np.arange(key.size), order))
    if policy == "last":
        by_time = by_time[::-1]
    _, first = np.unique(key[by_time], return_index=True)
    keep = np.sort(by_time[first])
    if policy == "error" and keep.size != key.size:
        dup = np.setdiff1d(np.arange(key.size), keep)[0]
        raise DataError(f"{source}: row {dup + 1}: repeated (user, item) pair; use --duplicates first or last")
    return keep


def split_interactions(user: np.ndarray, order: np.ndarray, *, method: str, val_fraction: float,
                       test_fraction: float, seed: int, given: np.ndarray | None = None) -> np.ndarray:
    """Label each interaction TRAIN, VAL or TEST per user (vectorised over users).

    random: a random ``val_fraction``/``test_fraction`` of each user's interactions;
    temporal: the latest ones by ``order``; leave_one_out: the latest one for test and the one before
    for validation; given: ``given`` labels, with validation carved at random from the given train part.
    Every user keeps at least one training interaction.
    """
    rng = np.random.default_rng(seed)
    n = user.size
    if method == "given":
        if given is None:
            raise ConfigError("config key 'split': 'given' needs a dataset that ships its own split")
        labels = given.astype(np.int8).copy()
        train = np.flatnonzero(labels == TRAIN)
        sub = split_interactions(user[train], order[train], method="random", val_fraction=val_fraction,
                                 test_fraction=0.0, seed=seed)
        labels[train[sub == VAL]] = VAL
        return labels
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError("config keys 'val_fraction'/'test_fraction': expected two fractions summing below 1")
    within = rng.random(n) if method == "random" else order.astype(np.float64)
    perm = np.lexsort((rng.random(n), within, user))  # grouped by user; within a user by time or at random
    counts = np.bincount(user, minlength=int(user.max()) + 1)
    starts = np.cumsum(counts) - counts
    sorted_user = user[perm]
    rank = np.arange(n) - starts[sorted_user]
    n_user = counts[sorted_user]
    if method == "leave_one_out":
        n_test = (n_user >= 2).astype(np.int64) if test_fraction > 0 else np.zeros_like(n_user)
        n_val = (n_user >= 3).astype(np.int64) if val_fraction > 0 else np.zeros_like(n_user)
    elif method in ("random", "temporal"):
        n_test = np.floor(n_user * test_fraction + 0.5).astype(np.int64)
        n_val = np.floor(n_user * val_fraction + 0.5).astype(np.int64)
        n_test = np.minimum(n_test, n_user - 1)
        n_val = np.minimum(n_val, n_user - 1 - n_test)
    else:
        raise ConfigError(f"config key 'split': unknown method {method!r}")
    from_end = n_user - 1 - rank  # 0 = latest
    labels_sorted = np.where(from_end < n_test, TEST, np.where(from_end < n_test + n_val, VAL, TRAIN))
    labels = np.empty(n, dtype=np.int8)
    labels[perm] = labels_sorted
    return labels


def build_csr(num_users: int, num_items: int, user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the undirected bipartite graph in homogeneous numbering, rows sorted by neighbor.

    Returns ``indptr [U+I+1]`` and ``indices [2E]`` (int64): user rows list item nodes
    ``U + item``, item rows list user nodes.
    """
    num_nodes = num_users + num_items
    src = np.concatenate([user, item + num_users])
    dst = np.concatenate([item + num_users, user])
    perm = np.lexsort((dst, src))
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_nodes), out=indptr[1:])
    return indptr, dst[perm].astype(np.int64)


def align_features(raw_ids: pa.Array, features: tuple[np.ndarray, np.ndarray], *, what: str) -> np.ndarray:
    """Rows of ``features`` in dense-index order; nodes without a feature row get zeros."""
    ids, values = features
    lookup = pc.index_in(raw_ids, value_set=pa.array(ids.astype(str))).to_numpy(zero_copy_only=False)
    missing = np.isnan(lookup.astype(np.float64)) if lookup.dtype == object else lookup < 0
    lookup = np.where(missing, 0, lookup).astype(np.int64)
    out = values[lookup].astype(np.float32)
    out[missing] = 0.0
    if missing.any():
        log.info("%d of %d %s have no feature row; they get zeros", int(missing.sum()), len(raw_ids), what)
    return out


# ---------------------------------------------------------------------------------------------------
# Writing


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array))


def write_meta(folder: Path, meta: dict) -> None:
    """meta.json with the sha256 of every other file in the folder."""
    meta = dict(meta)
    meta["checksums"] = checksums(folder, skip=("meta.json",))
    # write-then-rename: meta.json is also rewritten inside published folders (distgnn.partition)
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(folder / "meta.json")


def prepare(cfg: PrepareConfig) -> Path:
    """Run the whole stage; returns the graph directory. Nothing is left behind if it fails."""
    t0 = time.perf_counter()
    data = read_interactions(cfg)
    table = data.table
    log.info("read %s interactions from %s", f"{table.num_rows:,}", data.source)

    if "rating" in table.column_names and np.isfinite(cfg.min_rating):
        table = table.filter(pc.greater_equal(table["rating"], cfg.min_rating))
        if table.num_rows == 0:
            raise DataError(f"{data.source}: no interactions with rating >= {cfg.min_rating}")

    user, user_ids = encode_ids(table["user"])
    item, item_ids = encode_ids(table["item"])
    order = table["timestamp"].to_numpy() if "timestamp" in table.column_names else np.arange(table.num_rows)
    keep = deduplicate(user, item, order, cfg.duplicates, source=data.source)
    if keep.size < table.num_rows:
        log.info("dropped %s repeated (user, item) rows (policy: keep %s)", f"{table.num_rows - keep.size:,}",
                 cfg.duplicates)
    table, user, item, order = table.take(keep), user[keep], item[keep], order[keep]
    given = table["given_split"].to_numpy() if "given_split" in table.column_names else None
    labels = split_interactions(user, order, method=cfg.split, val_fraction=cfg.val_fraction,
                                test_fraction=cfg.test_fraction, seed=cfg.seed, given=given)
    num_users, num_items = len(user_ids), len(item_ids)

    out = Path(cfg.output)
    with atomic_folder(out) as tmp:
        extra = [c for c in ("timestamp", "rating") if c in table.column_names]
        counts = {}
        for code, name in enumerate(SPLIT_NAMES):
            rows = np.flatnonzero(labels == code)
            part = {"user": pa.array(user[rows]), "item": pa.array(item[rows])}
            part.update({c: table[c].take(pa.array(rows)) for c in extra})
            pq.write_table(pa.table(part), tmp / f"{name}.parquet")
            counts[name] = int(rows.size)
        pq.write_table(pa.table({"index": pa.array(np.arange(num_users)), "raw_id": user_ids}), tmp / "users.parquet")
        pq.write_table(pa.table({"index": pa.array(np.arange(num_items)), "raw_id": item_ids}), tmp / "items.parquet")
        train = labels == TRAIN
        indptr, indices = build_csr(num_users, num_items, user[train], item[train])
        _write_npy(tmp / "graph" / "indptr.npy", indptr)
        _write_npy(tmp / "graph" / "indices.npy", indices)
        features = {}
        for name, feats, ids in (("user", data.user_features, user_ids), ("item", data.item_features, item_ids)):
            if feats is not None:
                values = align_features(ids, feats, what=f"{name}s")
                _write_npy(tmp / "features" / f"{name}.npy", values)
                features[name] = int(values.shape[1])
        write_meta(tmp, {
            "format_version": FORMAT_VERSION,
            "source": data.source,
            "num_users": num_users,
            "num_items": num_items,
            "num_interactions": counts,
            "split": {"method": cfg.split, "val_fraction": cfg.val_fraction,
                      "test_fraction": cfg.test_fraction, "seed": cfg.seed},
            "columns": ["user", "item", *extra],
            "features": features,
            "node_numbering": "users 0..num_users-1, items num_users..num_users+num_items-1",
            "prepare_config": config_to_dict(cfg),
        })
    log.info("wrote %s: %s users, %s items, train/val/test %s/%s/%s interactions in %.1f s", out,
             f"{num_users:,}", f"{num_items:,}", *(f"{counts[s]:,}" for s in SPLIT_NAMES),
             time.perf_counter() - t0)
    if cfg.partitions > 1:
        from distgnn.partition import write_partitions  # a later stage; imported only when asked for

        write_partitions(out, cfg.partitions, method=cfg.partition_method, seed=cfg.seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PrepareConfig, prog="python -m distgnn.prepare",
                         description="Turn interaction logs into a graph directory for distgnn.train. "
                                     "With no --input, writes the built-in synthetic dataset.")
    args = parser.parse_args(argv)
    configure_logging()
    return run_command(lambda: prepare(config_from_args(PrepareConfig, args)) and 0)


if __name__ == "__main__":
    sys.exit(main())

"""The relational steps of prepare, as SQL over DuckDB tables: repeated pairs, held-out parts of a given
split, the train/val/test split per user, cold-start users.

Why DuckDB: every step here groups or orders all interactions (by pair, by user, by time), and DuckDB
sorts, aggregates and evaluates window functions out of core, within a memory limit, on all cores; a
log of 100M interactions never has to fit in memory. The rules themselves are those of the in-memory
prepare they replace, to the row: ties are broken by reading order (``seq``), random draws come from
numpy's generator in the same order (:func:`random_keys`), so small inputs give the same graph as before
(``tests/test_prepare_unchanged.py``).

A working table holds one row per interaction with at least ``seq`` (the reading order), ``file``,
``row`` (where it was read), ``u``, ``i`` (dense user and item indices) and ``ord`` (its time: the
timestamp, or ``seq``). The array functions at the end (:func:`deduplicate`, :func:`split_interactions`,
...) run the same SQL on arrays, for callers and tests that hold arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import numpy as np
import pyarrow as pa

from distgnn.core.errors import ConfigError, DataError
from distgnn.data.readers import TEST, TRAIN, VAL

log = logging.getLogger(__name__)

DROPPED = 3  # a label no split file holds (cold-start users' dropped training rows)
KEY_CHUNK = 1 << 20  # random keys generated per batch


def replace_table(con: duckdb.DuckDBPyConnection, name: str, query: str) -> None:
    """``name`` becomes the result of ``query`` (which may read ``name``)."""
    con.execute(f"CREATE OR REPLACE TABLE {name}__new AS {query}")
    con.execute(f"DROP TABLE {name}")
    con.execute(f"ALTER TABLE {name}__new RENAME TO {name}")


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, data: pa.Table | pa.RecordBatchReader) -> Iterator[None]:
    """``data`` readable as the table ``name`` in ``con``'s queries, for the block's duration."""
    con.register(name, data)
    try:
        yield
    finally:
        con.unregister(name)


def count(con: duckdb.DuckDBPyConnection, query: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0])


# ---------------------------------------------------------------------------------------------------
# Random keys: numpy's stream, in the table's order


def random_stream(generator: np.random.Generator, size: int) -> Iterator[np.ndarray]:
    """``generator.random(size)`` in chunks: the same numbers (one 64-bit draw each, no buffering)."""
    for start in range(0, size, KEY_CHUNK):
        yield generator.random(min(KEY_CHUNK, size - start))


def stream_at(seed: int, offset: int) -> np.random.Generator:
    """``np.random.default_rng(seed)`` after ``offset`` uniform doubles have been drawn from it."""
    bits = np.random.PCG64(seed)
    bits.advance(offset)
    return np.random.Generator(bits)


def random_keys(con: duckdb.DuckDBPyConnection, table: str, where: str, keys: dict[str, np.random.Generator]) -> str:
    """A new table of ``table``'s rows satisfying ``where``, in ``seq`` order, with one float64 column per
    entry of ``keys`` holding that generator's next uniform draws in that order: row ``k`` gets draw ``k``,
    as ``generator.random(n)`` over the rows in reading order would give. Returns its name."""
    name = f"{table}__keyed"
    con.execute(f"CREATE OR REPLACE TABLE {name}__rows AS SELECT * FROM {table} WHERE {where} ORDER BY seq")
    n = count(con, f"SELECT * FROM {name}__rows")
    schema = pa.schema([(column, pa.float64()) for column in keys])
    streams = [random_stream(generator, n) for generator in keys.values()]
    batches = (pa.record_batch([pa.array(x) for x in chunk], schema=schema) for chunk in zip(*streams))
    # POSITIONAL JOIN pairs the k-th row of each side: the rows (stored in seq order) with the draws
    with registered(con, "keys__stream", pa.RecordBatchReader.from_batches(schema, batches)):
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {name}__rows POSITIONAL JOIN keys__stream")
    con.execute(f"DROP TABLE {name}__rows")
    return name


# ---------------------------------------------------------------------------------------------------
# Repeated pairs and the parts of a given split


def held_out_pairs_win(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Keep, of a pair found in several parts of a given split, only its rows in the most held-out part
    (test, then val, then train: the codes rank that way), so training never sees a held-out pair.
    Returns the number of rows dropped."""
    before = count(con, f"SELECT * FROM {table}")
    replace_table(con, table, f"SELECT * FROM {table} QUALIFY given = max(given) OVER (PARTITION BY u, i)")
    return before - count(con, f"SELECT * FROM {table}")


def repeated_pair_error(con: duckdb.DuckDBPyConnection, table: str, files: tuple[str, ...]) -> DataError | None:
    """The error of ``--duplicates error``: the first row (in reading order) repeating a pair, and the row
    it repeats (the pair's earliest); None when every pair appears once."""
    found = con.execute(
        f"""SELECT file, row, u, i FROM (
                SELECT *, row_number() OVER (PARTITION BY u, i ORDER BY ord, seq) AS nth FROM {table})
            WHERE nth > 1 ORDER BY seq LIMIT 1"""
    ).fetchall()
    if not found:
        return None
    file, row, u, i = found[0]
    other_file, other_row = con.execute(
        f"SELECT file, row FROM {table} WHERE u = ? AND i = ? ORDER BY ord, seq LIMIT 1", [u, i]
    ).fetchall()[0]
    also = f"row {other_row + 1}" if other_file == file else f"{files[other_file]} row {other_row + 1}"
    return DataError(
        f"{files[file]}: row {row + 1}: repeated (user, item) pair (also in {also}); "
        "use --duplicates first, last or count"
    )


def deduplicate_pairs(
    con: duckdb.DuckDBPyConnection,
    table: str,
    policy: str,
    *,
    files: tuple[str, ...],
    weight: bool,
    target: bool,
) -> int:
    """One row per (user, item) pair. ``first`` keeps the pair's earliest row (by ``ord``, ties by reading
    order), ``last`` and ``count`` its latest; ``count`` sets ``weight`` to the sum over the pair's rows of
    their weight (1 each without a weight column), added in reading order; ``error`` fails on the first
    repeated pair. ``target`` becomes whether any row of the pair has a target event. The table keeps
    every column; without ``weight`` a ``count`` adds one. Returns the number of rows merged."""
    before = count(con, f"SELECT * FROM {table}")
    if policy == "error":
        error = repeated_pair_error(con, table, files)
        if error is not None:
            raise error
        return 0
    direction = "ASC" if policy == "first" else "DESC"
    totals, joined = [], []
    if policy == "count":
        totals.append(f"sum({'weight' if weight else '1.0'} ORDER BY seq) AS weight__pair")
        joined.append("weight__pair")
    if target:
        totals.append("bool_or(target) AS target__pair")
        joined.append("target__pair")
    nth = f"row_number() OVER (PARTITION BY u, i ORDER BY ord {direction}, seq {direction})"
    kept = f"SELECT * FROM {table} QUALIFY {nth} = 1"
    if not totals:
        replace_table(con, table, kept)
        return before - count(con, f"SELECT * FROM {table}")
    columns = [c for (c,) in con.execute(f"SELECT name FROM pragma_table_info('{table}')").fetchall()]
    renamed = {"weight__pair": "weight", "target__pair": "target"}
    select = [f"k.{c}" for c in columns if not (c in ("weight", "target") and f"{c}__pair" in joined)]
    select += [f"p.{c} AS {renamed[c]}" for c in joined]
    replace_table(
        con,
        table,
        f"""SELECT {", ".join(select)} FROM ({kept}) k
            JOIN (SELECT u, i, {", ".join(totals)} FROM {table} GROUP BY u, i) p USING (u, i)""",
    )
    return before - count(con, f"SELECT * FROM {table}")


def drop_unseen_held_out(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Drop held-out rows (of files given for val/test) whose user or item has no training row: nothing
    can be learnt of them. Returns the number dropped."""
    before = count(con, f"SELECT * FROM {table}")
    replace_table(
        con,
        table,
        f"""SELECT * FROM {table} WHERE given = {TRAIN}
              OR (u IN (SELECT u FROM {table} WHERE given = {TRAIN})
                  AND i IN (SELECT i FROM {table} WHERE given = {TRAIN}))""",
    )
    return before - count(con, f"SELECT * FROM {table}")


def compact_ids(con: duckdb.DuckDBPyConnection, table: str, ids: str, code: str) -> None:
    """Renumber ``code`` (u or i) of ``table`` so that indices without a row are absent, keeping the
    order of the others, in ``table`` and in the id map ``ids`` (raw_id, code)."""
    con.execute(
        f"""CREATE OR REPLACE TABLE {ids}__map AS
            SELECT {code}, (row_number() OVER (ORDER BY {code}) - 1)::BIGINT AS new
            FROM (SELECT DISTINCT {code} FROM {table})"""
    )
    columns = [c for (c,) in con.execute(f"SELECT name FROM pragma_table_info('{table}')").fetchall()]
    select = ", ".join("m.new AS " + c if c == code else "t." + c for c in columns)
    replace_table(con, table, f"SELECT {select} FROM {table} t JOIN {ids}__map m USING ({code})")
    replace_table(
        con, ids, f"SELECT raw_id, m.new AS {code} FROM {ids} JOIN {ids}__map m USING ({code}) ORDER BY m.new"
    )
    con.execute(f"DROP TABLE {ids}__map")


# ---------------------------------------------------------------------------------------------------
# The split


def held_out_counts(
    n_user: np.ndarray,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    n_total: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """How many of a user's ``n_user`` eligible interactions go to validation and to test (arrays like
    ``n_user``); ``n_total`` (default ``n_user``) is the user's number of interactions, eligible or not.

    random/temporal: ``round(n * fraction)`` (halves up), test first, both capped so that at least one
    interaction stays for training; leave_one_out: one test interaction from 2 on, one validation from 3 on
    (a fraction of 0 turns that split off); with ``n_total``, from 1 and 2 eligible ones, when the user
    keeps one interaction for training.
    """
    n_total = n_user if n_total is None else n_total
    if method == "leave_one_out":
        n_test = ((n_user >= 1) & (n_total >= 2)).astype(np.int64) if test_fraction > 0 else np.zeros_like(n_user)
        n_val = ((n_user >= 2) & (n_total >= 3)).astype(np.int64) if val_fraction > 0 else np.zeros_like(n_user)
    elif method in ("random", "temporal"):
        n_test = np.minimum(np.floor(n_user * test_fraction + 0.5).astype(np.int64), np.minimum(n_user, n_total - 1))
        n_val = np.minimum(
            np.floor(n_user * val_fraction + 0.5).astype(np.int64), np.minimum(n_user, n_total - 1) - n_test
        )
    else:
        raise ConfigError(f"config key 'split': unknown method {method!r}")
    return n_val, n_test


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError("config keys 'val_fraction'/'test_fraction': expected two fractions summing below 1")


def per_user(con: duckdb.DuckDBPyConnection, query: str, num_users: int, columns: list[str]) -> list[np.ndarray]:
    """``[num_users]`` int64 arrays of per-user aggregates: ``query`` returns ``u`` and ``columns``."""
    result = con.execute(query).fetchnumpy()
    out = []
    for column in columns:
        values = np.zeros(num_users, np.int64)
        values[result["u"]] = result[column]
        out.append(values)
    return out


def label_by_rank(
    con: duckdb.DuckDBPyConnection,
    table: str,
    keyed: str,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    num_users: int,
    order: str,
    eligible: bool,
    fallback: str,
) -> None:
    """Label the rows of ``keyed`` (a subset of ``table`` with random keys) by their rank within their user
    ordered by ``order``: the last ones held out as :func:`held_out_counts` says; write the labels into
    ``table``'s ``label`` column (``fallback`` for its other rows)."""
    counts = "count(*) AS n" + (", count(*) FILTER (WHERE target) AS eligible" if eligible else "")
    columns = ["n", "eligible"] if eligible else ["n"]
    n_total, *rest = per_user(con, f"SELECT u, {counts} FROM {keyed} GROUP BY u", num_users, columns)
    n_val, n_test = held_out_counts(
        rest[0] if eligible else n_total,
        method=method,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        n_total=n_total,
    )
    quota = pa.table({"u": np.arange(num_users), "n_val": n_val, "n_test": n_test})
    with registered(con, "quota", quota):
        con.execute(
            f"""CREATE OR REPLACE TABLE {table}__labels AS
                SELECT seq, CASE WHEN from_end < n_test THEN {TEST} WHEN from_end < n_test + n_val THEN {VAL}
                                 ELSE {TRAIN} END AS label
                FROM (SELECT seq, u, count(*) OVER (PARTITION BY u)
                                     - row_number() OVER (PARTITION BY u ORDER BY {order}) AS from_end
                      FROM {keyed}) r JOIN quota USING (u)"""
        )
    columns = [c for (c,) in con.execute(f"SELECT name FROM pragma_table_info('{table}')").fetchall() if c != "label"]
    replace_table(
        con,
        table,
        f"""SELECT {", ".join("t." + c for c in columns)}, coalesce(l.label, {fallback})::TINYINT AS label
            FROM {table} t LEFT JOIN {table}__labels l USING (seq)""",
    )
    con.execute(f"DROP TABLE {table}__labels")


def split_labels(
    con: duckdb.DuckDBPyConnection,
    table: str,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    num_users: int,
    eligible: bool = False,
) -> None:
    """Add a ``label`` column (TRAIN, VAL or TEST) to ``table``, per user.

    random: a random ``val_fraction``/``test_fraction`` of each user's interactions; temporal: the latest
    ones by ``ord``; leave_one_out: the latest one for test and the one before for validation; given: the
    ``given`` labels, with validation carved at random from the given train part. With ``eligible``, only
    rows whose ``target`` is true are held out, and fractions count a user's eligible ones. Every user
    keeps at least one training interaction.

    The draws are those of ``np.random.default_rng(seed)`` in reading order: with random, a first uniform
    key per row orders a user's rows, a second breaks ties (with temporal and leave_one_out, ties of
    time); reading order breaks what is left.
    """
    if method == "given":
        if count(con, f"SELECT * FROM pragma_table_info('{table}') WHERE name = 'given'") == 0:
            raise ConfigError("config key 'split': 'given' needs a dataset that ships its own split")
        check_fractions(val_fraction, 0.0)
        con.execute(f"ALTER TABLE {table} ADD COLUMN label TINYINT")
        con.execute(f"UPDATE {table} SET label = given")
        if val_fraction > 0:  # validation carved at random from each user's given training rows
            m = count(con, f"SELECT * FROM {table} WHERE given = {TRAIN}")
            keyed = random_keys(
                con, table, f"given = {TRAIN}", {"within": stream_at(seed, 0), "tie": stream_at(seed, m)}
            )
            label_by_rank(
                con,
                table,
                keyed,
                method="random",
                val_fraction=val_fraction,
                test_fraction=0.0,
                num_users=num_users,
                order="within, tie, seq",
                eligible=False,
                fallback="given",
            )
            con.execute(f"DROP TABLE {keyed}")
        return
    check_fractions(val_fraction, test_fraction)
    n = count(con, f"SELECT * FROM {table}")
    if method == "random":
        keys = {"within": stream_at(seed, 0), "tie": stream_at(seed, n)}
        order = "within, tie, seq"
    else:
        if method not in ("temporal", "leave_one_out"):
            raise ConfigError(f"config key 'split': unknown method {method!r}")
        keys, order = {"tie": stream_at(seed, 0)}, "ord, tie, seq"
    if eligible:  # eligible rows sort after the others of a user, so only they are held out
        order = "target, " + order
    keyed = random_keys(con, table, "true", keys)
    label_by_rank(
        con,
        table,
        keyed,
        method=method,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        num_users=num_users,
        order=order,
        eligible=eligible,
        fallback=str(TRAIN),
    )
    con.execute(f"DROP TABLE {keyed}")


def cold_start(con: duckdb.DuckDBPyConnection, table: str, fraction: float, keep: int, *, seed: int) -> None:
    """A random ``fraction`` of the users (those holding val/test rows) cut down to ``keep`` training
    interactions, chosen at random; their other training rows get the label :data:`DROPPED`."""
    if not 0 < fraction < 1:
        raise ConfigError(f"config key 'cold_fraction': expected a fraction in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed + 1)
    candidates = con.execute(f"SELECT DISTINCT u FROM {table} WHERE label != {TRAIN} ORDER BY u").fetchnumpy()["u"]
    chosen = rng.choice(candidates, int(round(fraction * candidates.size)), replace=False)
    with registered(con, "cold", pa.table({"u": np.sort(chosen).astype(np.int64)})):
        keyed = random_keys(con, table, f"label = {TRAIN} AND u IN (SELECT u FROM cold)", {"draw": rng})
    con.execute(
        f"""CREATE OR REPLACE TABLE {table}__dropped AS
            SELECT seq FROM {keyed} QUALIFY row_number() OVER (PARTITION BY u ORDER BY draw, seq) > {keep}"""
    )
    num_dropped = count(con, f"SELECT * FROM {table}__dropped")
    con.execute(f"UPDATE {table} SET label = {DROPPED} WHERE seq IN (SELECT seq FROM {table}__dropped)")
    con.execute(f"DROP TABLE {table}__dropped")
    con.execute(f"DROP TABLE {keyed}")
    log.info(
        "cold_fraction %g: %s users keep %d training interactions each (%s training rows dropped)",
        fraction,
        f"{chosen.size:,}",
        keep,
        f"{num_dropped:,}",
    )


def empty_split_reasons(
    num_held_out: dict[int, int],
    most_in_pool: int,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    eligible: bool = False,
) -> list[str]:
    """One sentence for each of val and test that came out empty although asked for, saying why (a user
    needs more interactions than any has); an empty list when both have rows or were not asked for.
    ``num_held_out``: rows labelled VAL and TEST; ``most_in_pool``: the most interactions any user has
    among those that could be held out (eligible ones with target_events; with ``given``, outside the
    given test part)."""
    reasons = []
    for code, name, fraction in ((VAL, "val", val_fraction), (TEST, "test", test_fraction)):
        if num_held_out.get(code, 0):
            continue
        if method == "given" and code == TEST:
            reasons.append("test is empty: the dataset's own split holds no test interactions")
            continue
        if fraction <= 0:
            continue  # asked for none
        rule = "random" if method == "given" else method  # 'given' carves validation at random
        # the smallest user size that holds one out: scan sizes (vectorised) up to a bound past which
        # rounding always gives one, i.e. where n * min(fraction, the share left for training) >= 2
        other = 0.0 if method == "given" else test_fraction
        bound = min(1 << 20, int(np.ceil(2 / min(fraction, 1 - val_fraction - other))) + 3)
        sizes = np.arange(1, bound + 1)
        n_total = sizes + 1 if eligible else None  # eligible ones, and one more pair to train on
        n_val, n_test = held_out_counts(
            sizes, method=rule, val_fraction=val_fraction, test_fraction=other, n_total=n_total
        )
        held = n_val if code == VAL else n_test
        need = f"at least {int(sizes[np.argmax(held > 0)])}" if held.any() else f"more than {bound}"
        part = " of the given training part" if method == "given" else ""
        what = "pairs with a target event" if eligible else "interactions"
        reasons.append(
            f"{name} is empty: with --split {method} and {name}_fraction {fraction:g}, a user needs {need} "
            f"{what}{part} to give one to {name} (each user keeps at least one for training), "
            f"and the most any user has is {most_in_pool}"
        )
    return reasons


def split_sizes(
    con: duckdb.DuckDBPyConnection, table: str, *, method: str, eligible: bool
) -> tuple[dict[int, int], int]:
    """:func:`empty_split_reasons`' inputs from a labelled table."""
    held = dict(con.execute(f"SELECT label, count(*) FROM {table} GROUP BY label").fetchall())
    pool = " AND ".join([*([f"label != {TEST}"] if method == "given" else []), *(["target"] if eligible else [])])
    most = con.execute(
        f"SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM {table} WHERE {pool or 'true'} GROUP BY u)"
    ).fetchall()[0][0]
    return {int(k): int(v) for k, v in held.items()}, int(most)


# ---------------------------------------------------------------------------------------------------
# The same steps on arrays


def _array_table(user: np.ndarray, item: np.ndarray, order: np.ndarray, **columns: np.ndarray) -> pa.Table:
    n = user.size
    return pa.table(
        {
            "seq": np.arange(n, dtype=np.int64),
            "u": np.asarray(user, np.int64),
            "i": np.asarray(item, np.int64),
            "ord": np.asarray(order),
            **{k: np.asarray(v) for k, v in columns.items() if v is not None},
        }
    )


def _connect(table: pa.Table) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    with registered(con, "arrays", table):
        con.execute("CREATE TABLE t AS SELECT * FROM arrays")
    return con


def deduplicate(
    user: np.ndarray,
    item: np.ndarray,
    order: np.ndarray,
    policy: str,
    *,
    source: str | tuple[str, ...] = "input",
    rows: np.ndarray | None = None,
    parts: np.ndarray | None = None,
) -> np.ndarray:
    """Row indices to keep so each (user, item) pair appears once (:func:`deduplicate_pairs`' rule, on
    arrays): ``order`` ranks rows in time, ties by position. ``error`` names the repeated row in
    ``source`` (``rows`` maps positions to source rows; with ``parts``, row ``i`` comes from
    ``source[parts[i]]``)."""
    n = np.asarray(user).size
    files = (source,) if isinstance(source, str) else tuple(source)
    file = np.zeros(n, np.int16) if parts is None else np.asarray(parts, np.int16)
    row = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    con = _connect(_array_table(user, item, order, file=file, row=row))
    deduplicate_pairs(con, "t", policy, files=files, weight=False, target=False)
    return con.execute("SELECT seq FROM t ORDER BY seq").fetchnumpy()["seq"]


def pair_totals(user: np.ndarray, item: np.ndarray, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """For each kept row ``keep[j]``, the sum of ``values`` over all rows of its (user, item) pair, added
    in row order (as ``--duplicates count`` weighs a pair)."""
    user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
    con = _connect(_array_table(user, item, np.arange(user.size), weight=np.asarray(values, np.float64)))
    totals = con.execute(
        "SELECT u, i, sum(weight ORDER BY seq) AS total FROM t GROUP BY u, i ORDER BY u, i"
    ).fetchnumpy()
    stride = int(item.max()) + 1 if item.size else 1
    at = np.searchsorted(totals["u"] * stride + totals["i"], user[keep] * stride + item[keep])
    return totals["total"][at]


def split_interactions(
    user: np.ndarray,
    order: np.ndarray,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    given: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`split_labels` on arrays: ``[n]`` int8 labels of interactions by ``user`` at times ``order``
    (in reading order), ``given`` the labels of a given split, ``eligible`` the rows that may be held out."""
    user = np.asarray(user, np.int64)
    columns = {"given": None if given is None else np.asarray(given, np.int8)}
    if eligible is not None:
        columns["target"] = np.asarray(eligible, bool)
    con = _connect(_array_table(user, np.zeros_like(user), order, **columns))
    split_labels(
        con,
        "t",
        method=method,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        num_users=int(user.max()) + 1 if user.size else 0,
        eligible=eligible is not None,
    )
    return con.execute("SELECT label FROM t ORDER BY seq").fetchnumpy()["label"].astype(np.int8)

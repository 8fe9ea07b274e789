"""Writing a graph directory's large files from DuckDB tables, streamed: the split tables as Parquet and
the training graph's CSR as memory-mappable ``.npy`` arrays. Memory stays at a batch (plus the ``[N+1]``
row pointer) whatever the number of interactions.

The files are those the in-memory prepare wrote, to the byte: Parquet row groups are cut as pyarrow's
``write_table`` cuts them (``PARQUET_ROW_GROUP`` rows), each written from one contiguous chunk, and
``.npy`` headers are numpy's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# pyarrow's write_table cuts row groups at this many rows (Arrow's DEFAULT_MAX_ROW_GROUP_LENGTH)
PARQUET_ROW_GROUP = 1 << 20
BATCH_ROWS = 1 << 20


def query_batches(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[pa.RecordBatch]:
    """The result of ``query`` as Arrow batches, streamed (DuckDB produces them as they are read)."""
    yield from con.sql(query).to_arrow_reader(BATCH_ROWS)


def write_parquet(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Write ``batches`` (cast to ``schema``) to ``path`` with the row groups pyarrow's ``write_table``
    would make of the whole table; returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with pq.ParquetWriter(path, schema) as writer:
        pending: list[pa.RecordBatch] = []
        held = 0
        wrote = False
        for batch in batches:
            pending.append(pa.record_batch(batch.columns, schema=schema) if batch.schema != schema else batch)
            held += batch.num_rows
            total += batch.num_rows
            while held >= PARQUET_ROW_GROUP:
                table = pa.Table.from_batches(pending, schema)
                writer.write_table(table.slice(0, PARQUET_ROW_GROUP).combine_chunks())
                rest = table.slice(PARQUET_ROW_GROUP)
                pending, held, wrote = rest.to_batches(), rest.num_rows, True
        if held or not wrote:
            writer.write_table(pa.Table.from_batches(pending, schema).combine_chunks())
    return total


def write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array))


def degrees(con: duckdb.DuckDBPyConnection, edges: str, column: str, size: int) -> np.ndarray:
    """``[size]`` int64: the number of rows of ``edges`` per value of ``column``."""
    result = con.execute(f"SELECT {column} AS v, count(*) AS n FROM ({edges}) GROUP BY {column}").fetchnumpy()
    out = np.zeros(size, np.int64)
    out[result["v"]] = result["n"]
    return out


def write_csr(con: duckdb.DuckDBPyConnection, edges: str, num_users: int, num_items: int, folder: Path) -> int:
    """The CSR of the undirected bipartite graph of ``edges`` (a query of unique ``u``, ``i`` pairs) in
    homogeneous numbering, rows sorted by neighbor: ``folder/indptr.npy [U+I+1]`` and ``folder/indices.npy
    [2E]`` (int64; user rows list item nodes ``U + i``, item rows list user nodes). Returns E."""
    indptr = np.zeros(num_users + num_items + 1, dtype=np.int64)
    np.cumsum(
        np.concatenate([degrees(con, edges, "u", num_users), degrees(con, edges, "i", num_items)]), out=indptr[1:]
    )
    write_npy(folder / "indptr.npy", indptr)
    indices = np.lib.format.open_memmap(folder / "indices.npy", mode="w+", dtype=np.int64, shape=(int(indptr[-1]),))
    at = 0
    for query in (
        f"SELECT i + {num_users} AS v FROM ({edges}) ORDER BY u, i",
        f"SELECT u AS v FROM ({edges}) ORDER BY i, u",
    ):
        for batch in query_batches(con, query):
            values = batch.column(0).to_numpy()
            indices[at : at + values.size] = values
            at += values.size
    indices.flush()
    del indices
    return int(indptr[-1]) // 2


def build_csr(num_users: int, num_items: int, user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`write_csr` on arrays, returning ``(indptr [U+I+1], indices [2E])`` (for callers that hold
    arrays: tests, benchmarks)."""
    import tempfile

    con = duckdb.connect()
    con.register("arrays", pa.table({"u": np.asarray(user, np.int64), "i": np.asarray(item, np.int64)}))
    con.execute("CREATE TABLE pairs AS SELECT * FROM arrays")
    with tempfile.TemporaryDirectory() as tmp:
        write_csr(con, "SELECT u, i FROM pairs", num_users, num_items, Path(tmp))
        return np.load(Path(tmp) / "indptr.npy"), np.load(Path(tmp) / "indices.npy")

"""The streaming prepare: a folder of files is one log, the output does not depend on the memory it is
given or the threads, and a bad row anywhere in a file larger than one batch is named exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn.core.config import PrepareConfig, SyntheticConfig
from distgnn.core.errors import DataError
from distgnn.data.prepare import prepare
from distgnn.data.readers import CSV_BLOCK_BYTES

GRAPH_FILES = (
    "train.parquet",
    "val.parquet",
    "test.parquet",
    "users.parquet",
    "items.parquet",
    "graph/indptr.npy",
    "graph/indices.npy",
)


def digests(graph: Path) -> dict[str, str]:
    """sha256 of every file that does not name the input (meta.json does)."""
    return {name: hashlib.sha256((graph / name).read_bytes()).hexdigest() for name in GRAPH_FILES}


def log_rows(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    user, item, ts = rng.integers(0, n // 8, n), rng.zipf(1.5, n) % (n // 4), rng.integers(0, 10_000, n)
    return [f"u{u},i{i},{t}" for u, i, t in zip(user, item, ts)]


def test_a_folder_of_files_is_the_log_of_their_rows_in_name_order(tmp_path):
    rows = log_rows(3000)
    (tmp_path / "whole.csv").write_text("user,item,ts\n" + "\n".join(rows) + "\n")
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    # names sort as the rows run: part-0 < part-1 < sub/part-2; hidden and marker files are skipped
    (folder / "part-0.csv").write_text("user,item,ts\n" + "\n".join(rows[:1000]) + "\n")
    pq.write_table(
        pa.table(
            {
                "user": [r.split(",")[0] for r in rows[1000:2000]],
                "item": [r.split(",")[1] for r in rows[1000:2000]],
                "ts": [int(r.split(",")[2]) for r in rows[1000:2000]],
            }
        ),
        folder / "part-1.parquet",
    )
    (folder / "sub" / "part-2.csv").write_text("user,item,ts\n" + "\n".join(rows[2000:]) + "\n")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.csv.crc").write_text("garbage")
    options = {"time_col": "ts", "duplicates": "last", "split": "temporal"}
    whole = prepare(PrepareConfig(input=str(tmp_path / "whole.csv"), output=str(tmp_path / "a"), **options))
    parts = prepare(PrepareConfig(input=str(folder), output=str(tmp_path / "b"), **options))
    assert digests(parts) == digests(whole)


def test_the_graph_does_not_depend_on_memory_or_threads(tmp_path):
    """A few MB of DuckDB memory makes it spill every sort and aggregate to disk: same bytes."""
    synthetic = SyntheticConfig(num_users=8000, num_items=3000, mean_interactions=20, seed=9)
    options = {"synthetic": synthetic, "split": "random", "cold_fraction": 0.2, "min_item_interactions": 2}
    roomy = prepare(PrepareConfig(output=str(tmp_path / "roomy"), **options))
    tight = prepare(PrepareConfig(output=str(tmp_path / "tight"), memory_gb=0.09, threads=1, **options))
    assert digests(tight) == digests(roomy)


def big_csv(path: Path, bad_row: int, bad: str, column: int) -> int:
    """A CSV of several pyarrow blocks with one bad value in data row ``bad_row`` (1-based)."""
    rows = [f"u{k % 997},i{k % 1499},{k}" for k in range(200_000)]
    fields = rows[bad_row - 1].split(",")
    fields[column] = bad
    rows[bad_row - 1] = ",".join(fields)
    path.write_text("user,item,ts\n" + "\n".join(rows) + "\n")
    assert path.stat().st_size > 3 * CSV_BLOCK_BYTES
    return bad_row


@pytest.mark.parametrize(
    "bad,column,message",
    [
        ("NA", 0, "user column 'user': expected an id"),
        ("x7", 2, "timestamp column 'ts': expected a whole-number timestamp"),  # a later block's text
        ("7.5", 2, "timestamp column 'ts': expected a whole-number timestamp"),
    ],
)
def test_a_bad_value_past_the_first_block_names_its_row(tmp_path, bad, column, message):
    path = tmp_path / "log.csv"
    row = big_csv(path, 150_001, bad, column)
    with pytest.raises(DataError) as err:
        prepare(PrepareConfig(input=str(path), time_col="ts", output=str(tmp_path / "g")))
    assert str(err.value).startswith(f"{path}: row {row}: {message}")
    assert not (tmp_path / "g").exists()


def test_a_bad_row_in_a_folder_names_its_file_and_row(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.csv").write_text("user,item\nu1,i1\nu2,i2\n")
    (tmp_path / "logs" / "b.csv").write_text("user,item\nu3,i3\nnull,i4\n")
    with pytest.raises(DataError, match=r"logs/b\.csv: row 2: user column 'user': expected an id"):
        prepare(PrepareConfig(input=str(tmp_path / "logs"), output=str(tmp_path / "g")))


def test_a_repeated_pair_across_files_of_a_folder_names_both(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.csv").write_text("user,item\nu1,i1\nu2,i2\n")
    (tmp_path / "logs" / "b.csv").write_text("user,item\nu3,i3\nu2,i2\n")
    with pytest.raises(DataError, match=r"b\.csv: row 2: repeated \(user, item\) pair \(also in .*a\.csv row 2\)"):
        prepare(PrepareConfig(input=str(tmp_path / "logs"), duplicates="error", output=str(tmp_path / "g")))


def test_a_folder_without_logs_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("nothing here")
    with pytest.raises(DataError, match="a folder without CSV or Parquet files"):
        prepare(PrepareConfig(input=str(tmp_path / "empty"), output=str(tmp_path / "g")))


def test_dates_in_a_csv_become_seconds(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,when\na,x,2020-01-01 00:00:01\na,y,2020-01-01T00:00:00\nb,x,2020-01-02\n")
    out = prepare(
        PrepareConfig(input=str(path), time_col="when", val_fraction=0, test_fraction=0, output=str(tmp_path / "g"))
    )
    ts = sorted(pq.read_table(out / "train.parquet")["timestamp"].to_pylist())
    assert ts == [1577836800, 1577836801, 1577923200]


def test_a_bad_date_names_its_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,when\na,x,2020-01-01\na,y,2020-13-01\n")
    with pytest.raises(DataError, match=r"row 2: timestamp column 'when': expected a date/time"):
        prepare(PrepareConfig(input=str(path), time_col="when", output=str(tmp_path / "g")))

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
    parts/                         optional, with --partitions P: one folder per part (distgnn.data.partition)

Bad input fails before anything is written, with one line (DataError or ConfigError) naming the file, the
row (1-based data row: the header is not counted) or the column, and what was expected. What works, and how:
ids are text as written, without surrounding whitespace (empty ids, NaN and missing-value markers fail);
extra columns are ignored; timestamps are int64 ordering keys (negative ones too; fractional or beyond
int64 fail); ratings must be finite; bytes that are not UTF-8 fail naming their row; users and items that
filters (keep_events, min_rating) leave without interactions are absent, and nothing left fails; an empty
val or test split is logged as a warning saying why. The output folder may not be the current folder or
above it, hold an input, or sit below a file (:func:`check_output_path`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from distgnn.core.config import PrepareConfig, config_to_dict
from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import atomic_folder
from distgnn.data.graph import write_meta
from distgnn.data.partition import write_partitions
from distgnn.data.synthetic import generate

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
    # [n] int64: the 0-based data row in the source of each table row, once a filter has dropped rows
    # (so that later errors still name the row a person finds in the file); None = the table's own order
    rows: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------------
# Errors that name the file, the row and the column
#
# Rows are 1-based data rows: the header is not counted, blank lines are skipped (as the CSV reader does).

# What pandas, R and spreadsheets write for a missing value (pyarrow's CSV null markers) and Python's
# str(None). As an id, such a value would silently merge every row with a missing id into one hub node.
MISSING_ID_MARKERS = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
    "None",
)
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".lz4", ".zst", ".br")  # pyarrow decompresses these by name
_SNIFF_BYTES = 1 << 16


def _short(value: object, limit: int = 40) -> str:
    """repr of a value cut to ``limit`` characters: error lines stay one short line whatever the data."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(err: BaseException, limit: int = 200) -> str:
    """An Arrow or OS error message on one line (some span several lines, some quote a whole row)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    index = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _casts(target: pa.DataType) -> Callable[[pa.ChunkedArray], bool]:
    def ok(values: pa.ChunkedArray) -> bool:
        try:
            pc.cast(values, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        return True

    return ok


def _first_failing_row(values: pa.ChunkedArray, ok: Callable[[pa.ChunkedArray], bool]) -> int:
    """Index of the first value that ``ok`` rejects, where ``ok`` rejects a slice exactly when it holds a
    bad value (a cast) and rejects ``values`` as a whole. Arrow's cast errors name the value, not the row;
    bisection finds the row with about 2n values checked, vectorised, and only on the error path."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(values.slice(lo, mid - lo)):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class ColumnSource:
    """Where a column came from, so that an error names the file, the data row and the column."""

    path: Path | str
    role: str  # user, item, timestamp, rating, event
    column: str
    rows: np.ndarray | None = None  # as Interactions.rows

    def bad_value(self, index: int, expected: str, got: str) -> DataError:
        row = int(self.rows[index]) if self.rows is not None else int(index)
        return DataError(
            f"{self.path}: row {row + 1}: {self.role} column '{self.column}': expected {expected}, got {got}"
        )

    def bad_type(self, type_: pa.DataType, expected: str) -> DataError:
        return DataError(f"{self.path}: {self.role} column '{self.column}' has type {type_}, expected {expected}")


def _refuse_nulls(values: pa.ChunkedArray, where: ColumnSource, expected: str) -> None:
    if values.null_count:
        raise where.bad_value(_first_true(pc.is_null(values)), expected, "an empty value")


def _as_text(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Ids and event names as UTF-8 strings: text as it is, numbers printed (3.0 -> '3'), bytes checked to be
    UTF-8. Lists, structs, booleans and the like are a wrong schema."""
    type_ = values.type
    if pa.types.is_dictionary(type_):
        values, type_ = values.cast(type_.value_type), type_.value_type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return values.cast(pa.string())
    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        try:
            return pc.cast(values, pa.string())
        except pa.ArrowInvalid:
            # decoding as latin-1 or with replacement characters would invent ids; the user re-encodes once
            bad = _first_failing_row(values, _casts(pa.string()))
            raise where.bad_value(
                bad, "UTF-8 text (re-encode the file as UTF-8, e.g. with iconv)", _short(values[bad].as_py())
            ) from None
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return pc.cast(values, pa.string())
    raise where.bad_type(type_, "text or integer ids")


def _id_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Raw ids as strings without surrounding whitespace. Empty and blank ids, NaN and missing-value markers
    fail naming the first such row (any of them would become one hub node standing for 'unknown'), and so
    do ids spanning lines."""
    _refuse_nulls(values, where, "an id")
    if pa.types.is_floating(values.type):
        bad = _first_true(pc.invert(pc.is_finite(values)))
        if bad is not None:
            raise where.bad_value(bad, "an id", f"{values[bad].as_py()} (a missing value)")
    text = _as_text(values, where)
    stripped = pc.utf8_trim_whitespace(text)
    bad = _first_true(pc.is_in(stripped, value_set=pa.array(MISSING_ID_MARKERS)))
    if bad is not None:
        what = "blank" if stripped[bad].as_py() == "" else "a missing-value marker"
        raise where.bad_value(bad, "an id", f"{_short(text[bad].as_py())} ({what})")
    # a quote left open in a CSV swallows the following rows into one id; no real id spans lines
    bad = _first_true(pc.or_(pc.match_substring(stripped, "\n"), pc.match_substring(stripped, "\r")))
    if bad is not None:
        raise where.bad_value(bad, "an id on one line", f"{_short(text[bad].as_py())} (a quote left open?)")
    return stripped


def _timestamp_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Timestamps as int64 ordering keys. Integers keep their unit; negative ones are fine (they only order
    events). Dates and times become whole seconds since 1970. Fractional, non-finite and out-of-int64 values
    fail: rounding or clipping them would silently reorder events."""
    _refuse_nulls(values, where, "a timestamp")
    type_ = values.type
    if pa.types.is_timestamp(type_) or pa.types.is_date(type_):
        # whole seconds, as integer timestamps usually are; events within one second tie (the split breaks
        # ties at random, deduplication by file order)
        tz = type_.tz if pa.types.is_timestamp(type_) else None
        return pc.cast(pc.cast(values, pa.timestamp("s", tz=tz), safe=False), pa.int64())
    if not (
        pa.types.is_integer(type_)
        or pa.types.is_floating(type_)
        or pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
    ):
        raise where.bad_type(type_, "integer or date/time timestamps")
    try:
        return pc.cast(values, pa.int64())
    except pa.ArrowInvalid:
        bad = _first_failing_row(values, _casts(pa.int64()))
        raise where.bad_value(bad, "a whole-number timestamp within int64 range", _short(values[bad].as_py())) from None


def _rating_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Ratings as float32 (what training uses); NaN and inf fail, as do values float32 cannot hold."""
    _refuse_nulls(values, where, "a rating")
    type_ = values.type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        ratings = pc.cast(values, pa.float32(), safe=False)  # safe casts refuse ints float32 rounds
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        try:
            ratings = pc.cast(values, pa.float32())
        except pa.ArrowInvalid:
            bad = _first_failing_row(values, _casts(pa.float32()))
            raise where.bad_value(bad, "a number", _short(values[bad].as_py())) from None
    else:
        raise where.bad_type(type_, "numeric ratings")
    bad = _first_true(pc.invert(pc.is_finite(ratings)))
    if bad is not None:
        raise where.bad_value(bad, "a finite rating", _short(values[bad].as_py()))
    return ratings


def _require_columns(path: Path | str, names: list[str], roles: dict[str, str], hint: str = "") -> None:
    """Every named column exists, once; otherwise one line listing the columns found (the first 12)."""
    for role, col in roles.items():
        if col and col not in names:
            found = ", ".join(_short(n, 30) for n in names[:12])
            more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
            raise DataError(f"{path}: missing {role} column '{col}' (columns found: {found}{more}){hint}")
        if col and names.count(col) > 1:
            raise DataError(f"{path}: {role} column '{col}' appears {names.count(col)} times, expected once")


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such file ({what})")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected {what}")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file, expected {what}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty, expected {what}")
    return path


# ---------------------------------------------------------------------------------------------------
# Readers


def _read_delimited(
    path: Path, names: list[str], delimiter: str, what: str, types: dict[str, pa.DataType] | None = None
) -> pa.Table:
    """Read a headerless delimited file with pyarrow; parse errors become DataError naming the file."""
    _require_file(path, what)
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types or {}),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise DataError(f"{path}: cannot parse as {what}: {_one_line(err)}") from None


def _read_double_colon(path: Path, names: list[str], what: str) -> pa.Table:
    """MovieLens-1M '::'-separated files (latin-1). pyarrow takes one-byte delimiters only, so the
    file is re-encoded with a single separator in memory first."""
    _require_file(path, what)
    text = path.read_bytes().decode("latin-1").replace("::", "\t")
    rows = [r for r in text.split("\n") if r]
    bad = next((i for i, r in enumerate(rows) if r.count("\t") != len(names) - 1), None)
    if bad is not None:
        raise DataError(
            f"{path}: row {bad + 1}: expected {len(names)} '::'-separated fields "
            f"({', '.join(names)}), got {_short(rows[bad], 80)}"
        )
    cols = list(zip(*(r.split("\t") for r in rows)))
    return pa.table({n: pa.array(c) for n, c in zip(names, cols)})


def _interaction_table(
    table: pa.Table,
    path: Path | str,
    user: str,
    item: str,
    timestamp: str = "",
    rating: str = "",
    rows: np.ndarray | None = None,
) -> pa.Table:
    """Select and type the interaction columns; errors name the file, the data row and the column."""
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected interactions")
    roles = {"user": user, "item": item, "timestamp": timestamp, "rating": rating}
    _require_columns(path, table.column_names, roles)
    convert = {"user": _id_column, "item": _id_column, "timestamp": _timestamp_column, "rating": _rating_column}
    return pa.table(
        {role: convert[role](table[col], ColumnSource(path, role, col, rows)) for role, col in roles.items() if col}
    )


def csv_delimiter(path: Path, delimiter: str) -> str:
    """The one-character field separator: ``auto`` is a tab for .tsv files and a comma otherwise."""
    if delimiter == "auto":
        return "\t" if ".tsv" in path.suffixes else ","
    if delimiter in ("\\t", "tab"):
        return "\t"
    if len(delimiter) != 1 or delimiter in '"\n\r':
        raise ConfigError(f"config key 'delimiter': expected one character (or auto, tab), got {delimiter!r}")
    return delimiter


def _refuse_binary(path: Path) -> None:
    """A NUL byte early in the file means binary data (or UTF-16 text), never UTF-8 CSV: say so rather
    than quote garbage from a parse error. Compressed files are skipped (pyarrow decompresses them)."""
    if path.suffix in _COMPRESSED_SUFFIXES:
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    at = head.find(b"\0")
    if at >= 0:
        hint = "; it is a Parquet file (--format parquet)" if head.startswith(b"PAR1") else ""
        raise DataError(f"{path}: binary data (a NUL byte at byte {at}), expected UTF-8 CSV text{hint}")


def _csv_options(
    cfg: PrepareConfig, delimiter: str, *, use_threads: bool = True, invalid_row_handler: Callable | None = None
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    return (
        pacsv.ReadOptions(autogenerate_column_names=not cfg.csv_header, use_threads=use_threads),
        pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid_row_handler),
    )


def _csv_parse_error(path: Path, cfg: PrepareConfig, delimiter: str, err: BaseException) -> DataError:
    """The parse error with its row. pyarrow names the row only when reading on one thread, so the file
    is read again that way, on this error path only, stopping at the first bad row."""
    bad: list[pacsv.InvalidRow] = []

    def record(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

    read_opts, parse_opts = _csv_options(cfg, delimiter, use_threads=False, invalid_row_handler=record)
    try:
        pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
        pass
    if bad and bad[0].number is not None:
        row = bad[0]
        return DataError(
            f"{path}: cannot parse as CSV: row {row.number - int(cfg.csv_header)}: expected "
            f"{row.expected_columns} fields separated by {delimiter!r}, got {row.actual_columns}: "
            f"{_short(row.text)}"
        )
    return DataError(f"{path}: cannot parse as CSV: {_one_line(err)}")


def _read_csv(path: Path, cfg: PrepareConfig, roles: dict[str, str]) -> pa.Table:
    delimiter = csv_delimiter(path, cfg.delimiter)
    _refuse_binary(path)
    read_opts, parse_opts = _csv_options(cfg, delimiter)
    # Ids and events are read as bytes: verbatim ('007' stays '007', '1e3' is not 1000.0), and checked as
    # UTF-8 afterwards so that a bad byte names its row. Only an empty field is missing: 'NaN', 'NA' or
    # 'null' stay visible, to be quoted in errors (a NaN rating parses as NaN and then fails as one).
    text = {col: pa.binary() for role, col in roles.items() if col and role in ("user", "item", "event")}
    convert_opts = pacsv.ConvertOptions(column_types=text, null_values=[""])
    try:
        table = pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise _csv_parse_error(path, cfg, delimiter, err) from None
    except OSError as err:  # permission denied, I/O errors (pyarrow raises these as OSError)
        raise DataError(f"{path}: cannot read: {_one_line(err)}") from None
    try:
        names = table.column_names
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: the header is not UTF-8 text (byte {err.start} of a column name); re-encode the file as UTF-8"
        ) from None
    hint = ""
    if len(names) == 1:
        hint = f"; one column only: are fields separated by something other than {delimiter!r}? (--delimiter)"
    _require_columns(path, names, roles, hint)
    return table


def _read_parquet(path: Path, roles: dict[str, str]) -> pa.Table:
    """Only the named columns are read: a wide file costs what its interaction columns cost."""
    try:
        with pq.ParquetFile(path) as file:
            _require_columns(path, file.schema_arrow.names, roles)
            return file.read(columns=list(dict.fromkeys(c for c in roles.values() if c)))
    except (pa.ArrowException, OSError) as err:  # truncated, corrupt, not Parquet at all
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(err)})") from None


def read_table_file(path: Path, cfg: PrepareConfig) -> Interactions:
    """A generic CSV or Parquet interaction file with configurable column names. Extra columns are
    ignored. With ``event_col`` and ``keep_events``, only rows of those event types are kept: users and
    items left without any row are absent from the graph; if no row is left, it fails."""
    _require_file(path, "an interactions file (CSV or Parquet)")
    roles = {
        "user": cfg.user_col,
        "item": cfg.item_col,
        "timestamp": cfg.time_col,
        "rating": cfg.rating_col,
        "event": cfg.event_col,
    }
    as_parquet = cfg.format == "parquet" or (cfg.format != "csv" and path.suffix == ".parquet")
    table = _read_parquet(path, roles) if as_parquet else _read_csv(path, cfg, roles)
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected interactions")
    rows = None
    if cfg.event_col and cfg.keep_events:
        events = pc.utf8_trim_whitespace(_as_text(table[cfg.event_col], ColumnSource(path, "event", cfg.event_col)))
        wanted = pa.array([e.strip() for e in cfg.keep_events.split(",")], pa.string())
        keep = pc.is_in(events, value_set=wanted)
        if not pc.any(keep).as_py():
            found = ", ".join(_short(e, 20) for e in pc.unique(events.drop_null()).to_pylist()[:10])
            raise DataError(
                f"{path}: no rows left: keep_events {cfg.keep_events!r} matches no value of event column "
                f"'{cfg.event_col}' (values found: {found})"
            )
        rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        log.info(
            "kept %s of %s rows with %s in {%s}",
            f"{rows.size:,}",
            f"{table.num_rows:,}",
            cfg.event_col,
            cfg.keep_events,
        )
        table = table.filter(keep)
    table = _interaction_table(table, path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col, rows)
    return Interactions(table, f"{'parquet' if as_parquet else 'csv'}:{path}", rows=rows)


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
        users = _read_delimited(
            folder / "u.user",
            ["id", "age", "gender", "occupation", "zip"],
            "|",
            "MovieLens-100K users",
            {"id": pa.string(), "zip": pa.string()},
        )
        age_bucket = np.digitize(users["age"].to_numpy(), [18, 25, 35, 45, 50, 56])
        user_features = (
            users["id"].to_numpy(zero_copy_only=False),
            _one_hot(
                [
                    age_bucket,
                    users["gender"].to_numpy(zero_copy_only=False),
                    users["occupation"].to_numpy(zero_copy_only=False),
                ]
            ),
        )
    if (folder / "u.item").is_file():
        rows = [r.split("|") for r in (folder / "u.item").read_bytes().decode("latin-1").splitlines() if r]
        ids = np.array([r[0] for r in rows])
        item_features = (ids, np.array([[float(x) for x in r[-19:]] for r in rows], dtype=np.float32))
    return Interactions(table, f"movielens-100k:{folder}", user_features, item_features)


def read_movielens_1m(path: Path, cfg: PrepareConfig) -> Interactions:
    folder = path if path.is_dir() else path.parent
    if (folder / "ratings.dat").is_file():
        raw = _read_double_colon(
            folder / "ratings.dat",
            ["user", "item", "rating", "timestamp"],
            "MovieLens-1M ratings.dat (UserID::MovieID::Rating::Timestamp)",
        )
        table = _interaction_table(raw, folder / "ratings.dat", "user", "item", "timestamp", "rating")
    else:
        file = folder / "ratings.parquet"
        _require_file(file, "MovieLens-1M ratings (ratings.dat or ratings.parquet)")
        table = _interaction_table(
            _read_parquet(file, {"user": "userID", "item": "movieID"}), file, "userID", "movieID"
        )
    user_features = item_features = None
    if (folder / "users.dat").is_file():
        u = _read_double_colon(
            folder / "users.dat", ["id", "gender", "age", "occupation", "zip"], "MovieLens-1M users.dat"
        )
        user_features = (
            u["id"].to_numpy(zero_copy_only=False),
            _one_hot([u[c].to_numpy(zero_copy_only=False) for c in ("gender", "age", "occupation")]),
        )
    if (folder / "movies.dat").is_file():
        m = _read_double_colon(folder / "movies.dat", ["id", "title", "genres"], "MovieLens-1M movies.dat")
        item_features = (
            m["id"].to_numpy(zero_copy_only=False),
            _genre_features(m["genres"].to_numpy(zero_copy_only=False)),
        )
    return Interactions(table, f"movielens-1m:{folder}", user_features, item_features)


def read_movielens_latest(path: Path, cfg: PrepareConfig) -> Interactions:
    file = path / "ratings.csv" if path.is_dir() else path
    _require_file(file, "MovieLens ratings.csv (userId,movieId,rating,timestamp)")
    try:
        raw = pacsv.read_csv(file)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise DataError(f"{file}: cannot parse as CSV: {_one_line(err)}") from None
    table = _interaction_table(raw, file, "userId", "movieId", "timestamp", "rating")
    item_features = None
    movies = file.parent / "movies.csv"
    if movies.is_file():
        m = pacsv.read_csv(movies)
        item_features = (
            pc.cast(m["movieId"], pa.string()).to_numpy(zero_copy_only=False),
            _genre_features(m["genres"].to_numpy(zero_copy_only=False)),
        )
    return Interactions(table, f"movielens-latest:{file}", None, item_features)


def _read_adjacency_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LightGCN's 'user item item ...' lines. A loop over lines (one per user) is fine: the parsing
    itself is numpy's, and a user line is thousands of times bigger than the loop overhead."""
    _require_file(path, "LightGCN adjacency lines 'user item item ...'")
    from tqdm import tqdm

    users, items = [], []
    # bytes: numpy parses them as well, and a stray non-UTF-8 byte is a bad row, not a decoding crash
    with (
        open(path, "rb") as fh,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=path.stat().st_size < 50_000_000,
        ) as bar,
    ):
        for lineno, line in enumerate(fh, 1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                ids = np.array(line.split(), dtype=np.int64)
            except ValueError:
                raise DataError(
                    f"{path}: row {lineno}: expected integer ids 'user item item ...', got {_short(line.strip(), 60)}"
                ) from None
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
        parts.append(
            pa.table(
                {
                    "user": pa.array(u.astype(str)),
                    "item": pa.array(i.astype(str)),
                    "given_split": pa.array(np.full(u.size, split, np.int8)),
                }
            )
        )
    return Interactions(pa.concat_tables(parts), f"lightgcn:{folder}")


def read_synthetic(cfg: PrepareConfig) -> Interactions:

    s = generate(cfg.synthetic)
    table = pa.table(
        {"user": pa.array(s.user.astype(str)), "item": pa.array(s.item.astype(str)), "timestamp": pa.array(s.timestamp)}
    )
    item_ids = np.arange(cfg.synthetic.num_items).astype(str)
    return Interactions(table, "synthetic", None, (item_ids, s.item_features))


def detect_format(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        names = {p.name for p in path.iterdir()} if path.is_dir() else {path.name}
    except OSError as err:
        raise DataError(f"{path}: cannot list the folder ({err.strerror})") from None
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
        raise ConfigError(
            f"config key 'split': format '{fmt}' ships no split of its own; use random, temporal or leave_one_out"
        )
    if fmt in ("csv", "parquet") and not cfg.rating_col and cfg.min_rating > -np.inf:
        # checked before reading: a filter that cannot apply must not be skipped silently
        raise ConfigError(
            f"config key 'min_rating': {path} is read without ratings (rating_col is empty); "
            "name its rating column with --rating_col"
        )
    readers = {
        "ml-100k": read_movielens_100k,
        "ml-1m": read_movielens_1m,
        "ml-latest": read_movielens_latest,
        "lightgcn": read_lightgcn,
    }
    if fmt in readers:
        return readers[fmt](path, cfg)
    return read_table_file(path, cfg)


# ---------------------------------------------------------------------------------------------------
# Pure transformations


def encode_ids(raw: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense 0-based indices in order of first appearance, and the raw id of each index."""
    encoded = pc.dictionary_encode(raw).combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


def deduplicate(
    user: np.ndarray,
    item: np.ndarray,
    order: np.ndarray,
    policy: str,
    *,
    source: str = "input",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Row indices to keep so each (user, item) pair appears once.

    ``order`` ranks rows in time (timestamp, or file position; ties go by file position); ``first`` keeps
    the earliest row of a pair, ``last`` the latest, ``error`` raises on the first repeated pair, naming
    its row in ``source`` (``rows`` maps row indices to source rows, as ``Interactions.rows``).
    """
    key = user * (int(item.max()) + 1) + item
    by_time = np.lexsort((np.arange(key.size), order))
    if policy == "last":
        by_time = by_time[::-1]
    _, first = np.unique(key[by_time], return_index=True)
    keep = np.sort(by_time[first])
    if policy == "error" and keep.size != key.size:
        dup = np.setdiff1d(np.arange(key.size), keep)[0]
        other = keep[np.flatnonzero(key[keep] == key[dup])[0]]
        dup, other = (rows[dup], rows[other]) if rows is not None else (dup, other)
        raise DataError(
            f"{source}: row {dup + 1}: repeated (user, item) pair (also in row {other + 1}); "
            "use --duplicates first or last"
        )
    return keep


def held_out_counts(
    n_user: np.ndarray, *, method: str, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """How many of a user's ``n_user`` interactions go to validation and to test (arrays like ``n_user``).

    random/temporal: ``round(n * fraction)`` (halves up), test first, both capped so that at least one
    interaction stays for training; leave_one_out: one test interaction from 2 on, one validation from 3 on
    (a fraction of 0 turns that split off).
    """
    if method == "leave_one_out":
        n_test = (n_user >= 2).astype(np.int64) if test_fraction > 0 else np.zeros_like(n_user)
        n_val = (n_user >= 3).astype(np.int64) if val_fraction > 0 else np.zeros_like(n_user)
    elif method in ("random", "temporal"):
        n_test = np.minimum(np.floor(n_user * test_fraction + 0.5).astype(np.int64), n_user - 1)
        n_val = np.minimum(np.floor(n_user * val_fraction + 0.5).astype(np.int64), n_user - 1 - n_test)
    else:
        raise ConfigError(f"config key 'split': unknown method {method!r}")
    return n_val, n_test


def split_interactions(
    user: np.ndarray,
    order: np.ndarray,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    given: np.ndarray | None = None,
) -> np.ndarray:
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
        sub = split_interactions(
            user[train], order[train], method="random", val_fraction=val_fraction, test_fraction=0.0, seed=seed
        )
        labels[train[sub == VAL]] = VAL
        return labels
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError("config keys 'val_fraction'/'test_fraction': expected two fractions summing below 1")
    # order as it is, not as float64: nanosecond timestamps differ below float64's resolution
    within = rng.random(n) if method == "random" else order
    perm = np.lexsort((rng.random(n), within, user))  # grouped by user; within a user by time or at random
    counts = np.bincount(user, minlength=int(user.max()) + 1)
    starts = np.cumsum(counts) - counts
    sorted_user = user[perm]
    rank = np.arange(n) - starts[sorted_user]
    n_user = counts[sorted_user]
    n_val, n_test = held_out_counts(n_user, method=method, val_fraction=val_fraction, test_fraction=test_fraction)
    from_end = n_user - 1 - rank  # 0 = latest
    labels_sorted = np.where(from_end < n_test, TEST, np.where(from_end < n_test + n_val, VAL, TRAIN))
    labels = np.empty(n, dtype=np.int8)
    labels[perm] = labels_sorted
    return labels


def empty_split_reasons(
    user: np.ndarray, labels: np.ndarray, *, method: str, val_fraction: float, test_fraction: float
) -> list[str]:
    """One sentence for each of val and test that came out empty although asked for, saying why (a user
    needs more interactions than any has); an empty list when both have rows or were not asked for."""
    reasons = []
    for code, name, fraction in ((VAL, "val", val_fraction), (TEST, "test", test_fraction)):
        if (labels == code).any():
            continue
        if method == "given" and code == TEST:
            reasons.append("test is empty: the dataset's own split holds no test interactions")
            continue
        if fraction <= 0:
            continue  # asked for none
        # 'given' carves validation at random from the given training part
        pool = labels != TEST if method == "given" else np.ones(user.size, dtype=bool)
        rule = "random" if method == "given" else method
        most = int(np.bincount(user[pool]).max())
        # the smallest user size that holds one out: scan sizes (vectorised) up to a bound past which
        # rounding always gives one, i.e. where n * min(fraction, the share left for training) >= 2
        other = 0.0 if method == "given" else test_fraction
        bound = min(1 << 20, int(np.ceil(2 / min(fraction, 1 - val_fraction - other))) + 3)
        sizes = np.arange(1, bound + 1)
        n_val, n_test = held_out_counts(sizes, method=rule, val_fraction=val_fraction, test_fraction=other)
        held = n_val if code == VAL else n_test
        need = f"at least {int(sizes[np.argmax(held > 0)])}" if held.any() else f"more than {bound}"
        part = " of the given training part" if method == "given" else ""
        reasons.append(
            f"{name} is empty: with --split {method} and {name}_fraction {fraction:g}, a user needs {need} "
            f"interactions{part} to give one to {name} (each user keeps at least one for training), "
            f"and the most any user has is {most}"
        )
    return reasons


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


def check_prepare_config(cfg: PrepareConfig) -> None:
    """Values no reader can act on, refused before anything is read."""
    if np.isnan(cfg.min_rating) or cfg.min_rating == np.inf:
        raise ConfigError(
            f"config key 'min_rating': expected a finite number (or -inf to keep every rating), got {cfg.min_rating}"
        )
    if cfg.format in ("auto", "csv"):
        csv_delimiter(Path(cfg.input), cfg.delimiter)


def check_output_path(output: Path, inputs: list[Path]) -> None:
    """Refuse an output folder whose replacement would destroy what it must not: the current folder or one
    above it (the folder you stand in), a folder holding an input (or the input itself), an existing file,
    or a path below a file. Reads only the file system's state, and runs before any reading, so that a
    bad ``--output`` fails at once and not after minutes of parsing."""
    target, cwd = output.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ConfigError(
            f"config key 'output': {output} is the current folder or one above it ({target}); "
            "writing there would replace the folder you stand in (name a new folder)"
        )
    for source in inputs:
        resolved = source.resolve()
        if resolved == target:
            raise ConfigError(
                f"config key 'output': {output} is the input; writing there would delete it (name another folder)"
            )
        if target in resolved.parents:
            raise ConfigError(
                f"config key 'output': {output} contains the input {source}; replacing it would "
                "delete the input (name another folder)"
            )
    for folder in (target, *target.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is an existing file" if folder == target else f"is inside {folder}, which is a file"
                raise ConfigError(f"config key 'output': {output} {what}; expected a folder")
            break


def filter_min_rating(data: Interactions, min_rating: float) -> Interactions:
    """Keep interactions rated at least ``min_rating`` (-inf keeps all). Users and items left without
    any interaction are absent from the graph; none left at all is an error."""
    if min_rating == -np.inf:
        return data
    table = data.table
    if "rating" not in table.column_names:
        raise ConfigError(f"config key 'min_rating': {data.source} has no ratings to filter on")
    keep = pc.greater_equal(table["rating"], min_rating)
    kept = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    if kept.size == 0:
        low, high = pc.min_max(table["rating"]).values()
        raise DataError(
            f"{data.source}: no interactions left: min_rating {min_rating:g} keeps none of the "
            f"{table.num_rows:,} (ratings range from {low.as_py():g} to {high.as_py():g})"
        )
    log.info("kept %s of %s interactions rated >= %g", f"{kept.size:,}", f"{table.num_rows:,}", min_rating)
    rows = data.rows[kept] if data.rows is not None else kept
    return replace(data, table=table.filter(keep), rows=rows)


def prepare(cfg: PrepareConfig) -> Path:
    """Run the whole stage; returns the graph directory. Nothing is left behind if it fails."""
    t0 = time.perf_counter()
    check_prepare_config(cfg)
    check_output_path(Path(cfg.output), [Path(cfg.input)] if cfg.input and cfg.format != "synthetic" else [])
    data = read_interactions(cfg)
    log.info("read %s interactions from %s", f"{data.table.num_rows:,}", data.source)
    data = filter_min_rating(data, cfg.min_rating)
    table = data.table

    user, user_ids = encode_ids(table["user"])
    item, item_ids = encode_ids(table["item"])
    order = table["timestamp"].to_numpy() if "timestamp" in table.column_names else np.arange(table.num_rows)
    keep = deduplicate(user, item, order, cfg.duplicates, source=data.source, rows=data.rows)
    if keep.size < table.num_rows:
        log.info(
            "dropped %s repeated (user, item) rows (policy: keep %s)", f"{table.num_rows - keep.size:,}", cfg.duplicates
        )
    table, user, item, order = table.take(keep), user[keep], item[keep], order[keep]
    given = table["given_split"].to_numpy() if "given_split" in table.column_names else None
    labels = split_interactions(
        user,
        order,
        method=cfg.split,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        given=given,
    )
    for reason in empty_split_reasons(
        user, labels, method=cfg.split, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction
    ):
        log.warning("%s", reason)
    num_users, num_items = len(user_ids), len(item_ids)

    out = Path(cfg.output)
    with atomic_folder(out, kind="graph", overwrite=cfg.overwrite) as tmp:
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
        write_meta(
            tmp,
            {
                "format_version": FORMAT_VERSION,
                "source": data.source,
                "num_users": num_users,
                "num_items": num_items,
                "num_interactions": counts,
                "split": {
                    "method": cfg.split,
                    "val_fraction": cfg.val_fraction,
                    "test_fraction": cfg.test_fraction,
                    "seed": cfg.seed,
                },
                "columns": ["user", "item", *extra],
                "features": features,
                "node_numbering": "users 0..num_users-1, items num_users..num_users+num_items-1",
                "prepare_config": config_to_dict(cfg),
            },
        )
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

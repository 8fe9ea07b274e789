"""Stage 1: raw interaction logs -> a graph directory (Parquet tables + memory-mappable CSR arrays).

    python -m distgnn.prepare --input ratings.csv --user_col userId --item_col movieId \
        --time_col timestamp --split temporal --output data/ml

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

Bad input fails before anything is written, with one line (DataError or ConfigError) naming the file, the
row (1-based data row: the header is not counted) or the column, and what was expected. What works, and how:
ids are text as written, without surrounding whitespace (empty ids, NaN and missing-value markers fail);
extra columns are ignored; timestamps are int64 ordering keys (negative ones too; fractional or beyond
int64 fail); ratings must be finite; bytes that are not UTF-8 fail naming their row; users and items that
filters (keep_events, min_rating) leave without interactions are absent, and nothing left fails; an empty
val or test split is logged as a warning saying why. The output folder may not be the current folder or
above it, hold an input, or sit below a file (:func:`check_output_path`).

Order of the steps: read (keep_events), min_rating, sample_fraction (whole users), ids, repeated pairs
(a pair in several given files goes to the most held-out one; then first/last/error/count, with weights),
held-out rows of given files whose ids never train are dropped, split (target_events: only pairs with a
target event are held out), write. Feature tables are joined by raw id when writing
(:func:`feature_matrix`).
"""

from __future__ import annotations

import logging
import re
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

    # columns: user, item (string) [, timestamp int64] [, rating float32] [, event string] [, given_split int8]
    # [, "item_feature.NAME" string: the columns of item_feature_cols]
    table: pa.Table
    source: str
    user_features: tuple[np.ndarray, np.ndarray] | None = None  # (raw ids [n] str, values [n, F] float32)
    item_features: tuple[np.ndarray, np.ndarray] | None = None
    # raw side-file columns for people to read (a movie's title and genres), first column the raw id;
    # written next to the id maps in users.parquet / items.parquet
    user_display: pa.Table | None = None
    item_display: pa.Table | None = None
    # [n] int64: the 0-based data row in the source of each table row, once a filter has dropped rows
    # (so that later errors still name the row a person finds in the file); None = the table's own order
    rows: np.ndarray | None = None
    # with --test_input: the source of each given_split code (train, val, test), for errors that name a row;
    # empty for one source. Held-out parts read from such files drop rows whose ids have no training row.
    part_sources: tuple[str, ...] = ()


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


def _require_columns(
    path: Path | str, names: list[str], roles: dict[str, str] | list[tuple[str, str]], hint: str = ""
) -> None:
    """Every named column exists, once; otherwise one line listing the columns found (the first 12)."""
    for role, col in roles.items() if isinstance(roles, dict) else roles:
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


def option_names(text: str, key: str) -> list[str]:
    """A comma-separated option value as a list of names (surrounding whitespace dropped); an empty or
    repeated name is a ConfigError naming the key."""
    if not text.strip():
        return []
    names = [n.strip() for n in text.split(",")]
    if "" in names:
        raise ConfigError(f"config key '{key}': expected comma-separated names, got an empty one in {text!r}")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise ConfigError(f"config key '{key}': {repeated!r} is named twice in {text!r}")
    return names


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV file names its columns: a header row, names given in order (csv_columns), or f0, f1, ..."""

    delimiter: str
    header: bool = True
    names: tuple[str, ...] = ()


def csv_layout(path: Path, cfg: PrepareConfig) -> CsvLayout:
    """The layout of the interaction files: csv_columns implies no header row."""
    names = tuple(option_names(cfg.csv_columns, "csv_columns"))
    return CsvLayout(csv_delimiter(path, cfg.delimiter), header=cfg.csv_header and not names, names=names)


def _csv_options(
    layout: CsvLayout, *, use_threads: bool = True, invalid_row_handler: Callable | None = None
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    if layout.names:
        read_opts = pacsv.ReadOptions(column_names=list(layout.names), use_threads=use_threads)
    else:
        read_opts = pacsv.ReadOptions(autogenerate_column_names=not layout.header, use_threads=use_threads)
    return read_opts, pacsv.ParseOptions(delimiter=layout.delimiter, invalid_row_handler=invalid_row_handler)


def _csv_parse_error(path: Path, layout: CsvLayout, err: BaseException) -> DataError:
    """The parse error with its row. pyarrow names the row only when reading on one thread, so the file
    is read again that way, on this error path only, stopping at the first bad row."""
    bad: list[pacsv.InvalidRow] = []

    def record(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

    read_opts, parse_opts = _csv_options(layout, use_threads=False, invalid_row_handler=record)
    try:
        pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
        pass
    if bad and bad[0].number is not None:
        row = bad[0]
        named = f" ({', '.join(layout.names)})" if layout.names else ""
        return DataError(
            f"{path}: cannot parse as CSV: row {row.number - int(layout.header)}: expected "
            f"{row.expected_columns} fields{named} separated by {layout.delimiter!r}, got {row.actual_columns}: "
            f"{_short(row.text)}"
        )
    return DataError(f"{path}: cannot parse as CSV: {_one_line(err)}")


def _read_csv_table(path: Path, layout: CsvLayout, verbatim: list[str], *, strings_can_be_null: bool = False):
    """Read a whole CSV file; the ``verbatim`` columns as bytes. Errors name the file (and the row)."""
    _refuse_binary(path)
    read_opts, parse_opts = _csv_options(layout)
    # Ids and events are read as bytes: verbatim ('007' stays '007', '1e3' is not 1000.0), and checked as
    # UTF-8 afterwards so that a bad byte names its row. Only an empty field is missing: 'NaN', 'NA' or
    # 'null' stay visible, to be quoted in errors (a NaN rating parses as NaN and then fails as one).
    convert_opts = pacsv.ConvertOptions(
        column_types={col: pa.binary() for col in verbatim},
        null_values=[""],
        strings_can_be_null=strings_can_be_null,
    )
    try:
        table = pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise _csv_parse_error(path, layout, err) from None
    except OSError as err:  # permission denied, I/O errors (pyarrow raises these as OSError)
        raise DataError(f"{path}: cannot read: {_one_line(err)}") from None
    try:
        table.column_names  # noqa: B018 (decodes the header: a bad byte shows here)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: the header is not UTF-8 text (byte {err.start} of a column name); re-encode the file as UTF-8"
        ) from None
    return table


def _read_csv(path: Path, cfg: PrepareConfig, roles: list[tuple[str, str]]) -> pa.Table:
    layout = csv_layout(path, cfg)
    text_roles = ("user", "item", "event", "item feature")
    table = _read_csv_table(path, layout, [col for role, col in roles if col and role in text_roles])
    names = table.column_names
    hint = ""
    if len(names) == 1:
        hint = f"; one column only: are fields separated by something other than {layout.delimiter!r}? (--delimiter)"
    _require_columns(path, names, roles, hint)
    return table


def _read_parquet(path: Path, roles: dict[str, str] | list[tuple[str, str]]) -> pa.Table:
    """Only the named columns are read: a wide file costs what its interaction columns cost."""
    cols = [c for _, c in (roles.items() if isinstance(roles, dict) else roles) if c]
    try:
        with pq.ParquetFile(path) as file:
            _require_columns(path, file.schema_arrow.names, roles)
            return file.read(columns=list(dict.fromkeys(cols)))
    except (pa.ArrowException, OSError) as err:  # truncated, corrupt, not Parquet at all
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(err)})") from None


ITEM_FEATURE_PREFIX = "item_feature."  # Interactions.table columns holding item_feature_cols


def parse_event_weights(text: str) -> dict[str, float]:
    """``pv:1,cart:2,buy:4`` -> {'pv': 1.0, 'cart': 2.0, 'buy': 4.0}; each weight a positive finite number."""
    weights: dict[str, float] = {}
    for entry in (e.strip() for e in text.split(",") if text.strip()):
        name, sep, value = entry.rpartition(":")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name or not np.isfinite(weight) or weight <= 0:
            raise ConfigError(
                f"config key 'event_weights': expected type:weight pairs with positive weights such as "
                f"pv:1,buy:4, got {entry!r}"
            )
        if name in weights:
            raise ConfigError(f"config key 'event_weights': event type {name!r} is given twice")
        weights[name] = weight
    return weights


def _event_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Event types as text without surrounding whitespace (an empty event stays null)."""
    return pc.utf8_trim_whitespace(_as_text(values, where))


def read_table_file(path: Path, cfg: PrepareConfig) -> Interactions:
    """A generic CSV or Parquet interaction file with configurable column names. Extra columns are
    ignored. With ``event_col`` and ``keep_events``, only rows of those event types are kept: users and
    items left without any row are absent from the graph; if no row is left, it fails. With
    ``event_weights``, every kept row's event type must have a weight."""
    _require_file(path, "an interactions file (CSV or Parquet)")
    roles = [
        ("user", cfg.user_col),
        ("item", cfg.item_col),
        ("timestamp", cfg.time_col),
        ("rating", cfg.rating_col),
        ("event", cfg.event_col),
        *(("item feature", col) for col in option_names(cfg.item_feature_cols, "item_feature_cols")),
    ]
    as_parquet = cfg.format == "parquet" or (cfg.format != "csv" and path.suffix == ".parquet")
    table = _read_parquet(path, roles) if as_parquet else _read_csv(path, cfg, roles)
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected interactions")
    rows = None
    events = None
    if cfg.event_col:
        events = _event_column(table[cfg.event_col], ColumnSource(path, "event", cfg.event_col))
    if events is not None and cfg.keep_events:
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
        table, events = table.filter(keep), events.filter(keep)
    if events is not None and cfg.event_weights:
        where = ColumnSource(path, "event", cfg.event_col, rows)
        weights = parse_event_weights(cfg.event_weights)
        _refuse_nulls(events, where, "an event type")
        unknown = _first_true(pc.invert(pc.is_in(events, value_set=pa.array(list(weights), pa.string()))))
        if unknown is not None:
            raise where.bad_value(
                unknown, f"an event type of event_weights ({', '.join(weights)})", _short(events[unknown].as_py())
            )
    out = _interaction_table(table, path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col, rows)
    if events is not None:
        out = out.append_column("event", events)
    for role, col in roles:
        if role == "item feature":
            values = _as_text(table[col], ColumnSource(path, "item feature", col, rows))
            out = out.append_column(ITEM_FEATURE_PREFIX + col, pc.utf8_trim_whitespace(values))
    return Interactions(out, f"{'parquet' if as_parquet else 'csv'}:{path}", rows=rows)


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


def given_parts(cfg: PrepareConfig) -> list[tuple[Path, int]]:
    """The files of a split given by --test_input (and --val_input): (path, TRAIN/VAL/TEST)."""
    parts = [(Path(cfg.input), TRAIN)]
    if cfg.val_input:
        parts.append((Path(cfg.val_input), VAL))
    return [*parts, (Path(cfg.test_input), TEST)]


def read_given_files(parts: list[tuple[Path, int]], read: Callable[[Path], Interactions]) -> Interactions:
    """One table of the parts, each read by ``read`` and labelled in a given_split column; ``rows`` and
    ``part_sources`` keep each row's file and data row for errors."""
    tables, rows, sources = [], [], ["", "", ""]
    for path, code in parts:
        data = read(path)
        n = data.table.num_rows
        tables.append(data.table.append_column("given_split", pa.array(np.full(n, code, np.int8))))
        rows.append(data.rows if data.rows is not None else np.arange(n))
        sources[code] = str(path)
    return Interactions(pa.concat_tables(tables), "", rows=np.concatenate(rows), part_sources=tuple(sources))


def read_movielens_100k(path: Path, cfg: PrepareConfig) -> Interactions:
    folder = path if path.is_dir() else path.parent
    names = ["user", "item", "rating", "timestamp"]
    types = {"user": pa.string(), "item": pa.string(), "rating": pa.float32(), "timestamp": pa.int64()}
    what = "MovieLens-100K user\\titem\\trating\\ttimestamp"
    given = Interactions(pa.table({}), f"movielens-100k:{folder}")  # rows and sources of a split from files
    if cfg.test_input:
        if path.is_dir():
            raise ConfigError(
                f"config key 'input': with --test_input, input is the training file (such as u1.base), not the "
                f"folder {path}"
            )
        given = read_given_files(
            given_parts(cfg),
            lambda file: Interactions(_read_delimited(file, names, "\t", what, types), str(file)),
        )
        table = given.table
    elif cfg.split == "given":
        parts = []
        for name, split in (("ua.base", TRAIN), ("ua.test", TEST)):
            t = _read_delimited(folder / name, names, "\t", what, types)
            parts.append(t.append_column("given_split", pa.array(np.full(t.num_rows, split, np.int8))))
        table = pa.concat_tables(parts)
    else:
        file = path if path.is_file() else folder / "u.data"
        table = _read_delimited(file, names, "\t", what, types)
    user_features = item_features = user_display = item_display = None
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
        user_display = users.select(["id", "age", "gender", "occupation"])
    if (folder / "u.item").is_file():
        lines = [r.split("|") for r in (folder / "u.item").read_bytes().decode("latin-1").splitlines() if r]
        ids = np.array([r[0] for r in lines])
        item_features = (ids, np.array([[float(x) for x in r[-19:]] for r in lines], dtype=np.float32))
        item_display = pa.table({"id": ids, "title": [r[1] for r in lines]})
    source = f"movielens-100k:{path}" if cfg.test_input else given.source
    return replace(
        given,
        table=table,
        source=source,
        user_features=user_features,
        item_features=item_features,
        user_display=user_display,
        item_display=item_display,
    )


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
    user_features = item_features = user_display = item_display = None
    if (folder / "users.dat").is_file():
        u = _read_double_colon(
            folder / "users.dat", ["id", "gender", "age", "occupation", "zip"], "MovieLens-1M users.dat"
        )
        user_features = (
            u["id"].to_numpy(zero_copy_only=False),
            _one_hot([u[c].to_numpy(zero_copy_only=False) for c in ("gender", "age", "occupation")]),
        )
        user_display = u.select(["id", "gender", "age", "occupation"])
    if (folder / "movies.dat").is_file():
        m = _read_double_colon(folder / "movies.dat", ["id", "title", "genres"], "MovieLens-1M movies.dat")
        item_features = (
            m["id"].to_numpy(zero_copy_only=False),
            _genre_features(m["genres"].to_numpy(zero_copy_only=False)),
        )
        item_display = m.select(["id", "title", "genres"])
    return Interactions(
        table,
        f"movielens-1m:{folder}",
        user_features,
        item_features,
        user_display=user_display,
        item_display=item_display,
    )


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


ML_100K_FILE = re.compile(r"u[1-5ab]\.(base|test)")  # the dataset's own split files, read one by one


def detect_format(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        names = {p.name for p in path.iterdir()} if path.is_dir() else {path.name}
    except OSError as err:
        raise DataError(f"{path}: cannot list the folder ({err.strerror})") from None
    if {"train.txt", "test.txt"} <= names:
        return "lightgcn"
    if "u.data" in names or "ua.base" in names or (path.is_file() and ML_100K_FILE.fullmatch(path.name)):
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
    if cfg.test_input and fmt not in ("csv", "parquet", "ml-100k"):
        raise ConfigError(
            f"config key 'test_input': held-out files are read as csv, parquet or ml-100k, not format '{fmt}'"
        )
    if cfg.split == "given" and not cfg.test_input and fmt not in ("ml-100k", "lightgcn"):
        raise ConfigError(
            f"config key 'split': {path} (format '{fmt}') ships no split of its own; use random, temporal or "
            "leave_one_out, or name the held-out files with --test_input (and --val_input)"
        )
    if fmt not in ("csv", "parquet"):
        for key in ("event_weights", "target_events", "item_feature_cols", "csv_columns"):
            if getattr(cfg, key):
                raise ConfigError(f"config key '{key}': applies to csv/parquet columns; format '{fmt}' has none")
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
    if cfg.test_input:
        given = read_given_files(given_parts(cfg), lambda file: read_table_file(file, cfg))
        return replace(given, source=f"{fmt}:{path}")
    return read_table_file(path, cfg)


# ---------------------------------------------------------------------------------------------------
# Pure transformations


def encode_ids(raw: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Dense 0-based indices in order of first appearance, and the raw id of each index."""
    encoded = pc.dictionary_encode(raw).combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


def pair_keys(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """One int64 key per (user, item) pair, equal exactly for equal pairs."""
    return user * (int(item.max()) + 1) + item


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
    """Row indices to keep so each (user, item) pair appears once.

    ``order`` ranks rows in time (timestamp, or file position; ties go by file position); ``first`` keeps
    the earliest row of a pair, ``last`` and ``count`` the latest (``count`` then weighs the pair by its
    rows: :func:`pair_totals`), ``error`` raises on the first repeated pair, naming its row in ``source``
    (``rows`` maps row indices to source rows, as ``Interactions.rows``; with ``parts``, row ``i`` comes
    from ``source[parts[i]]``).
    """
    key = pair_keys(user, item)
    by_time = np.lexsort((np.arange(key.size), order))
    if policy in ("last", "count"):
        by_time = by_time[::-1]
    _, first = np.unique(key[by_time], return_index=True)
    keep = np.sort(by_time[first])
    if policy == "error" and keep.size != key.size:
        dup = np.setdiff1d(np.arange(key.size), keep)[0]
        other = keep[np.flatnonzero(key[keep] == key[dup])[0]]
        names = (source,) if isinstance(source, str) else source
        file_dup, file_other = (names[parts[dup]], names[parts[other]]) if parts is not None else (names[0],) * 2
        dup, other = (rows[dup], rows[other]) if rows is not None else (dup, other)
        also = f"row {other + 1}" if file_other == file_dup else f"{file_other} row {other + 1}"
        raise DataError(
            f"{file_dup}: row {dup + 1}: repeated (user, item) pair (also in {also}); "
            "use --duplicates first, last or count"
        )
    return keep


def pair_totals(user: np.ndarray, item: np.ndarray, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """For each kept row ``keep[j]``, the sum of ``values`` over all rows of its (user, item) pair."""
    _, pair = np.unique(pair_keys(user, item), return_inverse=True)
    return np.bincount(pair, weights=values)[pair[keep]]


def held_out_pairs_win(user: np.ndarray, item: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Mask of the rows to keep when the parts of a given split share pairs: a pair belongs to the most
    held-out part it appears in (test, then val, then train), so training never sees a held-out pair."""
    _, pair = np.unique(pair_keys(user, item), return_inverse=True)
    rank = given.astype(np.int8)  # the codes rank by how held out a part is: TRAIN < VAL < TEST
    most = np.zeros(int(pair.max()) + 1, np.int8)
    np.maximum.at(most, pair, rank)
    return rank == most[pair]


def seen_in_training(user: np.ndarray, item: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Mask of rows that are training rows or whose user and item both have a training row."""
    train = given == TRAIN
    user_seen = np.zeros(int(user.max()) + 1, bool)
    item_seen = np.zeros(int(item.max()) + 1, bool)
    user_seen[user[train]] = True
    item_seen[item[train]] = True
    return train | (user_seen[user] & item_seen[item])


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
    """Label each interaction TRAIN, VAL or TEST per user (vectorised over users).

    random: a random ``val_fraction``/``test_fraction`` of each user's interactions;
    temporal: the latest ones by ``order``; leave_one_out: the latest one for test and the one before
    for validation; given: ``given`` labels, with validation carved at random from the given train part.
    With ``eligible`` (a mask), only eligible interactions are held out, and fractions count a user's
    eligible ones. Every user keeps at least one training interaction.
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
    last = np.zeros(n, bool) if eligible is None else eligible  # eligible rows sort after the others of a user
    perm = np.lexsort((rng.random(n), within, last, user))  # grouped by user; within a user by time or at random
    counts = np.bincount(user, minlength=int(user.max()) + 1)
    eligible_counts = counts if eligible is None else np.bincount(user[eligible], minlength=counts.size)
    starts = np.cumsum(counts) - counts
    sorted_user = user[perm]
    rank = np.arange(n) - starts[sorted_user]
    n_user = counts[sorted_user]
    n_val, n_test = held_out_counts(
        eligible_counts[sorted_user],
        method=method,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        n_total=n_user,
    )
    from_end = n_user - 1 - rank  # 0 = latest
    labels_sorted = np.where(from_end < n_test, TEST, np.where(from_end < n_test + n_val, VAL, TRAIN))
    labels = np.empty(n, dtype=np.int8)
    labels[perm] = labels_sorted
    return labels


DROPPED = 3  # a label no split file holds


def cold_start_labels(user: np.ndarray, labels: np.ndarray, fraction: float, keep: int, *, seed: int) -> np.ndarray:
    """Labels with a random ``fraction`` of the users (those holding val/test rows) cut down to
    ``keep`` training interactions, chosen at random; their other training rows become
    :data:`DROPPED`. Vectorised: rank each user's training rows by a random key."""
    if not 0 < fraction < 1:
        raise ConfigError(f"config key 'cold_fraction': expected a fraction in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed + 1)
    num_users = int(user.max()) + 1
    held = np.bincount(user[labels != TRAIN], minlength=num_users) > 0
    candidates = np.flatnonzero(held)
    cold = np.zeros(num_users, dtype=bool)
    cold[rng.choice(candidates, int(round(fraction * candidates.size)), replace=False)] = True
    rows = np.flatnonzero((labels == TRAIN) & cold[user])
    order = rows[np.lexsort((rng.random(rows.size), user[rows]))]  # by user, at random within
    counts = np.bincount(user[order], minlength=num_users)
    rank = np.arange(order.size) - (np.cumsum(counts) - counts)[user[order]]
    out = labels.copy()
    out[order[rank >= keep]] = DROPPED
    log.info(
        "cold_fraction %g: %s users keep %d training interactions each (%s training rows dropped)",
        fraction,
        f"{int(cold.sum()):,}",
        keep,
        f"{int((rank >= keep).sum()):,}",
    )
    return out


def empty_split_reasons(
    user: np.ndarray,
    labels: np.ndarray,
    *,
    method: str,
    val_fraction: float,
    test_fraction: float,
    eligible: np.ndarray | None = None,
) -> list[str]:
    """One sentence for each of val and test that came out empty although asked for, saying why (a user
    needs more interactions than any has); an empty list when both have rows or were not asked for. With
    ``eligible`` (target_events), the interactions counted are the eligible ones."""
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
        if eligible is not None:
            pool = pool & eligible
        rule = "random" if method == "given" else method
        most = int(np.bincount(user[pool]).max()) if pool.any() else 0
        # the smallest user size that holds one out: scan sizes (vectorised) up to a bound past which
        # rounding always gives one, i.e. where n * min(fraction, the share left for training) >= 2
        other = 0.0 if method == "given" else test_fraction
        bound = min(1 << 20, int(np.ceil(2 / min(fraction, 1 - val_fraction - other))) + 3)
        sizes = np.arange(1, bound + 1)
        n_total = None if eligible is None else sizes + 1  # eligible ones, and one more pair to train on
        n_val, n_test = held_out_counts(
            sizes, method=rule, val_fraction=val_fraction, test_fraction=other, n_total=n_total
        )
        held = n_val if code == VAL else n_test
        need = f"at least {int(sizes[np.argmax(held > 0)])}" if held.any() else f"more than {bound}"
        part = " of the given training part" if method == "given" else ""
        what = "pairs with a target event" if eligible is not None else "interactions"
        reasons.append(
            f"{name} is empty: with --split {method} and {name}_fraction {fraction:g}, a user needs {need} "
            f"{what}{part} to give one to {name} (each user keeps at least one for training), "
            f"and the most any user has is {most}"
        )
    return reasons


def sample_users(data: Interactions, fraction: float, *, seed: int) -> Interactions:
    """Keep a random ``fraction`` of the users (at least one), each with all their rows."""
    if fraction >= 1:
        return data
    table = data.table
    users = pc.unique(table["user"])
    num_kept = max(1, int(np.floor(len(users) * fraction + 0.5)))
    chosen = np.random.default_rng(seed).choice(len(users), size=num_kept, replace=False)
    keep = pc.is_in(table["user"], value_set=users.take(pa.array(np.sort(chosen))))
    kept = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    log.info(
        "sample_fraction %g: kept %s of %s users, %s of %s interactions",
        fraction,
        f"{num_kept:,}",
        f"{len(users):,}",
        f"{kept.size:,}",
        f"{table.num_rows:,}",
    )
    rows = data.rows[kept] if data.rows is not None else kept
    return replace(data, table=table.filter(keep), rows=rows)


def compact_ids(codes: np.ndarray, raw_ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Renumber dense indices so that ids without a row are absent, keeping the order of the others."""
    used, codes = np.unique(codes, return_inverse=True)
    return codes.astype(np.int64), raw_ids.take(pa.array(used))


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


def display_columns(raw_ids: pa.Array, display: pa.Table) -> dict[str, pa.Array]:
    """The columns of ``display`` (first column: raw id) for the nodes ``raw_ids``, null where a node
    has no row."""
    lookup = pc.index_in(pc.cast(raw_ids, pa.string()), value_set=pc.cast(display.column(0), pa.string()))
    return {name: display[name].take(lookup) for name in display.column_names[1:]}


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
# Feature tables joined by raw id

# a number as a person writes one in a text column: 3, -2.5, .5, 1e3 (inf and nan are not)
_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"


@dataclass(frozen=True)
class FeatureTable:
    """Raw node features keyed by raw id: one row per id, columns as read."""

    source: str  # the file, for logs and errors
    ids: pa.Array  # [n] string, unique
    columns: pa.Table  # [n rows] raw feature values; numeric columns finite, categorical ones any scalar
    categorical: tuple[str, ...]  # the column names encoded as categories; the others are numeric


def _is_numeric_type(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_)


def _feature_kind(values: pa.ChunkedArray, where: ColumnSource, *, forced_categorical: bool) -> str:
    """'numeric' or 'categorical' for one feature column, or a DataError naming the row of a value the
    rule cannot place: a number in every row is numeric; text is categorical, unless more than half of
    its values are numbers (a numeric column with a typo); an empty or NaN numeric value fails."""
    type_ = values.type
    if pa.types.is_dictionary(type_):
        values, type_ = values.cast(type_.value_type), type_.value_type
    is_text = pa.types.is_string(type_) or pa.types.is_large_string(type_)
    if not (_is_numeric_type(type_) or is_text or pa.types.is_boolean(type_)):
        raise where.bad_type(type_, "numbers or text")
    if forced_categorical or pa.types.is_boolean(type_):
        return "categorical"
    if _is_numeric_type(type_):
        _refuse_nulls(values, where, "a number (or list the column in categorical_columns)")
        as_float = pc.cast(values, pa.float64(), safe=False)
        bad = _first_true(pc.invert(pc.is_finite(as_float)))
        if bad is not None:
            raise where.bad_value(bad, "a finite number", _short(values[bad].as_py()))
        return "numeric"
    number = pc.match_substring_regex(values, _NUMBER)  # null where the value is empty
    numbers = int(pc.sum(number).as_py() or 0)
    present = len(values) - values.null_count
    if 2 * numbers > present and numbers < present:
        bad = _first_true(pc.invert(pc.fill_null(number, True)))
        raise where.bad_value(
            bad,
            f"a number ({numbers:,} of the column's {present:,} values are; a categorical column "
            "goes in categorical_columns)",
            _short(values[bad].as_py()),
        )
    return "categorical"


def read_feature_table(path: Path, *, id_col: str, kind: str, delimiter: str, categorical: list[str]) -> FeatureTable:
    """A CSV (with a header row) or Parquet table of ``kind`` (user/item) features, one row per raw id in
    ``id_col``; every other column is a feature (:func:`_feature_kind`). Errors name the file and the row
    or the column: no id column, no rows, no feature column, repeated ids, values the rule cannot place."""
    _require_file(path, f"a {kind} feature table (CSV or Parquet)")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({_one_line(err)})") from None
    else:
        layout = CsvLayout(csv_delimiter(path, delimiter))
        table = _read_csv_table(path, layout, [id_col], strings_can_be_null=True)
    names = table.column_names
    _require_columns(path, names, {f"{kind} id": id_col}, f" (the {kind} id column is named by {kind}_col)")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected {kind} features")
    ids = _id_column(table[id_col], ColumnSource(path, f"{kind} id", id_col)).combine_chunks()
    encoded = pc.dictionary_encode(ids)
    _, first = np.unique(encoded.indices.to_numpy(), return_index=True)
    if first.size < len(ids):
        dup = int(np.setdiff1d(np.arange(len(ids)), first)[0])
        other = int(first[encoded.indices[dup].as_py()])
        raise DataError(
            f"{path}: row {dup + 1}: repeated {kind} id {_short(ids[dup].as_py())} (also in row {other + 1}); "
            f"expected one row per {kind}"
        )
    feature_names = [n for n in names if n != id_col]
    if not feature_names:
        raise DataError(f"{path}: no feature columns besides the {kind} id column '{id_col}'")
    for name in feature_names:
        _require_columns(path, names, {"feature": name})  # a name repeated in the header
        if name in ("index", "raw_id"):
            raise DataError(f"{path}: feature column '{name}' has the name of a column of {kind}s.parquet; rename it")
    kinds = {
        name: _feature_kind(table[name], ColumnSource(path, "feature", name), forced_categorical=name in categorical)
        for name in feature_names
    }
    return FeatureTable(
        source=str(path),
        ids=ids,
        columns=table.select(feature_names),
        categorical=tuple(n for n in feature_names if kinds[n] == "categorical"),
    )


def first_value_table(item: np.ndarray, item_ids: pa.Array, table: pa.Table, names: list[str], source: str):
    """The item_feature_cols of the interaction rows as a categorical FeatureTable: each item's first value
    in row order (``item [n]`` dense indices of ``table``'s rows, ``item_ids`` their raw ids)."""
    _, first = np.unique(item, return_index=True)
    columns = pa.table({n: table[ITEM_FEATURE_PREFIX + n].take(pa.array(first)) for n in names})
    return FeatureTable(source, item_ids.take(pa.array(np.unique(item))), columns, tuple(names))


def feature_matrix(
    features: FeatureTable, node_ids: pa.Array, *, max_categories: int, kind: str
) -> tuple[np.ndarray, list[str], pa.Table]:
    """Encode a feature table for the nodes ``node_ids [N]`` (raw ids in dense-index order).

    Returns ``values [N, F]`` float32, the F column names (``col``, ``col=value``, ``col=other``) and the
    raw columns taken per node (null where a node has no row). Numeric columns are z-scored over the nodes
    that have a row (constant -> 0); a categorical column gets one-hot columns for its ``max_categories``
    most frequent values among those nodes (ties by value) and one ``other`` column when it has more; an
    empty value is in no column. Nodes without a row get zeros; rows of ids that are not nodes are ignored.
    """
    lookup = pc.index_in(node_ids, value_set=features.ids)
    found = pc.is_valid(lookup).to_numpy(zero_copy_only=False)
    at = pc.fill_null(lookup, 0).to_numpy(zero_copy_only=False).astype(np.int64)[found]  # table rows of nodes
    num_nodes, num_found = len(node_ids), int(found.sum())
    if num_found < len(features.ids):
        log.info(
            "%s: %s of %s rows name %ss not in the graph; ignored",
            features.source,
            f"{len(features.ids) - num_found:,}",
            f"{len(features.ids):,}",
            kind,
        )
    if num_found < num_nodes:
        log.info(
            "%s: %s of %s %ss have no row; their features are zeros",
            features.source,
            f"{num_nodes - num_found:,}",
            f"{num_nodes:,}",
            kind,
        )
    blocks, names = [], []
    for name in features.columns.column_names:
        column = features.columns[name]
        if name not in features.categorical:
            x = pc.cast(column, pa.float64(), safe=False).to_numpy()[at]
            std = x.std() if x.size else 0.0
            block = np.zeros((num_nodes, 1), np.float32)
            if std > 0:
                block[found, 0] = (x - x.mean()) / std
            blocks.append(block)
            names.append(name)
            continue
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        text = pc.cast(column, pa.string())
        values = text.take(pa.array(at))
        counts = pc.value_counts(values.drop_null())
        vocab = counts.field("values").to_numpy(zero_copy_only=False).astype(str)
        freq = counts.field("counts").to_numpy()
        ranked = vocab[np.lexsort((vocab, -freq))]
        top, rest = ranked[:max_categories], ranked.size > max_categories
        block = np.zeros((num_nodes, top.size + int(rest)), np.float32)
        position = pc.index_in(values, value_set=pa.array(top, pa.string()))
        present = pc.is_valid(values).to_numpy(zero_copy_only=False)
        in_top = pc.is_valid(position).to_numpy(zero_copy_only=False)
        column_of = np.where(in_top, pc.fill_null(position, 0).to_numpy(zero_copy_only=False), top.size)
        hit = present & (in_top | rest)
        block[np.flatnonzero(found)[hit], column_of[hit]] = 1.0
        blocks.append(block)
        names += [f"{name}={v}" for v in top] + ([f"{name}=other"] if rest else [])
    raw = features.columns.take(lookup)
    return np.concatenate(blocks, axis=1), names, raw


def read_feature_tables(cfg: PrepareConfig) -> dict[str, list[FeatureTable]]:
    """The user_features/item_features tables of ``cfg`` by kind; categorical_columns checked to name
    columns that exist."""
    categorical = option_names(cfg.categorical_columns, "categorical_columns")
    tables: dict[str, list[FeatureTable]] = {"user": [], "item": []}
    for kind, path, id_col in (("user", cfg.user_features, cfg.user_col), ("item", cfg.item_features, cfg.item_col)):
        if path:
            tables[kind].append(
                read_feature_table(
                    Path(path), id_col=id_col, kind=kind, delimiter=cfg.delimiter, categorical=categorical
                )
            )
    read = [t for kind in tables.values() for t in kind]
    if categorical and not read:
        raise ConfigError("config key 'categorical_columns': needs user_features or item_features")
    for name in categorical:
        if not any(name in t.columns.column_names for t in read):
            columns = [", ".join(_short(c, 30) for c in t.columns.column_names[:12]) for t in read]
            found = columns[0] if len(read) == 1 else "; ".join(f"{t.source}: {c}" for t, c in zip(read, columns))
            raise DataError(
                f"{', '.join(t.source for t in read)}: no feature column '{name}' (named in categorical_columns; "
                f"feature columns found: {found})"
            )
    return tables


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
    option_names(cfg.csv_columns, "csv_columns")
    option_names(cfg.item_feature_cols, "item_feature_cols")
    if not 0 < cfg.sample_fraction <= 1:
        raise ConfigError(
            f"config key 'sample_fraction': expected a fraction of the users in (0, 1], got {cfg.sample_fraction}"
        )
    if cfg.val_input and not cfg.test_input:
        raise ConfigError("config key 'val_input': needs test_input (the test part of a given split)")
    if cfg.test_input and cfg.split != "given":
        raise ConfigError(f"config key 'test_input': held-out files need --split given, not {cfg.split!r}")
    for key in ("event_weights", "target_events"):
        if getattr(cfg, key) and not cfg.event_col:
            raise ConfigError(f"config key '{key}': needs event_col (the column holding the event types)")
    parse_event_weights(cfg.event_weights)
    targets = option_names(cfg.target_events, "target_events")
    if targets and cfg.split == "given":
        raise ConfigError(
            "config key 'target_events': not with --split given (the given split decides what is held out)"
        )
    kept = {e.strip() for e in cfg.keep_events.split(",")} if cfg.keep_events else set()
    if kept and set(targets) - kept:
        missing = ", ".join(t for t in targets if t not in kept)
        raise ConfigError(f"config key 'target_events': {missing} not among keep_events {cfg.keep_events!r}")


def input_paths(cfg: PrepareConfig) -> list[Path]:
    """Every file prepare reads (check_output_path protects them all)."""
    if not cfg.input or cfg.format == "synthetic":
        names = [cfg.user_features, cfg.item_features]
    else:
        names = [cfg.input, cfg.val_input, cfg.test_input, cfg.user_features, cfg.item_features]
    return [Path(n) for n in names if n]


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


def _take(at: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(a[at] for a in arrays)


def event_weight_of_rows(events: pa.ChunkedArray, weights: dict[str, float]) -> np.ndarray:
    """[n] float64: each row's event weight (every event type has one: checked when reading)."""
    at = pc.index_in(events, value_set=pa.array(list(weights), pa.string())).to_numpy(zero_copy_only=False)
    return np.asarray(list(weights.values()), np.float64)[at.astype(np.int64)]


def prepare(cfg: PrepareConfig) -> Path:
    """Run the whole stage; returns the graph directory. Nothing is left behind if it fails."""
    t0 = time.perf_counter()
    check_prepare_config(cfg)
    check_output_path(Path(cfg.output), input_paths(cfg))
    feature_tables = read_feature_tables(cfg)
    data = read_interactions(cfg)
    log.info("read %s interactions from %s", f"{data.table.num_rows:,}", data.source)
    data = filter_min_rating(data, cfg.min_rating)
    data = sample_users(data, cfg.sample_fraction, seed=cfg.seed)
    table = data.table

    user, user_ids = encode_ids(table["user"])
    item, item_ids = encode_ids(table["item"])
    item_columns = option_names(cfg.item_feature_cols, "item_feature_cols")
    if item_columns:
        feature_tables["item"].append(
            first_value_table(item, item_ids, table, item_columns, f"{data.source} (item_feature_cols)")
        )
    order = table["timestamp"].to_numpy() if "timestamp" in table.column_names else np.arange(table.num_rows)
    given = table["given_split"].to_numpy() if "given_split" in table.column_names else None
    rows = data.rows
    event_weights = parse_event_weights(cfg.event_weights)
    weight = event_weight_of_rows(table["event"], event_weights) if event_weights else np.ones(table.num_rows)
    targets = option_names(cfg.target_events, "target_events")
    target = None
    if targets:
        target = pc.is_in(table["event"], value_set=pa.array(targets, pa.string())).to_numpy(zero_copy_only=False)
        if not target.any():
            found = ", ".join(_short(e, 20) for e in pc.unique(table["event"].drop_null()).to_pylist()[:10])
            raise DataError(
                f"{data.source}: target_events {cfg.target_events!r} matches no value of event column "
                f"'{cfg.event_col}' (values found: {found})"
            )

    if given is not None and cfg.duplicates != "error":
        keep = np.flatnonzero(held_out_pairs_win(user, item, given))
        if keep.size < table.num_rows:
            log.info(
                "dropped %s rows of pairs that are also in a more held-out part (test, then val)",
                f"{table.num_rows - keep.size:,}",
            )
            table, (user, item, order, given, weight) = table.take(keep), _take(keep, user, item, order, given, weight)
            rows = rows[keep] if rows is not None else keep
    sources = data.part_sources or data.source
    parts = given if data.part_sources else None
    keep = deduplicate(user, item, order, cfg.duplicates, source=sources, rows=rows, parts=parts)
    if keep.size < table.num_rows:
        log.info("merged %s repeated (user, item) rows (policy: %s)", f"{table.num_rows - keep.size:,}", cfg.duplicates)
    if cfg.duplicates == "count":
        weight = pair_totals(user, item, weight, keep)
    else:
        weight = weight[keep]
    if target is not None:
        target = pair_totals(user, item, target.astype(np.float64), keep) > 0
    table, user, item, order = table.take(keep), user[keep], item[keep], order[keep]
    given = given[keep] if given is not None else None

    num_unseen = 0
    if given is not None and data.part_sources:
        seen = seen_in_training(user, item, given)
        num_unseen = int((~seen).sum())
        if num_unseen:
            log.info(
                "dropped %s held-out rows whose user or item has no row in the training part %s",
                f"{num_unseen:,}",
                data.part_sources[TRAIN],
            )
            keep = np.flatnonzero(seen)
            table, (user, item, order, given, weight) = table.take(keep), _take(keep, user, item, order, given, weight)
        user, user_ids = compact_ids(user, user_ids)
        item, item_ids = compact_ids(item, item_ids)
    if cfg.min_item_interactions > 1:
        # one pass, not an iterated k-core: users keep whatever pairs their kept items leave them
        pairs_of_item = np.bincount(item, minlength=len(item_ids))
        keep = np.flatnonzero(pairs_of_item[item] >= cfg.min_item_interactions)
        log.info(
            "min_item_interactions %d: kept %s of %s items, %s of %s (user, item) pairs",
            cfg.min_item_interactions,
            f"{int((pairs_of_item >= cfg.min_item_interactions).sum()):,}",
            f"{int((pairs_of_item > 0).sum()):,}",
            f"{keep.size:,}",
            f"{item.size:,}",
        )
        if keep.size == 0:
            raise DataError(f"{data.source}: min_item_interactions {cfg.min_item_interactions} keeps no item")
        table, (user, item, order, weight) = table.take(keep), _take(keep, user, item, order, weight)
        given = given[keep] if given is not None else None
        target = target[keep] if target is not None else None
        user, user_ids = compact_ids(user, user_ids)
        item, item_ids = compact_ids(item, item_ids)
    val_fraction = 0.0 if cfg.val_input else cfg.val_fraction  # a validation file replaces the carving
    labels = split_interactions(
        user,
        order,
        method=cfg.split,
        val_fraction=val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        given=given,
        eligible=target,
    )
    for reason in empty_split_reasons(
        user, labels, method=cfg.split, val_fraction=val_fraction, test_fraction=cfg.test_fraction, eligible=target
    ):
        log.warning("%s", reason)
    if cfg.cold_fraction > 0:
        labels = cold_start_labels(user, labels, cfg.cold_fraction, cfg.cold_items, seed=cfg.seed)
    num_users, num_items = len(user_ids), len(item_ids)
    weighted = cfg.duplicates == "count" or bool(event_weights)

    out = Path(cfg.output)
    with atomic_folder(out, kind="graph", overwrite=cfg.overwrite) as tmp:
        extra = [c for c in ("timestamp", "rating") if c in table.column_names]
        counts = {}
        for code, name in enumerate(SPLIT_NAMES):
            at = np.flatnonzero(labels == code)
            part = {"user": pa.array(user[at]), "item": pa.array(item[at])}
            part.update({c: table[c].take(pa.array(at)) for c in extra})
            if weighted:
                part["weight"] = pa.array(weight[at].astype(np.float32))
            pq.write_table(pa.table(part), tmp / f"{name}.parquet")
            counts[name] = int(at.size)
        features, feature_columns = {}, {}
        for kind, own, ids in (("user", data.user_features, user_ids), ("item", data.item_features, item_ids)):
            nodes = {"index": pa.array(np.arange(len(ids))), "raw_id": ids}
            tables = feature_tables[kind]
            if tables:
                if own is not None:
                    log.info("%s_features replaces the %s features of %s", kind, kind, data.source)
                blocks, names = [], []
                for ft in tables:
                    values, columns, raw = feature_matrix(ft, ids, max_categories=cfg.max_categories, kind=kind)
                    for col in raw.column_names:
                        if col in nodes:
                            raise DataError(f"{ft.source}: feature column '{col}' is also given by another source")
                        nodes[col] = raw[col]
                    blocks.append(values)
                    names += columns
                values = np.concatenate(blocks, axis=1)
                feature_columns[kind] = names
            elif own is not None:
                values = align_features(ids, own, what=f"{kind}s")
                display = data.user_display if kind == "user" else data.item_display
                if display is not None:
                    nodes.update(display_columns(ids, display))
            else:
                values = None
            if values is not None:
                _write_npy(tmp / "features" / f"{kind}.npy", values)
                features[kind] = int(values.shape[1])
            pq.write_table(pa.table(nodes), tmp / f"{kind}s.parquet")
        train = labels == TRAIN
        indptr, indices = build_csr(num_users, num_items, user[train], item[train])
        _write_npy(tmp / "graph" / "indptr.npy", indptr)
        _write_npy(tmp / "graph" / "indices.npy", indices)
        split = {
            "method": cfg.split,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "seed": cfg.seed,
        }
        if data.part_sources:
            split["files"] = dict(zip(SPLIT_NAMES, data.part_sources))
            split["num_dropped_unseen"] = num_unseen
        if target is not None:
            split["target_events"] = targets
            split["num_eligible_pairs"] = int(target.sum())
        if cfg.cold_fraction > 0:
            split["cold_start"] = {
                "fraction": cfg.cold_fraction,
                "items": cfg.cold_items,
                "num_dropped": int((labels == DROPPED).sum()),
            }
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

"""Readers: every input format prepare takes, as a stream of normalised Arrow batches.

A :class:`Log` is what prepare consumes: its batches carry one row per event, in the order of the files
and of the rows in them, with these columns:

- ``file`` int16, ``row`` int64: the source file (an index into :attr:`Log.files`) and its 0-based data
  row, so that an error found later (a repeated pair) still names the row a person finds in the file;
- ``user``, ``item`` string: raw ids, checked (:func:`distgnn.data.checks.id_column`);
- optional, in this order: ``timestamp`` int64, ``rating`` float32, ``event`` string, ``weight`` float64
  (the event's weight, with ``event_weights``), ``target`` bool (a target event, with ``target_events``),
  ``given`` int8 (the part of a split the dataset ships: TRAIN, VAL or TEST), and ``item_feature.NAME``
  string (the ``item_feature_cols``).

CSV and Parquet files are read batch by batch (pyarrow's streaming CSV reader, Parquet row groups), so a
log of any size costs one batch of memory here. An input is a file, a folder of such files, or a URI
prefix (``s3://bucket/logs/``) read through pyarrow's filesystems. The built-in dataset formats
(MovieLens, LightGCN's adjacency lines, the synthetic generator) are small enough to read whole.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.data.checks import (
    ColumnSource,
    as_text,
    csv_delimiter,
    event_column,
    first_true,
    id_column,
    one_line,
    option_names,
    parse_event_weights,
    rating_column,
    refuse_nulls,
    require_columns,
    require_file,
    short,
    timestamp_column,
)
from distgnn.data.synthetic import stream

log = logging.getLogger(__name__)

TRAIN, VAL, TEST = 0, 1, 2
ITEM_FEATURE_PREFIX = "item_feature."  # batch columns holding item_feature_cols
# Rows per batch: large enough that per-batch overhead vanishes, small enough that a batch of a few
# string columns stays within tens of MB.
BATCH_ROWS = 1 << 20
# pyarrow's CSV block: the default (1 MiB) parses at full speed on this machine's cores
CSV_BLOCK_BYTES = 1 << 20
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".lz4", ".zst", ".br")  # pyarrow decompresses these by name
_SNIFF_BYTES = 1 << 16


NodeFeatures = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Log:
    """An interaction log as prepare consumes it (see the module notes for the batches' columns)."""

    source: str  # for logs and meta.json: "csv:PATH", "movielens-100k:FOLDER", "synthetic", ...
    files: tuple[str, ...]  # file index -> the name errors give (a file, or the source itself)
    columns: tuple[str, ...]  # optional columns the batches carry, in the module's order
    read: Callable[[], Iterator[pa.RecordBatch]]  # the batches (a fresh iterator per call)
    # held-out parts of a given split come from files (--test_input): their rows whose user or item
    # never trains are dropped, and ids are renumbered afterwards
    given_files: bool = False
    # (raw ids [n] str, values [n, F] float32), or a function giving them once the batches were read
    user_features: NodeFeatures | Callable[[], NodeFeatures] | None = None
    item_features: NodeFeatures | Callable[[], NodeFeatures] | None = None
    # raw side-file columns for people to read (a movie's title and genres), first column the raw id;
    # written next to the id maps in users.parquet / items.parquet
    user_display: pa.Table | None = None
    item_display: pa.Table | None = None

    @property
    def schema(self) -> pa.Schema:
        return batch_schema(self.columns)

    def own_features(self, kind: str) -> NodeFeatures | None:
        """The format's own ``kind`` (user/item) features, once the batches were read."""
        features = self.user_features if kind == "user" else self.item_features
        return features() if callable(features) else features


COLUMN_TYPES = {
    "timestamp": pa.int64(),
    "rating": pa.float32(),
    "event": pa.string(),
    "weight": pa.float64(),
    "target": pa.bool_(),
    "given": pa.int8(),
}


def batch_schema(columns: tuple[str, ...]) -> pa.Schema:
    fields = [("file", pa.int16()), ("row", pa.int64()), ("user", pa.string()), ("item", pa.string())]
    fields += [(c, COLUMN_TYPES.get(c, pa.string())) for c in columns]
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------------
# Where files are: local paths and URIs, one way


@dataclass(frozen=True)
class Location:
    """A file to read, on the local disk or behind a URI (pyarrow's filesystem layer)."""

    fs: pafs.FileSystem
    path: str  # inside ``fs``
    name: str  # what errors print: the local path, or the URI

    @property
    def suffixes(self) -> list[str]:
        return Path(self.path).suffixes

    @property
    def suffix(self) -> str:
        """The format's suffix, after a compression suffix if any (log.csv.gz -> .csv)."""
        suffixes = [s for s in self.suffixes if s not in COMPRESSED_SUFFIXES]
        return suffixes[-1] if suffixes else ""


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{uri}: not a reachable storage URI ({one_line(err)})") from None


def table_files(path: str, what: str) -> list[Location]:
    """The CSV/Parquet files of ``path``: the file itself, or every such file of a folder or URI prefix
    (recursively, sorted by name; names starting with '.' or '_', such as Spark's _SUCCESS, are skipped)."""
    if "://" in path:
        fs, inner = _filesystem(path)
    else:
        fs, inner = pafs.LocalFileSystem(), str(Path(path).absolute())
    try:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{path}: no such file or folder ({what})")
        if info.type == pafs.FileType.File:
            return [Location(fs, inner, path)]
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    except OSError as err:
        raise DataError(f"{path}: cannot list ({one_line(err)})") from None
    files = []
    for entry in sorted(found, key=lambda e: e.path):
        relative = entry.path[len(inner) :].lstrip("/")
        hidden = any(part.startswith((".", "_")) for part in relative.split("/"))
        location = Location(fs, entry.path, f"{path.rstrip('/')}/{relative}")
        if entry.type == pafs.FileType.File and not hidden and location.suffix in TABLE_SUFFIXES:
            files.append(location)
    if not files:
        raise DataError(f"{path}: a folder without CSV or Parquet files ({what})")
    return files


def refuse_binary(location: Location) -> None:
    """A NUL byte early in the file means binary data (or UTF-16 text), never UTF-8 CSV: say so rather
    than quote garbage from a parse error. Compressed files are skipped (pyarrow decompresses them)."""
    if location.suffixes and location.suffixes[-1] in COMPRESSED_SUFFIXES:
        return
    try:
        with location.fs.open_input_stream(location.path) as stream:
            head = stream.read(_SNIFF_BYTES)
    except OSError as err:
        raise DataError(f"{location.name}: cannot read ({one_line(err)})") from None
    at = head.find(b"\0")
    if at >= 0:
        hint = "; it is a Parquet file (--format parquet)" if head.startswith(b"PAR1") else ""
        raise DataError(f"{location.name}: binary data (a NUL byte at byte {at}), expected UTF-8 CSV text{hint}")


# ---------------------------------------------------------------------------------------------------
# CSV


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV file names its columns: a header row, names given in order (csv_columns), or f0, f1, ..."""

    delimiter: str
    header: bool = True
    names: tuple[str, ...] = ()


def csv_layout(path: str, cfg: PrepareConfig) -> CsvLayout:
    """The layout of the interaction files: csv_columns implies no header row."""
    names = tuple(option_names(cfg.csv_columns, "csv_columns"))
    return CsvLayout(csv_delimiter(Path(path), cfg.delimiter), header=cfg.csv_header and not names, names=names)


def csv_options(
    layout: CsvLayout, *, use_threads: bool = True, invalid_row_handler: Callable | None = None
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    common = {"use_threads": use_threads, "block_size": CSV_BLOCK_BYTES}
    if layout.names:
        read_opts = pacsv.ReadOptions(column_names=list(layout.names), **common)
    else:
        read_opts = pacsv.ReadOptions(autogenerate_column_names=not layout.header, **common)
    return read_opts, pacsv.ParseOptions(delimiter=layout.delimiter, invalid_row_handler=invalid_row_handler)


def csv_parse_error(location: Location, layout: CsvLayout, err: BaseException) -> DataError:
    """The parse error with its row. pyarrow names the row only when reading on one thread, so the file
    is read again that way, on this error path only, stopping at the first bad row."""
    bad: list[pacsv.InvalidRow] = []

    def record(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "error"

    read_opts, parse_opts = csv_options(layout, use_threads=False, invalid_row_handler=record)
    try:
        with location.fs.open_input_stream(location.path, compression="detect") as stream:
            for _ in pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts):
                pass
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
        pass
    if bad and bad[0].number is not None:
        row = bad[0]
        named = f" ({', '.join(layout.names)})" if layout.names else ""
        return DataError(
            f"{location.name}: cannot parse as CSV: row {row.number - int(layout.header)}: expected "
            f"{row.expected_columns} fields{named} separated by {layout.delimiter!r}, got {row.actual_columns}: "
            f"{short(row.text)}"
        )
    return DataError(f"{location.name}: cannot parse as CSV: {one_line(err)}")


def _header_error(location: Location, err: UnicodeDecodeError) -> DataError:
    return DataError(
        f"{location.name}: the header is not UTF-8 text (byte {err.start} of a column name); "
        "re-encode the file as UTF-8"
    )


def read_csv_table(
    location: Location, layout: CsvLayout, verbatim: list[str], *, strings_can_be_null: bool = False
) -> pa.Table:
    """Read a whole CSV file (a feature table: one row per node); the ``verbatim`` columns as bytes, the
    others typed by pyarrow's inference over the file. Errors name the file (and the row)."""
    refuse_binary(location)
    read_opts, parse_opts = csv_options(layout)
    convert_opts = pacsv.ConvertOptions(
        column_types={col: pa.binary() for col in verbatim},
        null_values=[""],
        strings_can_be_null=strings_can_be_null,
    )
    try:
        with location.fs.open_input_stream(location.path, compression="detect") as stream:
            table = pacsv.read_csv(
                stream, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise csv_parse_error(location, layout, err) from None
    except OSError as err:  # permission denied, I/O errors (pyarrow raises these as OSError)
        raise DataError(f"{location.name}: cannot read: {one_line(err)}") from None
    try:
        table.column_names  # noqa: B018 (decodes the header: a bad byte shows here)
    except UnicodeDecodeError as err:
        raise _header_error(location, err) from None
    return table


def csv_batches(
    location: Location, layout: CsvLayout, roles: list[tuple[str, str]], text_roles: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    """The role columns of a CSV file, batch by batch: ids, events and item features as bytes (verbatim:
    '007' stays '007', '1e3' is not 1000.0, and a bad byte is found on its row later), the other columns
    as text, typed by the checks (:mod:`distgnn.data.checks`). A type guessed from the first block would
    fail on a later block that does not fit it; text fits every block. Only an empty field is missing:
    'NaN', 'NA' or 'null' stay visible, to be quoted in errors."""
    refuse_binary(location)
    wanted = list(dict.fromkeys(col for _, col in roles if col))
    read_opts, parse_opts = csv_options(layout)

    def open_reader(convert: pacsv.ConvertOptions) -> pacsv.CSVStreamingReader:
        stream = location.fs.open_input_stream(location.path, compression="detect")
        try:
            return pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts, convert_options=convert)
        except BaseException:
            stream.close()
            raise

    try:
        if layout.names:
            names = list(layout.names)
        else:  # the header, to name what is missing: reads the first block only
            probe = open_reader(pacsv.ConvertOptions(column_types={}))
            try:
                names = probe.schema.names
            finally:
                probe.close()
        hint = ""
        if len(names) == 1:
            hint = (
                f"; one column only: are fields separated by something other than {layout.delimiter!r}? (--delimiter)"
            )
        require_columns(location.name, names, roles, hint)
        types = {col: pa.binary() if role in text_roles else pa.string() for role, col in roles if col}
        reader = open_reader(
            pacsv.ConvertOptions(
                column_types=types, include_columns=wanted, null_values=[""], strings_can_be_null=False
            )
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise csv_parse_error(location, layout, err) from None
    except UnicodeDecodeError as err:
        raise _header_error(location, err) from None
    except OSError as err:
        raise DataError(f"{location.name}: cannot read: {one_line(err)}") from None
    with reader:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise csv_parse_error(location, layout, err) from None
            except OSError as err:
                raise DataError(f"{location.name}: cannot read: {one_line(err)}") from None
            # value columns: an empty field is a missing value (strings_can_be_null would also null empty ids,
            # which are named as blank instead)
            columns = {}
            for name in batch.schema.names:
                values = batch.column(name)
                if values.type == pa.string():
                    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
                columns[name] = values
            yield pa.record_batch(columns)


def parquet_batches(location: Location, roles: list[tuple[str, str]]) -> Iterator[pa.RecordBatch]:
    """Only the role columns, row group by row group: a wide file costs what its interaction columns cost."""
    cols = list(dict.fromkeys(c for _, c in roles if c))
    try:
        with location.fs.open_input_file(location.path) as source, pq.ParquetFile(source) as file:
            require_columns(location.name, file.schema_arrow.names, roles)
            yield from file.iter_batches(batch_size=BATCH_ROWS, columns=cols)
    except (pa.ArrowException, OSError) as err:  # truncated, corrupt, not Parquet at all
        raise DataError(f"{location.name}: not a readable Parquet file ({one_line(err)})") from None


# ---------------------------------------------------------------------------------------------------
# Interaction files (CSV, Parquet): the roles of their columns, checked batch by batch


def interaction_roles(cfg: PrepareConfig) -> list[tuple[str, str]]:
    return [
        ("user", cfg.user_col),
        ("item", cfg.item_col),
        ("timestamp", cfg.time_col),
        ("rating", cfg.rating_col),
        ("event", cfg.event_col),
        *(("item feature", col) for col in option_names(cfg.item_feature_cols, "item_feature_cols")),
    ]


def log_columns(cfg: PrepareConfig, *, given: bool) -> tuple[str, ...]:
    """The optional batch columns of a CSV/Parquet log read with ``cfg``."""
    columns = [
        c for c, key in (("timestamp", cfg.time_col), ("rating", cfg.rating_col), ("event", cfg.event_col)) if key
    ]
    columns += ["weight"] if cfg.event_weights else []
    columns += ["target"] if cfg.target_events else []
    columns += ["given"] if given else []
    columns += [ITEM_FEATURE_PREFIX + c for c in option_names(cfg.item_feature_cols, "item_feature_cols")]
    return tuple(columns)


def interaction_batch(
    batch: pa.RecordBatch | pa.Table,
    where: str,
    roles: list[tuple[str, str]],
    *,
    file: int,
    rows: np.ndarray,
    given: int | None = None,
    events: pa.Array | None = None,
    event_weights: dict[str, float] | None = None,
    targets: list[str] | None = None,
) -> pa.RecordBatch:
    """One normalised batch (the module's columns) from raw columns named by ``roles``; ``rows [n]`` are
    the batch's 0-based data rows in ``where`` (errors name them)."""
    convert = {"user": id_column, "item": id_column, "timestamp": timestamp_column, "rating": rating_column}
    n = len(rows)
    contiguous = n == 0 or int(rows[-1]) - int(rows[0]) == n - 1
    where_of = {
        role: ColumnSource(where, role, col, None if contiguous else rows, int(rows[0]) if n else 0)
        for role, col in roles
    }
    columns: dict[str, pa.Array] = {
        "file": pa.array(np.full(n, file, np.int16)),
        "row": pa.array(rows.astype(np.int64)),
    }
    for role in ("user", "item", "timestamp", "rating"):
        col = dict(roles).get(role)
        if col:
            columns[role] = convert[role](pa.chunked_array([batch.column(col)]), where_of[role]).combine_chunks()
    if events is not None:
        columns["event"] = events
        if event_weights:
            at = pc.index_in(events, value_set=pa.array(list(event_weights), pa.string()))
            columns["weight"] = pa.array(np.asarray(list(event_weights.values()), np.float64)).take(at)
        if targets:
            columns["target"] = pc.is_in(events, value_set=pa.array(targets, pa.string()))
    if given is not None:
        columns["given"] = pa.array(np.full(n, given, np.int8))
    for role, col in roles:
        if role == "item feature":
            values = as_text(pa.chunked_array([batch.column(col)]), where_of[role])
            columns[ITEM_FEATURE_PREFIX + col] = pc.utf8_trim_whitespace(values).combine_chunks()
    return pa.record_batch(columns)


def table_file_batches(
    location: Location, cfg: PrepareConfig, *, file: int, given: int | None = None
) -> Iterator[pa.RecordBatch]:
    """A CSV or Parquet interaction file with configurable column names, batch by batch. Extra columns
    are ignored. With ``event_col`` and ``keep_events``, only rows of those event types are kept: users
    and items left without any row are absent from the graph; if no row of the file is left, it fails.
    With ``event_weights``, every kept row's event type must have a weight."""
    what = "an interactions file (CSV or Parquet)"
    if isinstance(location.fs, pafs.LocalFileSystem):
        require_file(Path(location.path), what, name=location.name)
    elif location.fs.get_file_info(location.path).size == 0:
        raise DataError(f"{location.name}: file is empty, expected {what}")
    roles = interaction_roles(cfg)
    as_parquet = cfg.format == "parquet" or (cfg.format != "csv" and location.suffix == ".parquet")
    if as_parquet:
        raw = parquet_batches(location, roles)
    else:
        raw = csv_batches(location, csv_layout(location.path, cfg), roles, ("user", "item", "event", "item feature"))
    wanted = pa.array([e.strip() for e in cfg.keep_events.split(",")], pa.string()) if cfg.keep_events else None
    weights = parse_event_weights(cfg.event_weights) if cfg.event_weights else None
    targets = option_names(cfg.target_events, "target_events") or None
    offset = kept = 0
    found: list[str] = []  # event values seen, for the error when keep_events matches none
    for batch in raw:
        rows = np.arange(offset, offset + batch.num_rows)
        offset += batch.num_rows
        events = None
        if cfg.event_col:
            where = ColumnSource(location.name, "event", cfg.event_col, offset=int(rows[0]) if rows.size else 0)
            events = event_column(pa.chunked_array([batch.column(cfg.event_col)]), where).combine_chunks()
        if wanted is not None:
            if len(found) < 10:
                found += [e for e in pc.unique(events.drop_null()).to_pylist() if e not in found][: 10 - len(found)]
            keep = pc.is_in(events, value_set=wanted)
            rows = rows[keep.to_numpy(zero_copy_only=False)]
            batch, events = batch.filter(keep), events.filter(keep)
        if weights is not None:
            where = ColumnSource(location.name, "event", cfg.event_col, rows)
            refuse_nulls(pa.chunked_array([events]), where, "an event type")
            unknown = first_true(pc.invert(pc.is_in(events, value_set=pa.array(list(weights), pa.string()))))
            if unknown is not None:
                raise where.bad_value(
                    unknown, f"an event type of event_weights ({', '.join(weights)})", short(events[unknown].as_py())
                )
        kept += rows.size
        if rows.size:
            yield interaction_batch(
                batch,
                location.name,
                roles,
                file=file,
                rows=rows,
                given=given,
                events=events,
                event_weights=weights,
                targets=targets,
            )
    if offset == 0:
        raise DataError(f"{location.name}: no rows, expected interactions")
    if wanted is not None:
        if kept == 0:
            raise DataError(
                f"{location.name}: no rows left: keep_events {cfg.keep_events!r} matches no value of event column "
                f"'{cfg.event_col}' (values found: {', '.join(short(e, 20) for e in found)})"
            )
        log.info("kept %s of %s rows with %s in {%s}", f"{kept:,}", f"{offset:,}", cfg.event_col, cfg.keep_events)


def table_log(paths: list[tuple[str, int | None]], cfg: PrepareConfig, source: str) -> Log:
    """A log of CSV/Parquet files: each of ``paths`` (a file, folder or URI prefix, with the given-split
    part its rows belong to, or None) expanded to its files, read in that order."""
    locations = [(loc, given) for path, given in paths for loc in table_files(path, "an interactions file")]
    if len(locations) > np.iinfo(np.int16).max:
        raise DataError(f"{paths[0][0]}: {len(locations):,} files; at most {np.iinfo(np.int16).max:,} are read")

    def read() -> Iterator[pa.RecordBatch]:
        for index, (location, given) in enumerate(locations):
            yield from table_file_batches(location, cfg, file=index, given=given)

    given = any(code is not None for _, code in paths)
    return Log(
        source=source,
        files=tuple(loc.name for loc, _ in locations),
        columns=log_columns(cfg, given=given),
        read=read,
        given_files=given,
    )


# ---------------------------------------------------------------------------------------------------
# The built-in dataset formats, read whole (they are small) and handed on as batches


def table_in_memory(table: pa.Table, source: str) -> Log:
    """A normalised table (user, item and optional columns, in the module's order) as a Log whose rows
    are numbered in the table's order and named after ``source``."""
    columns = tuple(c for c in table.column_names if c not in ("user", "item"))
    schema = batch_schema(columns)

    def read() -> Iterator[pa.RecordBatch]:
        for start in range(0, table.num_rows, BATCH_ROWS):
            part = table.slice(start, BATCH_ROWS)
            n = part.num_rows
            yield pa.record_batch(
                [pa.array(np.zeros(n, np.int16)), pa.array(np.arange(start, start + n))]
                + [part[name].combine_chunks().cast(schema.field(name).type) for name in part.column_names],
                schema=schema,
            )

    return Log(source=source, files=(source,), columns=columns, read=read)


def read_delimited(
    path: Path, names: list[str], delimiter: str, what: str, types: dict[str, pa.DataType] | None = None
) -> pa.Table:
    """Read a headerless delimited file with pyarrow; parse errors become DataError naming the file."""
    require_file(path, what)
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types or {}),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        raise DataError(f"{path}: cannot parse as {what}: {one_line(err)}") from None


def read_double_colon(path: Path, names: list[str], what: str) -> pa.Table:
    """MovieLens-1M '::'-separated files (latin-1). pyarrow takes one-byte delimiters only, so the
    file is re-encoded with a single separator in memory first."""
    require_file(path, what)
    text = path.read_bytes().decode("latin-1").replace("::", "\t")
    rows = [r for r in text.split("\n") if r]
    bad = next((i for i, r in enumerate(rows) if r.count("\t") != len(names) - 1), None)
    if bad is not None:
        raise DataError(
            f"{path}: row {bad + 1}: expected {len(names)} '::'-separated fields "
            f"({', '.join(names)}), got {short(rows[bad], 80)}"
        )
    cols = list(zip(*(r.split("\t") for r in rows)))
    return pa.table({n: pa.array(c) for n, c in zip(names, cols)})


def interaction_table(
    table: pa.Table, path: Path | str, user: str, item: str, timestamp: str = "", rating: str = ""
) -> pa.Table:
    """Select and type the interaction columns of a whole table; errors name the file, the row and the column."""
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected interactions")
    roles = {"user": user, "item": item, "timestamp": timestamp, "rating": rating}
    require_columns(path, table.column_names, roles)
    convert = {"user": id_column, "item": id_column, "timestamp": timestamp_column, "rating": rating_column}
    return pa.table(
        {role: convert[role](table[col], ColumnSource(path, role, col)) for role, col in roles.items() if col}
    )


def one_hot(columns: list[np.ndarray]) -> np.ndarray:
    """One-hot encode categorical columns side by side: [n, sum of category counts] float32."""
    blocks = []
    for col in columns:
        _, codes = np.unique(col, return_inverse=True)
        block = np.zeros((col.size, codes.max() + 1), dtype=np.float32)
        block[np.arange(col.size), codes] = 1.0
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def genre_features(genres: np.ndarray) -> np.ndarray:
    """Multi-hot genres from 'A|B|C' strings."""
    vocab = sorted({g for s in genres for g in s.split("|")})
    pos = {g: i for i, g in enumerate(vocab)}
    out = np.zeros((genres.size, len(vocab)), dtype=np.float32)
    rows, cols = zip(*((r, pos[g]) for r, s in enumerate(genres) for g in s.split("|")))
    out[list(rows), list(cols)] = 1.0
    return out


def with_given(table: pa.Table, code: int) -> pa.Table:
    return table.append_column("given", pa.array(np.full(table.num_rows, code, np.int8)))


ML_100K_FILE = re.compile(r"u[1-5ab]\.(base|test)")  # the dataset's own split files, read one by one


def read_movielens_100k(path: Path, cfg: PrepareConfig) -> Log:
    folder = path if path.is_dir() else path.parent
    names = ["user", "item", "rating", "timestamp"]
    types = {"user": pa.string(), "item": pa.string(), "rating": pa.float32(), "timestamp": pa.int64()}
    what = "MovieLens-100K user\\titem\\trating\\ttimestamp"
    order = ["user", "item", "timestamp", "rating"]
    if cfg.test_input:
        if path.is_dir():
            raise ConfigError(
                f"config key 'input': with --test_input, input is the training file (such as u1.base), not the "
                f"folder {path}"
            )
        parts = given_parts(cfg)
        tables = [with_given(read_delimited(Path(p), names, "\t", what, types).select(order), c) for p, c in parts]
        log_ = table_in_memory(pa.concat_tables(tables), f"movielens-100k:{path}")
        # each file's rows are numbered within the file, for errors
        sizes = [t.num_rows for t in tables]
        log_ = given_file_rows(log_, [str(p) for p, _ in parts], sizes)
    elif cfg.split == "given":
        tables = [
            with_given(read_delimited(folder / name, names, "\t", what, types).select(order), split)
            for name, split in (("ua.base", TRAIN), ("ua.test", TEST))
        ]
        log_ = table_in_memory(pa.concat_tables(tables), f"movielens-100k:{folder}")
    else:
        file = path if path.is_file() else folder / "u.data"
        log_ = table_in_memory(read_delimited(file, names, "\t", what, types).select(order), f"movielens-100k:{folder}")
    user_features = item_features = user_display = item_display = None
    if (folder / "u.user").is_file():
        users = read_delimited(
            folder / "u.user",
            ["id", "age", "gender", "occupation", "zip"],
            "|",
            "MovieLens-100K users",
            {"id": pa.string(), "zip": pa.string()},
        )
        age_bucket = np.digitize(users["age"].to_numpy(), [18, 25, 35, 45, 50, 56])
        user_features = (
            users["id"].to_numpy(zero_copy_only=False),
            one_hot(
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
    return replace(
        log_,
        user_features=user_features,
        item_features=item_features,
        user_display=user_display,
        item_display=item_display,
    )


def given_file_rows(log_: Log, files: list[str], sizes: list[int]) -> Log:
    """``log_`` (one table of several files' rows, in order) with each row named by its own file and row,
    and its held-out parts marked as coming from files."""
    bounds = np.cumsum([0, *sizes])

    def read() -> Iterator[pa.RecordBatch]:
        for batch in log_.read():
            seq = batch.column("row").to_numpy()
            file = np.searchsorted(bounds, seq, side="right") - 1
            arrays = [pa.array(file.astype(np.int16)), pa.array(seq - bounds[file])] + batch.columns[2:]
            yield pa.record_batch(arrays, schema=batch.schema)

    return Log(source=log_.source, files=tuple(files), columns=log_.columns, read=read, given_files=True)


def read_movielens_1m(path: Path, cfg: PrepareConfig) -> Log:
    folder = path if path.is_dir() else path.parent
    if (folder / "ratings.dat").is_file():
        raw = read_double_colon(
            folder / "ratings.dat",
            ["user", "item", "rating", "timestamp"],
            "MovieLens-1M ratings.dat (UserID::MovieID::Rating::Timestamp)",
        )
        table = interaction_table(raw, folder / "ratings.dat", "user", "item", "timestamp", "rating")
    else:
        file = folder / "ratings.parquet"
        require_file(file, "MovieLens-1M ratings (ratings.dat or ratings.parquet)")
        roles = [("user", "userID"), ("item", "movieID")]
        batches = list(parquet_batches(Location(pafs.LocalFileSystem(), str(file.absolute()), str(file)), roles))
        table = interaction_table(pa.Table.from_batches(batches), file, "userID", "movieID")
    user_features = item_features = user_display = item_display = None
    if (folder / "users.dat").is_file():
        u = read_double_colon(
            folder / "users.dat", ["id", "gender", "age", "occupation", "zip"], "MovieLens-1M users.dat"
        )
        user_features = (
            u["id"].to_numpy(zero_copy_only=False),
            one_hot([u[c].to_numpy(zero_copy_only=False) for c in ("gender", "age", "occupation")]),
        )
        user_display = u.select(["id", "gender", "age", "occupation"])
    if (folder / "movies.dat").is_file():
        m = read_double_colon(folder / "movies.dat", ["id", "title", "genres"], "MovieLens-1M movies.dat")
        item_features = (
            m["id"].to_numpy(zero_copy_only=False),
            genre_features(m["genres"].to_numpy(zero_copy_only=False)),
        )
        item_display = m.select(["id", "title", "genres"])
    columns = [c for c in ("user", "item", "timestamp", "rating") if c in table.column_names]
    return replace(
        table_in_memory(table.select(columns), f"movielens-1m:{folder}"),
        user_features=user_features,
        item_features=item_features,
        user_display=user_display,
        item_display=item_display,
    )


def read_movielens_latest(path: Path, cfg: PrepareConfig) -> Log:
    """MovieLens 'latest' / 20M / 25M: ``ratings.csv`` (userId,movieId,rating,timestamp), streamed (25M
    rows), and genres from ``movies.csv``."""
    file = path / "ratings.csv" if path.is_dir() else path
    require_file(file, "MovieLens ratings.csv (userId,movieId,rating,timestamp)")
    columns = {"user_col": "userId", "item_col": "movieId", "time_col": "timestamp", "rating_col": "rating"}
    plain = {"event_col": "", "keep_events": "", "item_feature_cols": "", "csv_columns": "", "csv_header": True}
    log_ = table_log([(str(file), None)], replace(cfg, format="csv", delimiter=",", **columns, **plain), "")
    item_features = None
    movies = file.parent / "movies.csv"
    if movies.is_file():
        m = pacsv.read_csv(movies)
        item_features = (
            pc.cast(m["movieId"], pa.string()).to_numpy(zero_copy_only=False),
            genre_features(m["genres"].to_numpy(zero_copy_only=False)),
        )
    return replace(log_, source=f"movielens-latest:{file}", item_features=item_features)


def read_adjacency_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LightGCN's 'user item item ...' lines. A loop over lines (one per user) is fine: the parsing
    itself is numpy's, and a user line is thousands of times bigger than the loop overhead."""
    require_file(path, "LightGCN adjacency lines 'user item item ...'")
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
                    f"{path}: row {lineno}: expected integer ids 'user item item ...', got {short(line.strip(), 60)}"
                ) from None
            users.append(np.full(ids.size - 1, ids[0]))
            items.append(ids[1:])
    if not users:
        raise DataError(f"{path}: no rows, expected 'user item item ...' lines")
    return np.concatenate(users), np.concatenate(items)


def read_lightgcn(path: Path, cfg: PrepareConfig) -> Log:
    folder = path if path.is_dir() else path.parent
    parts = []
    for name, split in (("train.txt", TRAIN), ("test.txt", TEST)):
        u, i = read_adjacency_lines(folder / name)
        parts.append(with_given(pa.table({"user": pa.array(u.astype(str)), "item": pa.array(i.astype(str))}), split))
    return table_in_memory(pa.concat_tables(parts), f"lightgcn:{folder}")


def read_synthetic(cfg: PrepareConfig) -> Log:
    """The built-in generator's interactions (ids as text), streamed chunk by chunk; its item features
    (planted tastes plus noise) come after a pass, so they are read after the interactions."""
    interactions = stream(cfg.synthetic)
    schema = batch_schema(("timestamp",))

    def read() -> Iterator[pa.RecordBatch]:
        seq = 0
        for chunk in interactions:
            n = chunk.user.size
            yield pa.record_batch(
                [
                    pa.array(np.zeros(n, np.int16)),
                    pa.array(np.arange(seq, seq + n)),
                    pa.array(chunk.user.astype(str)),
                    pa.array(chunk.item.astype(str)),
                    pa.array(chunk.timestamp),
                ],
                schema=schema,
            )
            seq += n

    item_ids = np.arange(cfg.synthetic.num_items).astype(str)
    return Log(
        source="synthetic",
        files=("synthetic",),
        columns=("timestamp",),
        read=read,
        item_features=lambda: (item_ids, interactions.item_features()),
    )


def given_parts(cfg: PrepareConfig) -> list[tuple[str, int]]:
    """The files of a split given by --test_input (and --val_input): (path, TRAIN/VAL/TEST)."""
    parts = [(cfg.input, TRAIN)]
    if cfg.val_input:
        parts.append((cfg.val_input, VAL))
    return [*parts, (cfg.test_input, TEST)]


def detect_format(path: str) -> str:
    """The format of an input: a dataset folder's own (lightgcn, ml-100k, ml-1m, ml-latest) by its file
    names, else csv or parquet by the suffixes of its files (a file, a folder or a URI prefix)."""
    if "://" not in path:
        local = Path(path)
        if not local.exists():
            raise DataError(f"{path}: no such file or folder")
        try:
            names = {p.name for p in local.iterdir()} if local.is_dir() else {local.name}
        except OSError as err:
            raise DataError(f"{path}: cannot list the folder ({err.strerror})") from None
        if {"train.txt", "test.txt"} <= names:
            return "lightgcn"
        if "u.data" in names or "ua.base" in names or (local.is_file() and ML_100K_FILE.fullmatch(local.name)):
            return "ml-100k"
        if "ratings.dat" in names or ("ratings.parquet" in names and "movies.dat" in names):
            return "ml-1m"
        if "ratings.csv" in names and local.is_dir():
            return "ml-latest"
        if local.is_file() and Path(path).suffix not in TABLE_SUFFIXES:
            raise DataError(f"{path}: cannot tell the input format; pass --format")
    suffixes = {loc.suffix for loc in table_files(path, "an interactions file")}
    return "parquet" if suffixes == {".parquet"} else "csv"


def read_interactions(cfg: PrepareConfig) -> Log:
    """The Log of ``cfg``'s input (the synthetic generator without one), its format detected or forced."""
    if cfg.format == "synthetic" or (not cfg.input and cfg.format == "auto"):
        return read_synthetic(cfg)
    if not cfg.input:
        raise ConfigError(f"config key 'input': required for format '{cfg.format}'")
    fmt = detect_format(cfg.input) if cfg.format == "auto" else cfg.format
    if cfg.test_input and fmt not in ("csv", "parquet", "ml-100k"):
        raise ConfigError(
            f"config key 'test_input': held-out files are read as csv, parquet or ml-100k, not format '{fmt}'"
        )
    if cfg.split == "given" and not cfg.test_input and fmt not in ("ml-100k", "lightgcn"):
        raise ConfigError(
            f"config key 'split': {cfg.input} (format '{fmt}') ships no split of its own; use random, temporal or "
            "leave_one_out, or name the held-out files with --test_input (and --val_input)"
        )
    if fmt not in ("csv", "parquet"):
        for key in ("event_weights", "target_events", "item_feature_cols", "csv_columns"):
            if getattr(cfg, key):
                raise ConfigError(f"config key '{key}': applies to csv/parquet columns; format '{fmt}' has none")
    if fmt in ("csv", "parquet") and not cfg.rating_col and cfg.min_rating > -np.inf:
        # checked before reading: a filter that cannot apply must not be skipped silently
        raise ConfigError(
            f"config key 'min_rating': {cfg.input} is read without ratings (rating_col is empty); "
            "name its rating column with --rating_col"
        )
    readers = {
        "ml-100k": read_movielens_100k,
        "ml-1m": read_movielens_1m,
        "ml-latest": read_movielens_latest,
        "lightgcn": read_lightgcn,
    }
    if fmt in readers:
        if "://" in cfg.input:
            raise ConfigError(f"config key 'input': format '{fmt}' is read from a local folder, not {cfg.input}")
        return readers[fmt](Path(cfg.input), cfg)
    parts = given_parts(cfg) if cfg.test_input else [(cfg.input, None)]
    return table_log(parts, cfg, f"{fmt}:{cfg.input}")

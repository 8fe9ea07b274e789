"""Checks of prepare's inputs: every bad value, column, option or path becomes one DataError or ConfigError
naming the file, the row (1-based data row: the header is not counted) or the column, and what was
expected. Pure functions on Arrow arrays and configs; the readers (:mod:`distgnn.data.readers`) call them
on every batch they read, so a bad row anywhere in a file of any size is named the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import ConfigError, DataError

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


def short(value: object, limit: int = 40) -> str:
    """repr of a value cut to ``limit`` characters: error lines stay one short line whatever the data."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(err: BaseException, limit: int = 200) -> str:
    """An Arrow or OS error message on one line (some span several lines, some quote a whole row)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
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
    # the 0-based data row in the file of each value: ``rows[index]`` when a filter dropped rows of the
    # batch, else ``offset + index`` (the batch's first row in the file)
    rows: np.ndarray | None = None
    offset: int = 0

    def bad_value(self, index: int, expected: str, got: str) -> DataError:
        row = int(self.rows[index]) if self.rows is not None else self.offset + int(index)
        return DataError(
            f"{self.path}: row {row + 1}: {self.role} column '{self.column}': expected {expected}, got {got}"
        )

    def bad_type(self, type_: pa.DataType, expected: str) -> DataError:
        return DataError(f"{self.path}: {self.role} column '{self.column}' has type {type_}, expected {expected}")


def refuse_nulls(values: pa.ChunkedArray, where: ColumnSource, expected: str) -> None:
    if values.null_count:
        raise where.bad_value(first_true(pc.is_null(values)), expected, "an empty value")


def as_text(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
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
                bad, "UTF-8 text (re-encode the file as UTF-8, e.g. with iconv)", short(values[bad].as_py())
            ) from None
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return pc.cast(values, pa.string())
    raise where.bad_type(type_, "text or integer ids")


def id_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Raw ids as strings without surrounding whitespace. Empty and blank ids, NaN and missing-value markers
    fail naming the first such row (any of them would become one hub node standing for 'unknown'), and so
    do ids spanning lines."""
    refuse_nulls(values, where, "an id")
    if pa.types.is_floating(values.type):
        bad = first_true(pc.invert(pc.is_finite(values)))
        if bad is not None:
            raise where.bad_value(bad, "an id", f"{values[bad].as_py()} (a missing value)")
    text = as_text(values, where)
    stripped = pc.utf8_trim_whitespace(text)
    bad = first_true(pc.is_in(stripped, value_set=pa.array(MISSING_ID_MARKERS)))
    if bad is not None:
        what = "blank" if stripped[bad].as_py() == "" else "a missing-value marker"
        raise where.bad_value(bad, "an id", f"{short(text[bad].as_py())} ({what})")
    # a quote left open in a CSV swallows the following rows into one id; no real id spans lines
    bad = first_true(pc.or_(pc.match_substring(stripped, "\n"), pc.match_substring(stripped, "\r")))
    if bad is not None:
        raise where.bad_value(bad, "an id on one line", f"{short(text[bad].as_py())} (a quote left open?)")
    return stripped


def timestamp_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Timestamps as int64 ordering keys. Integers keep their unit; negative ones are fine (they only order
    events). Dates and times become whole seconds since 1970. Fractional, non-finite and out-of-int64 values
    fail: rounding or clipping them would silently reorder events."""
    refuse_nulls(values, where, "a timestamp")
    type_ = values.type
    if pa.types.is_timestamp(type_) or pa.types.is_date(type_):
        # whole seconds, as integer timestamps usually are; events within one second tie (the split breaks
        # ties at random, deduplication by file order)
        tz = type_.tz if pa.types.is_timestamp(type_) else None
        return pc.cast(pc.cast(values, pa.timestamp("s", tz=tz), safe=False), pa.int64())
    is_text = pa.types.is_string(type_) or pa.types.is_large_string(type_)
    if not (pa.types.is_integer(type_) or pa.types.is_floating(type_) or is_text):
        raise where.bad_type(type_, "integer or date/time timestamps")
    first = values.slice(0, 1)
    if is_text and len(values) and not _casts(pa.int64())(first) and _casts(pa.timestamp("ns"))(first):
        # CSV columns are read as text (a type guessed from a file's first block would fail on a later
        # block): ISO 8601 dates and times, parsed as a CSV reader parses them, when the first row holds one
        try:
            return pc.cast(pc.cast(values, pa.timestamp("ns")), pa.timestamp("s"), safe=False).cast(pa.int64())
        except pa.ArrowInvalid:
            bad = _first_failing_row(values, _casts(pa.timestamp("ns")))
            raise where.bad_value(
                bad, "a date/time such as the column's first row (ISO 8601)", short(values[bad].as_py())
            ) from None
    try:
        return pc.cast(values, pa.int64())
    except pa.ArrowInvalid:
        bad = _first_failing_row(values, _casts(pa.int64()))
        raise where.bad_value(bad, "a whole-number timestamp within int64 range", short(values[bad].as_py())) from None


def rating_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Ratings as float32 (what training uses); NaN and inf fail, as do values float32 cannot hold."""
    refuse_nulls(values, where, "a rating")
    type_ = values.type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        ratings = pc.cast(values, pa.float32(), safe=False)  # safe casts refuse ints float32 rounds
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        try:
            ratings = pc.cast(values, pa.float32())
        except pa.ArrowInvalid:
            bad = _first_failing_row(values, _casts(pa.float32()))
            raise where.bad_value(bad, "a number", short(values[bad].as_py())) from None
    else:
        raise where.bad_type(type_, "numeric ratings")
    bad = first_true(pc.invert(pc.is_finite(ratings)))
    if bad is not None:
        raise where.bad_value(bad, "a finite rating", short(values[bad].as_py()))
    return ratings


def require_columns(
    path: Path | str, names: list[str], roles: dict[str, str] | list[tuple[str, str]], hint: str = ""
) -> None:
    """Every named column exists, once; otherwise one line listing the columns found (the first 12)."""
    for role, col in roles.items() if isinstance(roles, dict) else roles:
        if col and col not in names:
            found = ", ".join(short(n, 30) for n in names[:12])
            more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
            raise DataError(f"{path}: missing {role} column '{col}' (columns found: {found}{more}){hint}")
        if col and names.count(col) > 1:
            raise DataError(f"{path}: {role} column '{col}' appears {names.count(col)} times, expected once")


def require_file(path: Path, what: str, *, name: str | Path | None = None) -> Path:
    """``path`` is a readable, non-empty regular file; otherwise one line naming it (as ``name``, default
    the path) and ``what`` was expected."""
    name = path if name is None else name
    if not path.exists():
        raise DataError(f"{name}: no such file ({what})")
    if path.is_dir():
        raise DataError(f"{name}: is a folder, expected {what}")
    if not path.is_file():
        raise DataError(f"{name}: not a regular file, expected {what}")
    if path.stat().st_size == 0:
        raise DataError(f"{name}: file is empty, expected {what}")
    return path


def csv_delimiter(path: Path, delimiter: str) -> str:
    """The one-character field separator: ``auto`` is a tab for .tsv files and a comma otherwise."""
    if delimiter == "auto":
        return "\t" if ".tsv" in path.suffixes else ","
    if delimiter in ("\\t", "tab"):
        return "\t"
    if len(delimiter) != 1 or delimiter in '"\n\r':
        raise ConfigError(f"config key 'delimiter': expected one character (or auto, tab), got {delimiter!r}")
    return delimiter


def refuse_binary(path: Path) -> None:
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


def event_column(values: pa.ChunkedArray, where: ColumnSource) -> pa.ChunkedArray:
    """Event types as text without surrounding whitespace (an empty event stays null)."""
    return pc.utf8_trim_whitespace(as_text(values, where))


def check_prepare_config(cfg: PrepareConfig) -> None:
    """Values no reader can act on, refused before anything is read."""
    if np.isnan(cfg.min_rating) or cfg.min_rating == np.inf:
        raise ConfigError(
            f"config key 'min_rating': expected a finite number (or -inf to keep every rating), got {cfg.min_rating}"
        )
    if cfg.format in ("auto", "csv"):
        csv_delimiter(Path(cfg.input), cfg.delimiter)
    if cfg.memory_gb <= 0:
        raise ConfigError(f"config key 'memory_gb': expected a positive number of GB, got {cfg.memory_gb}")
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
    """Every local file or folder prepare reads (check_output_path protects them all; URIs are not local)."""
    if not cfg.input or cfg.format == "synthetic":
        names = [cfg.user_features, cfg.item_features]
    else:
        names = [cfg.input, cfg.val_input, cfg.test_input, cfg.user_features, cfg.item_features]
    return [Path(n) for n in names if n and "://" not in n]


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

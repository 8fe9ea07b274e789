"""Node features: tables joined to the graph's nodes by raw id, the built-in formats' side files, and the
raw columns kept next to the id maps for people to read. Everything here is per node (users or items), so
it is held in memory: a few bytes per node and feature, never per interaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.data.checks import (
    ColumnSource,
    csv_delimiter,
    first_true,
    id_column,
    one_line,
    option_names,
    refuse_nulls,
    require_columns,
    require_file,
    short,
)
from distgnn.data.readers import CsvLayout, Log, read_csv_table, table_files
from distgnn.data.writing import write_npy

log = logging.getLogger(__name__)


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
        refuse_nulls(values, where, "a number (or list the column in categorical_columns)")
        as_float = pc.cast(values, pa.float64(), safe=False)
        bad = first_true(pc.invert(pc.is_finite(as_float)))
        if bad is not None:
            raise where.bad_value(bad, "a finite number", short(values[bad].as_py()))
        return "numeric"
    number = pc.match_substring_regex(values, _NUMBER)  # null where the value is empty
    numbers = int(pc.sum(number).as_py() or 0)
    present = len(values) - values.null_count
    if 2 * numbers > present and numbers < present:
        bad = first_true(pc.invert(pc.fill_null(number, True)))
        raise where.bad_value(
            bad,
            f"a number ({numbers:,} of the column's {present:,} values are; a categorical column "
            "goes in categorical_columns)",
            short(values[bad].as_py()),
        )
    return "categorical"


def read_feature_table(path: str, *, id_col: str, kind: str, delimiter: str, categorical: list[str]) -> FeatureTable:
    """A CSV (with a header row) or Parquet table of ``kind`` (user/item) features, one row per raw id in
    ``id_col``; every other column is a feature (:func:`_feature_kind`). Errors name the file and the row
    or the column: no id column, no rows, no feature column, repeated ids, values the rule cannot place.
    ``path``: a local file or a URI."""
    if "://" not in path:
        require_file(Path(path), f"a {kind} feature table (CSV or Parquet)")
    (location,) = table_files(path, f"a {kind} feature table (CSV or Parquet)")[:1]
    if location.suffix == ".parquet":
        try:
            with location.fs.open_input_file(location.path) as source:
                table = pq.read_table(source)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({one_line(err)})") from None
    else:
        layout = CsvLayout(csv_delimiter(Path(location.path), delimiter))
        table = read_csv_table(location, layout, [id_col], strings_can_be_null=True)
    names = table.column_names
    require_columns(path, names, {f"{kind} id": id_col}, f" (the {kind} id column is named by {kind}_col)")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows, expected {kind} features")
    ids = id_column(table[id_col], ColumnSource(path, f"{kind} id", id_col)).combine_chunks()
    encoded = pc.dictionary_encode(ids)
    _, first = np.unique(encoded.indices.to_numpy(), return_index=True)
    if first.size < len(ids):
        dup = int(np.setdiff1d(np.arange(len(ids)), first)[0])
        other = int(first[encoded.indices[dup].as_py()])
        raise DataError(
            f"{path}: row {dup + 1}: repeated {kind} id {short(ids[dup].as_py())} (also in row {other + 1}); "
            f"expected one row per {kind}"
        )
    feature_names = [n for n in names if n != id_col]
    if not feature_names:
        raise DataError(f"{path}: no feature columns besides the {kind} id column '{id_col}'")
    for name in feature_names:
        require_columns(path, names, {"feature": name})  # a name repeated in the header
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
                read_feature_table(path, id_col=id_col, kind=kind, delimiter=cfg.delimiter, categorical=categorical)
            )
    read = [t for kind in tables.values() for t in kind]
    if categorical and not read:
        raise ConfigError("config key 'categorical_columns': needs user_features or item_features")
    for name in categorical:
        if not any(name in t.columns.column_names for t in read):
            columns = [", ".join(short(c, 30) for c in t.columns.column_names[:12]) for t in read]
            found = columns[0] if len(read) == 1 else "; ".join(f"{t.source}: {c}" for t, c in zip(read, columns))
            raise DataError(
                f"{', '.join(t.source for t in read)}: no feature column '{name}' (named in categorical_columns; "
                f"feature columns found: {found})"
            )
    return tables


def write_node_tables(
    folder: Path,
    ids: dict[str, pa.Array],
    feature_tables: dict[str, list[FeatureTable]],
    data: Log,
    *,
    max_categories: int,
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """``users.parquet``/``items.parquet`` (index, raw_id, then the raw feature or display columns) and
    ``features/{user,item}.npy`` for the nodes ``ids[kind]`` (raw ids in dense-index order): from the
    feature tables when given (they replace a format's own features), else from the format's own side
    files. Returns the feature widths and, for tables, the encoded column names, by kind."""
    features, feature_columns = {}, {}
    for kind in ("user", "item"):
        own = data.own_features(kind)
        node_ids = ids[kind]
        nodes = {"index": pa.array(np.arange(len(node_ids))), "raw_id": node_ids}
        tables = feature_tables[kind]
        values = None
        if tables:
            if own is not None:
                log.info("%s_features replaces the %s features of %s", kind, kind, data.source)
            blocks, names = [], []
            for ft in tables:
                encoded, columns, raw = feature_matrix(ft, node_ids, max_categories=max_categories, kind=kind)
                for col in raw.column_names:
                    if col in nodes:
                        raise DataError(f"{ft.source}: feature column '{col}' is also given by another source")
                    nodes[col] = raw[col]
                blocks.append(encoded)
                names += columns
            values = np.concatenate(blocks, axis=1)
            feature_columns[kind] = names
        elif own is not None:
            values = align_features(node_ids, own, what=f"{kind}s")
            display = data.user_display if kind == "user" else data.item_display
            if display is not None:
                nodes.update(display_columns(node_ids, display))
        if values is not None:
            write_npy(folder / "features" / f"{kind}.npy", values)
            features[kind] = int(values.shape[1])
        pq.write_table(pa.table(nodes), folder / f"{kind}s.parquet")
    return features, feature_columns

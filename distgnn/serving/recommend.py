"""Stage 4: top-k items for given users from an export, seen items excluded, optionally re-ranked.

    python -m distgnn.recommend --export exports/my-run --user-ids 17,42 --k 10
    python -m distgnn.recommend --export exports/my-run --all-users --output recs.parquet --mmr-lambda 0.7

Python API for services::

    import distgnn
    export = distgnn.load_export("exports/my-run")
    table = export.recommend(["17", "42"], k=10)          # pyarrow Table: user_id, rank, item_id, score
    table = export.recommend(["17"], k=10, mmr_lambda=0.7, pool=100, exclude=["i9"], boost={"i3": 0.05})

Re-ranking (:mod:`distgnn.serving.rerank`): ``exclude`` items are never recommended; ``boost`` adds a
weight to an item's score; ``mmr_lambda < 1`` picks the ``k`` items from the best ``pool`` by maximal
marginal relevance. The ``score`` column is the model's score plus the item's boost; with MMR the ranks
are MMR's pick order, so scores need not decrease with rank.

Files for many users (:func:`write_recommendations`) are streamed in chunks of users, so memory
holds one chunk of results and one Parquet row group, whatever the number of users. Each output
file ``F`` is written to a temporary sibling, fsynced and renamed, and comes with ``F.distgnn.json``
(kind ``recommendations``, the settings, the file's size); an existing ``F`` is replaced only when
that marker says distgnn wrote it and the size still matches, or with ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import inside, write_atomic, write_json_atomic
from distgnn.core.storage import download, is_uri
from distgnn.core.version import VERSION
from distgnn.data.graph import item_sets_from_pairs
from distgnn.serving.export import MANIFEST, read_embeddings, read_manifest
from distgnn.serving.index import load_index, search_excluding
from distgnn.serving.rerank import (
    DEFAULT_POOL,
    RerankRules,
    in_rows,
    keep_best,
    merge_by_score,
    mmr_rerank,
    unit_rows,
)

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("rank", pa.int64()), ("item_id", pa.string()), ("score", pa.float32())]
)
OUTPUT_KIND = "recommendations"
OUTPUT_FORMATS = ("parquet", "csv")
MARKER_SUFFIX = ".distgnn.json"
# Rows per Parquet row group, whatever --chunk-size is: the file's layout does not depend on how the
# work was chunked, and 1M rows (~30 MB of ids and scores) is a row group readers handle well.
ROW_GROUP_ROWS = 1 << 20
# shown in error messages: enough to find the bad rows, short enough for one line
_SHOWN_IDS = 5


def _find(sorted_ids: np.ndarray, order: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index [n] int64, known [n] bool)`` of raw ids ``query`` by binary search in ``sorted_ids``
    (``order`` maps a sorted position back to the dense index); unknown ids get index -1."""
    if not len(sorted_ids):
        return np.full(len(query), -1, dtype=np.int64), np.zeros(len(query), dtype=bool)
    position = np.searchsorted(sorted_ids, query).clip(max=len(sorted_ids) - 1)
    known = sorted_ids[position] == query
    return np.where(known, order[position], -1).astype(np.int64), known


def _sorted_lookup(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    return ids[order], order


@dataclass
class Export:
    """A loaded export: embeddings, id maps, seen items and lazily loaded FAISS indexes."""

    path: Path
    manifest: dict
    user_ids: pa.Array  # [U] raw user ids (string)
    item_ids: np.ndarray  # [I] raw item ids
    user_emb: np.ndarray  # [U, d] float32
    item_emb: np.ndarray  # [I, d] float32
    seen_indptr: torch.Tensor  # CSR of every known interaction, per user index
    seen_indices: torch.Tensor
    _indexes: dict = field(default_factory=dict, repr=False)
    _sorted_ids: np.ndarray | None = field(default=None, repr=False)
    _order: np.ndarray | None = field(default=None, repr=False)
    _sorted_items: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _item_array: pa.Array | None = field(default=None, repr=False)
    _unit_items: torch.Tensor | None = field(default=None, repr=False)

    def user_index(self, raw_ids: list[str]) -> np.ndarray:
        """Dense indices of raw user ids; an unknown id raises DataError naming it. A binary search
        in ids sorted once (a hash set of every id per call cost O(users), ~0.45 ms at 6,000)."""
        rows, known = self.find_users(np.asarray([str(u) for u in raw_ids], dtype=str))
        if not known.all():
            missing = np.asarray([str(u) for u in raw_ids])[~known]
            raise DataError(
                f"{self.path}: unknown user id(s) {', '.join(map(str, missing[:5]))} "
                f"(the export knows {len(self.user_ids):,} users)"
            )
        return rows

    def find_users(self, raw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(index [n] int64, known [n] bool)`` of raw user ids (str array); unknown ones get -1."""
        if self._sorted_ids is None:
            self._sorted_ids, self._order = _sorted_lookup(self.user_ids.to_numpy(zero_copy_only=False).astype(str))
        return _find(self._sorted_ids, self._order, np.asarray(raw_ids).astype(str))

    def find_items(self, raw_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(index [n] int64, known [n] bool)`` of raw item ids (str array); unknown ones get -1."""
        if self._sorted_items is None:
            self._sorted_items = _sorted_lookup(np.asarray(self.item_ids).astype(str))
        return _find(*self._sorted_items, np.asarray(raw_ids).astype(str))

    def index(self, index_type: str):
        if index_type not in self.manifest["indexes"]:
            raise DataError(
                f"{self.path}: no '{index_type}' index in this export (has: {', '.join(self.manifest['indexes'])})"
            )
        if index_type not in self._indexes:
            file = inside(self.path, self.manifest["indexes"][index_type]["file"], MANIFEST)
            index = load_index(file)
            if index.ntotal != len(self.item_ids) or index.d != self.item_emb.shape[1]:
                raise DataError(
                    f"{file}: holds {index.ntotal} vectors of dimension {index.d}, expected "
                    f"{len(self.item_ids)} of dimension {self.item_emb.shape[1]}"
                )
            self._indexes[index_type] = index
        return self._indexes[index_type]

    def item_unit_vectors(self) -> torch.Tensor:
        """``[I, d']`` L2-normalised item vectors for item-item cosine similarity (MMR, diversity):
        the exported vectors without the bias columns ``scoring_vectors`` appends (detected as
        :mod:`distgnn.serving.http` does: a user column of exact ones), which hold no taste."""
        if self._unit_items is None:
            user_emb, item_emb = np.asarray(self.user_emb), np.asarray(self.item_emb)
            dim = item_emb.shape[1]
            if len(user_emb) > 1 and dim > 1 and np.all(user_emb[:, -1] == 1.0):
                dim -= 1  # item bias: users [e | 1], items [e | t * b]
                if dim > 1 and np.all(item_emb[:, dim - 1] == 1.0):
                    dim -= 1  # rating model: users [e | b_u + mean | 1], items [e | 1 | b_i]
            self._unit_items = unit_rows(torch.from_numpy(np.ascontiguousarray(item_emb[:, :dim])))
        return self._unit_items

    def rerank_rules(
        self,
        *,
        mmr_lambda: float = 1.0,
        pool: int = DEFAULT_POOL,
        exclude: Iterable[str] | None = None,
        boost: Mapping[str, float] | None = None,
        exclude_source: str = "exclude",
        boost_source: str = "boost",
    ) -> RerankRules:
        """:class:`RerankRules` from raw item ids. Unknown ids are skipped with one warning naming
        ``*_source`` and the first few (an item list outlives catalogue changes); a list of which
        no id is known raises DataError (a wrong file, not a stale one). An item both excluded and
        boosted is excluded."""
        exclude_raw = np.asarray(list(() if exclude is None else exclude), dtype=str)
        exclude_ids = np.unique(self._known_items(exclude_raw, None, exclude_source))
        boost = {str(item): float(weight) for item, weight in (boost or {}).items()}
        boost_items = self._known_items(np.asarray(list(boost), dtype=str), None, boost_source)
        weights = np.asarray([boost[str(i)] for i in np.asarray(self.item_ids)[boost_items].astype(str)])
        keep = ~np.isin(boost_items, exclude_ids)
        return RerankRules(
            mmr_lambda=float(mmr_lambda),
            pool=pool,
            exclude=exclude_ids,
            boost_items=boost_items[keep],
            boost=weights[keep].astype(np.float32),
        )

    def _known_items(self, raw: np.ndarray, rows: np.ndarray | None, source: str) -> np.ndarray:
        """Item indices of the known ids of ``raw`` (``rows``: their rows in ``source``, for messages)."""
        if not len(raw):
            return np.zeros(0, dtype=np.int64)
        index, known = self.find_items(raw)
        if not known.any():
            raise DataError(
                f"{source}: none of its {len(raw):,} item ids is an item of the export {self.path} "
                f"(first: {_describe(raw, rows, ~known)})"
            )
        if not known.all():
            log.warning(
                "%s: skipped %s of %s item ids the export does not know (%s)",
                source,
                f"{int((~known).sum()):,}",
                f"{len(raw):,}",
                _describe(raw, rows, ~known),
            )
        return index[known]

    def top_items(
        self, rows: np.ndarray, k: int, *, index: str = "flat", rules: RerankRules | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``D [B, k]`` float32 scores and ``I [B, k]`` int64 item indices of the users at dense
        indices ``rows [B]``, in rank order, padded with ``-inf`` / ``-1``; seen items excluded.

        Without rules (or with rules that change nothing) this is the index's plain top-k. Otherwise:
        search the best ``width`` (``k``, or ``pool`` for MMR) plus as many as there are excluded and
        boosted items, drop those, score the boosted items exactly with their boost and merge them
        in, then MMR. With the flat index the candidates are exactly the best ``width`` of score +
        boost over the allowed items. Costs that grow with the lists: each excluded or boosted item
        deepens every search by one, and the boosted items are scored for every user (``B x m``).
        """
        xq = self.user_emb[rows]
        rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        seen = (self.seen_indptr, self.seen_indices)
        if rules is None or rules.is_plain:
            return search_excluding(self.index(index), xq, k, *seen, rows_t, metric="ip")
        width = k if rules.mmr_lambda == 1.0 else max(rules.pool, k)
        dropped = torch.from_numpy(np.concatenate([rules.exclude, rules.boost_items]))
        D, I = search_excluding(self.index(index), xq, width + len(dropped), *seen, rows_t, metric="ip")
        D, I = torch.from_numpy(D), torch.from_numpy(I)
        D, I = keep_best(D, I, (I >= 0) & ~torch.isin(I, dropped), width)
        if len(rules.boost_items):
            boost_I = torch.from_numpy(rules.boost_items).expand(len(rows), -1)
            boost_D = torch.from_numpy(xq @ self.item_emb[rules.boost_items].T + rules.boost)
            not_allowed = in_rows(*seen, rows_t, boost_I) | torch.isin(boost_I, torch.from_numpy(rules.exclude))
            D, I = merge_by_score(D, I, torch.where(not_allowed, float("-inf"), boost_D), boost_I, width)
        D, I = mmr_rerank(D, I, self.item_unit_vectors(), k, mmr_lambda=rules.mmr_lambda)
        return D.numpy().astype(np.float32), I.numpy()

    def result_table(self, user_ids: pa.Array, D: np.ndarray, I: np.ndarray) -> pa.Table:
        """``user_id, rank, item_id, score`` rows of :meth:`top_items`' answer; ``user_ids [B]``
        names the users of its rows. Empty slots (``I = -1``) give no row."""
        if self._item_array is None:
            self._item_array = pa.array(np.asarray(self.item_ids).astype(str))
        valid = I >= 0
        b, r = np.nonzero(valid)
        return pa.table(
            [
                user_ids.take(pa.array(b)),
                pa.array(r + 1, pa.int64()),
                self._item_array.take(pa.array(I[valid])),
                pa.array(D[valid].astype(np.float32)),
            ],
            schema=RESULT_SCHEMA,
        )

    def recommend(
        self,
        user_ids: list[str],
        k: int = 10,
        *,
        index: str = "flat",
        mmr_lambda: float = 1.0,
        pool: int = DEFAULT_POOL,
        exclude: Iterable[str] | None = None,
        boost: Mapping[str, float] | None = None,
    ) -> pa.Table:
        """Top-``k`` unseen items per user, best first, as ``user_id, rank, item_id, score``
        (fewer than ``k`` rows for a user who has seen almost every item).

        Args:
            user_ids: raw user ids; an unknown one raises DataError.
            k: items per user, from 1 to the number of items.
            index: which of the export's indexes to search.
            mmr_lambda: MMR's weight of relevance in [0, 1]; 1.0 (default) = the plain order.
            pool: candidates per user MMR picks from (raised to ``k`` when smaller).
            exclude: raw item ids never recommended.
            boost: raw item id -> weight added to its score before MMR (negative demotes).
                Unknown ids in ``exclude`` and ``boost`` are skipped with a warning
                (:meth:`rerank_rules`).
        """
        if not user_ids:
            raise DataError("no user ids given")
        _check_k(k, len(self.item_ids))
        rows = self.user_index(user_ids)
        rules = self.rerank_rules(mmr_lambda=mmr_lambda, pool=pool, exclude=exclude, boost=boost)
        D, I = self.top_items(rows, k, index=index, rules=rules)
        return self.result_table(pa.array(np.asarray([str(u) for u in user_ids])), D, I)


def _check_k(k: int, num_items: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_items:
        raise DataError(f"k: expected a whole number from 1 to {num_items} (the number of items), got {k!r}")


def _describe(raw: np.ndarray, rows: np.ndarray | None, mask: np.ndarray) -> str:
    """The first few ids selected by ``mask``, with their rows when known: ``row 3 'x', row 9 'y'``."""
    where = np.flatnonzero(mask)[:_SHOWN_IDS]
    if rows is None:
        return ", ".join(repr(str(raw[i])) for i in where)
    return ", ".join(f"row {int(rows[i])} {str(raw[i])!r}" for i in where)


# ---------------------------------------------------------------------------------------------------
# Id files and output files


def read_id_file(path: str | Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(raw_ids [n] str, rows [n] int64)`` of a file of raw ids; ``rows`` are the 1-based rows
    where each id stands, for error messages.

    - ``*.parquet``: the column ``column`` (rows count from 1, without a header);
    - any other file is text: a CSV whose first line names a ``column`` column (its rows count
      from the header, row 1), or else one id per line, no header. Blank lines are skipped;
      surrounding whitespace is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        try:
            values = pq.read_table(path, columns=[column])[column]
        except (pa.ArrowInvalid, OSError, KeyError) as err:
            raise DataError(
                f"{path}: not a Parquet file with a '{column}' column ({str(err).splitlines()[0]})"
            ) from None
        ids = values.cast(pa.string()).to_numpy(zero_copy_only=False)
        rows = np.arange(1, len(ids) + 1, dtype=np.int64)
        present = np.asarray([i is not None for i in ids]) if values.null_count else np.ones(len(ids), dtype=bool)
        return np.asarray(ids[present]).astype(str), rows[present]
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file of ids ({err.reason})") from None
    lines = np.asarray(text.splitlines(), dtype=str)
    if not len(lines):
        return lines, np.zeros(0, dtype=np.int64)
    header = [name.strip().strip('"') for name in str(lines[0]).split(",")]
    if column in header:
        try:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={column: pa.string()}, include_columns=[column], strings_can_be_null=False
                ),
            )
        except pa.ArrowInvalid as err:
            raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
        ids = np.char.strip(table[column].to_numpy(zero_copy_only=False).astype(str))
        rows = np.arange(2, len(ids) + 2, dtype=np.int64)  # counted without blank lines, which CSV skips
    else:
        ids = np.char.strip(lines)
        rows = np.arange(1, len(ids) + 1, dtype=np.int64)
        has_comma = np.char.find(ids, ",") >= 0
        if has_comma.any():
            first = int(np.flatnonzero(has_comma)[0])
            raise DataError(
                f"{path}: row {rows[first]} holds a comma; expected one id per line, or a CSV whose "
                f"header names a '{column}' column"
            )
    nonblank = ids != ""
    return ids[nonblank], rows[nonblank]


def users_from_file(export: Export, path: str | Path, *, skip_unknown: bool = False) -> np.ndarray:
    """Dense user indices of the ids in ``path`` (:func:`read_id_file`, column ``user_id``), in
    file order, repeats kept. An unknown id raises DataError naming the file, the rows and the
    count; with ``skip_unknown`` unknown ids are left out with one warning saying the same."""
    raw, rows = read_id_file(path, "user_id")
    if not len(raw):
        raise DataError(f"{path}: holds no user ids")
    index, known = export.find_users(raw)
    if not known.all():
        message = (
            f"{path}: {int((~known).sum()):,} of {len(raw):,} user ids are not users of the export "
            f"({_describe(raw, rows, ~known)})"
        )
        if not skip_unknown:
            raise DataError(message + "; pass --skip-unknown-users to leave them out")
        if not known.any():
            raise DataError(message)
        log.warning("%s; skipped", message)
    return index[known]


def items_from_file(export: Export, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(raw_ids, rows)`` of the known item ids in ``path`` (:func:`read_id_file`, column
    ``item_id``); unknown ids are skipped with one warning naming the file, the count and the first
    rows, and a file without any known id raises DataError."""
    raw, rows = read_id_file(path, "item_id")
    if not len(raw):
        raise DataError(f"{path}: holds no item ids")
    index = export._known_items(raw, rows, str(path))
    return np.asarray(export.item_ids)[index].astype(str), rows


def output_paths(output: str | Path, output_format: str = "auto") -> dict[str, Path]:
    """Format -> file of ``--output``/``--output-format``. ``auto`` takes the format from the suffix
    (``.parquet`` or ``.csv``); ``parquet`` or ``csv`` adds that suffix when ``output`` has none and
    refuses another; ``both`` writes ``<output without its .parquet/.csv suffix>.parquet`` and ``.csv``."""
    output = Path(output)
    suffix = output.suffix.lower()
    if output_format == "auto":
        if suffix[1:] not in OUTPUT_FORMATS:
            raise ConfigError(
                f"--output {output}: the suffix must be .parquet or .csv to choose the format "
                "(or give --output-format parquet|csv|both)"
            )
        return {suffix[1:]: output}
    if output_format == "both":
        stem = output.with_suffix("") if suffix[1:] in OUTPUT_FORMATS else output
        return {fmt: stem.with_name(f"{stem.name}.{fmt}") for fmt in OUTPUT_FORMATS}
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"--output-format: expected auto, parquet, csv or both, got {output_format!r}")
    if suffix[1:] == output_format:
        return {output_format: output}
    if suffix[1:] in OUTPUT_FORMATS:
        raise ConfigError(f"--output {output}: suffix {suffix} contradicts --output-format {output_format}")
    return {output_format: output.with_name(f"{output.name}.{output_format}")}


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def written_by_distgnn(path: Path) -> bool:
    """True when ``path``'s marker says distgnn wrote it as recommendations, at its current size."""
    try:
        marker = json.loads(marker_path(path).read_text())
        return (
            marker.get("kind") == OUTPUT_KIND
            and marker.get("file") == path.name
            and marker.get("size") == path.stat().st_size
        )
    except (OSError, ValueError, AttributeError):
        return False


def check_output_replaceable(path: Path, *, overwrite: bool = False) -> None:
    """Raise DataError unless ``path`` may be written: it does not exist, or it is a recommendations
    file distgnn wrote (:func:`written_by_distgnn`), or ``overwrite`` is given for a file; never a folder."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a file name for the recommendations")
    if path.parent.exists() and not path.parent.is_dir():
        raise DataError(f"{path}: its parent {path.parent} is a file, not a folder")
    if not path.exists() or overwrite or written_by_distgnn(path):
        return
    raise DataError(
        f"{path}: exists and was not written by python -m distgnn.recommend (no matching "
        f"{marker_path(path).name}); refusing to replace it (name another file, or pass --overwrite)"
    )


class _ParquetSink:
    """A ParquetWriter fed tables of any size that writes row groups of exactly ``row_group_rows``
    (the last one shorter), so the file does not depend on the chunking of the work."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int):
        self.writer = pq.ParquetWriter(path, schema)
        self.row_group_rows = row_group_rows
        self.pending: list[pa.Table] = []
        self.num_pending = 0

    def write_table(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.num_pending += table.num_rows
        if self.num_pending >= self.row_group_rows:
            buffer = pa.concat_tables(self.pending)
            full = (buffer.num_rows // self.row_group_rows) * self.row_group_rows
            for start in range(0, full, self.row_group_rows):
                self.writer.write_table(buffer.slice(start, self.row_group_rows), row_group_size=self.row_group_rows)
            self.pending, self.num_pending = [buffer.slice(full)], buffer.num_rows - full

    def close(self) -> None:
        if self.num_pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=self.row_group_rows)
        self.writer.close()


def _publish(finals: list[Path], write, tmps: tuple[Path, ...] = ()) -> None:
    """``write(tmps)`` with one temporary sibling per final file, each then fsynced and renamed into
    place by :func:`distgnn.core.files.write_atomic` (nested, so a failure removes every temporary)."""
    if not finals:
        write(list(tmps))
        return
    write_atomic(finals[0], lambda tmp: _publish(finals[1:], write, (*tmps, tmp)))


def write_recommendations(
    export: Export,
    outputs: Mapping[str, str | Path],
    *,
    rows: np.ndarray | None = None,
    k: int = 10,
    index: str = "flat",
    rules: RerankRules | None = None,
    chunk_size: int = 4096,
    overwrite: bool = False,
    settings: Mapping | None = None,
    progress: bool = False,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> dict:
    """Top-``k`` of many users into files, streamed in chunks of ``chunk_size`` users.

    Args:
        export: the loaded export.
        outputs: format (``parquet``, ``csv``) -> file (:func:`output_paths`); each is checked with
            :func:`check_output_replaceable` before any work.
        rows: ``[n]`` dense user indices in output order (:func:`users_from_file`); None = every
            user of the export, in index order.
        k, index, rules: as in :meth:`Export.top_items`.
        chunk_size: users per search; bounds memory (``chunk_size x pool x d`` floats for MMR).
        overwrite: also replace a file distgnn did not write.
        settings: recorded in each file's marker (and the Parquet file's metadata) next to k, index and rules.
        progress: a tqdm bar over users.
        row_group_rows: rows per Parquet row group.

    Returns:
        A summary (also each marker's content, without ``file`` and ``size``): users, rows, seconds.
    """
    _check_k(k, len(export.item_ids))
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size: expected at least 1 user, got {chunk_size}")
    if not outputs or set(outputs) - set(OUTPUT_FORMATS):
        raise ConfigError(f"outputs: expected formats among {', '.join(OUTPUT_FORMATS)}, got {sorted(outputs)}")
    finals = {fmt: Path(path) for fmt, path in outputs.items()}
    for path in finals.values():
        check_output_replaceable(path, overwrite=overwrite)  # before the expensive part
    num_users = len(export.user_ids) if rows is None else len(rows)
    rules = rules or RerankRules()
    summary = {
        "kind": OUTPUT_KIND,
        "distgnn_version": VERSION,
        "export": str(export.path.resolve()),
        "k": k,
        "index": index,
        "mmr_lambda": rules.mmr_lambda,
        "pool": max(rules.pool, k) if rules.mmr_lambda < 1.0 else None,
        "num_excluded_items": len(rules.exclude),
        "num_boosted_items": len(rules.boost_items),
        **dict(settings or {}),
        "num_users": num_users,
    }
    metadata = {b"distgnn": json.dumps(summary).encode()}
    t0 = time.perf_counter()
    num_rows = 0

    def stream(tmps: list[Path]) -> None:
        nonlocal num_rows
        from tqdm import tqdm

        sinks = []
        try:
            for fmt, tmp in zip(finals, tmps):
                if fmt == "parquet":
                    sinks.append(_ParquetSink(tmp, RESULT_SCHEMA.with_metadata(metadata), row_group_rows))
                else:
                    sinks.append(pacsv.CSVWriter(tmp, RESULT_SCHEMA))
            with tqdm(total=num_users, desc="recommend", unit="user", disable=not progress) as bar:
                # a loop over chunks of users: each chunk is one vectorised search and re-rank
                for start in range(0, num_users, chunk_size):
                    if rows is None:
                        chunk = np.arange(start, min(start + chunk_size, num_users), dtype=np.int64)
                    else:
                        chunk = np.asarray(rows[start : start + chunk_size], dtype=np.int64)
                    D, I = export.top_items(chunk, k, index=index, rules=rules)
                    table = export.result_table(export.user_ids.take(pa.array(chunk)), D, I)
                    for sink in sinks:
                        sink.write_table(table)
                    num_rows += table.num_rows
                    bar.update(len(chunk))
        finally:
            for sink in sinks:
                sink.close()

    _publish(list(finals.values()), stream)
    summary["num_rows"] = num_rows
    summary["elapsed_s"] = round(time.perf_counter() - t0, 3)
    for fmt, path in finals.items():
        write_json_atomic({**summary, "file": path.name, "format": fmt, "size": path.stat().st_size}, marker_path(path))
    log.info(
        "wrote %s rows for %s users to %s in %.1f s",
        f"{num_rows:,}",
        f"{num_users:,}",
        ", ".join(map(str, finals.values())),
        summary["elapsed_s"],
    )
    return summary


def load_export(path: str | Path, *, verify: bool = False) -> Export:
    """Load an export folder written by ``python -m distgnn.export``. A folder without a manifest
    (incomplete) or missing a file it lists raises DataError; ``verify`` also checks every file's
    sha256 against the manifest. A URI (``s3://...``) is served from a local copy."""
    if is_uri(path):
        path = download(str(path))
    path = Path(path)
    manifest = read_manifest(path, verify=verify)
    user_ids, user_emb = read_embeddings(path / "users.parquet")
    item_ids, item_emb = read_embeddings(path / "items.parquet")
    for file, vectors, count in (
        ("users.parquet", user_emb, manifest["num_users"]),
        ("items.parquet", item_emb, manifest["num_items"]),
    ):
        if vectors.shape != (count, manifest["dim"]):
            raise DataError(
                f"{path / file}: {vectors.shape[0]} vectors of dimension {vectors.shape[1]}, "
                f"{MANIFEST} records {count} of dimension {manifest['dim']}"
            )
    seen = _read_seen(path / "seen.parquet", len(user_ids), len(item_ids))
    sets = item_sets_from_pairs(seen[0], seen[1], len(user_ids))
    return Export(
        path=path,
        manifest=manifest,
        user_ids=pa.array(user_ids.astype(str)),
        item_ids=item_ids,
        user_emb=user_emb,
        item_emb=item_emb,
        seen_indptr=sets.indptr,
        seen_indices=sets.indices,
    )


def _read_seen(path: Path, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` index pairs of every known interaction, range-checked."""
    try:
        seen = pq.read_table(path, columns=["user", "item"])
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        raise DataError(f"{path}: not a readable seen-items table ({str(err).splitlines()[0]})") from None
    user, item = seen["user"].to_numpy(), seen["item"].to_numpy()
    for name, values, bound in (("user", user, num_users), ("item", item, num_items)):
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise DataError(f"{path}: column '{name}' holds indices outside 0..{bound - 1}")
    return user.astype(np.int64), item.astype(np.int64)

"""Property tests of prepare's core: id maps round-trip through the written graph, splits and
deduplication keep their promises, each checked against a plain per-user Python reference."""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import DataError
from distgnn.data.checks import MISSING_ID_MARKERS
from distgnn.data.prepare import prepare
from distgnn.data.readers import TEST, TRAIN, VAL
from distgnn.data.split import deduplicate, split_interactions

FEW = settings(max_examples=40, deadline=None)

# Printable ids: no control characters (tabs and newlines among them), no delimiter or quote; surrounding
# whitespace is allowed and is not part of the id (the documented policy), so what is left must be an id.
ID_CHARS = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=',"')
IDS = st.text(ID_CHARS, min_size=1, max_size=6).filter(lambda s: s.strip() not in MISSING_ID_MARKERS)
PAIRS = st.lists(st.tuples(IDS, IDS), min_size=1, max_size=25)


def written_pairs(graph: Path) -> list[tuple[str, str]]:
    """Every (user, item) row of train/val/test, mapped back to raw ids through users/items.parquet."""
    users = pq.read_table(graph / "users.parquet").to_pydict()
    items = pq.read_table(graph / "items.parquet").to_pydict()
    assert users["index"] == list(range(len(users["index"]))) and items["index"] == list(range(len(items["index"])))
    pairs = []
    for split in ("train", "val", "test"):
        t = pq.read_table(graph / f"{split}.parquet").to_pydict()
        pairs += [(users["raw_id"][u], items["raw_id"][i]) for u, i in zip(t["user"], t["item"])]
    return pairs


@FEW
@given(pairs=PAIRS, fmt=st.sampled_from(["csv", "parquet"]), split=st.sampled_from(["random", "leave_one_out"]))
def test_id_maps_round_trip(pairs, fmt, split):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"log.{fmt}"
        if fmt == "csv":
            path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs), encoding="utf-8")
        else:
            pq.write_table(pa.table({"user": [u for u, _ in pairs], "item": [i for _, i in pairs]}), path)
        graph = prepare(PrepareConfig(input=str(path), output=str(Path(tmp) / "g"), split=split))
        got = written_pairs(graph)
    expected = {(u.strip(), i.strip()) for u, i in pairs}
    assert len(got) == len(set(got))  # each kept interaction is in exactly one split, once
    assert set(got) == expected


# ---------------------------------------------------------------------------------------------------
# split_interactions against a per-user reference


def reference_counts(n: int, method: str, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    if method == "leave_one_out":
        return int(n >= 3 and val_fraction > 0), int(n >= 2 and test_fraction > 0)
    n_test = min(math.floor(n * test_fraction + 0.5), n - 1)
    n_val = min(math.floor(n * val_fraction + 0.5), n - 1 - n_test)
    return n_val, n_test


SPLIT_INPUTS = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n), st.lists(st.integers(-5, 20), min_size=n, max_size=n)
    )
)  # small range: ties in order happen


@FEW
@given(
    rows=SPLIT_INPUTS,
    method=st.sampled_from(["random", "temporal", "leave_one_out"]),
    val_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.45]),
    test_fraction=st.sampled_from([0.0, 0.1, 0.3, 0.45]),
    seed=st.integers(0, 2**16),
)
def test_split_properties(rows, method, val_fraction, test_fraction, seed):
    user, order = np.array(rows[0]), np.array(rows[1])
    labels = split_interactions(
        user, order, method=method, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    assert labels.shape == user.shape and set(labels.tolist()) <= {TRAIN, VAL, TEST}  # one split per row
    by_user = defaultdict(list)
    for row, u in enumerate(user.tolist()):
        by_user[u].append(row)
    for u, members in by_user.items():
        mine = labels[members]
        assert (mine == TRAIN).sum() >= 1, u
        assert ((mine == VAL).sum(), (mine == TEST).sum()) == reference_counts(
            len(members), method, val_fraction, test_fraction
        )
        if method != "random":  # held out = the latest by order (ties may go either way)
            times = order[members]
            train_t, val_t, test_t = times[mine == TRAIN], times[mine == VAL], times[mine == TEST]
            if test_t.size:
                assert test_t.min() >= max(train_t.max(), val_t.max() if val_t.size else train_t.max())
            if val_t.size:
                assert val_t.min() >= train_t.max()


def test_leave_one_out_holds_out_the_latest_with_distinct_times():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 20, 300)
    order = rng.permutation(300)
    labels = split_interactions(user, order, method="leave_one_out", val_fraction=0.1, test_fraction=0.1, seed=0)
    for u in np.unique(user):
        rows = np.flatnonzero(user == u)
        latest = rows[np.argsort(order[rows])[::-1]]
        if rows.size >= 2:
            assert labels[latest[0]] == TEST
        if rows.size >= 3:
            assert labels[latest[1]] == VAL
        assert (labels[rows] == TRAIN).sum() == rows.size - min(rows.size - 1, 2)


# ---------------------------------------------------------------------------------------------------
# deduplicate against a per-pair reference

DEDUP_INPUTS = st.integers(1, 50).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
    )
)


@FEW
@given(rows=DEDUP_INPUTS, policy=st.sampled_from(["first", "last"]))
def test_deduplicate_keeps_one_row_per_pair(rows, policy):
    user, item, order = (np.array(r) for r in rows)
    keep = deduplicate(user, item, order, policy)
    pairs = list(zip(user.tolist(), item.tolist()))
    kept_pairs = [pairs[k] for k in keep]
    assert len(kept_pairs) == len(set(kept_pairs)) and set(kept_pairs) == set(pairs)
    assert keep.tolist() == sorted(keep.tolist())
    for k in keep:
        same = [r for r, p in enumerate(pairs) if p == pairs[k]]
        if policy == "first":  # the earliest by order; among ties, the first in the file
            expected = min(same, key=lambda r: (order[r], r))
        else:  # the latest by order; among ties, the last in the file
            expected = max(same, key=lambda r: (order[r], r))
        assert k == expected


@FEW
@given(rows=DEDUP_INPUTS)
def test_deduplicate_error_policy_raises_exactly_on_repeats(rows):
    user, item, order = (np.array(r) for r in rows)
    repeated = len(set(zip(user.tolist(), item.tolist()))) < user.size
    if repeated:
        with pytest.raises(DataError, match="repeated"):
            deduplicate(user, item, order, "error")
    else:
        assert deduplicate(user, item, order, "error").tolist() == list(range(user.size))

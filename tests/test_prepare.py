import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distgnn.core.config import PrepareConfig, SyntheticConfig
from distgnn.core.errors import DataError
from distgnn.data.graph import load_graph, verify_graph_dir
from distgnn.data.prepare import prepare
from distgnn.data.readers import TEST, TRAIN, VAL
from distgnn.data.split import deduplicate, split_interactions
from distgnn.data.synthetic import generate
from distgnn.data.writing import build_csr
from distgnn.prepare import main

from conftest import shared_dataset


def test_build_csr_by_hand():
    # users 0,1; items 0,1,2 -> nodes 2,3,4
    indptr, indices = build_csr(2, 3, np.array([0, 0, 1]), np.array([2, 0, 2]))
    assert indptr.tolist() == [0, 2, 3, 4, 4, 6]
    assert indices.tolist() == [2, 4, 4, 0, 0, 1]


def test_deduplicate_policies():
    user = np.array([0, 0, 1, 0])
    item = np.array([5, 5, 5, 6])
    time = np.array([30, 10, 20, 40])
    assert deduplicate(user, item, time, "first").tolist() == [1, 2, 3]
    assert deduplicate(user, item, time, "last").tolist() == [0, 2, 3]
    with pytest.raises(DataError, match="row 1: repeated"):
        deduplicate(user, item, time, "error", source="f.csv")


def test_temporal_and_leave_one_out_hold_out_the_latest():
    user = np.array([0, 0, 0, 0, 0, 1, 1])
    time = np.array([5, 1, 4, 2, 3, 9, 8])
    loo = split_interactions(user, time, method="leave_one_out", val_fraction=0.1, test_fraction=0.1, seed=0)
    assert loo.tolist() == [TEST, TRAIN, VAL, TRAIN, TRAIN, TEST, TRAIN]
    tmp = split_interactions(user, time, method="temporal", val_fraction=0.2, test_fraction=0.4, seed=0)
    assert tmp[:5].tolist() == [TEST, TRAIN, TEST, TRAIN, VAL]


def test_random_split_fractions_and_every_user_keeps_training():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 50, 5000)
    labels = split_interactions(user, np.arange(5000), method="random", val_fraction=0.1, test_fraction=0.2, seed=1)
    assert abs((labels == TEST).mean() - 0.2) < 0.02 and abs((labels == VAL).mean() - 0.1) < 0.02
    assert set(np.unique(user[labels == TRAIN])) == set(np.unique(user))


def test_synthetic_has_power_law_popularity_and_no_duplicates():
    s = generate(SyntheticConfig(num_users=1000, num_items=500, seed=1))
    degree = np.sort(np.bincount(s.item, minlength=500))[::-1]
    # the top 5% of items take far more than 5% of interactions; the most popular is 10x the median
    assert degree[:25].sum() > 0.15 * degree.sum() and degree[0] > 10 * np.median(degree)
    assert np.unique(s.user * 500 + s.item).size == s.user.size


def test_graph_directory_invariants(tiny_graph):
    meta = verify_graph_dir(tiny_graph)
    g = load_graph(tiny_graph)
    counts = meta["num_interactions"]
    assert g.indices.numel() == 2 * counts["train"]
    assert int(g.train.counts.sum()) == counts["train"] and int(g.test.counts.sum()) == counts["test"]
    # symmetric: every user->item entry has its item->user twin
    src = torch.repeat_interleave(torch.arange(g.num_nodes), g.degree)
    fwd = set(zip(src.tolist(), g.indices.tolist()))
    assert fwd == {(b, a) for a, b in fwd}
    # splits are disjoint
    train = pq.read_table(tiny_graph / "train.parquet").to_pandas()
    test = pq.read_table(tiny_graph / "test.parquet").to_pandas()
    assert not set(zip(train.user, train.item)) & set(zip(test.user, test.item))
    assert g.item_features is not None and g.item_features.shape[0] == g.num_items


def test_csv_with_named_columns_and_events(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "uid,iid,ts,event\na,x,1,click\na,y,2,buy\nb,x,3,click\nb,z,4,buy\nc,y,5,buy\n"
        "a,z,6,click\nb,y,7,buy\nc,x,8,click\n"
    )
    out = prepare(
        PrepareConfig(
            input=str(path),
            output=str(tmp_path / "g"),
            user_col="uid",
            item_col="iid",
            time_col="ts",
            event_col="event",
            keep_events="buy",
            split="leave_one_out",
        )
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_users"] == 3 and sum(meta["num_interactions"].values()) == 4
    users = pq.read_table(out / "users.parquet")["raw_id"].to_pylist()
    assert sorted(users) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "file is empty"),
        ("user,item\n", "no rows"),
        ("user,thing\n1,2\n", "missing item column 'item'"),
        ("user,item,ts\n1,2,3\n1,2\n", "cannot parse as CSV"),
        ("user,item,ts\n1,2,x\n", "timestamp column 'ts'"),
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_nothing(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    out = tmp_path / "graph"
    code = main(["--input", str(path), "--output", str(out), "--time_col", "ts" if "ts" in content else ""])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and str(path) in err and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == [path]  # no graph, no temporary folder


def test_missing_path(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "g")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_failed_prepare_keeps_previous_graph(tmp_path, tiny_graph):
    out = tmp_path / "g"
    prepare(PrepareConfig(output=str(out), synthetic=SyntheticConfig(num_users=50, num_items=40)))
    before = (out / "meta.json").read_text()
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": ["a"], "other": ["b"]}), bad)
    with pytest.raises(DataError, match="missing item column"):
        prepare(PrepareConfig(input=str(bad), output=str(out)))
    assert (out / "meta.json").read_text() == before


def test_damaged_graph_is_detected(tmp_path):
    out = prepare(PrepareConfig(output=str(tmp_path / "g"), synthetic=SyntheticConfig(num_users=50, num_items=40)))
    with open(out / "graph" / "indices.npy", "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x01" * 8)
    with pytest.raises(DataError, match="checksum differs"):
        verify_graph_dir(out)


def test_movielens_100k_given_split_with_features(tmp_path):
    src = shared_dataset("ml-100k")
    out = prepare(PrepareConfig(input=str(src), output=str(tmp_path / "ml"), split="given", val_fraction=0.0))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_users"] == 943 and meta["num_items"] == 1682
    assert meta["num_interactions"]["test"] == 9430  # ua.test: 10 per user
    assert meta["features"] == {"user": 30, "item": 19}


def test_lightgcn_format_gowalla_counts(tmp_path):
    src = shared_dataset("gowalla")
    out = prepare(PrepareConfig(input=str(src), output=str(tmp_path / "gw"), split="given", val_fraction=0.0))
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["num_users"], meta["num_items"]) == (29858, 40981)
    assert meta["num_interactions"] == {"train": 810128, "val": 0, "test": 217242}

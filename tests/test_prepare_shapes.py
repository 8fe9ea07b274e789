"""prepare's options for the shapes real logs come in: a split given as files, headerless CSVs, repeated
events counted and weighed, target behaviour, a sample of the users, feature tables joined by raw id.
Each is checked on a table small enough to work out by hand."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import ConfigError
from distgnn.data.features import FeatureTable, feature_matrix
from distgnn.data.graph import load_graph
from distgnn.data.prepare import prepare
from distgnn.data.readers import TRAIN
from distgnn.data.split import deduplicate, pair_totals, split_interactions

from conftest import shared_dataset

FEW = settings(max_examples=40, deadline=None)


def meta_of(graph: Path) -> dict:
    return json.loads((graph / "meta.json").read_text())


def split_rows(graph: Path, name: str) -> list[dict]:
    """The rows of train/val/test.parquet with raw ids in place of dense indices."""
    users = pq.read_table(graph / "users.parquet")["raw_id"].to_pylist()
    items = pq.read_table(graph / "items.parquet")["raw_id"].to_pylist()
    rows = pq.read_table(graph / f"{name}.parquet").to_pylist()
    return [{**r, "user": users[r["user"]], "item": items[r["item"]]} for r in rows]


def split_pairs(graph: Path, name: str) -> set[tuple[str, str]]:
    return {(r["user"], r["item"]) for r in split_rows(graph, name)}


# ---------------------------------------------------------------------------------------------------
# A split given as files


def test_three_file_given_split(tmp_path):
    (tmp_path / "train.csv").write_text("user,item,ts\na,x,1\na,y,2\nb,x,3\nb,z,4\nc,y,5\n")
    (tmp_path / "val.csv").write_text("user,item,ts\na,z,6\n")
    # (a,x) is also a training pair: test wins, so training never sees it; q and d are never trained
    (tmp_path / "test.csv").write_text("user,item,ts\nb,y,7\nc,q,8\nd,x,9\na,x,10\n")
    out = prepare(
        PrepareConfig(
            input=str(tmp_path / "train.csv"),
            val_input=str(tmp_path / "val.csv"),
            test_input=str(tmp_path / "test.csv"),
            split="given",
            time_col="ts",
            output=str(tmp_path / "g"),
        )
    )
    assert split_pairs(out, "train") == {("a", "y"), ("b", "x"), ("b", "z"), ("c", "y")}
    assert split_pairs(out, "val") == {("a", "z")}  # val_fraction is not applied on top of the file
    assert split_pairs(out, "test") == {("b", "y"), ("a", "x")}
    meta = meta_of(out)
    assert (meta["num_users"], meta["num_items"]) == (3, 3)  # d and q left with the rows dropped
    assert meta["split"]["num_dropped_unseen"] == 2
    assert meta["split"]["files"] == {
        "train": str(tmp_path / "train.csv"),
        "val": str(tmp_path / "val.csv"),
        "test": str(tmp_path / "test.csv"),
    }
    assert meta["columns"] == ["user", "item", "timestamp"]


def test_given_test_file_without_val_file_carves_validation_from_training(tmp_path):
    users = np.repeat(np.arange(4), 10)
    lines = "".join(f"u{u},i{j},{j}\n" for j, u in enumerate(users))
    (tmp_path / "train.csv").write_text("user,item,ts\n" + lines)
    (tmp_path / "test.csv").write_text("user,item,ts\nu0,i15,99\nu3,i5,98\n")  # new pairs of trained ids
    pq.write_table(pa.table({"user": ["u0", "u3"], "item": ["i15", "i5"], "ts": [99, 98]}), tmp_path / "test.parquet")
    for test in ("test.csv", "test.parquet"):  # each file read by its suffix
        out = prepare(
            PrepareConfig(
                input=str(tmp_path / "train.csv"),
                test_input=str(tmp_path / test),
                split="given",
                time_col="ts",
                val_fraction=0.2,
                output=str(tmp_path / "g"),
            )
        )
        assert meta_of(out)["num_interactions"] == {"train": 32, "val": 8, "test": 2}  # 2 of each user's 10
        assert Counter(u for u, _ in split_pairs(out, "val")) == {f"u{u}": 2 for u in range(4)}


def test_ml_100k_split_files_read_one_by_one(tmp_path):
    (tmp_path / "u1.base").write_text("1\t10\t5\t100\n1\t11\t3\t101\n2\t10\t4\t102\n")
    (tmp_path / "u1.test").write_text("1\t12\t4\t103\n2\t11\t2\t104\n3\t10\t1\t105\n")
    out = prepare(
        PrepareConfig(
            input=str(tmp_path / "u1.base"),
            test_input=str(tmp_path / "u1.test"),
            split="given",
            val_fraction=0.0,
            output=str(tmp_path / "g"),
        )
    )
    meta = meta_of(out)
    assert meta["source"].startswith("movielens-100k:")
    assert meta["num_interactions"] == {"train": 3, "val": 0, "test": 1}  # item 12 and user 3 never trained
    assert split_pairs(out, "test") == {("2", "11")}
    assert [r["rating"] for r in split_rows(out, "test")] == [2.0]


def test_ml_100k_u1_base_and_test(tmp_path):
    src = shared_dataset("ml-100k")
    out = prepare(
        PrepareConfig(
            input=str(src / "u1.base"),
            test_input=str(src / "u1.test"),
            split="given",
            val_fraction=0.0,
            output=str(tmp_path / "u1"),
        )
    )
    meta = meta_of(out)
    # 80,000 + 20,000 ratings; 32 test ratings are of movies no u1.base rating has, and are dropped
    assert meta["split"]["num_dropped_unseen"] == 32
    assert meta["num_interactions"] == {"train": 80000, "val": 0, "test": 19968}
    assert (meta["num_users"], meta["num_items"]) == (943, 1650)
    assert meta["features"] == {"user": 30, "item": 19}
    # the side files' readable columns sit next to the id maps, for sample recommendations
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert items[0] == {"index": 0, "raw_id": "1", "title": "Toy Story (1995)"}
    users = pq.read_table(out / "users.parquet").to_pylist()
    assert users[0] == {"index": 0, "raw_id": "1", "age": 24, "gender": "M", "occupation": "technician"}


# ---------------------------------------------------------------------------------------------------
# Headerless CSV with named columns


def test_headerless_csv_with_named_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("u1,p1,5,30\nu1,p2,3,10\nu2,p1,4,20\n")
    out = prepare(
        PrepareConfig(
            input=str(path),
            csv_columns="user,product,rating,timestamp",
            item_col="product",
            rating_col="rating",
            time_col="timestamp",
            val_fraction=0.0,
            test_fraction=0.0,
            output=str(tmp_path / "g"),
        )
    )
    rows = sorted((r["user"], r["item"], r["rating"], r["timestamp"]) for r in split_rows(out, "train"))
    assert rows == [("u1", "p1", 5.0, 30), ("u1", "p2", 3.0, 10), ("u2", "p1", 4.0, 20)]  # no row taken as header


# ---------------------------------------------------------------------------------------------------
# Repeated events counted and weighed

EVENTS = "user,item,event,ts,rating\na,x,pv,1,1\na,x,buy,5,4\na,x,pv,3,2\nb,x,cart,2,3\na,y,pv,4,5\n"


def prepare_events(tmp_path: Path, **options) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS)
    cfg = PrepareConfig(
        input=str(path),
        event_col="event",
        time_col="ts",
        rating_col="rating",
        val_fraction=0.0,
        test_fraction=0.0,
        output=str(tmp_path / "g"),
        **options,
    )
    return prepare(cfg)


@pytest.mark.parametrize(
    "duplicates,event_weights,expected",
    [
        # (a, x): its latest event (ts 5, rating 4) with the number of its events, or their weights summed
        ("count", "", {("a", "x"): (3.0, 5, 4.0), ("b", "x"): (1.0, 2, 3.0), ("a", "y"): (1.0, 4, 5.0)}),
        (
            "count",
            "pv:1,cart:2,buy:4",
            {("a", "x"): (6.0, 5, 4.0), ("b", "x"): (2.0, 2, 3.0), ("a", "y"): (1.0, 4, 5.0)},
        ),
        # first/last: the kept row's own event weight
        (
            "first",
            "pv:1,cart:2,buy:4",
            {("a", "x"): (1.0, 1, 1.0), ("b", "x"): (2.0, 2, 3.0), ("a", "y"): (1.0, 4, 5.0)},
        ),
        (
            "last",
            "pv:1,cart:2,buy:4",
            {("a", "x"): (4.0, 5, 4.0), ("b", "x"): (2.0, 2, 3.0), ("a", "y"): (1.0, 4, 5.0)},
        ),
    ],
)
def test_duplicates_count_and_event_weights(tmp_path, duplicates, event_weights, expected):
    out = prepare_events(tmp_path, duplicates=duplicates, event_weights=event_weights)
    rows = {(r["user"], r["item"]): (r["weight"], r["timestamp"], r["rating"]) for r in split_rows(out, "train")}
    assert rows == expected
    assert pq.read_schema(out / "train.parquet").field("weight").type == pa.float32()
    meta = meta_of(out)
    assert meta["columns"] == ["user", "item", "timestamp", "rating", "weight"]
    weights = {"pv": 1.0, "cart": 2.0, "buy": 4.0} if event_weights else None
    assert meta["edge_weight"] == {"duplicates": duplicates, "event_weights": weights}


def test_no_weight_column_without_count_or_event_weights(tmp_path):
    out = prepare_events(tmp_path, duplicates="last")
    assert pq.read_schema(out / "train.parquet").names == ["user", "item", "timestamp", "rating"]
    assert "edge_weight" not in meta_of(out)


PAIRS_WITH_EVENTS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 4), st.sampled_from(["pv", "cart", "buy"])), min_size=1, max_size=40
)


@FEW
@given(rows=PAIRS_WITH_EVENTS)
def test_count_weights_sum_to_rows_and_match_a_per_pair_reference(rows):
    user, item = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    event_weight = np.array([{"pv": 1.0, "cart": 2.0, "buy": 4.0}[r[2]] for r in rows])
    keep = deduplicate(user, item, np.arange(user.size), "count")
    counts = pair_totals(user, item, np.ones(user.size), keep)
    weights = pair_totals(user, item, event_weight, keep)
    assert counts.sum() == user.size and weights.sum() == pytest.approx(event_weight.sum())
    reference = defaultdict(float)
    for (u, i, _), w in zip(rows, event_weight):
        reference[(u, i)] += w
    assert {(int(user[k]), int(item[k])): w for k, w in zip(keep, weights)} == reference
    # the kept row is each pair's latest (last in file order here)
    last = {(u, i): j for j, (u, i, _) in enumerate(rows)}
    assert sorted(keep.tolist()) == sorted(last.values())


# ---------------------------------------------------------------------------------------------------
# Target behaviour

TARGETS = "user,item,event,ts\na,x,pv,1\na,y,buy,2\na,z,pv,9\na,w,pv,3\na,w,buy,4\nb,x,buy,1\nc,y,buy,5\nc,x,pv,6\n"


def test_target_events_choose_the_held_out_pairs(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(TARGETS)
    out = prepare(
        PrepareConfig(
            input=str(path),
            event_col="event",
            time_col="ts",
            target_events="buy",
            duplicates="last",
            split="leave_one_out",
            output=str(tmp_path / "g"),
        )
    )
    # a: buys y (ts 2) and w (ts 4); z (ts 9) is later but not bought, so it trains
    # b: one pair, which trains; c: one bought pair and one more to train on
    assert split_pairs(out, "test") == {("a", "w"), ("c", "y")}
    assert split_pairs(out, "val") == {("a", "y")}
    assert split_pairs(out, "train") == {("a", "x"), ("a", "z"), ("b", "x"), ("c", "x")}  # (a, w)'s pv too left
    split = meta_of(out)["split"]
    assert split["target_events"] == ["buy"] and split["num_eligible_pairs"] == 4
    g = load_graph(out)
    assert int(g.train.counts.sum()) == 4  # the training graph holds only the train pairs


def test_target_events_temporal_fraction_counts_eligible_pairs(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(TARGETS)
    out = prepare(
        PrepareConfig(
            input=str(path),
            event_col="event",
            time_col="ts",
            target_events="buy",
            split="temporal",
            val_fraction=0.0,
            test_fraction=0.5,
            output=str(tmp_path / "g"),
        )
    )
    # a: round(2 * 0.5) = 1, the latest bought pair; c: round(1 * 0.5) = 1 (halves up); b keeps its only pair
    assert split_pairs(out, "test") == {("a", "w"), ("c", "y")}


@FEW
@given(
    user=st.lists(st.integers(0, 5), min_size=1, max_size=50),
    data=st.data(),
    method=st.sampled_from(["random", "temporal", "leave_one_out"]),
)
def test_split_with_eligible_pairs_holds_out_only_those(user, data, method):
    user = np.array(user)
    eligible = np.array(data.draw(st.lists(st.booleans(), min_size=user.size, max_size=user.size)))
    order = np.arange(user.size)
    kwargs = dict(method=method, val_fraction=0.2, test_fraction=0.3, seed=1)
    labels = split_interactions(user, order, eligible=eligible, **kwargs)
    assert not (labels[~eligible] != TRAIN).any()
    assert set(user[labels == TRAIN]) == set(user)  # every user keeps one
    assert (
        split_interactions(user, order, eligible=np.ones(user.size, bool), **kwargs)
        == split_interactions(user, order, **kwargs)
    ).all()


def test_taobao_sample_with_target_buy(tmp_path):
    src = shared_dataset("taobao-userbehavior-sample") / "UserBehavior_head.csv"
    out = prepare(
        PrepareConfig(
            input=str(src),
            csv_columns="user_id,item_id,category_id,behavior,timestamp",
            user_col="user_id",
            item_col="item_id",
            time_col="timestamp",
            event_col="behavior",
            duplicates="count",
            event_weights="pv:1,cart:2,fav:2,buy:4",
            target_events="buy",
            item_feature_cols="category_id",
            split="temporal",
            val_fraction=0.25,
            test_fraction=0.25,
            output=str(tmp_path / "taobao"),
        )
    )
    meta = meta_of(out)
    assert (meta["num_users"], meta["num_items"]) == (815, 55368)
    parts = {name: split_rows(out, name) for name in ("train", "val", "test")}
    pairs = {name: {(r["user"], r["item"]) for r in rows} for name, rows in parts.items()}
    assert sum(len(p) for p in pairs.values()) == 84475 - 20487  # one row per distinct (user, item) pair
    # weights: 75,872 pv + 2 * 4,497 cart + 2 * 2,356 fav + 4 * 1,750 buy, every event counted once
    assert sum(r["weight"] for rows in parts.values() for r in rows) == 75872 + 2 * 4497 + 2 * 2356 + 4 * 1750
    # every held-out pair has a buy; the bought pairs come from the raw file
    raw = np.loadtxt(src, delimiter=",", dtype=str)
    bought = {(u, i) for u, i, b in zip(raw[:, 0], raw[:, 1], raw[:, 3]) if b == "buy"}
    assert meta["split"]["num_eligible_pairs"] == len(bought)
    assert pairs["val"] <= bought and pairs["test"] <= bought and pairs["test"]
    assert not (pairs["train"] & (pairs["val"] | pairs["test"]))
    # raw categories beside the items, one-hot features for the 50 most frequent plus 'other'
    items = pq.read_table(out / "items.parquet").to_pydict()
    first_category = {}
    for i, c in zip(raw[:, 1], raw[:, 2]):
        first_category.setdefault(i, c)
    assert dict(zip(items["raw_id"], items["category_id"])) == first_category
    features = np.load(out / "features" / "item.npy")
    assert features.shape == (55368, 51) and (features.sum(axis=1) == 1).all()
    assert meta["feature_columns"]["item"][-1] == "category_id=other"


# ---------------------------------------------------------------------------------------------------
# A sample of the users


def test_sample_fraction_keeps_whole_users(tmp_path):
    lines = "".join(f"u{u},i{(u * 3 + k) % 7},{k}\n" for u in range(10) for k in range(3))
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\n" + lines)

    def sample(seed: int) -> list[dict]:
        cfg = PrepareConfig(input=str(path), sample_fraction=0.3, seed=seed, time_col="ts", output=str(tmp_path / "g"))
        out = prepare(cfg)
        assert meta_of(out)["sample"] == {"fraction": 0.3, "seed": seed}
        return [r for name in ("train", "val", "test") for r in split_rows(out, name)]

    rows = sample(0)
    per_user = Counter(r["user"] for r in rows)
    assert len(per_user) == 3 and set(per_user.values()) == {3}  # 3 of 10 users, each with all 3 rows
    assert Counter(r["user"] for r in sample(0)) == per_user  # seeded
    assert any(Counter(r["user"] for r in sample(s)) != per_user for s in (1, 2, 3))


# ---------------------------------------------------------------------------------------------------
# Feature tables joined by raw id


def test_user_feature_table_standardised_and_one_hot(tmp_path):
    (tmp_path / "log.csv").write_text("user,item\nu1,x\nu2,x\nu3,y\nu4,y\n")
    # zz has no interaction (ignored); u4 has no row (zeros); occupation is a code, made categorical
    (tmp_path / "users.csv").write_text("user,age,gender,occupation\nu1,20,M,3\nu2,30,F,3\nu3,40,F,5\nzz,50,M,1\n")
    out = prepare(
        PrepareConfig(
            input=str(tmp_path / "log.csv"),
            user_features=str(tmp_path / "users.csv"),
            categorical_columns="occupation",
            max_categories=1,
            output=str(tmp_path / "g"),
        )
    )
    meta = meta_of(out)
    assert meta["feature_columns"]["user"] == ["age", "gender=F", "gender=other", "occupation=3", "occupation=other"]
    z = 10 / np.sqrt(200 / 3)  # ages 20, 30, 40 of the users with a row: mean 30, population std
    expected = np.array(
        [[-z, 0, 1, 1, 0], [0, 1, 0, 1, 0], [z, 1, 0, 0, 1], [0, 0, 0, 0, 0]],
        dtype=np.float32,
    )
    np.testing.assert_allclose(np.load(out / "features" / "user.npy"), expected, rtol=1e-6)
    assert meta["features"] == {"user": 5}
    users = pq.read_table(out / "users.parquet").to_pydict()
    assert users["raw_id"] == ["u1", "u2", "u3", "u4"]
    assert users["age"] == [20, 30, 40, None] and users["gender"] == ["M", "F", "F", None]
    assert users["occupation"] == [3, 3, 5, None]  # raw values as read
    assert pq.read_table(out / "items.parquet").column_names == ["index", "raw_id"]


def test_item_features_from_a_parquet_table_and_from_the_interactions(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,cat\na,x,c1\nb,x,c9\na,y,c2\nb,z,c1\n")
    pq.write_table(
        pa.table({"item": ["x", "y", "z"], "const": [7.0, 7.0, 7.0], "colour": ["red", None, "red"]}),
        tmp_path / "items.parquet",
    )
    out = prepare(
        PrepareConfig(
            input=str(tmp_path / "log.csv"),
            item_features=str(tmp_path / "items.parquet"),
            item_feature_cols="cat",
            output=str(tmp_path / "g"),
        )
    )
    meta = meta_of(out)
    # const is constant -> 0; an empty colour is in no column; cat is x's first value (c1, not c9)
    assert meta["feature_columns"]["item"] == ["const", "colour=red", "cat=c1", "cat=c2"]
    expected = np.array([[0, 1, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(np.load(out / "features" / "item.npy"), expected)
    items = pq.read_table(out / "items.parquet").to_pydict()
    assert items == {
        "index": [0, 1, 2],
        "raw_id": ["x", "y", "z"],
        "const": [7.0, 7.0, 7.0],
        "colour": ["red", None, "red"],
        "cat": ["c1", "c2", "c1"],
    }


def test_feature_matrix_by_hand():
    table = FeatureTable(
        source="t",
        ids=pa.array(["a", "b", "c", "d"]),
        columns=pa.table({"n": [1.0, 3.0, 5.0, 100.0], "k": ["p", "q", "q", "r"]}),
        categorical=("k",),
    )
    values, names, raw = feature_matrix(table, pa.array(["c", "a", "e"]), max_categories=5, kind="item")
    # d is not a node: mean 3 and std 2 come from a and c only; e has no row
    assert names == ["n", "k=p", "k=q"]
    np.testing.assert_allclose(values, [[1, 0, 1], [-1, 1, 0], [0, 0, 0]])
    assert raw.to_pydict() == {"n": [5.0, 1.0, None], "k": ["q", "p", None]}


def test_categorical_columns_name_a_column_of_either_table(tmp_path):
    (tmp_path / "log.csv").write_text("user,item\na,x\nb,y\n")
    (tmp_path / "users.csv").write_text("user,age\na,20\nb,30\n")
    (tmp_path / "items.csv").write_text("item,genre_code\nx,1\ny,2\n")
    out = prepare(
        PrepareConfig(
            input=str(tmp_path / "log.csv"),
            user_features=str(tmp_path / "users.csv"),
            item_features=str(tmp_path / "items.csv"),
            categorical_columns="genre_code",
            output=str(tmp_path / "g"),
        )
    )
    assert meta_of(out)["feature_columns"] == {"user": ["age"], "item": ["genre_code=1", "genre_code=2"]}


def test_new_options_keep_the_old_output_columns(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,ts\na,x,1\nb,y,2\n")
    out = prepare(PrepareConfig(input=str(tmp_path / "log.csv"), time_col="ts", output=str(tmp_path / "g")))
    assert pq.read_schema(out / "train.parquet").names == ["user", "item", "timestamp"]
    assert pq.read_schema(out / "users.parquet").names == ["index", "raw_id"]
    assert not {"edge_weight", "feature_columns", "sample"} & set(meta_of(out))


def test_given_split_refused_for_a_csv_without_test_input(tmp_path):
    (tmp_path / "log.csv").write_text("user,item\na,x\n")
    with pytest.raises(ConfigError, match="--test_input"):
        prepare(PrepareConfig(input=str(tmp_path / "log.csv"), split="given", output=str(tmp_path / "g")))


def test_check_output_path_protects_every_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "log.csv").write_text("user,item\na,x\n")
    (data / "test.csv").write_text("user,item\na,x\n")
    with pytest.raises(ConfigError, match="contains the input"):
        prepare(
            PrepareConfig(
                input=str(tmp_path / "log.csv"), test_input=str(data / "test.csv"), split="given", output=str(data)
            )
        )
    assert (data / "test.csv").exists()


def test_cold_start_users_keep_exactly_cold_items_training_rows(tmp_path):
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(50), 20)
    item = np.concatenate([rng.choice(200, 20, replace=False) for _ in range(50)])
    pacsv.write_csv(pa.table({"user": user.astype(str), "item": item.astype(str)}), tmp_path / "pairs.csv")
    base = dict(input=str(tmp_path / "pairs.csv"), val_fraction=0.1, test_fraction=0.1, seed=3)
    plain = load_graph(prepare(PrepareConfig(**base, output=str(tmp_path / "plain"))))
    cold = load_graph(prepare(PrepareConfig(**base, cold_fraction=0.2, cold_items=5, output=str(tmp_path / "cold"))))
    counts = cold.train.counts
    assert int((counts == 5).sum()) == 10 and int((counts == 16).sum()) == 40  # 20 - 2 - 2 held out = 16
    # the held-out splits are untouched, and a cold user's kept rows are among its own training rows
    assert torch.equal(cold.test.indices, plain.test.indices) and torch.equal(cold.val.indices, plain.val.indices)
    for u in torch.nonzero(counts == 5).flatten().tolist():
        kept = set(cold.train.indices[cold.train.indptr[u] : cold.train.indptr[u + 1]].tolist())
        assert kept <= set(plain.train.indices[plain.train.indptr[u] : plain.train.indptr[u + 1]].tolist())


def test_min_item_interactions_drops_items_seen_by_too_few_pairs(tmp_path):
    rows = [("a", "x"), ("a", "x"), ("b", "x"), ("a", "y"), ("c", "z"), ("c", "x"), ("b", "y")]
    pacsv.write_csv(pa.table({"user": [u for u, _ in rows], "item": [i for _, i in rows]}), tmp_path / "log.csv")
    out = prepare(
        PrepareConfig(
            input=str(tmp_path / "log.csv"),
            duplicates="count",
            min_item_interactions=2,
            val_fraction=0.0,
            test_fraction=0.0,
            output=str(tmp_path / "g"),
        )
    )
    # x: 3 pairs (a's two events merged), y: 2, z: 1 -> z goes, and the counts are of pairs, not events
    items = pq.read_table(out / "items.parquet")["raw_id"].to_pylist()
    assert items == ["x", "y"]
    train = pq.read_table(out / "train.parquet").to_pylist()
    assert sorted(r["weight"] for r in train) == [1.0, 1.0, 1.0, 1.0, 2.0]

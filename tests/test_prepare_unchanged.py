"""The streaming prepare writes what the in-memory prepare of 7f1e850 wrote, on small corpora.

Every case below was prepared by distgnn at 7f1e850 (the last in-memory prepare) and the digests of
its files recorded in ``prepare_digests.json`` next to this file (``python tests/test_prepare_unchanged.py
--record`` re-records them; only do that on purpose). For each file of the graph directory:

- ``bytes``: sha256 of the file itself. Parquet files name the writing library's version inside them,
  so these are compared when the installed pyarrow is the one that recorded them;
- ``content``: a digest of what the file holds (Parquet: schema, row groups, every column's values and
  nulls; ``.npy``: the file; ``meta.json``: every key but the checksums, with ``prepare_config``
  compared on the keys it had then), compared always.

The cases cover every step of prepare: each split method, the three duplicate policies, event weights
and target events, keep_events, min_rating, sample_fraction, min_item_interactions, cold-start users,
files of a given split with unseen rows, headerless CSV, Parquet input, feature tables and
item_feature_cols; the shared real datasets when present (skipped otherwise).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn.core.config import PrepareConfig, SyntheticConfig
from distgnn.data.prepare import prepare

DIGESTS = Path(__file__).with_name("prepare_digests.json")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = SyntheticConfig(num_users=500, num_items=300, mean_interactions=12, num_factors=8, seed=5)


def write_log(folder: Path) -> dict[str, Path]:
    """Small logs with every column prepare reads: repeated pairs (with timestamp ties), events,
    ratings, an item category; a feature table per kind; three files of a given split."""
    rng = np.random.default_rng(11)
    n = 3000
    user = rng.integers(0, 120, n)
    item = (rng.zipf(1.6, n) % 90).astype(np.int64)
    ts = rng.integers(0, 400, n)  # few distinct values: ties within users
    event = rng.choice(["pv", "cart", "fav", "buy"], n, p=[0.7, 0.15, 0.1, 0.05])
    rating = rng.integers(1, 6, n)
    category = item % 7
    lines = ["user,item,ts,event,rating,category"]
    lines += [f"u{u},i{i},{t},{e},{r},c{c}" for u, i, t, e, r, c in zip(user, item, ts, event, rating, category)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"log": folder / "log.csv"}
    paths["log"].write_text("\n".join(lines) + "\n")
    paths["headerless"] = folder / "headerless.csv"
    paths["headerless"].write_text("\n".join(lines[1:]) + "\n")
    paths["parquet"] = folder / "log.parquet"
    pq.write_table(
        pa.table({"uid": user, "iid": item.astype(str), "t": ts.astype(np.int64) * 1000, "stars": rating / 2}),
        paths["parquet"],
    )
    paths["users"] = folder / "users.csv"
    paths["users"].write_text(
        "user,age,segment\n" + "".join(f"u{u},{18 + u % 50},s{u % 4}\n" for u in range(0, 130, 2))
    )
    paths["items"] = folder / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "item": [f"i{i}" for i in range(0, 95)],
                "price": np.arange(95) * 1.5,
                "brand": [f"b{i % 9}" for i in range(95)],
            }
        ),
        paths["items"],
    )
    # the same tables keyed as the Parquet log names its ids (uid, iid: the raw ids without prefix)
    paths["users_p"] = folder / "users_p.parquet"
    pq.write_table(pa.table({"uid": np.arange(0, 130, 3), "age": np.arange(0, 130, 3) % 40 + 20.5}), paths["users_p"])
    paths["items_p"] = folder / "items_p.csv"
    paths["items_p"].write_text("iid,brand\n" + "".join(f"{i},b{i % 5}\n" for i in range(0, 95, 2)))
    order = np.argsort(ts, kind="stable")
    cut = [int(0.7 * n), int(0.8 * n)]
    for name, rows in zip(("train", "val", "test"), np.split(order, cut)):
        paths[name] = folder / f"{name}.csv"
        paths[name].write_text("user,item,ts\n" + "".join(f"u{user[r]},i{item[r]},{ts[r]}\n" for r in rows))
    return paths


def cases(paths: dict[str, Path]) -> dict[str, dict]:
    """Case name -> PrepareConfig keyword arguments (without output)."""
    csv = {"input": str(paths["log"]), "time_col": "ts"}
    events = {**csv, "event_col": "event", "rating_col": "rating"}
    out = {
        "synthetic-default": {"split": "random"},
        "synthetic-temporal-cold": {"synthetic": SMALL, "split": "temporal", "cold_fraction": 0.3, "cold_items": 3},
        "synthetic-loo-sampled": {
            "synthetic": SMALL,
            "split": "leave_one_out",
            "sample_fraction": 0.5,
            "min_item_interactions": 3,
            "seed": 4,
        },
        # train.parquet over 2^20 rows: two row groups, as pyarrow's write_table cuts them
        "synthetic-two-row-groups": {
            "synthetic": SyntheticConfig(num_users=45000, num_items=5000, mean_interactions=30, seed=2),
            "split": "random",
        },
        "csv-first": {**csv, "duplicates": "first", "split": "random"},
        "csv-last-temporal": {**events, "duplicates": "last", "split": "temporal", "min_rating": 3},
        "csv-count-weights-target": {
            **events,
            "duplicates": "count",
            "event_weights": "pv:1,cart:2.5,fav:0.3,buy:4",
            "target_events": "buy,cart",
            "item_feature_cols": "category",
            "split": "random",
            "val_fraction": 0.2,
            "test_fraction": 0.2,
        },
        "csv-keep-events-loo": {**events, "keep_events": "buy,cart,fav", "split": "leave_one_out"},
        "csv-count-plain": {**csv, "duplicates": "count", "split": "temporal"},
        "headerless": {
            "input": str(paths["headerless"]),
            "csv_columns": "user,item,ts,event,rating,category",
            "time_col": "ts",
            "duplicates": "last",
        },
        "parquet-features": {
            "input": str(paths["parquet"]),
            "user_col": "uid",
            "item_col": "iid",
            "time_col": "t",
            "rating_col": "stars",
            "duplicates": "last",
            "user_features": str(paths["users_p"]),
            "item_features": str(paths["items_p"]),
        },
        "csv-features": {
            **csv,
            "duplicates": "first",
            "user_col": "user",
            "user_features": str(paths["users"]),
            "item_features": str(paths["items"]),
            "categorical_columns": "segment",
            "max_categories": 3,
        },
        "given-files": {
            "input": str(paths["train"]),
            "val_input": str(paths["val"]),
            "test_input": str(paths["test"]),
            "split": "given",
            "time_col": "ts",
            "duplicates": "last",
        },
        "given-test-file": {
            "input": str(paths["train"]),
            "test_input": str(paths["test"]),
            "split": "given",
            "time_col": "ts",
            "duplicates": "first",
            "val_fraction": 0.15,
        },
    }
    shared = {
        "ml-100k-given": {"input": str(SHARED / "ml-100k"), "split": "given", "val_fraction": 0.1},
        "ml-100k-u1": {
            "input": str(SHARED / "ml-100k" / "u1.base"),
            "test_input": str(SHARED / "ml-100k" / "u1.test"),
            "split": "given",
        },
        "ml-100k-temporal-min-rating": {"input": str(SHARED / "ml-100k"), "split": "temporal", "min_rating": 4},
        "ml-1m": {"input": str(SHARED / "ml-1m"), "split": "leave_one_out"},
        "gowalla": {"input": str(SHARED / "gowalla"), "split": "given", "val_fraction": 0.1},
        "taobao": {
            "input": str(SHARED / "taobao-userbehavior-sample" / "UserBehavior_head.csv"),
            "csv_columns": "user_id,item_id,category_id,behavior,timestamp",
            "user_col": "user_id",
            "item_col": "item_id",
            "time_col": "timestamp",
            "event_col": "behavior",
            "duplicates": "count",
            "event_weights": "pv:1,cart:2,fav:2,buy:4",
            "target_events": "buy",
            "item_feature_cols": "category_id",
            "split": "temporal",
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
    }
    return {**out, **{f"shared:{k}": v for k, v in shared.items()}}


def content_digest(path: Path, old_config_keys: list[str] | None = None) -> str:
    h = hashlib.sha256()
    if path.suffix == ".parquet":
        file = pq.ParquetFile(path)
        h.update(file.schema_arrow.to_string(show_schema_metadata=False).encode())
        h.update(repr([file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)]).encode())
        table = file.read()
        for name in table.column_names:
            column = table[name].combine_chunks()
            h.update(name.encode() + str(column.type).encode())
            h.update(column.is_null().to_numpy(zero_copy_only=False).tobytes())
            if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                h.update(column.fill_null(0).to_numpy().tobytes())
            else:
                h.update(repr(column.to_pylist()).encode())
    elif path.name == "meta.json":
        meta = json.loads(path.read_text())
        meta.pop("checksums", None)
        config = meta.pop("prepare_config", {})
        keys = list(config) if old_config_keys is None else old_config_keys
        # the input paths of a case live in a temporary folder: compare their file names
        kept = {
            k: (Path(v).name if k in INPUT_KEYS and v else v)
            for k, v in config.items()
            if k in keys and k not in CHANGED_DEFAULTS
        }
        kind, _, where = meta["source"].partition(":")
        meta["source"] = f"{kind}:{Path(where).name}" if where else kind
        if "files" in meta.get("split", {}):
            meta["split"]["files"] = {k: Path(v).name if v else v for k, v in meta["split"]["files"].items()}
        h.update(json.dumps([meta, kept], sort_keys=True).encode())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


# options whose default changed on purpose since 7f1e850 (recorded in meta.json's prepare_config, which
# the graph's other files do not depend on)
CHANGED_DEFAULTS = {"partition_method": "metis -> auto: METIS where its memory fits, else a streaming partitioner"}
INPUT_KEYS = ("input", "val_input", "test_input", "user_features", "item_features", "output")


def graph_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".distgnn.json")


def digests_of(folder: Path, old_config_keys: list[str] | None = None) -> dict[str, dict[str, str]]:
    out = {}
    for path in graph_files(folder):
        name = path.relative_to(folder).as_posix()
        entry = {"content": content_digest(path, old_config_keys)}
        if name != "meta.json":
            entry["bytes"] = hashlib.sha256(path.read_bytes()).hexdigest()
        out[name] = entry
    return out


def run_case(kwargs: dict, tmp: Path) -> Path:
    return prepare(PrepareConfig(output=str(tmp / "graph"), **kwargs))


def available(name: str, kwargs: dict) -> bool:
    return not name.startswith("shared:") or Path(kwargs["input"]).exists()


SLOW_CASES = ("synthetic-two-row-groups",)
RECORDED = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {"cases": {}}
CASE_NAMES = sorted(
    cases(
        {
            k: Path(k)
            for k in ("log", "headerless", "parquet", "users", "items", "users_p", "items_p", "train", "val", "test")
        }
    )
)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    return write_log(tmp_path_factory.mktemp("logs"))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n for n in CASE_NAMES]
)
def test_prepare_output_is_unchanged(name, logs, tmp_path):
    kwargs = cases(logs)[name]
    if not available(name, kwargs):
        pytest.skip(f"{kwargs['input']} not present")
    recorded = RECORDED["cases"][name]
    out = run_case(kwargs, tmp_path)
    got = digests_of(out, RECORDED["prepare_config_keys"])
    assert sorted(got) == sorted(recorded), "the graph directory holds other files"
    same_writer = pa.__version__ == RECORDED["pyarrow"]
    for file, digest in recorded.items():
        assert got[file]["content"] == digest["content"], f"{file}: content differs from 7f1e850's prepare"
        if same_writer and "bytes" in digest:
            assert got[file]["bytes"] == digest["bytes"], f"{file}: bytes differ from 7f1e850's prepare"


def record() -> None:
    import tempfile

    from distgnn.core.config import config_to_dict

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_log(Path(tmp) / "logs")
        result = {
            "pyarrow": pa.__version__,
            "prepare_config_keys": list(config_to_dict(PrepareConfig())),
            "cases": {},
        }
        for name, kwargs in cases(paths).items():
            if not available(name, kwargs):
                print(f"skipped {name}")
                continue
            case_dir = Path(tmp) / name.replace(":", "-")
            out = run_case(kwargs, case_dir)
            result["cases"][name] = digests_of(out)
            print(f"recorded {name}: {len(result['cases'][name])} files")
        DIGESTS.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        record()
    else:
        sys.exit("usage: python tests/test_prepare_unchanged.py --record")

"""Every bad input to ``python -m distgnn.prepare`` either works under a documented policy or fails with
one line naming the file, the row or the column, and what was expected (exit status 2), leaving no
output folder behind. The corpus is ``tests/bad_inputs/`` (tiny hand-made files); Parquet cases are
written into ``tmp_path`` by the builders below."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import ConfigError
from distgnn.data.checks import check_output_path
from distgnn.data.prepare import prepare
from distgnn.data.readers import TEST, TRAIN, VAL
from distgnn.data.split import empty_split_reasons, split_interactions
from distgnn.prepare import main

CORPUS = Path(__file__).parent / "bad_inputs"


# ---------------------------------------------------------------------------------------------------
# Parquet builders: (folder) -> file


def nan_item_parquet(folder: Path) -> Path:
    path = folder / "nan_item.parquet"
    pq.write_table(pa.table({"user": ["a", "b", "c"], "item": [1.0, 2.0, float("nan")]}), path)
    return path


def list_item_parquet(folder: Path) -> Path:
    path = folder / "list_item.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "item": [["x"], ["y", "z"]]}), path)
    return path


def struct_user_parquet(folder: Path) -> Path:
    path = folder / "struct_user.parquet"
    pq.write_table(pa.table({"user": [{"id": 1}, {"id": 2}], "item": ["x", "y"]}), path)
    return path


def truncated_parquet(folder: Path) -> Path:
    whole = folder / "whole.parquet"
    pq.write_table(pa.table({"user": [f"u{i}" for i in range(200)], "item": [f"i{i}" for i in range(200)]}), whole)
    path = folder / "truncated.parquet"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return path


def corrupt_parquet(folder: Path) -> Path:
    """Footer intact, the first data page overwritten: opening works, reading fails."""
    path = folder / "corrupt.parquet"
    pq.write_table(pa.table({"user": [f"u{i}" for i in range(200)], "item": [f"i{i}" for i in range(200)]}), path)
    data = bytearray(path.read_bytes())
    data[8:64] = b"\xff" * 56
    path.write_bytes(bytes(data))
    return path


def bool_user_parquet(folder: Path) -> Path:
    path = folder / "bool_user.parquet"
    pq.write_table(pa.table({"user": [True, False], "item": ["x", "y"]}), path)
    return path


def uint64_timestamp_parquet(folder: Path) -> Path:
    path = folder / "uint64_ts.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "item": ["x", "y"], "ts": pa.array([1, 2**63], pa.uint64())}), path)
    return path


def nan_feature_parquet(folder: Path) -> Path:
    path = folder / "nan_feature.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "score": [0.5, float("nan")]}), path)
    return path


def repeated_id_feature_parquet(folder: Path) -> Path:
    path = folder / "repeated_feature.parquet"
    pq.write_table(pa.table({"item": [7, 8, 7], "colour": ["red", "blue", "red"]}), path)
    return path


def float_ids_parquet(folder: Path) -> Path:
    path = folder / "float_ids.parquet"
    pq.write_table(pa.table({"user": [1.0, 2.0, 1.0], "item": [10.0, 10.0, 11.0]}), path)
    return path


# ---------------------------------------------------------------------------------------------------
# Helpers


LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (INFO|WARNING) ")


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    # progress lines ("12:00:00 INFO read ...") are logging, not the error: the error is one line
    return code, [line for line in capsys.readouterr().err.splitlines() if not LOG_LINE.match(line)]


def assert_one_line_error(code: int, lines: list[str], *mentions: str) -> str:
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def input_path(source: str | Callable[[Path], Path], folder: Path) -> Path:
    return source(folder) if callable(source) else CORPUS / source


def read_ids(graph: Path, name: str) -> list[str]:
    return pq.read_table(graph / f"{name}.parquet")["raw_id"].to_pylist()


def read_pairs(graph: Path) -> set[tuple[str, str]]:
    users, items = read_ids(graph, "users"), read_ids(graph, "items")
    pairs = set()
    for split in ("train", "val", "test"):
        t = pq.read_table(graph / f"{split}.parquet")
        pairs |= {(users[u], items[i]) for u, i in zip(t["user"].to_pylist(), t["item"].to_pylist())}
    return pairs


# ---------------------------------------------------------------------------------------------------
# Failures: one line naming the file, the row or column, and what was expected


FAILURES = [
    # case, input (corpus file or builder), extra flags, what the line says besides the file's name
    ("malformed_rows", "malformed_rows.csv", ["--time_col", "ts"], ["row 2", "expected 3 fields", "got 2"]),
    ("wrong_delimiter", "wrong_delimiter.csv", [], ["missing user column 'user'", "'user;item'", "--delimiter"]),
    ("missing_column", "missing_column.csv", [], ["missing item column 'item'", "'user', 'product'"]),
    ("duplicate_column", "duplicate_column.csv", [], ["user column 'user'", "appears 2 times"]),
    ("latin1_header", "latin1_header.csv", [], ["header is not UTF-8"]),
    (
        "non_numeric_rating",
        "non_numeric_rating.csv",
        ["--rating_col", "rating"],
        ["row 2", "rating column 'rating'", "expected a number", "'good'"],
    ),
    ("nan_rating", "nan_rating.csv", ["--rating_col", "rating"], ["row 2", "rating column 'rating'", "finite"]),
    ("inf_rating", "inf_rating.csv", ["--rating_col", "rating"], ["row 3", "rating column 'rating'", "inf"]),
    ("empty_user_id", "empty_user_id.csv", [], ["row 2", "user column 'user'", "expected an id", "blank"]),
    ("blank_user_id", "blank_user_id.csv", [], ["row 3", "user column 'user'", "blank"]),
    ("missing_marker_id", "missing_marker_id.csv", [], ["row 2", "user column 'user'", "'NA'", "missing-value marker"]),
    ("nan_item_id", nan_item_parquet, [], ["row 3", "item column 'item'", "nan"]),
    ("unclosed_quote", "unclosed_quote.csv", [], ["row 2", "item column 'item'", "on one line", "quote left open"]),
    ("huge_timestamp", "huge_timestamp.csv", ["--time_col", "ts"], ["row 2", "timestamp column 'ts'", "int64"]),
    (
        "fractional_timestamp",
        "fractional_timestamp.csv",
        ["--time_col", "ts"],
        ["row 2", "timestamp column 'ts'", "whole-number", "1.5"],
    ),
    ("uint64_timestamp", uint64_timestamp_parquet, ["--time_col", "ts"], ["row 2", "timestamp column 'ts'", "int64"]),
    ("empty_file", "empty.csv", [], ["file is empty"]),
    ("header_only", "header_only.csv", [], ["no rows"]),
    (
        "all_events_filtered",
        "events.csv",
        ["--event_col", "event", "--keep_events", "purchase"],
        ["no rows left", "keep_events", "event column 'event'", "'buy'"],
    ),
    (
        "all_ratings_filtered",
        "low_ratings.csv",
        ["--rating_col", "rating", "--min_rating", "6"],
        ["no interactions left", "min_rating 6", "from 1 to 3"],
    ),
    (
        "duplicates_error",
        "duplicates.csv",
        ["--duplicates", "error"],
        ["row 3", "repeated (user, item) pair", "row 1", "--duplicates first, last or count"],
    ),
    ("mixed_encoding", "mixed_encoding.csv", [], ["row 2", "item column 'item'", "UTF-8", "caf\\xe9"]),
    ("binary_garbage", "binary_garbage.csv", [], ["binary data", "expected UTF-8 CSV text"]),
    ("list_item_column", list_item_parquet, [], ["item column 'item'", "list", "expected text or integer ids"]),
    ("struct_user_column", struct_user_parquet, [], ["user column 'user'", "struct", "expected text or integer ids"]),
    ("bool_user_column", bool_user_parquet, [], ["user column 'user'", "bool", "expected text or integer ids"]),
    ("truncated_parquet", truncated_parquet, [], ["not a readable Parquet file"]),
    ("corrupt_parquet", corrupt_parquet, [], ["not a readable Parquet file"]),
    ("min_rating_without_rating_col", "extra_columns.csv", ["--min_rating", "4"], ["'min_rating'", "--rating_col"]),
    ("format_csv_on_parquet", float_ids_parquet, ["--format", "csv"], ["binary data", "--format parquet"]),
    (
        "csv_columns_wrong_count",
        "headerless_short_row.csv",
        ["--csv_columns", "user,item,rating,ts"],
        ["row 2", "expected 4 fields (user, item, rating, ts)", "got 3", "'u2,i2,4'"],
    ),
    (
        "event_without_weight",
        "events.csv",
        ["--event_col", "event", "--event_weights", "buy:4,view:1"],
        ["row 2", "event column 'event'", "an event type of event_weights (buy, view)", "'click'"],
    ),
    (
        "event_without_weight_after_keep_events",
        "events.csv",
        ["--event_col", "event", "--keep_events", "buy,view", "--event_weights", "buy:4"],
        ["row 5", "event column 'event'", "'view'"],  # row 5 of the file, not of the rows kept
    ),
    (
        "target_never_occurs",
        "events.csv",
        ["--event_col", "event", "--target_events", "purchase"],
        ["target_events 'purchase'", "event column 'event'", "values found: 'buy', 'click', 'view'"],
    ),
    (
        "item_feature_col_missing",
        "extra_columns.csv",
        ["--item_feature_cols", "colour,category"],
        ["missing item feature column 'category'", "'colour'"],
    ),
    ("given_split_without_files", "extra_columns.csv", ["--split", "given"], ["'split'", "--test_input"]),
]


@pytest.mark.parametrize("source,flags,mentions", [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_bad_input_fails_with_one_line(tmp_path, capsys, source, flags, mentions):
    path = input_path(source, tmp_path)
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "graph"
    code, lines = run(["--input", str(path), "--output", str(out), *flags], capsys)
    assert_one_line_error(code, lines, path.name, *mentions)
    assert sorted(tmp_path.iterdir()) == before  # no graph, no temporary folder


# Feature tables (--user_features/--item_features): the line names the feature table, not the interactions

FEATURE_FAILURES = [
    # case, feature table (corpus file or builder), flags, what the line says besides the table's name
    ("no_id_column", "features_no_id.csv", [], ["missing user id column 'user'", "'uid', 'age'", "user_col"]),
    ("header_only", "features_header_only.csv", [], ["no rows, expected user features"]),
    ("only_the_id", "features_only_id.csv", [], ["no feature columns besides the user id column 'user'"]),
    ("repeated_id", "features_repeated_id.csv", [], ["row 3", "repeated user id 'a' (also in row 1)"]),
    ("numeric_typo", "features_typo.csv", [], ["row 2", "feature column 'age'", "2 of the column's 3", "'x3'"]),
    ("nan_number", "features_nan.csv", [], ["row 1", "feature column 'age'", "a finite number", "nan"]),
    ("empty_number", "features_empty_number.csv", [], ["row 2", "feature column 'age'", "an empty value"]),
    ("nan_parquet", nan_feature_parquet, [], ["row 2", "feature column 'score'", "a finite number", "nan"]),
    (
        "categorical_column_missing",
        "features_ok.csv",
        ["--categorical_columns", "occupaton"],
        ["no feature column 'occupaton'", "categorical_columns", "found: 'age', 'occupation')"],
    ),
    ("empty_file", "empty.csv", [], ["file is empty", "user feature table"]),
]


@pytest.mark.parametrize(
    "source,flags,mentions", [c[1:] for c in FEATURE_FAILURES], ids=[c[0] for c in FEATURE_FAILURES]
)
def test_bad_user_feature_table_fails_with_one_line(tmp_path, capsys, source, flags, mentions):
    path = input_path(source, tmp_path)
    before = sorted(tmp_path.iterdir())
    argv = ["--input", str(CORPUS / "extra_columns.csv"), "--output", str(tmp_path / "graph"), "--user_features"]
    code, lines = run([*argv, str(path), *flags], capsys)
    assert_one_line_error(code, lines, path.name, *mentions)
    assert sorted(tmp_path.iterdir()) == before


def test_repeated_item_id_in_a_parquet_feature_table(tmp_path, capsys):
    path = repeated_id_feature_parquet(tmp_path)
    argv = ["--input", str(CORPUS / "extra_columns.csv"), "--output", str(tmp_path / "graph")]
    code, lines = run([*argv, "--item_features", str(path)], capsys)
    assert_one_line_error(code, lines, path.name, "row 3", "repeated item id '7' (also in row 1)")
    assert not (tmp_path / "graph").exists()


def test_missing_test_input_names_that_file(tmp_path, capsys):
    argv = ["--input", str(CORPUS / "extra_columns.csv"), "--output", str(tmp_path / "graph"), "--split", "given"]
    code, lines = run([*argv, "--test_input", str(tmp_path / "nope.csv")], capsys)
    assert_one_line_error(code, lines, "nope.csv", "no such file")
    assert not (tmp_path / "graph").exists()


def test_bad_row_in_the_test_file_names_that_file_and_row(tmp_path, capsys):
    argv = ["--input", str(CORPUS / "extra_columns.csv"), "--output", str(tmp_path / "graph"), "--split", "given"]
    code, lines = run([*argv, "--test_input", str(CORPUS / "empty_user_id.csv")], capsys)
    assert_one_line_error(code, lines, "empty_user_id.csv", "row 2", "user column 'user'")


def test_duplicate_across_given_files_with_error_policy_names_both_files(tmp_path, capsys):
    test = tmp_path / "test.csv"
    test.write_text("user,item\nb,y\na,x\n")
    argv = ["--input", str(CORPUS / "extra_columns.csv"), "--output", str(tmp_path / "graph"), "--split", "given"]
    code, lines = run([*argv, "--test_input", str(test), "--duplicates", "error"], capsys)
    assert_one_line_error(code, lines, "test.csv: row 2", "repeated (user, item) pair", "extra_columns.csv row 1")


def test_a_folder_is_read_file_by_file_and_fails_on_its_first_bad_file(tmp_path, capsys):
    code, lines = run(["--format", "csv", "--input", str(CORPUS), "--output", str(tmp_path / "g")], capsys)
    assert_one_line_error(code, lines, "bad_inputs/binary_garbage.csv", "binary data")  # the first by name
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_csv(tmp_path, capsys):
    path = tmp_path / "secret.csv"
    shutil.copy(CORPUS / "extra_columns.csv", path)
    path.chmod(0)
    code, lines = run(["--input", str(path), "--output", str(tmp_path / "g")], capsys)
    assert_one_line_error(code, lines, path.name, "cannot read")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    "flags,mentions",
    [
        (["--delimiter", ";;"], ["'delimiter'", "one character"]),
        (["--min_rating", "nan"], ["'min_rating'", "finite"]),
        (["--min_rating", "inf"], ["'min_rating'", "finite"]),
        (["--sample_fraction", "0"], ["'sample_fraction'", "(0, 1]"]),
        (["--sample_fraction", "1.5"], ["'sample_fraction'", "(0, 1]"]),
        (["--event_weights", "buy:1"], ["'event_weights'", "needs event_col"]),
        (["--event_col", "colour", "--event_weights", "red"], ["'event_weights'", "type:weight", "'red'"]),
        (["--event_col", "colour", "--event_weights", "red:0"], ["'event_weights'", "positive", "'red:0'"]),
        (["--event_col", "colour", "--event_weights", "red:1,red:2"], ["'event_weights'", "'red' is given twice"]),
        (["--target_events", "buy"], ["'target_events'", "needs event_col"]),
        (["--event_col", "colour", "--target_events", "red", "--split", "given"], ["'target_events'", "given"]),
        (
            ["--event_col", "colour", "--keep_events", "blue", "--target_events", "red"],
            ["'target_events'", "red not among keep_events"],
        ),
        (["--test_input", "x.csv"], ["'test_input'", "--split given"]),
        (["--val_input", "x.csv", "--split", "given"], ["'val_input'", "needs test_input"]),
        (["--csv_columns", "user,,item"], ["'csv_columns'", "empty one"]),
        (["--csv_columns", "user,item,user"], ["'csv_columns'", "'user' is named twice"]),
        (["--categorical_columns", "colour"], ["'categorical_columns'", "needs user_features or item_features"]),
        (["--max_categories", "0"], ["'max_categories'", "at least 1"]),
    ],
    ids=[
        "delimiter",
        "min_rating_nan",
        "min_rating_inf",
        "sample_fraction_zero",
        "sample_fraction_above_one",
        "event_weights_without_event_col",
        "event_weights_no_colon",
        "event_weights_zero",
        "event_weights_twice",
        "target_events_without_event_col",
        "target_events_with_given",
        "target_events_filtered_out",
        "test_input_without_given",
        "val_input_without_test_input",
        "csv_columns_empty_name",
        "csv_columns_repeated_name",
        "categorical_columns_without_tables",
        "max_categories_zero",
    ],
)
def test_bad_option_values(tmp_path, capsys, flags, mentions):
    code, lines = run(["--input", str(CORPUS / "extra_columns.csv"), "--output", str(tmp_path / "g"), *flags], capsys)
    assert_one_line_error(code, lines, *mentions)
    assert not (tmp_path / "g").exists()


# ---------------------------------------------------------------------------------------------------
# Output folders whose replacement would destroy something: refused before reading


@pytest.mark.parametrize("output", [".", "..", "TMP"], ids=["dot", "parent", "ancestor"])
def test_output_is_the_current_folder_or_above(tmp_path, capsys, monkeypatch, output):
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    output = str(tmp_path) if output == "TMP" else output
    code, lines = run(["--input", str(CORPUS / "extra_columns.csv"), "--output", output], capsys)
    assert_one_line_error(code, lines, f"'output': {output} ", "current folder")
    assert sorted(p.name for p in here.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize(
    "output,says",
    [("data", "contains the input"), ("data/log.csv", "is the input")],
    ids=["folder_holding_input", "input_itself"],
)
def test_output_contains_the_input(tmp_path, capsys, output, says):
    data = tmp_path / "data"
    data.mkdir()
    path = data / "log.csv"
    shutil.copy(CORPUS / "extra_columns.csv", path)
    code, lines = run(["--input", str(path), "--output", str(tmp_path / output)], capsys)
    assert_one_line_error(code, lines, "'output'", says, "log.csv")
    assert path.read_bytes() == (CORPUS / "extra_columns.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "log.csv"]


def test_output_parent_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("a file, not a folder")
    code, lines = run(["--input", str(CORPUS / "extra_columns.csv"), "--output", str(blocker / "graph")], capsys)
    assert_one_line_error(code, lines, "'output'", "blocker.txt", "which is a file")
    assert blocker.read_text() == "a file, not a folder"


def test_output_is_an_existing_file(tmp_path, capsys):
    target = tmp_path / "graph"
    target.write_text("not a graph")
    code, lines = run(["--input", str(CORPUS / "extra_columns.csv"), "--output", str(target)], capsys)
    assert_one_line_error(code, lines, "'output'", "graph", "existing file")
    assert target.read_text() == "not a graph"


# ---------------------------------------------------------------------------------------------------
# Inputs that work under a documented policy


def prepare_main(tmp_path: Path, capsys, path: Path, *flags: str) -> Path:
    out = tmp_path / "graph"
    code, lines = run(["--input", str(path), "--output", str(out), *flags], capsys)
    assert code == 0 and not [line for line in lines if line.startswith("error")], lines
    return out


def test_extra_columns_are_ignored(tmp_path, capsys):
    out = prepare_main(tmp_path, capsys, CORPUS / "extra_columns.csv")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["columns"] == ["user", "item"]
    assert read_pairs(out) == {("a", "x"), ("a", "y"), ("b", "x")}


def test_non_numeric_ids_are_text_as_written(tmp_path, capsys):
    out = prepare_main(tmp_path, capsys, CORPUS / "non_numeric_ids.csv")
    # '007' stays '007' and '1e3' stays '1e3': ids are never parsed as numbers
    assert read_pairs(out) == {("alice", "book-1"), ("007", "x y"), ("1e3", "book-1"), ("alice", "1.50")}


def test_float_id_columns_cast_to_integers_text(tmp_path, capsys):
    out = prepare_main(tmp_path, capsys, float_ids_parquet(tmp_path))
    assert read_pairs(out) == {("1", "10"), ("2", "10"), ("1", "11")}


def test_tsv_is_read_with_tabs(tmp_path, capsys):
    out = prepare_main(tmp_path, capsys, CORPUS / "tabs.tsv")
    assert read_pairs(out) == {("u1", "x"), ("u2", "y")}


def test_negative_timestamps_order_events(tmp_path, capsys):
    out = prepare_main(
        tmp_path,
        capsys,
        CORPUS / "negative_timestamp.csv",
        "--time_col",
        "ts",
        "--split",
        "leave_one_out",
        "--val_fraction",
        "0",
    )
    test = pq.read_table(out / "test.parquet")["timestamp"].to_pylist()
    train = pq.read_table(out / "train.parquet")["timestamp"].to_pylist()
    assert sorted(test) == [-1, 12]  # the latest of each user, negative or not
    assert sorted(train) == [-50, -7, -2]


def test_user_left_with_nothing_after_filtering_is_absent(tmp_path, capsys):
    out = prepare_main(tmp_path, capsys, CORPUS / "events.csv", "--event_col", "event", "--keep_events", "buy")
    assert sorted(read_ids(out, "users")) == ["a", "b"]  # c only clicked and viewed
    assert read_pairs(out) == {("a", "x"), ("b", "x"), ("b", "z")}


def test_user_left_with_nothing_after_min_rating_is_absent(tmp_path, capsys):
    out = prepare_main(tmp_path, capsys, CORPUS / "low_ratings.csv", "--rating_col", "rating", "--min_rating", "3")
    assert read_ids(out, "users") == ["b"]
    assert read_pairs(out) == {("b", "x")}


@pytest.mark.parametrize("policy,rating", [("first", 2.0), ("last", 4.0)])
def test_duplicate_policies_keep_first_or_last(tmp_path, capsys, policy, rating):
    out = prepare_main(
        tmp_path,
        capsys,
        CORPUS / "duplicates_rated.csv",
        "--time_col",
        "ts",
        "--rating_col",
        "rating",
        "--duplicates",
        policy,
        "--val_fraction",
        "0",
        "--test_fraction",
        "0",
    )
    train = pq.read_table(out / "train.parquet").to_pydict()
    users = read_ids(out, "users")
    kept = {users[u]: r for u, r in zip(train["user"], train["rating"])}
    assert kept == {"a": rating, "b": 5.0}


def test_one_interaction_per_user_warns_that_val_and_test_are_empty(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="distgnn.prepare")
    out = prepare(PrepareConfig(input=str(CORPUS / "one_per_user.csv"), output=str(tmp_path / "g")))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_interactions"] == {"train": 4, "val": 0, "test": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        w.startswith("val is empty") and "at least 5 interactions" in w and "most any user has is 1" in w
        for w in warnings
    ), warnings
    assert any(w.startswith("test is empty") for w in warnings), warnings


def test_no_warning_when_a_split_is_not_asked_for(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="distgnn.prepare")
    prepare(
        PrepareConfig(
            input=str(CORPUS / "one_per_user.csv"), output=str(tmp_path / "g"), val_fraction=0.0, test_fraction=0.0
        )
    )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_check_output_path_resolves_before_comparing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match="current folder"):
        check_output_path(Path("sub/.."), [])
    with pytest.raises(ConfigError, match="contains the input"):
        check_output_path(Path("sub/../sub"), [tmp_path / "sub" / "deep" / "log.csv"])
    check_output_path(Path("sub/graph"), [tmp_path / "sub" / "log.csv"])  # a new folder next to the input


@pytest.mark.parametrize(
    "method,per_user,given_test,expected",
    [
        ("random", 1, True, ["val is empty", "test is empty"]),
        ("temporal", 4, True, ["val is empty"]),  # round(4 * 0.1) = 0, round(4 * 0.3) = 1
        ("leave_one_out", 2, True, ["val is empty"]),  # a second held-out interaction needs 3
        ("given", 6, False, ["test is empty"]),
    ],
)
def test_empty_split_reasons(method, per_user, given_test, expected):
    user = np.repeat(np.arange(5), per_user)
    given = np.where(np.arange(user.size) % per_user == 0, TEST if given_test else TRAIN, TRAIN)
    labels = split_interactions(
        user,
        np.arange(user.size),
        method=method,
        val_fraction=0.1,
        test_fraction=0.3,
        seed=0,
        given=given if method == "given" else None,
    )
    held = {code: int((labels == code).sum()) for code in (VAL, TEST)}
    pool = labels != TEST if method == "given" else np.ones(user.size, bool)
    most = int(np.bincount(user[pool]).max())
    reasons = empty_split_reasons(held, most, method=method, val_fraction=0.1, test_fraction=0.3)
    assert [r.split(":")[0] for r in reasons] == expected
    if method == "leave_one_out":
        assert "needs at least 3 interactions" in reasons[0] and "most any user has is 2" in reasons[0]


def test_bad_synthetic_settings_are_one_line(tmp_path, capsys):
    code, lines = run(["--output", str(tmp_path / "g"), "--synthetic.num_items", "5"], capsys)
    assert_one_line_error(code, lines, "'synthetic.num_items'", "at least 10")
    assert not (tmp_path / "g").exists()

"""python -m distgnn.recommend --all-users / --users-file: streamed Parquet and CSV files equal to
Export.recommend per user, independent of the chunking, never replacing a file distgnn did not
write, and the stated policy for unknown ids, on a hand-written export (no model is trained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import distgnn
from distgnn.core.errors import ConfigError
from distgnn.recommend import main as recommend_main
from distgnn.serving import recommend as recommend_module
from distgnn.serving.recommend import MARKER_SUFFIX, output_paths, read_id_file, write_recommendations

from test_serve import NUM_USERS, item_raw, random_export, user_raw

ID_TYPES = {"user_id": pa.string(), "item_id": pa.string()}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return random_export(tmp_path_factory.mktemp("recommend-users") / "export")


@pytest.fixture(scope="module")
def exp(export_dir):
    return distgnn.load_export(export_dir)


def read_csv(path) -> pa.Table:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=ID_TYPES))


def per_user(exp, users: list[str], k: int, **rerank) -> pa.Table:
    """Export.recommend called once per user, the rows concatenated."""
    return pa.concat_tables([exp.recommend([u], k, **rerank) for u in users])


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    for name in ("user_id", "rank", "item_id"):
        assert got[name].to_pylist() == want[name].to_pylist(), name
    # one user per search vs one chunk: BLAS kernels differ with the batch size, in the last bit
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=0, atol=1e-5)


def write_id_file(path, ids: list[str]):
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


@pytest.mark.parametrize("rerank", [False, True])
def test_all_users_parquet_and_csv_equal_per_user_recommend(export_dir, exp, tmp_path, rerank):
    users = [user_raw(u) for u in range(NUM_USERS)]
    args = ["--export", str(export_dir), "--all-users", "--k", "7", "--output", str(tmp_path / "recs")]
    args += ["--output-format", "both", "--chunk-size", "9"]
    options = {}
    if rerank:
        exclude = write_id_file(tmp_path / "exclude.txt", [item_raw(i) for i in range(0, 120, 5)])
        boost = write_id_file(tmp_path / "boost.txt", [item_raw(i) for i in (1, 2, 3)])
        args += ["--mmr-lambda", "0.6", "--pool", "25", "--exclude-items", str(exclude)]
        args += ["--boost-items", str(boost), "--boost", "0.3"]
        options = {
            "mmr_lambda": 0.6,
            "pool": 25,
            "exclude": [item_raw(i) for i in range(0, 120, 5)],
            "boost": {item_raw(i): 0.3 for i in (1, 2, 3)},
        }
    assert recommend_main(args) == 0
    want = per_user(exp, users, 7, **options)
    parquet = pq.read_table(tmp_path / "recs.parquet")
    assert parquet.schema.remove_metadata() == recommend_module.RESULT_SCHEMA
    assert_same_rows(parquet, want)
    assert_same_rows(read_csv(tmp_path / "recs.csv"), want)
    marker = json.loads((tmp_path / f"recs.parquet{MARKER_SUFFIX}").read_text())
    assert marker["kind"] == "recommendations" and marker["num_users"] == NUM_USERS
    assert marker["num_rows"] == want.num_rows and marker["size"] == (tmp_path / "recs.parquet").stat().st_size
    assert json.loads(pq.read_schema(tmp_path / "recs.parquet").metadata[b"distgnn"])["k"] == 7
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("mmr_lambda", [1.0, 0.5])
def test_chunking_gives_the_same_file_as_one_chunk(exp, tmp_path, mmr_lambda):
    rules = exp.rerank_rules(mmr_lambda=mmr_lambda, pool=30, boost={item_raw(4): 0.4}, exclude=[item_raw(9)])
    files = {}
    for chunk_size in (NUM_USERS, 7, 1):
        outputs = {fmt: tmp_path / f"c{chunk_size}.{fmt}" for fmt in ("parquet", "csv")}
        # row groups of 64 rows: several, cut across chunks, the same whatever the chunk size
        write_recommendations(exp, outputs, k=10, rules=rules, chunk_size=chunk_size, row_group_rows=64)
        files[chunk_size] = outputs
    one = files[NUM_USERS]
    metadata = pq.read_metadata(one["parquet"])
    assert metadata.num_row_groups == 7 and metadata.num_rows == 10 * NUM_USERS - 7  # the heavy user has 3
    for fmt in ("parquet", "csv"):
        assert files[7][fmt].read_bytes() == one[fmt].read_bytes(), fmt
    # one user per chunk takes other BLAS kernels (matrix-vector): same rows, scores to the last bit or so
    assert_same_rows(pq.read_table(files[1]["parquet"]), pq.read_table(one["parquet"]))
    row_groups = [pq.read_metadata(files[1]["parquet"]).row_group(i).num_rows for i in range(7)]
    assert row_groups == [metadata.row_group(i).num_rows for i in range(7)] == [64] * 6 + [9]


def test_output_refuses_to_replace_a_file_distgnn_did_not_write(export_dir, tmp_path, capsys):
    foreign = tmp_path / "mine.parquet"
    foreign.write_bytes(b"someone's data")
    args = ["--export", str(export_dir), "--all-users", "--output", str(foreign)]
    assert recommend_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "was not written by python -m distgnn.recommend" in err
    assert foreign.read_bytes() == b"someone's data"
    assert recommend_main([*args, "--overwrite"]) == 0
    assert pq.read_table(foreign).num_rows > 0
    # a file distgnn wrote is replaced without --overwrite (here by another k)
    assert recommend_main([*args, "--k", "3"]) == 0
    assert set(pq.read_table(foreign)["rank"].to_pylist()) == {1, 2, 3}
    # ... unless it changed since (its size no longer matches the marker): then it is someone's again
    with open(foreign, "ab") as fh:
        fh.write(b"edited")
    assert recommend_main([*args, "--k", "4"]) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    # a folder is never an output file
    (tmp_path / "folder.parquet").mkdir()
    assert (
        recommend_main(["--export", str(export_dir), "--all-users", "--output", str(tmp_path / "folder.parquet")]) == 2
    )
    assert "is a folder" in capsys.readouterr().err


def test_a_failure_mid_stream_keeps_the_previous_file(exp, tmp_path, monkeypatch):
    outputs = {"parquet": tmp_path / "r.parquet", "csv": tmp_path / "r.csv"}
    write_recommendations(exp, outputs, k=5)
    before = {fmt: path.read_bytes() for fmt, path in outputs.items()}
    calls = {"n": 0}
    top_items = type(exp).top_items

    def crash_on_third_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("crash on purpose")
        return top_items(self, *args, **kwargs)

    monkeypatch.setattr(type(exp), "top_items", crash_on_third_chunk)
    with pytest.raises(RuntimeError, match="crash on purpose"):
        write_recommendations(exp, outputs, k=8, chunk_size=5)
    assert {fmt: path.read_bytes() for fmt, path in outputs.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # and no temporary file left
        "r.csv",
        f"r.csv{MARKER_SUFFIX}",
        "r.parquet",
        f"r.parquet{MARKER_SUFFIX}",
    ]


def test_users_file_unknown_ids_are_an_error_naming_file_and_rows(export_dir, exp, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text(f"{user_raw(3)}\nnobody\n\n{user_raw(1)}\n{user_raw(3)}\nghost\n")
    out = tmp_path / "u.csv"
    args = ["--export", str(export_dir), "--users-file", str(users), "--output", str(out), "--k", "4"]
    assert recommend_main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {users}: 2 of 5 user ids are not users of the export (row 2 'nobody', row 6 'ghost')" in err
    assert "--skip-unknown-users" in err and not out.exists()
    # the stated alternative: skip them, with one warning saying how many and where
    assert recommend_main([*args, "--skip-unknown-users"]) == 0
    assert (
        "2 of 5 user ids are not users of the export (row 2 'nobody', row 6 'ghost'); skipped"
        in capsys.readouterr().err
    )
    # file order, repeats kept
    assert_same_rows(read_csv(out), per_user(exp, [user_raw(3), user_raw(1), user_raw(3)], 4))
    only_unknown = write_id_file(tmp_path / "none.txt", ["nobody"])
    assert recommend_main([*args[:3], str(only_unknown), *args[4:], "--skip-unknown-users"]) == 2


def test_users_file_as_csv_with_header_and_as_parquet(export_dir, exp, tmp_path):
    wanted = [user_raw(u) for u in (5, 0, 9)]
    csv_file = tmp_path / "users.csv"
    csv_file.write_text("segment,user_id\n" + "".join(f"a,{u}\n" for u in wanted))
    parquet_file = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": wanted, "other": [1, 2, 3]}), parquet_file)
    for source in (csv_file, parquet_file):
        out = tmp_path / f"from-{source.suffix[1:]}.parquet"
        assert recommend_main(["--export", str(export_dir), "--users-file", str(source), "--output", str(out)]) == 0
        assert_same_rows(pq.read_table(out), per_user(exp, wanted, 10))
    raw, rows = read_id_file(csv_file, "user_id")
    assert raw.tolist() == wanted and rows.tolist() == [2, 3, 4]


def test_users_file_with_commas_but_no_user_id_header_is_refused(export_dir, tmp_path, capsys):
    users = tmp_path / "users.csv"
    users.write_text("id,name\n1001,x\n")
    out = tmp_path / "u.parquet"
    assert recommend_main(["--export", str(export_dir), "--users-file", str(users), "--output", str(out)]) == 2
    assert "row 1 holds a comma; expected one id per line, or a CSV whose header names a 'user_id'" in (
        capsys.readouterr().err
    )


def test_item_files_unknown_ids_are_counted_and_all_unknown_is_an_error(export_dir, tmp_path, capsys):
    exclude = write_id_file(tmp_path / "exclude.txt", [item_raw(0), "gone", item_raw(1), "lost"])
    out = tmp_path / "r.parquet"
    args = ["--export", str(export_dir), "--user-ids", f"{user_raw(1)},{user_raw(2)}", "--output", str(out)]
    assert recommend_main([*args, "--exclude-items", str(exclude)]) == 0
    err = capsys.readouterr().err
    assert f"{exclude}: skipped 2 of 4 item ids the export does not know (row 2 'gone', row 4 'lost')" in err
    assert not {item_raw(0), item_raw(1)} & set(pq.read_table(out)["item_id"].to_pylist())
    bad = write_id_file(tmp_path / "boost.txt", ["gone"])
    assert recommend_main([*args, "--boost-items", str(bad), "--boost", "1"]) == 2
    assert f"error: {bad}: none of its 1 item ids is an item of the export" in capsys.readouterr().err


def test_user_ids_on_stdout_still_work_and_take_rerank_options(export_dir, exp, tmp_path, capsys):
    user = user_raw(7)
    assert recommend_main(["--export", str(export_dir), "--user-ids", user, "--k", "5", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in rows] == exp.recommend([user], 5)["item_id"].to_pylist()
    args = ["--export", str(export_dir), "--user-ids", user, "--k", "5", "--format", "json", "--mmr-lambda", "0.2"]
    assert recommend_main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["item_id"] for r in rows] == exp.recommend([user], 5, mmr_lambda=0.2)["item_id"].to_pylist()


@pytest.mark.parametrize(
    "argv",
    [
        ["--all-users"],  # no --output
        ["--all-users", "--user-ids", "1001", "--output", "x.parquet"],
        ["--user-ids", "1001", "--boost", "0.1"],  # --boost without --boost-items
        ["--user-ids", "1001", "--skip-unknown-users"],
    ],
)
def test_inconsistent_options_are_refused(export_dir, argv):
    with pytest.raises(SystemExit) as exit_info:
        recommend_main(["--export", str(export_dir), *argv])
    assert exit_info.value.code == 2


def test_output_paths_rule():
    assert output_paths("out/r.parquet") == {"parquet": Path("out/r.parquet")}
    assert output_paths("out/r.CSV") == {"csv": Path("out/r.CSV")}
    assert output_paths("r", "csv") == {"csv": Path("r.csv")}
    assert output_paths("r.parquet", "both") == {
        "parquet": Path("r.parquet"),
        "csv": Path("r.csv"),
    }
    for bad, fmt in (("r.txt", "auto"), ("r", "auto"), ("r.csv", "parquet")):
        with pytest.raises(ConfigError, match="--output"):
            output_paths(bad, fmt)


def test_chunk_size_is_checked(exp, tmp_path):
    with pytest.raises(ConfigError, match="--chunk-size"):
        write_recommendations(exp, {"csv": tmp_path / "r.csv"}, chunk_size=0)

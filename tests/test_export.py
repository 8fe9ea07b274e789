import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import distgnn
from distgnn.export import export, main as export_main, read_embeddings
from distgnn.graph import load_graph
from distgnn.recommend import main as recommend_main
from distgnn.rundir import create_run_dir
from distgnn.train import train_loop

from test_train import tiny_job


@pytest.fixture(scope="module")
def trained_run(tiny_graph, tmp_path_factory):
    job = tiny_job(tiny_graph, **{"optim.epochs": 3})
    run_dir = create_run_dir(job, str(tmp_path_factory.mktemp("runs")), "run")
    results = train_loop(job, run_dir)
    return run_dir, results


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    return export(run_dir, tmp_path_factory.mktemp("exports") / "exp", indexes=("flat", "ivf", "hnsw"))


def test_export_reproduces_training_test_metrics(trained_run, exported):
    _, results = trained_run
    manifest = json.loads((exported / "manifest.json").read_text())
    for key, value in results["test"].items():
        assert abs(manifest["test_metrics"][key] - value) <= 1e-4, key
    assert manifest["metric"] == "cosine" and set(manifest["indexes"]) == {"flat", "ivf", "hnsw"}


def test_embeddings_readable_with_plain_pyarrow(exported, tiny_graph):
    g = load_graph(tiny_graph)
    table = pq.read_table(exported / "items.parquet")
    assert table.num_rows == g.num_items and table.schema.field("embedding").type.list_size == 32
    ids, vectors = read_embeddings(exported / "users.parquet")
    assert vectors.shape == (g.num_users, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_recommend_matches_brute_force_and_excludes_seen(exported, tiny_graph):
    rec = distgnn.load_export(exported)
    users = [str(u) for u in rec.user_ids.to_pylist()[:25]]
    table = rec.recommend(users, k=10).to_pandas()
    rows = rec.user_index(users)
    scores = rec.user_emb[rows] @ rec.item_emb.T
    for b, r in enumerate(rows):
        seen = rec.seen_indices[rec.seen_indptr[r]:rec.seen_indptr[r + 1]].numpy()
        scores[b, seen] = -np.inf
        expected = rec.item_ids[np.argsort(-scores[b])[:10]]
        got = table[table.user_id == users[b]].sort_values("rank").item_id.to_numpy()
        assert list(got) == list(expected)
        assert not set(got) & set(rec.item_ids[seen])


def test_approximate_indexes_agree_mostly_with_flat(exported):
    rec = distgnn.load_export(exported)
    users = [str(u) for u in rec.user_ids.to_pylist()[:100]]
    flat = rec.recommend(users, k=10).to_pandas()
    for name in ("ivf", "hnsw"):
        approx = rec.recommend(users, k=10, index=name).to_pandas()
        overlap = len(set(zip(flat.user_id, flat.item_id)) & set(zip(approx.user_id, approx.item_id)))
        assert overlap / len(flat) >= 0.9, name


def test_recommend_cli_unknown_user_is_a_clear_error(exported, capsys):
    assert recommend_main(["--export", str(exported), "--user-ids", "no-such-user", "--k", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unknown user id(s) no-such-user" in err


def test_recommend_cli_prints_k_rows(exported, capsys):
    user = distgnn.load_export(exported).user_ids[0].as_py()
    assert recommend_main(["--export", str(exported), "--user-ids", user, "--k", "5", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and all(r["user_id"] == user for r in rows)


def test_failed_export_keeps_the_previous_one(trained_run, exported, tmp_path):
    run_dir, _ = trained_run
    before = (exported / "manifest.json").read_text()
    assert export_main(["--run", str(run_dir), "--output", str(exported), "--indexes", "flat,IVF99999x,Flat"]) != 0
    assert (exported / "manifest.json").read_text() == before
    assert not [p for p in exported.parent.iterdir() if ".tmp-" in p.name]


def test_export_of_a_missing_run(tmp_path, capsys):
    assert export_main(["--run", str(tmp_path / "nothing"), "--output", str(tmp_path / "e")]) == 2
    assert "not a finished training run" in capsys.readouterr().err

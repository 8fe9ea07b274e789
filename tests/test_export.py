import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import distgnn
from distgnn.core.errors import DataError
from distgnn.core.files import _HOST, remove_stale_siblings
from distgnn.core.rundir import create_run_dir
from distgnn.data.graph import load_graph
from distgnn.export import main as export_main
from distgnn.nn.models import full_graph_embeddings, model_from_config
from distgnn.recommend import main as recommend_main
from distgnn.serving.export import export, load_run, read_embeddings
from distgnn.serving.inference import distributed_embeddings, row_ranges
from distgnn.training.launcher import train_in_process as train_loop

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


def test_item_bias_is_exported_as_an_extra_column_that_ranks_as_the_model(tiny_graph, tmp_path):
    job = tiny_job(tiny_graph, **{"optim.epochs": 2, "model.item_bias": True, "optim.temperature": 0.2})
    run_dir = create_run_dir(job, str(tmp_path), "run")
    results = train_loop(job, run_dir)
    out = export(run_dir, tmp_path / "exp", indexes=("flat",))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metric"] == "ip" and manifest["dim"] == 33
    for key, value in results["test"].items():
        assert abs(manifest["test_metrics"][key] - value) <= 1e-4, key
    # the exported inner product is temperature * (the training logit cos / t + b)
    _, model, graph, _ = load_run(run_dir)
    bias = model.bias_embedding.weight.detach()[graph.num_users :, 0]
    assert bias.abs().max() > 0  # it was trained
    emb = torch.nn.functional.normalize(full_graph_embeddings(model, graph.indptr, graph.indices), dim=-1)
    logits = emb[:5] @ emb[graph.num_users :].T / 0.2 + bias
    _, users = read_embeddings(out / "users.parquet")
    _, items = read_embeddings(out / "items.parquet")
    assert np.allclose(users[:5] @ items.T, 0.2 * logits.numpy(), atol=1e-5)


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
        seen = rec.seen_indices[rec.seen_indptr[r] : rec.seen_indptr[r + 1]].numpy()
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


# ---------------------------------------------------------------------------------------------------
# Distributed (Ray) inference


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")  # never a RAY_ADDRESS cluster
    yield ray
    ray.shutdown()


def test_row_ranges_are_contiguous_and_balance_edges(tiny_graph):
    g = load_graph(tiny_graph)
    ranges = row_ranges(g.indptr, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == g.num_nodes and len(ranges) == 3
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    cost = [int(g.indptr[b] - g.indptr[a]) + (b - a) for a, b in ranges]
    assert max(cost) - min(cost) <= 2 * int(g.degree.max()) + 2  # equal up to a row at each cut
    assert row_ranges(g.indptr[:3], 5) == [(0, 1), (1, 2)]  # never an empty range


@pytest.mark.slow
def test_export_on_two_ray_workers_equals_single_process(trained_run, exported, ray_cluster, tmp_path):
    run_dir, _ = trained_run
    # chunk_size 300: several chunks per worker, so chunk and range boundaries both get crossed
    out = export(run_dir, tmp_path / "dist", indexes=("flat",), workers=2, chunk_size=300)
    for name in ("users.parquet", "items.parquet"):
        ids, vectors = read_embeddings(out / name)
        ref_ids, ref = read_embeddings(exported / name)
        assert list(ids) == list(ref_ids) and np.abs(vectors - ref).max() <= 1e-5, name
    manifest = json.loads((out / "manifest.json").read_text())
    single = json.loads((exported / "manifest.json").read_text())
    assert manifest["test_metrics"] == pytest.approx(single["test_metrics"], abs=1e-6)
    info = manifest["inference"]
    assert info["workers"] == 2 and info["embedding_s"] > 0 and single["inference"]["workers"] == 1
    spans = [(w["start"], w["stop"]) for w in info["per_worker"]]
    num_nodes = manifest["num_users"] + manifest["num_items"]
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == num_nodes
    assert all(w["peak_rss_mb"] > w["uss_mb"] > 0 and w["nnz"] > 0 for w in info["per_worker"])


@pytest.mark.slow
def test_ray_workers_keep_the_item_bias_column(tiny_graph, ray_cluster, tmp_path):
    """Mutation: the multi-worker export dropping the item-bias column."""
    job = tiny_job(tiny_graph, **{"optim.epochs": 1, "model.item_bias": True})
    run_dir = create_run_dir(job, str(tmp_path), "run")
    train_loop(job, run_dir)
    one = export(run_dir, tmp_path / "one", indexes=("flat",))
    two = export(run_dir, tmp_path / "two", indexes=("flat",), workers=2, chunk_size=300)
    assert json.loads((two / "manifest.json").read_text())["dim"] == 33
    for name in ("users.parquet", "items.parquet"):
        _, ref = read_embeddings(one / name)
        _, got = read_embeddings(two / name)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5, name


@pytest.mark.slow
def test_ray_workers_compute_sage_layers_exactly(tiny_graph, ray_cluster):
    """SAGE has weights per layer and a ReLU between layers: the actors must load them all."""
    job = tiny_job(tiny_graph, **{"model.name": "sage"})
    g = load_graph(tiny_graph)
    torch.manual_seed(0)
    model = model_from_config(job.model, g).eval()
    expected = full_graph_embeddings(model, g.indptr, g.indices, chunk_size=256)
    got, info = distributed_embeddings(model, job, g, num_workers=2, chunk_size=256)
    assert (got - expected).abs().max().item() <= 1e-5 and len(info["per_worker"]) == 2


# ---------------------------------------------------------------------------------------------------
# Storage type, incomplete folders, crashes


def test_float16_export_roundtrip(trained_run, exported, tmp_path):
    run_dir, _ = trained_run
    half = export(run_dir, tmp_path / "half", indexes=("flat",), dtype="float16")
    assert pq.read_schema(half / "users.parquet").field("embedding").type.value_type == pa.float16()
    assert json.loads((half / "manifest.json").read_text())["dtype"] == "float16"
    for name in ("users.parquet", "items.parquet"):
        ids, vectors = read_embeddings(half / name)
        ref_ids, ref = read_embeddings(exported / name)
        assert vectors.dtype == np.float32 and list(ids) == list(ref_ids)
        # float16 keeps 11 significant bits: relative error at most 2^-11 (plus subnormal spacing)
        assert np.all(np.abs(vectors - ref) <= 2.0**-11 * np.abs(ref) + 6e-8), name
        assert not np.array_equal(vectors, ref)
    users = [str(u) for u in distgnn.load_export(half).user_ids.to_pylist()[:20]]
    got = distgnn.load_export(half).recommend(users, k=10).to_pandas()
    ref = distgnn.load_export(exported).recommend(users, k=10).to_pandas()
    assert len(got) == 200 and list(got["rank"][:10]) == list(range(1, 11))
    overlap = len(set(zip(got.user_id, got.item_id)) & set(zip(ref.user_id, ref.item_id)))
    assert overlap / len(ref) >= 0.95
    assert np.abs(got.score.to_numpy()[:10] - ref.score.to_numpy()[:10]).max() <= 2e-3


def test_load_export_refuses_incomplete_or_damaged_folders(exported, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(exported / "users.parquet", partial)
    with pytest.raises(DataError, match=f"{partial}: not a complete export folder \\(no manifest.json"):
        distgnn.load_export(partial)
    with pytest.raises(DataError, match="no such export folder"):
        distgnn.load_export(tmp_path / "missing")
    damaged = shutil.copytree(exported, tmp_path / "damaged")
    (damaged / "index-hnsw.faiss").unlink()
    with pytest.raises(DataError, match="file index-hnsw.faiss listed in manifest.json is missing"):
        distgnn.load_export(damaged)
    shutil.copy(exported / "index-hnsw.faiss", damaged)
    with open(damaged / "index-ivf.faiss", "r+b") as fh:  # indexes load lazily: only verify sees this
        fh.seek(100)
        fh.write(b"\xff\xfe")
    distgnn.load_export(damaged)
    with pytest.raises(DataError, match="index-ivf.faiss: checksum differs from manifest.json"):
        distgnn.load_export(damaged, verify=True)


def test_stale_folders_of_dead_writers_are_cleaned_and_a_lost_final_restored(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID that no longer runs
    final = tmp_path / "out"
    (tmp_path / f".out.old-{_HOST}-{dead.pid}").mkdir()  # killed between its two renames
    (tmp_path / f".out.old-{_HOST}-{dead.pid}" / "manifest.json").write_text("{}")
    (tmp_path / f".out.tmp-{_HOST}-{dead.pid}").mkdir()
    live = tmp_path / f".out.tmp-{_HOST}-{os.getpid()}"
    other_host = tmp_path / f".out.tmp-elsewhere-{dead.pid}"
    live.mkdir()
    other_host.mkdir()
    remove_stale_siblings(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other_host.name])
    assert (final / "manifest.json").read_text() == "{}"


# `python -m distgnn.export` with save_index patched to touch a marker file and then wait: the test
# SIGKILLs it with the export's temporary folder half written (deterministic, no hook in the library).
EXPORT_BLOCKED_WHILE_WRITING = """
import sys, time
from pathlib import Path
import distgnn.serving.export as export
save_index = export.save_index
def save_and_wait(index, path):
    save_index(index, path)
    Path(sys.argv[1]).touch()
    time.sleep(600)
export.save_index = save_and_wait
import distgnn.export as command
sys.exit(command.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_export_killed_while_writing_keeps_the_previous_one(trained_run, exported, tmp_path):
    run_dir, _ = trained_run
    out = shutil.copytree(exported, tmp_path / "exp")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    marker, log = tmp_path / "writing", tmp_path / "child.log"
    with open(log, "wb") as log_fh:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                EXPORT_BLOCKED_WHILE_WRITING,
                str(marker),
                "--run",
                str(run_dir),
                "--output",
                str(out),
                "--indexes",
                "flat,ivf",
            ],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists():
                assert child.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "export never reached its writing stage"
                time.sleep(0.05)
            [tmp] = [p for p in tmp_path.iterdir() if p.name.startswith(".exp.tmp-")]
            assert (tmp / "users.parquet").is_file() and (tmp / "index-flat.faiss").is_file()
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL

    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert distgnn.load_export(out, verify=True).manifest["checksums"]  # complete, checksums valid
    assert [p for p in tmp_path.iterdir() if (p / "manifest.json").exists()] == [out]
    with pytest.raises(DataError, match=f"{tmp.name}: not a complete export folder"):
        distgnn.load_export(tmp)

    # the next export removes the dead writer's leftovers and replaces the folder
    export(run_dir, out, indexes=("flat",))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert set(distgnn.load_export(out, verify=True).manifest["indexes"]) == {"flat"}

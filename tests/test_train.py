import json

import pytest
import torch

from distgnn.config import TrainJobConfig, load_config
from distgnn.graph import load_graph
from distgnn.rundir import create_run_dir, read_history
from distgnn.train import launch, positive_cells, shard_edges, train_loop


def tiny_job(graph, **overrides) -> TrainJobConfig:
    base = {"graph": str(graph), "model.dim": 32, "model.num_layers": 2, "sampler.num_neighbors": "10,10",
            "optim.batch_size": 512, "optim.epochs": 6, "optim.num_negatives": 4, "optim.lr": 0.02,
            "eval.patience": 0, "cluster.threads_per_worker": 1}
    return load_config(TrainJobConfig, **{**base, **overrides})


def test_shards_partition_the_training_edges(tiny_graph):
    g = load_graph(tiny_graph)
    shards = [shard_edges(g, r, 3, seed=0) for r in range(3)]
    assert max(s.shape[1] for s in shards) - min(s.shape[1] for s in shards) <= 1
    pairs = [tuple(p) for s in shards for p in s.t().tolist()]
    user, item = g.train_edges
    assert sorted(pairs) == sorted(zip(user.tolist(), (item + g.num_users).tolist()))


def test_positive_cells_by_hand(tiny_graph):
    g = load_graph(tiny_graph)
    user = torch.tensor([0, 1])
    own = g.indices[g.indptr[0]:g.indptr[1]]
    other = torch.tensor([n for n in range(g.num_users, g.num_nodes) if n not in set(own.tolist())][:3])
    candidates = torch.cat([other, own[:2]])
    rows, cols = positive_cells(g.indptr, g.indices, user, candidates)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[rows, cols] = True
    assert mask[0].tolist() == [False, False, False, True, True]
    user1 = set(g.indices[g.indptr[1]:g.indptr[2]].tolist())
    assert mask[1].tolist() == [c in user1 for c in candidates.tolist()]


@pytest.mark.parametrize("model,loss", [("lightgcn", "softmax"), ("lightgcn", "bpr"), ("mf", "softmax"),
                                        ("sage", "softmax")])
def test_trained_model_beats_popularity_on_planted_data(tiny_graph, tmp_path, model, loss):
    job = tiny_job(tiny_graph, **{"model.name": model, "optim.loss": loss,
                                  "optim.epochs": 12 if loss == "bpr" else 6})
    results = train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    ours, popular = results["test"]["recall@20"], results["popularity_test"]["recall@20"]
    assert ours > 1.4 * popular, (ours, popular)
    history = read_history(tmp_path / "run")
    assert [h["epoch"] for h in history] == list(range(job.optim.epochs))
    assert history[-1]["loss"] < history[0]["loss"]


def test_early_stopping_and_best_checkpoint(tiny_graph, tmp_path):
    job = tiny_job(tiny_graph, **{"optim.epochs": 30, "eval.patience": 2, "optim.lr": 0.2})
    results = train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    history = read_history(tmp_path / "run")
    best = max(history, key=lambda h: h["eval"]["ndcg@20"])
    assert results["best_epoch"] == best["epoch"]
    assert len(history) < 30 and history[-1]["epoch"] - best["epoch"] == 2


def test_bad_fanout_length_is_a_config_error(tiny_graph, tmp_path):
    job = tiny_job(tiny_graph, **{"sampler.num_neighbors": "5"})
    with pytest.raises(ValueError, match="sampler.num_neighbors"):
        train_loop(job, create_run_dir(job, str(tmp_path), "run"))


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_ray_workers_survive_a_crash_and_finish(tiny_graph, tmp_path, ray_session):
    """Real Ray Train + DDP over gloo with 2 workers; worker 0 dies in epoch 2 and the run resumes
    from the last checkpoint, ending with every epoch recorded exactly once."""
    job = tiny_job(tiny_graph, **{"optim.epochs": 4, "run.crash_at_epoch": 2, "cluster.num_workers": 2,
                                  "cluster.threads_per_worker": 1, "cluster.cpus_per_worker": 1})
    run_dir = create_run_dir(job, str(tmp_path), "run")
    results = launch(job, run_dir)
    assert (run_dir / ".crashed-once").exists()
    history = read_history(run_dir)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    g = load_graph(tiny_graph)
    # metrics are reduced as sums over both ranks' users, not averaged per rank
    assert results["test"]["num_users"] == int((g.test.counts > 0).sum())
    assert results["test"]["recall@20"] > 1.4 * results["popularity_test"]["recall@20"]
    assert json.loads((run_dir / "results.json").read_text())["test"] == results["test"]


def test_time_budget_stops_before_an_epoch_would_overrun():
    from distgnn.train import over_budget

    history = [{"train_s": 50.0, "eval_s": 10.0}, {"train_s": 40.0}]
    assert not over_budget(history, spent_s=100.0, budget_min=3)  # 100 + 60 <= 180
    assert over_budget(history, spent_s=130.0, budget_min=3)  # 130 + 60 > 180


def test_unknown_eval_metric_fails_before_training(tiny_graph, tmp_path):
    job = tiny_job(tiny_graph, **{"eval.metric": "ndcg@50"})
    with pytest.raises(ValueError, match="'eval.metric': 'ndcg@50' is not computed with eval.ks"):
        train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

"""The rating task, NCF and the extra evaluation protocols (sampled negatives, cold users): the pure
pieces against hand-computed cases, then short trainings on planted data."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from distgnn.core.config import PrepareConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.core.rundir import create_run_dir
from distgnn.data.graph import load_graph
from distgnn.data.prepare import prepare
from distgnn.eval.baselines import bias_baseline
from distgnn.eval.metrics import finalize_sampled, sampled_ranking_sums
from distgnn.eval.protocol import evaluate_job, interacted, sampled_negatives
from distgnn.nn.losses import pointwise_bce_loss
from distgnn.nn.models import NeuMF, build_model, scoring_vectors
from distgnn.nn.sampler import csr_contains
from distgnn.recommend import main as recommend_main
from distgnn.serving.exact import RunScorer
from distgnn.serving.export import export
from distgnn.serving.recommend import load_export
from distgnn.serving.samples import sample_recommendations
from distgnn.training.checks import check_job
from distgnn.training.launcher import train_in_process as train_loop
from distgnn.training.objective import candidate_log_q
from distgnn.training.replicated import Replicated, shard_edges

from test_train import tiny_job


@pytest.fixture(scope="module")
def rating_graph(tmp_path_factory):
    """400 users x 300 items, 40 ratings each: 1-5 stars from planted tastes plus user and item
    biases and noise, random 80/10/10 split."""
    rng = np.random.default_rng(5)
    num_users, num_items, per_user = 400, 300, 40
    p, q = rng.normal(size=(num_users, 4)), rng.normal(size=(num_items, 4))
    user_bias, item_bias = rng.normal(0, 0.5, num_users), rng.normal(0, 0.5, num_items)
    user = np.repeat(np.arange(num_users), per_user)
    item = np.concatenate([rng.choice(num_items, per_user, replace=False) for _ in range(num_users)])
    raw = 3.4 + 0.5 * (p[user] * q[item]).sum(1) + user_bias[user] + item_bias[item] + rng.normal(0, 0.3, user.size)
    table = pa.table({"user": user.astype(str), "item": item.astype(str), "rating": np.clip(np.round(raw), 1, 5)})
    folder = tmp_path_factory.mktemp("ratings")
    pacsv.write_csv(table, folder / "ratings.csv")
    cfg = PrepareConfig(
        input=str(folder / "ratings.csv"),
        rating_col="rating",
        val_fraction=0.1,
        test_fraction=0.1,
        output=str(folder / "g"),
    )
    return prepare(cfg)


RATING = {"optim.loss": "mse", "eval.metric": "rmse", "optim.batch_size": 256, "optim.lr": 0.01, "optim.l2": 0.01}


# ---------------------------------------------------------------------------------------------------
# Pure pieces, by hand


def test_bias_baseline_by_hand():
    # ratings: u0 rates i0 4, i1 2; u1 rates i0 5. mean = 11/3
    user, item, rating = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), torch.tensor([4.0, 2.0, 5.0])
    mean, bu, bi = bias_baseline(user, item, rating, 2, 2, item_shrinkage=1.0, user_shrinkage=2.0)
    assert mean == pytest.approx(11 / 3)
    b_i0 = ((4 - 11 / 3) + (5 - 11 / 3)) / (1 + 2)
    b_i1 = (2 - 11 / 3) / (1 + 1)
    assert bi.tolist() == pytest.approx([b_i0, b_i1], abs=1e-6)
    b_u0 = ((4 - 11 / 3 - b_i0) + (2 - 11 / 3 - b_i1)) / (2 + 2)
    b_u1 = (5 - 11 / 3 - b_i0) / (2 + 1)
    assert bu.tolist() == pytest.approx([b_u0, b_u1], abs=1e-6)


def test_sampled_ranking_sums_by_hand():
    pos = torch.tensor([0.5, 0.1, 0.9])
    neg = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.3, 0.4], [0.1, 0.9, 0.0]])  # ranks 1, 3, 0 (a tie favours the item)
    result = finalize_sampled(sampled_ranking_sums(pos, neg, [1, 2]))
    assert result["sampled_num_cases"] == 3
    assert result["sampled_hr@1"] == pytest.approx(1 / 3)
    assert result["sampled_hr@2"] == pytest.approx(2 / 3)
    assert result["sampled_ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)


def test_pointwise_bce_by_hand():
    pos, neg = torch.tensor([0.0, 2.0]), torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = ((softplus(0) + softplus(0) + softplus(-1)) + (softplus(-2) + softplus(1) + softplus(0))) / 2
    assert float(pointwise_bce_loss(pos, neg)) == pytest.approx(expected)


def test_rating_vectors_inner_product_is_the_predicted_rating():
    model = build_model("mf", num_nodes=7, dim=4, num_layers=0, rating=True)
    with torch.no_grad():
        model.bias_embedding.weight.normal_()
        model.global_bias.fill_(3.5)
    emb = torch.randn(7, 4)
    vectors = scoring_vectors(emb, model, cosine=False, temperature=0.1, num_users=3)
    user, item = torch.tensor([0, 2, 1]), torch.tensor([3, 6, 4])
    expected = model.predict_rating(emb[user], emb[item], user, item)
    assert torch.allclose((vectors[user] * vectors[item]).sum(-1), expected, atol=1e-5)


def test_neumf_scores_every_pair_as_the_concatenation_would():
    torch.manual_seed(0)
    model = NeuMF(num_nodes=10, dim=4, mlp_layers=(8, 4))
    u, v = torch.randn(3, 8), torch.randn(5, 8)
    every = model.score(u, v)  # [3, 5]
    own = model.score(u, v.unsqueeze(0).expand(3, 5, 8))  # [3, 5] as each user's own items
    h = torch.cat([u[:, None, 4:].expand(3, 5, 4), v[None, :, 4:].expand(3, 5, 4)], -1)
    for layer in model.mlp:
        h = torch.relu(layer(h))
    expected = model.output(torch.cat([u[:, None, :4] * v[None, :, :4], h], -1)).squeeze(-1)
    assert torch.allclose(every, expected, atol=1e-5) and torch.allclose(own, expected, atol=1e-5)


def test_sampled_negatives_avoid_every_interacted_item(tiny_graph):
    g = load_graph(tiny_graph)
    seen = interacted(g)
    users = torch.arange(g.num_users).repeat(3)
    draws = sampled_negatives(seen, users, g.num_items, 99, seed=1)
    assert draws.shape == (users.numel(), 99)
    assert torch.equal(draws, sampled_negatives(seen, users, g.num_items, 99, seed=1))  # fixed draw
    pairs = set(
        zip(*(t.tolist() for t in (torch.repeat_interleave(torch.arange(g.num_users), seen.counts), seen.indices)))
    )
    flat_users = users.repeat_interleave(99).tolist()
    assert not any((u, i) in pairs for u, i in zip(flat_users, draws.flatten().tolist()))


def test_interacted_is_the_union_of_the_splits(tiny_graph):
    g = load_graph(tiny_graph)
    seen = interacted(g)
    assert torch.equal(seen.counts, g.train.counts + g.val.counts + g.test.counts)  # splits are disjoint
    for sets in (g.train, g.val, g.test):
        users = torch.repeat_interleave(torch.arange(g.num_users), sets.counts)
        assert csr_contains(seen.indptr, seen.indices, users, sets.indices).all()
    # each row sorted, as the binary searches over it need
    rows = torch.repeat_interleave(torch.arange(g.num_users), seen.counts)
    assert bool(((seen.indices[1:] > seen.indices[:-1]) | (rows[1:] != rows[:-1])).all())


# ---------------------------------------------------------------------------------------------------
# Config refusals


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"model.name": "ncf", "optim.loss": "softmax"}, "optim.loss"),
        ({"optim.loss": "bpr", "eval.metric": "rmse"}, "eval.metric"),  # rmse needs the rating task
        ({"optim.loss": "mse", "eval.metric": "rmse", "cluster.partitioned": True}, "optim.loss"),
        ({"eval.metric": "sampled_hr@10"}, "eval.metric"),  # not computed without eval.sampled_negatives
    ],
)
def test_options_that_cannot_go_together_are_refused(tiny_graph, overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        check_job(tiny_job(tiny_graph, **overrides))


def test_the_rating_task_may_select_by_ranking_metrics_too(tiny_graph):
    check_job(tiny_job(tiny_graph, **{"optim.loss": "mse", "eval.metric": "ndcg@20"}))  # computed for it too


# ---------------------------------------------------------------------------------------------------
# Training on planted data


@pytest.mark.slow
def test_rating_model_beats_both_baselines_and_exports_its_predictions(rating_graph, tmp_path):
    job = tiny_job(rating_graph, **RATING, **{"model.name": "mf", "optim.epochs": 25, "model.dim": 16})
    run_dir = create_run_dir(job, str(tmp_path), "run")
    results = train_loop(job, run_dir)
    ours, base = results["test"], results["baselines_test"]
    assert results["task"] == "rating" and ours["count"] == base["global_mean"]["count"] > 0
    assert ours["rmse"] < 0.9 * base["global_mean"]["rmse"], (ours, base)
    assert ours["rmse"] < base["user_item_bias"]["rmse"], (ours, base)
    assert ours["mae"] < base["user_item_bias"]["mae"]
    # the export's vectors predict the same ratings: its recomputed test equals training's
    out = export(run_dir, tmp_path / "export", indexes=("flat",))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["test_metrics"]["rmse"] == pytest.approx(ours["rmse"], abs=1e-5)
    # exact scoring from the run ranks as the export's flat index: by predicted rating, seen items excluded
    users = ["3", "17", "250"]
    from_run = RunScorer(run_dir).recommend(users, k=5).to_pylist()
    from_export = load_export(out).recommend(users, 5).to_pylist()
    assert [(r["user_id"], r["item_id"]) for r in from_run] == [(r["user_id"], r["item_id"]) for r in from_export]
    assert [r["score"] for r in from_run] == pytest.approx([r["score"] for r in from_export], abs=1e-4)


@pytest.mark.slow
def test_rating_task_trains_lightgcn_through_the_sampler(rating_graph, tmp_path):
    job = tiny_job(rating_graph, **RATING, **{"model.name": "lightgcn", "optim.epochs": 15, "model.dim": 16})
    results = train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    assert results["test"]["rmse"] < 0.9 * results["baselines_test"]["global_mean"]["rmse"]


@pytest.mark.slow
def test_ncf_beats_popularity_and_reports_both_protocols(tiny_graph, tmp_path, capsys):
    job = tiny_job(
        tiny_graph,
        **{
            "model.name": "ncf",
            "model.dim": 16,
            "model.mlp_layers": "32,16",
            "optim.loss": "bce",
            "optim.epochs": 8,
            "optim.lr": 0.01,
            "optim.l2": 0.0,
            "eval.ks": "10,20",
            "eval.sampled_negatives": 99,
            "eval.cold_users": 12,
            "eval.metric": "sampled_ndcg@10",
        },
    )
    run_dir = create_run_dir(job, str(tmp_path), "run")
    results = train_loop(job, run_dir)
    test = results["test"]
    # NeuMF learns less from this small log than the graph models (1.38x measured), still clearly above
    assert test["recall@20"] > 1.25 * results["popularity_test"]["recall@20"], test
    assert 0 < test["sampled_hr@10"] <= 1 and test["sampled_ndcg@10"] <= test["sampled_hr@10"]
    g = load_graph(tiny_graph)
    assert test["sampled_num_cases"] == int(g.test.counts.sum())  # every held-out pair is a case
    cold = (g.test.counts > 0) & (g.train.counts <= 12)
    assert test["cold/num_users"] == int(cold.sum()) > 0
    with pytest.raises(ConfigError, match="no ANN index can serve it"):
        export(run_dir, tmp_path / "export")
    # served by exact scoring with the MLP: k unseen items per user, best first
    recommended = RunScorer(run_dir).recommend(["0", "5"], k=7).to_pylist()
    g = load_graph(tiny_graph)
    assert len(recommended) == 14 and {r["user_id"] for r in recommended} == {"0", "5"}
    with pytest.raises(DataError, match="not in the run's graph"):
        RunScorer(run_dir).recommend(["no-such-user"])
    capsys.readouterr()
    assert recommend_main(["--run", str(run_dir), "--user-ids", "0,5", "--k", "7", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["user_id"], r["item_id"]) for r in printed] == [(r["user_id"], r["item_id"]) for r in recommended]
    # sample recommendations score pairs with the MLP, as evaluation does: the held-out flags agree
    samples = sample_recommendations(run_dir, num_users=5, k=10).to_pylist()
    assert len(samples) == 50 and [r["rank"] for r in samples[:10]] == list(range(1, 11))
    users = {r["user_id"] for r in samples}
    assert len(users) == 5 and any(r["held_out"] for r in samples)
    assert all(a["score"] >= b["score"] for a, b in zip(samples, samples[1:]) if a["user_id"] == b["user_id"])
    user_index = {raw: i for i, raw in enumerate(pq.read_table(g.path / "users.parquet")["raw_id"].to_pylist())}
    item_index = {raw: i for i, raw in enumerate(pq.read_table(g.path / "items.parquet")["raw_id"].to_pylist())}
    test_users = torch.repeat_interleave(torch.arange(g.num_users), g.test.counts).tolist()
    test_pairs = set(zip(test_users, g.test.indices.tolist()))
    train_pairs = set(
        zip(torch.repeat_interleave(torch.arange(g.num_users), g.train.counts).tolist(), g.train.indices.tolist())
    )
    for r in samples:
        pair = (user_index[r["user_id"]], item_index[r["item_id"]])
        assert r["held_out"] == (pair in test_pairs) and pair not in train_pairs


def test_vector_models_get_the_sampled_protocol_from_their_vectors(tiny_graph, tmp_path):
    """For an inner-product model, the sampled protocol's scores are the dot products: a model
    whose vectors rank every test item first scores hr = ndcg = 1."""
    job = tiny_job(tiny_graph, **{"eval.sampled_negatives": 20, "model.name": "mf"})
    strategy = Replicated(job)
    g = strategy.graph
    vectors = torch.zeros(g.num_nodes, g.num_users + 1)
    vectors[: g.num_users, : g.num_users] = torch.eye(g.num_users)
    users = torch.repeat_interleave(torch.arange(g.num_users), g.test.counts)
    vectors[g.num_users + g.test.indices, users] = 1.0  # item i scores 1 for its test users
    result = evaluate_job(vectors, g, "test", job.eval)
    assert result["sampled_hr@10"] == 1.0 and result["sampled_ndcg@10"] == 1.0


def test_edge_weight_draws_each_pair_in_proportion_to_its_prepared_weight(tmp_path):
    """duplicates count turns repeated events into a weight; optim.edge_weight draws by it, and
    the log-Q correction counts positives by the same weights."""
    rows = [("a", "x")] * 9 + [("a", "y"), ("b", "x"), ("b", "y"), ("b", "z"), ("c", "z"), ("c", "y")]
    pacsv.write_csv(pa.table({"user": [u for u, _ in rows], "item": [i for _, i in rows]}), tmp_path / "events.csv")
    graph = prepare(
        PrepareConfig(
            input=str(tmp_path / "events.csv"),
            duplicates="count",
            val_fraction=0.0,
            test_fraction=0.0,
            output=str(tmp_path / "g"),
        )
    )
    job = tiny_job(graph, **{"optim.edge_weight": True, "optim.batch_size": 2, "cluster.num_workers": 1})
    strategy = Replicated(job)
    loader, _ = strategy.make_loader(0)
    g = strategy.graph
    edges = shard_edges(g, 0, 1, job.run.seed)  # the loader's edges, in its order
    pairs = list(zip(edges[0].tolist(), (edges[1] - g.num_users).tolist()))
    weight = loader.sampler.weights
    heavy = pairs.index((0, 0))  # user a and item x come first: index 0 each
    assert weight[heavy] == 9.0 and sorted(set(weight.tolist())) == [1.0, 9.0]
    drawn = torch.cat([loader.sampler.draw() for _ in range(400)])
    assert abs(float((drawn == heavy).float().mean()) - 9 / 15) < 0.02
    # log-Q: item x enters as a positive with weight 9 (from a) + 1 (from b)
    assert float(strategy.item_log_q[0].exp()) == pytest.approx(
        float(candidate_log_q(torch.tensor([10.0, 3.0, 2.0]), job.optim)[0].exp()), rel=1e-5
    )


@pytest.mark.parametrize("overrides,column", [(RATING, "rating"), ({"optim.edge_weight": True}, "weight")])
def test_a_graph_without_the_column_a_job_needs_fails_with_one_line(tiny_graph, overrides, column):
    with pytest.raises(DataError, match=f"train.parquet: has no '{column}' column; prepare it"):
        Replicated(tiny_job(tiny_graph, **overrides)).make_loader(0)

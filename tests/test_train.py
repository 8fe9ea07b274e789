import math
import sys

import pytest
import torch

import distgnn.nn.loaders
import distgnn.nn.sampler
import distgnn.training.loop
import distgnn.training.objective
import distgnn.training.replicated
from distgnn.core.config import TrainJobConfig, load_config, replace_nested
from distgnn.core.rundir import create_run_dir, read_history
from distgnn.data.graph import load_graph
from distgnn.nn.loaders import WeightedIndices, edge_draw_weights, positive_draw_weights
from distgnn.nn.losses import info_nce
from distgnn.nn.models import LightGCN, sampled_adjacency
from distgnn.training.launcher import train_in_process as train_loop
from distgnn.training.loop import scheduled_lr
from distgnn.training.objective import candidate_log_q, contrastive_term, positive_cells
from distgnn.training.replicated import Replicated, shard_edges

TINY = {
    "model.dim": 32,
    "model.num_layers": 2,
    "sampler.num_neighbors": "10,10",
    "optim.batch_size": 512,
    "optim.epochs": 6,
    "optim.num_negatives": 4,
    "optim.lr": 0.02,
    "eval.patience": 0,
    "cluster.threads_per_worker": 1,
}


def tiny_job(graph, **overrides) -> TrainJobConfig:
    """The small, fast training job every test uses, in process."""
    return load_config(TrainJobConfig, **{"graph": str(graph), **TINY, **overrides})


def tiny_train_command(graph, **overrides) -> list[str]:
    """The same job as ``python -m distgnn.train`` flags, for tests that run the command."""
    flags = {"graph": str(graph), **TINY, **overrides}
    return [sys.executable, "-m", "distgnn.train", *[a for k, v in flags.items() for a in (f"--{k}", str(v))]]


def test_shards_partition_the_training_edges(tiny_graph):
    g = load_graph(tiny_graph)
    shards = [shard_edges(g, r, 3, seed=0) for r in range(3)]
    assert max(s.shape[1] for s in shards) - min(s.shape[1] for s in shards) <= 1
    pairs = [tuple(p) for s in shards for p in s.t().tolist()]
    user, item = g.train_edges
    assert sorted(pairs) == sorted(zip(user.tolist(), (item + g.num_users).tolist()))
    # in the shard's own order (the loader's): the edges at its positions of the whole list
    positions = distgnn.training.replicated.shard_positions(item.numel(), 1, 3, seed=0)
    assert torch.equal(shards[1], torch.stack([user[positions], item[positions] + g.num_users]))


def test_positive_cells_by_hand(tiny_graph):
    g = load_graph(tiny_graph)
    user = torch.tensor([0, 1])
    own = g.indices[g.indptr[0] : g.indptr[1]]
    other = torch.tensor([n for n in range(g.num_users, g.num_nodes) if n not in set(own.tolist())][:3])
    candidates = torch.cat([other, own[:2]])
    rows, cols = positive_cells(g.indptr, g.indices, user, candidates)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[rows, cols] = True
    assert mask[0].tolist() == [False, False, False, True, True]
    user1 = set(g.indices[g.indptr[1] : g.indptr[2]].tolist())
    assert mask[1].tolist() == [c in user1 for c in candidates.tolist()]


@pytest.mark.parametrize(
    "model,loss", [("lightgcn", "softmax"), ("lightgcn", "bpr"), ("mf", "softmax"), ("sage", "softmax")]
)
def test_trained_model_beats_popularity_on_planted_data(tiny_graph, tmp_path, model, loss):
    job = tiny_job(tiny_graph, **{"model.name": model, "optim.loss": loss, "optim.epochs": 12 if loss == "bpr" else 6})
    results = train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    ours, popular = results["test"]["recall@20"], results["popularity_test"]["recall@20"]
    assert ours > 1.4 * popular, (ours, popular)
    history = read_history(tmp_path / "run")
    assert [h["epoch"] for h in history] == list(range(job.optim.epochs))
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"optim.log_q": False},
        {"optim.edge_sampling": "user_uniform", "optim.lr_schedule": "cosine"},
        {"model.item_bias": True},
        {"optim.hard_negative_pool": 8, "optim.num_negatives": 2},
        {"optim.contrastive_weight": 0.1},
        {"sampler.num_workers": 1},  # the next batches sampled in a loader process
        {"optim.mixed_precision": "bf16"},
    ],
)
def test_loss_and_schedule_options_still_learn(tiny_graph, tmp_path, overrides):
    job = tiny_job(tiny_graph, **overrides)
    results = train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    assert results["test"]["recall@20"] > 1.4 * results["popularity_test"]["recall@20"]


def spy(monkeypatch, module, name: str, calls: list):
    """Replace ``module.name`` by a wrapper that records ``(args, kwargs, result)`` in ``calls``."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(module, name, wrapper)


def test_an_epoch_leaves_no_gradient_behind_for_evaluation(tiny_graph):
    """The last step's gradients (every touched row, sparse) are dropped when the epoch ends, so
    evaluation's tables never sit next to them; and the step ran (the table changed)."""
    from distgnn.training.loop import train_steps

    job = tiny_job(tiny_graph, **{"model.item_bias": True, "optim.loss": "softmax"})
    strategy = Replicated(job)
    before = strategy.model.embedding.weight.detach().clone()
    loader, _ = strategy.make_loader(0)
    train_steps(strategy, loader, 2, job.optim, 0)
    assert not torch.equal(before, strategy.model.embedding.weight)
    params = [*strategy.model.parameters(), *strategy.optimizers[0].shards]
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("on", [False, True])
def test_options_reach_the_training_step(tiny_graph, tmp_path, monkeypatch, on):
    """Each option changes what a step does (off: the plain step), not only the config."""
    overrides = {"optim.epochs": 2, "optim.max_steps_per_epoch": 3, "optim.log_q": not on}
    if on:
        overrides.update(
            {
                "model.item_bias": True,
                "optim.hard_negative_pool": 4,
                "optim.contrastive_weight": 0.1,
                "optim.edge_sampling": "user_uniform",
                "optim.lr_schedule": "cosine",
                "optim.lr_final_fraction": 0.1,
            }
        )
    job = tiny_job(tiny_graph, **overrides)
    losses, mined, contrastive, lrs, orders = [], [], [], [], []
    spy(monkeypatch, distgnn.training.objective, "sampled_softmax_loss", losses)
    spy(monkeypatch, distgnn.nn.sampler, "hardest_of_pools", mined)
    spy(monkeypatch, distgnn.training.replicated, "contrastive_term", contrastive)
    spy(monkeypatch, distgnn.training.loop, "set_lr", lrs)
    spy(monkeypatch, distgnn.nn.loaders, "edge_order", orders)
    train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    steps = 2 * 3
    assert len(losses) == steps
    # the option is log_q false: on drops the correction; item_bias on adds the offsets
    assert all((kw["log_q"] is None) == on and (kw["item_bias"] is None) != on for _, kw, _ in losses)
    assert len(mined) == (steps if on else 0) and len(contrastive) == (steps if on else 0)
    rates = [args[1] for args, _, _ in lrs]
    # one rate per step, at its progress through optim.epochs; cosine from 0.02 towards 0.002
    assert rates == pytest.approx([scheduled_lr(job.optim, k / steps) for k in range(steps)])
    assert (rates[-1] < 0.005) if on else (set(rates) == {0.02})
    assert len(orders) == 1 and isinstance(orders[0][2], WeightedIndices) == on


@pytest.mark.parametrize("precision", ["off", "bf16"])
def test_mixed_precision_scores_in_bfloat16_and_propagates_in_float32(
    tiny_graph, tmp_path, monkeypatch, caplog, precision
):
    overrides = {"optim.epochs": 1, "optim.max_steps_per_epoch": 2, "optim.mixed_precision": precision}
    job = tiny_job(tiny_graph, **overrides)
    losses, layers = [], []  # per training step: the autocast dtype the loss ran under; layer outputs' dtypes
    real_loss, real_layer = distgnn.training.objective.sampled_softmax_loss, LightGCN.layer

    def loss(*args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        losses.append(torch.get_autocast_dtype("cpu") if on else torch.float32)
        return real_loss(*args, **kwargs)

    def layer(self, *args):
        result = real_layer(self, *args)
        if self.training:  # not evaluation's full-graph layers
            layers.append(result.dtype)
        return result

    monkeypatch.setattr(distgnn.training.objective, "sampled_softmax_loss", loss)
    monkeypatch.setattr(LightGCN, "layer", layer)
    results = train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    assert losses == [torch.bfloat16 if precision == "bf16" else torch.float32] * 2
    assert layers == [torch.float32] * 2 * job.model.num_layers
    assert ("bf16 on a CPU: it is meant for GPUs" in caplog.text) == (precision == "bf16")
    assert math.isfinite(results["test"]["recall@20"])


def test_contrastive_term_without_noise_is_infonce_of_the_clean_outputs(tiny_graph):
    job = tiny_job(tiny_graph, **{"optim.contrastive_noise": 0.0, "optim.contrastive_weight": 0.5})
    job = replace_nested(job, **{"optim.log_q": False})
    strategy = Replicated(job)
    loader, _ = strategy.make_loader(0)
    batch = next(iter(loader))
    model, graph = strategy.model, strategy.graph
    adj_t = sampled_adjacency(batch.n_id, batch.edge_index[0], batch.edge_index[1], graph.degree)
    out = model(batch.n_id, adj_t, batch.num_sampled_nodes)
    users, items = torch.unique(batch.src_index), torch.unique(batch.dst_pos_index)
    expected = info_nce(out[users], out[users], temperature=0.2) + info_nce(out[items], out[items], temperature=0.2)
    term = contrastive_term(model, model.inputs(batch.n_id), adj_t, batch, job.optim)
    assert torch.isclose(term, expected)
    # and the strategy's loss adds it with its weight
    with_term = strategy.loss(batch)
    strategy.job = replace_nested(job, **{"optim.contrastive_weight": 0.0})
    assert torch.isclose(with_term, strategy.loss(batch) + 0.5 * expected)


def test_cosine_schedule_by_hand():
    job = load_config(
        TrainJobConfig, **{"optim.lr": 0.02, "optim.lr_schedule": "cosine", "optim.lr_final_fraction": 0.1}
    )
    o = job.optim
    assert scheduled_lr(o, 0.0) == pytest.approx(0.02)
    assert scheduled_lr(o, 0.5) == pytest.approx((0.02 + 0.002) / 2)
    assert scheduled_lr(o, 1.0) == pytest.approx(0.002)
    assert scheduled_lr(o, 1.7) == pytest.approx(0.002)  # past the horizon: stays at the floor
    constant = load_config(TrainJobConfig, **{"optim.lr": 0.02}).optim
    assert scheduled_lr(constant, 0.0) == scheduled_lr(constant, 0.9) == 0.02


def test_user_uniform_draws_weigh_every_user_the_same():
    users = torch.tensor([0] * 30 + [1] * 3 + [2])  # degrees 30, 3 and 1
    torch.manual_seed(0)
    drawn = torch.cat(
        [users[torch.tensor(list(WeightedIndices(edge_draw_weights(users, "user_uniform"))))] for _ in range(300)]
    )
    assert drawn.numel() == 300 * users.numel()
    share = torch.bincount(drawn, minlength=3) / drawn.numel()
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.02), share
    # within a user, their edges are drawn evenly
    first_user = torch.cat(
        [torch.tensor(list(WeightedIndices(edge_draw_weights(users, "user_uniform")))) for _ in range(300)]
    )
    first_user = first_user[first_user < 30]
    assert torch.bincount(first_user, minlength=30).float().div(first_user.numel()).sub(1 / 30).abs().max() < 0.015


def test_log_q_follows_the_edge_sampling():
    # 2 users, 3 items (nodes 2, 3, 4): user 0 has item 0 only, user 1 has items 0, 1 and 2
    edges = torch.tensor([[0, 1, 1, 1], [2, 2, 3, 4]])
    shuffle = positive_draw_weights(edges, 2, 3, "shuffle")
    uniform = positive_draw_weights(edges, 2, 3, "user_uniform")
    # shuffle: item 0 is 2 of 4 edges; user_uniform: item 0 = 1/2 + 1/2 * 1/3, items 1 and 2 = 1/6
    assert torch.allclose(shuffle / shuffle.sum(), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert torch.allclose(uniform / uniform.sum(), torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=torch.float64))
    torch.manual_seed(0)
    drawn = (
        torch.cat(
            [
                edges[1, torch.tensor(list(WeightedIndices(edge_draw_weights(edges[0], "user_uniform"))))]
                for _ in range(3000)
            ]
        )
        - 2
    )
    assert torch.allclose(torch.bincount(drawn).double() / drawn.numel(), uniform / uniform.sum(), atol=0.01)
    # expected batch count: 4 positives drawn by weight, plus 4 * 2 uniform negatives over 3 items
    job = load_config(TrainJobConfig, **{"optim.batch_size": 4, "optim.num_negatives": 2})
    expected = 4 * torch.tensor([2 / 3, 1 / 6, 1 / 6]) + 8 / 3
    assert torch.allclose(candidate_log_q(uniform, job.optim), expected.log())


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
    job = tiny_job(tiny_graph, **{"model.item_bias": True, "optim.loss": "bpr"})
    with pytest.raises(ValueError, match="model.item_bias"):
        train_loop(job, create_run_dir(job, str(tmp_path), "run2"))


def test_time_budget_stops_before_an_epoch_would_overrun():
    from distgnn.training.loop import over_budget

    history = [{"train_s": 50.0, "eval_s": 10.0}, {"train_s": 40.0}]
    assert not over_budget(history, spent_s=100.0, budget_min=3)  # 100 + 60 <= 180
    assert over_budget(history, spent_s=130.0, budget_min=3)  # 130 + 60 > 180


def test_unknown_eval_metric_fails_before_training(tiny_graph, tmp_path):
    job = tiny_job(tiny_graph, **{"eval.metric": "ndcg@50"})
    with pytest.raises(ValueError, match="'eval.metric': 'ndcg@50' is not computed with eval.ks"):
        train_loop(job, create_run_dir(job, str(tmp_path), "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

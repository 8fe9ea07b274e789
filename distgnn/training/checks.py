"""The one validation pass of a training job, run by every command before Ray starts and by
:func:`distgnn.training.loop.fit`: user errors become a ConfigError naming the key."""

from __future__ import annotations

from distgnn.core.config import TrainJobConfig
from distgnn.core.errors import ConfigError
from distgnn.core.files import check_plain_name
from distgnn.eval.metrics import RANKING_METRICS


def check_job(job: TrainJobConfig) -> None:
    """Fail before any training on a config that cannot run: a metric ``eval.ks`` does not compute,
    a fanout list that does not fit the layers, a run name that is not a plain name, or options that
    do not go together (each refusal says why)."""
    names = [f"{m}@{k}" for k in job.eval.ks for m in RANKING_METRICS]
    if job.eval.sampled_negatives:
        names += [f"sampled_{m}@{k}" for k in job.eval.ks for m in ("hr", "ndcg")]
    if job.task == "rating":
        names += ["rmse", "mae"]
    if job.eval.metric not in names:
        raise ConfigError(
            f"config key 'eval.metric': {job.eval.metric!r} is not computed with "
            f"eval.ks={list(job.eval.ks)} (one of {', '.join(names)})"
        )
    num_layers = 0 if job.model.name == "mf" else job.model.num_layers
    if num_layers and len(job.sampler.num_neighbors) != num_layers:
        raise ConfigError(
            f"config key 'sampler.num_neighbors': expected {num_layers} values "
            f"(one per layer of model.num_layers), got {len(job.sampler.num_neighbors)}"
        )
    if job.run.name:
        check_plain_name(job.run.name, "config key 'run.name'")
    if job.model.name == "ncf" and job.optim.loss != "bce":
        raise ConfigError(
            f"config key 'optim.loss': model.name ncf scores pairs with its MLP; it trains with bce "
            f"(as in the NCF paper), not {job.optim.loss!r}"
        )
    if job.task == "rating" and job.optim.contrastive_weight > 0:
        raise ConfigError("config key 'optim.contrastive_weight': the SimGCL term is for ranking, not optim.loss mse")
    if job.optim.contrastive_weight > 0 and job.model.name != "lightgcn":
        raise ConfigError("config key 'optim.contrastive_weight': the SimGCL term needs model.name lightgcn")
    if job.model.item_bias and job.optim.loss != "softmax":
        raise ConfigError(
            "config key 'model.item_bias': needs optim.loss softmax (a BPR model's dot "
            "products carry popularity in their norms)"
        )
    if job.optim.hard_negative_pool > 1 and job.sampler.num_workers:  # loader processes hold stale vectors
        raise ConfigError(
            "config key 'sampler.num_workers': hard negatives (optim.hard_negative_pool) are mined "
            "with the model of the epoch's start, which loader processes would not see; use 0"
        )
    if job.cluster.partitioned:
        unsupported = {
            "optim.loss": job.optim.loss in ("bce", "mse"),
            "optim.edge_weight": job.optim.edge_weight,
            "eval.sampled_negatives": job.eval.sampled_negatives > 0,
            "eval.cold_users": job.eval.cold_users > 0,
        }
        for key, used in unsupported.items():
            if used:  # the partitioned strategy has its own loss and evaluation code, for the ranking losses
                raise ConfigError(
                    f"config key '{key}': not supported with cluster.partitioned (which trains bpr/softmax "
                    "ranking and evaluates full ranking); train it replicated"
                )
        if job.model.name not in ("lightgcn", "mf"):  # SAGE's dense weights would need DDP next to the shards
            raise ConfigError(
                f"config key 'cluster.partitioned': supported for model.name lightgcn and mf, not {job.model.name!r}"
            )
        if job.sampler.num_workers:  # every hop of its sampling is a collective of all training workers
            raise ConfigError(
                "config key 'sampler.num_workers': not supported with cluster.partitioned "
                "(its sampling is a collective of the training workers)"
            )
        if job.optim.hard_negative_pool > 1:  # mining scores every item against each user on every worker
            raise ConfigError(
                "config key 'optim.hard_negative_pool': not supported with cluster.partitioned "
                "(mining needs every item's vector on every worker)"
            )

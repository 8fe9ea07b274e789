"""Frozen dataclass configs, loaded from YAML with command-line overrides.

Every field of a config dataclass becomes a command-line flag (``--section.field``), so ``--help``
lists every option with its default and help text. Precedence: defaults < YAML file < flags.
Unknown keys and wrong types are rejected with a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from distgnn.core.errors import ConfigError


class CommandParser(argparse.ArgumentParser):
    """The one command-line convention of every distgnn command: each long flag is accepted with
    dashes or underscores (``--chunk-size`` = ``--chunk_size``, ``--optim.batch-size`` =
    ``--optim.batch_size``); ``--help`` shows the spelling the docs use."""

    def add_argument(self, *names: str, **kwargs: Any):
        spellings = list(names)
        for name in names:
            if name.startswith("--"):
                for other in (name.replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if other not in spellings:
                        spellings.append(other)
        action = super().add_argument(*spellings, **kwargs)
        action.option_strings[:] = [n for n in action.option_strings if n in names]  # help: as written
        return action


def opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"help": help, **kwargs})


# ---------------------------------------------------------------------------------------------------
# Stage configs


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in generator: power-law item popularity and planted user tastes."""

    num_users: int = opt(6000, "number of users")
    num_items: int = opt(3000, "number of items")
    mean_interactions: float = opt(30.0, "mean interactions per user (log-normal spread, at least 5)")
    num_factors: int = opt(16, "dimension of the planted taste vectors")
    popularity_exponent: float = opt(0.8, "Zipf exponent of item popularity")
    taste_strength: float = opt(4.0, "weight of planted taste against popularity when users choose")
    seed: int = opt(0, "random seed of the generator")


@dataclass(frozen=True)
class PrepareConfig:
    """How raw interactions become a graph directory."""

    input: str = opt(
        "",
        "input: a CSV/Parquet file, a folder of them or a URI prefix (s3://bucket/logs/: "
        "every CSV/Parquet file below it, in name order), a MovieLens file or folder, a LightGCN "
        "folder (train.txt/test.txt); empty = the synthetic generator. With --split given and "
        "--test_input: the training part",
    )
    val_input: str = opt(
        "",
        "--split given: the validation part (a ground-truth file of held-out rows), read "
        "with the format and column options of input; empty = validation carved at random "
        "from the training part (val_fraction). Needs test_input",
    )
    test_input: str = opt(
        "",
        "--split given: the test part, read with the format and column options of input "
        "(csv, parquet, or an ml-100k file: --input u1.base --test_input u1.test). Policy: a "
        "pair in several parts belongs to the most held-out one (test, then val) and its "
        "rows in the other parts are dropped, so training never sees a held-out pair; "
        "held-out rows whose user or item has no row in the training part are dropped with "
        "a logged count (a model cannot score a node it never trained). A dataset's own "
        "split (an ml-100k folder's ua.base/ua.test, lightgcn) keeps such rows, as published",
    )
    format: str = opt(
        "auto",
        "input format",
        choices=("auto", "csv", "parquet", "ml-100k", "ml-1m", "ml-latest", "lightgcn", "synthetic"),
    )
    output: str = opt(
        "data/synthetic",
        "graph directory to write, under a temporary name renamed when "
        "complete; an existing folder is replaced only if it is a graph "
        "directory distgnn wrote. Refused when it is the current folder or "
        "one above it, holds the input, or is a file",
    )
    overwrite: bool = opt(
        False,
        "also replace an existing non-empty folder that distgnn did not write (never a "
        "run or export folder, never one holding the input)",
    )
    user_col: str = opt(
        "user",
        "user id column (csv/parquet). Ids are text, taken as written ('007' stays "
        "'007') without surrounding whitespace; other columns are ignored. An empty "
        "id, NaN or a missing-value marker (NA, null, ...) fails naming its row",
    )
    item_col: str = opt("item", "item id column (csv/parquet); ids as for user_col")
    time_col: str = opt(
        "",
        "timestamp column, empty if none (csv/parquet): whole numbers in any unit "
        "(negative ones too; they only order events) or dates/times (whole seconds); "
        "fractions and values beyond int64 fail",
    )
    rating_col: str = opt("", "rating column, empty if none (csv/parquet); NaN or infinite ratings fail")
    event_col: str = opt(
        "", "event-type column such as click/buy, empty if none (csv/parquet); event types are text as written"
    )
    keep_events: str = opt(
        "",
        "comma-separated event types kept as interactions; empty keeps all. Users "
        "and items left with no interaction are absent from the graph; if no row "
        "is left, it fails",
    )
    event_weights: str = opt(
        "",
        "weight of each event type, e.g. pv:1,cart:2,fav:2,buy:4 (needs event_col; "
        "positive numbers): a row weighs its event's weight (with --duplicates count, a "
        "pair weighs the sum over its events). An event type in the data that the map "
        "lacks fails naming its row. Adds a float32 'weight' column to "
        "train/val/test.parquet; empty = no weights",
    )
    target_events: str = opt(
        "",
        "comma-separated event types (e.g. buy) that make a (user, item) pair eligible for "
        "val/test: per user, the held-out pairs are chosen among the pairs with at least "
        "one such event, by the split method (temporal: by the pair's timestamp); every "
        "other pair stays in train, and a held-out pair leaves train with all its events. "
        "Fractions count a user's eligible pairs; leave_one_out holds out one if the user "
        "has another pair to train on. Needs event_col; not with --split given; a type "
        "that never occurs fails. Empty = every pair is eligible",
    )
    sample_fraction: float = opt(
        1.0,
        "keep this random fraction (seeded by seed) of the users, with all their "
        "interactions, after the filters and before splitting: a quick try on a big log; "
        "the counts kept are logged. 1 = every user",
    )
    csv_header: bool = opt(
        True,
        "whether a CSV input has a header row (without one, columns are "
        "named f0, f1, f2, ... and the *_col options use those names)",
    )
    csv_columns: str = opt(
        "",
        "names of the columns of a headerless CSV, in order, comma-separated (e.g. "
        "user_id,item_id,category_id,behavior,timestamp); implies no header row, and the "
        "*_col options use these names. A row with another number of fields fails naming "
        "its row. Empty = the header names them (or f0, f1, ... without csv_header)",
    )
    delimiter: str = opt(
        "auto", "CSV field separator: one character, tab, or auto (tab for .tsv files, comma otherwise)"
    )
    min_rating: float = opt(
        float("-inf"),
        "keep only interactions with rating >= this (implicit feedback); "
        "needs a rating column (rating_col for csv/parquet). Users and "
        "items left with no interaction are absent from the graph; if "
        "nothing is left, it fails",
    )
    duplicates: str = opt(
        "first",
        "policy for repeated (user, item) pairs: keep the first (earliest), the last, "
        "fail, or count: one row per pair with the latest event's timestamp and rating "
        "and a float32 'weight' column in train/val/test.parquet: the number of the "
        "pair's events (the sum of their event_weights)",
        choices=("first", "last", "error", "count"),
    )
    split: str = opt(
        "random",
        "how to split: random per user, temporal per user (latest interactions "
        "held out), leave-one-out (one val and one test item per user, latest by "
        "time or file order), or the dataset's own split (or the files of --test_input and --val_input)",
        choices=("random", "temporal", "leave_one_out", "given"),
    )
    val_fraction: float = opt(
        0.1,
        "fraction of each user's interactions for validation (random/temporal;"
        " with 'given', carved at random from the given training part; ignored with val_input)",
    )
    test_fraction: float = opt(0.1, "fraction of each user's interactions for test (random/temporal)")
    min_item_interactions: int = opt(
        1,
        "drop items with fewer (user, item) pairs than this, after merging repeated pairs and before "
        "splitting (one pass, not an iterated k-core), so that a held-out item is one the training graph "
        "can know: in a sparse log most items are seen once, and a held-out pair of such an item is "
        "unreachable for any model. 1 = keep every item",
        minimum=1,
    )
    cold_fraction: float = opt(
        0.0,
        "cold-start users for evaluation: after the split, this random fraction (seeded by seed) "
        "of the users keeps only cold_items of its training interactions (chosen at random; the "
        "others are dropped, its val/test stay), so that train --eval.cold_users cold_items "
        "measures users with little history. 0 = off",
    )
    cold_items: int = opt(5, "training interactions a cold-start user keeps (see cold_fraction)", minimum=1)
    seed: int = opt(0, "random seed of the split (and of sample_fraction and the partitioning)")
    user_features: str = opt(
        "",
        "CSV or Parquet table of user features: a header row (CSV read with --delimiter), "
        "one row per user, the id in the column named by user_col. Every other column is a "
        "feature: a column with a number in every row is numeric, standardised (z-score "
        "over the graph's users; constant -> 0); a text column is categorical, one-hot "
        "over its max_categories most frequent values plus one 'other' column for the rest "
        "(an empty value is in no column). Fails: a text column whose values are mostly "
        "(over half) numbers, naming its first non-number (a typo? or list the column in "
        "categorical_columns), an empty or NaN numeric value, repeated ids, no rows. Ids "
        "not in the interactions are ignored and users without a row get zeros (both "
        "logged). Written to features/user.npy, replacing the format's own user "
        "features; the raw values also go to users.parquet (null where a user has no row)",
    )
    item_features: str = opt(
        "",
        "CSV or Parquet table of item features, as user_features (the id in the column "
        "named by item_col; features/item.npy, raw values in items.parquet)",
    )
    item_feature_cols: str = opt(
        "",
        "comma-separated columns of the interaction file (csv/parquet) used as categorical "
        "item features (e.g. Taobao's category_id), each item's first value in the file; "
        "encoded and written raw to items.parquet like item_features",
    )
    categorical_columns: str = opt(
        "",
        "comma-separated feature columns encoded as categories although they hold numbers "
        "(codes such as occupation); each must be a column of user_features or item_features",
    )
    max_categories: int = opt(
        50,
        "categorical features: one-hot columns for this many most frequent values (ties by "
        "value), plus one 'other' column when a feature has more",
        minimum=1,
    )
    memory_gb: float = opt(
        4.0,
        "memory prepare may use, in GB: DuckDB, which groups and sorts the interactions, gets three "
        "quarters and spills the rest to disk (work_dir); the other quarter holds a batch of rows "
        "and the per-node arrays (id maps, features). Any log size fits; more memory is faster",
    )
    work_dir: str = opt(
        "",
        "folder for prepare's working files (DuckDB's database and spills, about the size of the "
        "input as Parquet), removed at the end; empty = inside the output's temporary folder",
    )
    threads: int = opt(0, "threads DuckDB may use; 0 = every core", minimum=0)
    partitions: int = opt(
        0,
        "also split the graph into this many parts, one per worker, written to "
        "OUTPUT/parts/ (see python -m distgnn.partition); 0 or 1 = no parts",
    )
    partition_method: str = opt(
        "auto",
        "how nodes are assigned to parts: auto (metis when its predicted memory fits half the memory "
        "available now, else ldg; the choice and why are logged), metis (fewest edges between parts, "
        "balanced by edges; holds the whole graph several times over), ldg (streaming balanced "
        "partitioner, reads the graph in chunks), random, or hash of the node id",
        choices=("auto", "metis", "ldg", "random", "hash"),
    )
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class ModelConfig:
    name: str = opt(
        "lightgcn",
        "model: LightGCN, GraphSAGE-style bipartite model, matrix factorisation, or neural "
        "collaborative filtering (NeuMF: GMF + MLP towers scoring a pair; He et al., WWW 2017)",
        choices=("lightgcn", "sage", "mf", "ncf"),
    )
    dim: int = opt(64, "embedding dimension")
    num_layers: int = opt(3, "message-passing layers (ignored by mf)")
    use_features: bool = opt(True, "sage: feed the graph's node features, when it has them")
    mlp_layers: tuple[int, ...] = opt(
        (64, 32, 16),
        "ncf: widths of the MLP tower (its input is the user's and the item's MLP embeddings, dim each)",
    )
    item_bias: bool = opt(
        False,
        "softmax: learn one score offset per item, added to its logits. Bounded "
        "cosine scores cannot say 'popular with everyone'; the offset can. "
        "Exported vectors get one more column (user 1, item temperature * "
        "offset) so that inner product ranks as the model does",
    )


@dataclass(frozen=True)
class SamplerConfig:
    num_neighbors: tuple[int, ...] = opt((10, 10, 10), "neighbors sampled per hop (one per layer; -1 = all)")
    backend: str = opt(
        "auto",
        "neighbor sampler: distgnn's own, PyG's (needs pyg-lib or torch-sparse), "
        "or auto (PyG's only when pyg-lib is installed)",
        choices=("auto", "distgnn", "pyg"),
    )
    replace: bool = opt(False, "sample neighbors with replacement")
    num_workers: int = opt(
        0,
        "loader processes that sample the next batches while the current step runs "
        "(PyG's loader over torch DataLoader workers; pinned memory on GPU); 0 = sample "
        "in the training process. Worth it only with a spare core per training worker. "
        "Not with cluster.partitioned: its sampling is a collective of all workers",
        minimum=0,
    )
    device: str = opt(
        "auto",
        "where the replicated strategy keeps the graph and samples: auto = on the training GPU when "
        "the graph's CSR takes at most a quarter of its free memory and sampler.num_workers is 0 "
        "(batches then never cross PCIe), else on the CPU, with pinned batches copied without "
        "blocking; cpu = always on the CPU. Without a GPU both are the CPU",
        choices=("auto", "cpu"),
    )


@dataclass(frozen=True)
class OptimConfig:
    loss: str = opt(
        "softmax",
        "ranking: bpr, sampled softmax over in-batch + uniform negatives, or bce (pointwise log loss on "
        "each positive and its num_negatives uniform negatives, as the NCF paper trains). rating: mse, "
        "the squared error of predicted ratings <u, i> + b_u + b_i + mean on the graph's rating column "
        "(the rating-prediction task; evaluated by RMSE/MAE)",
        choices=("bpr", "softmax", "bce", "mse"),
    )
    num_negatives: int = opt(
        1,
        "uniform negative items per positive, on top of the in-batch ones "
        "(bpr uses the first); each adds a batch's worth of softmax columns",
    )
    temperature: float = opt(0.1, "softmax temperature on cosine scores")
    log_q: bool = opt(
        True,
        "softmax: subtract the log of each candidate's chance of being in the batch "
        "from its logit (in-batch items come in proportion to popularity), so the "
        "sampled loss estimates the full softmax; false = popular items are pushed "
        "down harder",
    )
    shared_negatives: bool = opt(
        True,
        "softmax: every worker's candidate items are negatives for every "
        "worker's users (gradients flow back to their owners), so the loss "
        "is the one of a single process with the global batch, whatever "
        "the number of workers; false = each worker's own batch only",
    )
    hard_negative_pool: int = opt(
        1,
        "mine hard negatives: each uniform negative becomes the best-scoring "
        "of this many uniform draws, scored by the exact model of the "
        "epoch's start (dynamic negative sampling); 1 = plain uniform. The "
        "log-Q correction still counts negatives as uniform",
        minimum=1,
    )
    contrastive_weight: float = opt(
        0.0,
        "lightgcn: weight of a SimGCL contrastive term (two noisy views of "
        "the batch's users and items, InfoNCE between them); 0 = off",
    )
    contrastive_noise: float = opt(0.1, "SimGCL: norm of the noise added to each layer's output")
    contrastive_temperature: float = opt(0.2, "SimGCL: temperature of the InfoNCE between the views")
    mixed_precision: str = opt(
        "off",
        "bf16: the loss and scoring (the dense products of outputs with candidates, NCF's MLP) run "
        "under torch.autocast in bfloat16, which tensor cores speed up on GPU; message passing, "
        "the tables and the optimizer stay float32 (sparse products have no bfloat16 kernel on "
        "CPU and are bound by memory). Works on CPU too; off = float32",
        choices=("off", "bf16"),
    )
    batch_size: int = opt(2048, "training edges per step per worker")
    edge_sampling: str = opt(
        "shuffle",
        "how an epoch draws training edges: shuffle (each edge once, so a "
        "user's weight grows with their degree) or user_uniform (a "
        "uniform user, then one of their edges, as many draws as edges: "
        "every user weighs the same, as in the per-user metrics)",
        choices=("shuffle", "user_uniform"),
    )
    epochs: int = opt(20, "maximum epochs")
    lr: float = opt(0.01, "learning rate (Adam; SparseAdam for embedding tables)")
    lr_schedule: str = opt(
        "constant",
        "learning rate over training: constant, or cosine decay from lr "
        "to lr_final_fraction * lr at the end of epoch optim.epochs",
        choices=("constant", "cosine"),
    )
    lr_final_fraction: float = opt(0.0, "cosine schedule: the last step's learning rate as a fraction of lr")
    l2: float = opt(1e-4, "L2 penalty on the embeddings of the batch (LightGCN's regulariser)")
    edge_weight: bool = opt(
        False,
        "draw training edges in proportion to their prepared weight (the graph's weight column: "
        "prepare's duplicates count / event_weights), so repeated and stronger behaviours count more; "
        "false = every (user, item) pair alike",
    )
    max_steps_per_epoch: int = opt(0, "cap on steps per epoch, 0 = a full pass over the worker's edges")
    time_budget_min: float = opt(
        0.0, "stop before an epoch that would end past this many minutes of training and evaluation, 0 = no budget"
    )


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = opt((10, 20), "cut-offs K for Recall/NDCG/HR/Precision/MRR@K")
    metric: str = opt(
        "ndcg@20",
        "validation metric for early stopping and the best checkpoint (rmse or mae, lower is "
        "better, for the rating task)",
    )
    patience: int = opt(5, "epochs without improvement before stopping early, 0 = never")
    every: int = opt(1, "validate every this many epochs")
    batch_size: int = opt(1024, "users scored at once in full-ranking evaluation")
    sampled_negatives: int = opt(
        0,
        "also rank each held-out item against this many uniformly sampled items the user never "
        "interacted with (the NCF paper's protocol: 99), reported as sampled_hr@K and sampled_ndcg@K "
        "(the same fixed draw every epoch); 0 = off",
        minimum=0,
    )
    cold_users: int = opt(
        0,
        "also report the metrics of cold users, those with at most this many training items, "
        "as cold/<metric> (and their count as cold/num_users); 0 = off",
        minimum=0,
    )
    max_users: int = opt(
        0,
        "evaluate a fixed random sample of this many users (those of them with "
        "held-out items), 0 = every user; for graphs too big to rank every user",
    )


@dataclass(frozen=True)
class ClusterConfig:
    num_workers: int = opt(2, "Ray Train workers (DDP ranks)")
    use_gpu: str = opt("auto", "use GPUs: auto (when Ray sees one), true or false", choices=("auto", "true", "false"))
    cpus_per_worker: float = opt(1.0, "CPUs Ray reserves per worker")
    threads_per_worker: int = opt(1, "torch threads in each worker")
    max_failures: int = opt(1, "worker failures survived by restarting from the last checkpoint")
    address: str = opt("", "Ray address; empty = the cluster of 'ray job submit', or a local one")
    partitioned: bool = opt(
        False,
        "each worker holds only its part of the graph and its rows of the "
        "embedding table; neighbors in other parts are sampled by their owner "
        "(needs GRAPH/parts with cluster.num_workers parts: python -m "
        "distgnn.partition). LightGCN and MF, with the item bias and the SimGCL "
        "term; refused: sage (its dense weights would need averaging next to the "
        "shards), optim.hard_negative_pool (mining scores every item on every "
        "worker), sampler.num_workers (its sampling is a collective)",
    )


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = opt("runs", "folder holding run directories")
    storage: str = opt(
        "",
        "shared storage for a cluster: a URI (s3://bucket/runs, gs://..., hdfs://...) or a "
        "path every node sees. Ray Train keeps its checkpoints in STORAGE/NAME/ray (so a "
        "resumed run finds them from any node) and the finished run directory is copied "
        "to STORAGE/NAME; export --run STORAGE/NAME reads it back. Empty = local only",
    )
    name: str = opt("", "run name; empty = a timestamped name. Re-using a name resumes that run")
    seed: int = opt(0, "seed for model initialisation, shuffling and sampling")
    crash_at_epoch: int = opt(-1, "testing aid: worker 0 exits abruptly once, in this epoch")
    profile: bool = opt(
        False,
        "measure waiting for the slowest worker apart from the gradient exchange in "
        "each epoch's step_ms split (one extra barrier per step)",
    )
    verbose: bool = opt(
        False,
        "also show Ray's own lines (a line per report and per checkpoint, internal "
        "warnings); off: what data, how many workers, a line per epoch, the results",
    )


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything ``python -m distgnn.train`` needs."""

    graph: str = opt("", "prepared graph directory; empty = prepare the synthetic default first")
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    # What several stages derive from the same keys, derived in one place.
    @property
    def fanouts(self) -> tuple[int, ...]:
        """Neighbors sampled per hop; none for MF, which has no message passing."""
        return () if self.model.name == "mf" else self.sampler.num_neighbors

    @property
    def task(self) -> str:
        """rating (predict a rating column, loss mse) or ranking (every other loss)."""
        return "rating" if self.optim.loss == "mse" else "ranking"

    @property
    def num_negatives(self) -> int:
        """Uniform negatives per positive: BPR uses one, the rating task none."""
        return {"bpr": 1, "mse": 0}.get(self.optim.loss, self.optim.num_negatives)

    @property
    def cosine_scores(self) -> bool:
        """The (cosine) softmax loss scores by cosine; BPR by inner product."""
        return self.optim.loss == "softmax"

    @property
    def scoring_metric(self) -> str:
        """How exported vectors compare: inner product once normalised with an item-bias column
        appended (they must not be normalised again), else cosine or inner product as trained."""
        return "ip" if self.model.item_bias or not self.cosine_scores else "cosine"


# ---------------------------------------------------------------------------------------------------
# Loading, overriding, saving


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check and convert one value to the declared type; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list of {item_tp.__name__}, got {value!r}")
        return tuple(_coerce(key, v, item_tp) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        try:
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int):
                return value
        except ValueError:
            pass
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _check_choice(key: str, value: Any, f: dataclasses.Field) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}': expected one of {', '.join(choices)}, got {value!r}")
    minimum = f.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(f"config key '{key}': expected at least {minimum}, got {value!r}")


def build_config(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a nested dict; unknown keys and bad types raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a mapping")
    types_ = _field_types(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known here: {', '.join(known)})")
    kwargs = {}
    for name, value in values.items():
        f, tp, key = known[name], types_[name], prefix + name
        if is_dataclass(tp):
            kwargs[name] = build_config(tp, value, prefix=key + ".")
        else:
            kwargs[name] = _coerce(key, value, tp)
            _check_choice(key, kwargs[name], f)
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), for YAML/JSON."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _set_nested(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for k, v in update.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per leaf field, named ``--prefix.field`` (``--field`` at the top level)."""
    types_ = _field_types(cls)
    for f in fields(cls):
        tp = types_[f.name]
        if is_dataclass(tp):
            add_config_arguments(parser, tp, prefix=f"{prefix}{f.name}.")
            continue
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" {{{', '.join(choices)}}}"
        parser.add_argument(
            f"--{prefix}{f.name}",
            dest=f"{prefix}{f.name}",
            default=None,
            metavar="A,B,..." if typing.get_origin(tp) is tuple else tp.__name__.upper(),
            help=f"{help_text} (default: {shown})",
        )


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Defaults, then the YAML file named by ``args.config`` (if any), then the flags that were given."""
    tree: dict[str, Any] = {}
    if getattr(args, "config", None):
        tree = load_yaml(args.config)
    overrides: dict[str, Any] = {}
    for dotted, value in vars(args).items():
        if dotted != "config" and value is not None:
            _set_nested(overrides, dotted, value)
    return build_config(cls, _merge(tree, overrides))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return tree


def load_config(cls: type, path: str | Path | None = None, **overrides: Any) -> Any:
    """Build a config from an optional YAML file and dotted overrides, e.g. ``**{"optim.epochs": 3}``."""
    tree = load_yaml(path) if path else {}
    extra: dict[str, Any] = {}
    for dotted, value in overrides.items():
        _set_nested(extra, dotted, value)
    return build_config(cls, _merge(tree, extra))


def replace_nested(config: Any, **dotted: Any) -> Any:
    """A copy of a frozen config with dotted keys replaced (validated like any other override)."""
    return build_config(type(config), _merge(config_to_dict(config), _nest(dotted)))


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for k, v in dotted.items():
        _set_nested(tree, k, v)
    return tree


def make_parser(cls: type, description: str, prog: str) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument(
        "--config", metavar="YAML", default=None, help="YAML file of config sections (see configs/); flags override it"
    )
    add_config_arguments(parser, cls)
    return parser

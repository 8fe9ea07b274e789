"""Hyperparameter search: Ray Tune trials of the training loop, early-stopped by ASHA.

    python -m distgnn.tune --config configs/ml-100k.yaml --samples 16 --max-epochs 20
    python -m distgnn.tune --config configs/ml-100k.yaml --search configs/search/lightgcn.yaml \\
        --samples 8 --cpus-per-trial 1 --name lr-sweep

Each trial runs :func:`distgnn.training.loop.fit` in a single process (one trial = one Ray Tune
actor; Ray runs as many trials at once as there are CPUs for them) and forwards every validation
report to ``ray.tune.report``, so that ASHA can stop the weak trials early. Searching in one process
per trial is cheaper than DDP per trial (a 2-worker Ray Train job costs ~45 s of start-up here);
the distributed ``TorchTrainer`` path (``python -m distgnn.train``) is for the final run of the
best configuration, which this module writes as a complete YAML config.

The search space is a YAML mapping of dotted config keys to one distribution each::

    optim.lr: {loguniform: [0.001, 0.05]}        # floats, log-uniform between the bounds
    optim.dropout: {uniform: [0.0, 0.5]}         # floats, uniform between the bounds
    model.dim: {randint: [32, 129]}              # integers lo .. hi-1 (Ray's convention)
    model.num_layers: {choice: [2, 3]}           # any type; lists for sampler.num_neighbors

Every key is checked against the config dataclasses before any trial starts. When the search sets
``model.num_layers`` but not ``sampler.num_neighbors``, each trial's fanouts are derived from the
base config's, one per layer: cut to the first ``num_layers`` values, or extended by repeating the
last one (``(10, 10, 10)`` -> ``(10, 10)`` for 2 layers, ``(10, 10, 10, 10)`` for 4).

The output folder ``OUTPUT_DIR/NAME`` holds ``config.yaml`` (the base config), ``search.yaml``,
``trials/<trial>/`` (one run directory per trial), ``ray/`` (Ray Tune's own files),
``results.csv`` (one row per trial) and ``best.yaml`` (the base config with the best trial's
values, loadable with ``python -m distgnn.train --config``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from distgnn.core.cluster import start_ray
from distgnn.core.config import (
    ConfigError,
    TrainJobConfig,
    build_config,
    config_to_dict,
    load_yaml,
    replace_nested,
)
from distgnn.core.errors import DataError
from distgnn.core.rundir import RESULTS_FILE, create_run_dir, read_history
from distgnn.training.launcher import build_strategy
from distgnn.training.loop import fit

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
# Keys a trial cannot vary: the data and the selection metric must be the same for every trial to
# compare them, the epochs are --max-epochs, and a trial is one process whatever cluster.* says.
FIXED_KEYS = (
    "graph",
    "synthetic",
    "cluster",
    "run.name",
    "run.output_dir",
    "run.crash_at_epoch",
    "eval.metric",
    "optim.epochs",
)
FANOUTS_KEY, LAYERS_KEY = "sampler.num_neighbors", "model.num_layers"
TIME_ATTR = "epochs_done"  # ASHA's clock: epochs trained when a validation report is sent
RESULTS_CSV, BEST_FILE, SEARCH_FILE = "results.csv", "best.yaml", "search.yaml"


# ---------------------------------------------------------------------------------------------------
# The search space (pure: no Ray)


@dataclass(frozen=True)
class Dimension:
    """One searched config key: ``kind`` is one of :data:`DISTRIBUTIONS`; ``values`` are the
    choices (already converted to the field's type) or the ``(low, high)`` bounds."""

    key: str
    kind: str
    values: tuple

    def ray_domain(self) -> Any:
        from ray import tune

        if self.kind == "choice":
            # Ray hands the chosen object itself to the trial; tuples travel as lists.
            return tune.choice([list(v) if isinstance(v, tuple) else v for v in self.values])
        return getattr(tune, self.kind)(*self.values)


def load_search_space(path: str | Path, base: TrainJobConfig) -> list[Dimension]:
    """Read and validate a search-space YAML against ``base`` (see :func:`parse_search_space`)."""
    try:
        return parse_search_space(load_yaml(path), base)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_search_space(tree: dict[str, Any], base: TrainJobConfig) -> list[Dimension]:
    """Validate ``{dotted key: {distribution: args}}`` against the config dataclasses.

    Raises :class:`ConfigError` naming the key for an unknown key, a section instead of a field, a
    fixed key (:data:`FIXED_KEYS`), an unknown distribution, bad bounds, a distribution that does not
    fit the field's type, a value the field rejects, or fanouts that do not fit the layers.
    """
    if not tree:
        raise ConfigError(
            "the search space is empty: map dotted config keys to distributions, "
            "e.g. 'optim.lr: {loguniform: [0.001, 0.05]}'"
        )
    if FANOUTS_KEY in tree and LAYERS_KEY in tree:
        raise ConfigError(
            f"search either '{LAYERS_KEY}' (fanouts are then derived from the base "
            f"config's) or '{FANOUTS_KEY}', not both"
        )
    dims = [_parse_dimension(str(key), spec, base) for key, spec in tree.items()]
    if LAYERS_KEY not in tree and FANOUTS_KEY not in tree:
        check_fanouts(base, f"config key '{FANOUTS_KEY}'")
    for dim in dims:  # each value of the keys that shape the layers must fit on its own
        if dim.key in (LAYERS_KEY, FANOUTS_KEY, "model.name"):
            for value in dim.values:
                check_fanouts(trial_job(base, {dim.key: value}), f"search key '{dim.key}'")
    return dims


def _parse_dimension(key: str, spec: Any, base: TrainJobConfig) -> Dimension:
    tp = _leaf_type(key)
    if any(key == f or key.startswith(f + ".") for f in FIXED_KEYS):
        raise ConfigError(
            f"config key '{key}' cannot be searched: it is fixed for all trials "
            f"(set it in --config; epochs with --max-epochs)"
        )
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"search key '{key}': expected one distribution such as {{choice: [a, b]}} "
            f"or {{loguniform: [low, high]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"search key '{key}': unknown distribution '{kind}' (known: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search key '{key}': '{kind}' expects a non-empty list, got {args!r}")
    if kind == "choice":
        # Each choice goes through the config's own checks; the converted value is what trials get.
        values = tuple(_field_value(replace_nested(base, **{key: v}), key) for v in args)
        return Dimension(key, kind, values)
    if kind == "randint":
        if tp is not int:
            raise ConfigError(f"search key '{key}': randint needs an integer field; use choice")
        low, high = (_number(key, kind, a, int) for a in _pair(key, kind, args))
        if high <= low:
            raise ConfigError(f"search key '{key}': randint needs low < high (high is excluded), got {args}")
    else:
        if tp is not float:
            raise ConfigError(
                f"search key '{key}': {kind} draws real numbers, but the field is not a "
                f"float; use choice{' or randint' if tp is int else ''}"
            )
        low, high = (_number(key, kind, a, float) for a in _pair(key, kind, args))
        if not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError(
                f"search key '{key}': {kind} needs {'0 < ' if kind == 'loguniform' else ''}low < high, got {args}"
            )
    dim = Dimension(key, kind, (low, high))
    for value in _range_probes(dim):
        replace_nested(base, **{key: value})
    return dim


def _range_probes(dim: Dimension) -> tuple:
    low, high = dim.values
    return (low, high - 1) if dim.kind == "randint" else (low, high)


def _pair(key: str, kind: str, args: list) -> list:
    if len(args) != 2:
        raise ConfigError(f"search key '{key}': '{kind}' expects [low, high], got {args!r}")
    return args


def _number(key: str, kind: str, value: Any, tp: type) -> Any:
    # PyYAML reads `1e-6` (no dot) as a string, so strings that parse as numbers are accepted.
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (tp is int and not number.is_integer()):
        raise ConfigError(
            f"search key '{key}': '{kind}' bounds must be {'integers' if tp is int else 'numbers'}, got {value!r}"
        )
    return tp(number)


def _leaf_type(key: str) -> type:
    """The declared type of a dotted leaf field of :class:`TrainJobConfig`."""
    cls: Any = TrainJobConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        known = {f.name for f in fields(cls)}
        if part not in known:
            raise ConfigError(
                f"unknown config key '{key}' (known in '{'.'.join(parts[:i]) or '<root>'}': {', '.join(sorted(known))})"
            )
        cls = typing.get_type_hints(cls)[part]
    if is_dataclass(cls):
        raise ConfigError(
            f"search key '{key}' is a config section: name one of its fields, e.g. '{key}.{fields(cls)[0].name}'"
        )
    return typing.get_origin(cls) or cls


def _field_value(job: TrainJobConfig, key: str) -> Any:
    value: Any = job
    for part in key.split("."):
        value = getattr(value, part)
    return value


def derive_fanouts(fanouts: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """One fanout per layer from the base config's: the first ``num_layers``, or the last value
    repeated when there are fewer."""
    if not fanouts:
        return (10,) * num_layers  # the config's own default per hop
    return tuple(fanouts[:num_layers]) + (fanouts[-1],) * max(0, num_layers - len(fanouts))


def trial_values(base: TrainJobConfig, sampled: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides of one trial: the sampled values, plus derived fanouts when the
    sample sets ``model.num_layers`` without ``sampler.num_neighbors``."""
    values = dict(sampled)
    if LAYERS_KEY in values and FANOUTS_KEY not in values:
        values[FANOUTS_KEY] = list(derive_fanouts(base.sampler.num_neighbors, int(values[LAYERS_KEY])))
    return values


def trial_job(base: TrainJobConfig, sampled: dict[str, Any]) -> TrainJobConfig:
    return replace_nested(base, **trial_values(base, sampled))


def check_fanouts(job: TrainJobConfig, where: str) -> None:
    """The check :func:`distgnn.training.checks.check_job` makes, done before any trial starts; ``where``
    names the key the message blames."""
    if job.model.name != "mf" and len(job.sampler.num_neighbors) != job.model.num_layers:
        raise ConfigError(
            f"{where}: gives {len(job.sampler.num_neighbors)} fanouts "
            f"({FANOUTS_KEY}) for {job.model.num_layers} layers ({LAYERS_KEY}); "
            f"they must match"
        )


# ---------------------------------------------------------------------------------------------------
# One trial (runs inside a Ray Tune actor)


def _run_trial(sampled: dict[str, Any], *, base: dict[str, Any], trials_dir: str, threads: int) -> None:
    from ray import tune

    job = replace_nested(
        trial_job(build_config(TrainJobConfig, base), sampled), **{"cluster.threads_per_worker": threads}
    )
    run_dir = create_run_dir(job, trials_dir, tune.get_context().get_trial_id())
    metric_key = f"val/{job.eval.metric}"

    def report(metrics: dict, folder: Path | None) -> None:
        # Only epochs that validated: Tune rejects a report without the scheduler's metric (the
        # final test report, epochs skipped by eval.every). The model is kept in run_dir, so
        # Ray gets no checkpoint (trials are not restored, and copying one per epoch costs time).
        if metric_key in metrics:
            tune.report({**metrics, TIME_ATTR: metrics["epoch"] + 1})

    fit(job, run_dir, build_strategy(job), report=report)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


# ---------------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class TrialRow:
    """One line of results.csv: a trial's values, its best validation metric and how it ended."""

    trial: str
    values: dict[str, Any]
    best: float | None
    best_epoch: int | None
    epochs: int
    status: str  # finished (every epoch, or early stopping), stopped (by ASHA, before its last epoch), error
    run_dir: Path


def run_search(
    base: TrainJobConfig,
    space: list[Dimension],
    tune_dir: Path,
    *,
    num_samples: int,
    max_epochs: int,
    grace_period: int,
    cpus_per_trial: float,
    seed: int,
) -> list[TrialRow]:
    """Run the search and return one row per trial, best first. ``base`` must point at a prepared
    graph directory with a validation split (:func:`check_graph`)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    start_ray(base.cluster.address)
    trials_dir = tune_dir / "trials"
    job = replace_nested(base, **{"optim.epochs": max_epochs})
    trainable = tune.with_parameters(
        _run_trial, base=config_to_dict(job), trials_dir=str(trials_dir), threads=max(1, int(cpus_per_trial))
    )
    metric_key = f"val/{base.eval.metric}"
    scheduler = ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=metric_key,
        mode="max",
        max_t=max_epochs,
        grace_period=min(grace_period, max_epochs),
        # a trial that reaches max_t finishes itself (and writes results.json)
        stop_last_trials=False,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_trial}),
        param_space={d.key: d.ray_domain() for d in space},
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=seed),
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(name="ray", storage_path=str(tune_dir.resolve()), verbose=1),
    )
    grid = tuner.fit()
    rows = []
    for result in grid:
        trial = Path(result.path).name
        rows.append(
            _trial_row(
                trial,
                trial_values(base, result.config),
                trials_dir / trial,
                base.eval.metric,
                max_epochs=max_epochs,
                error=result.error,
            )
        )
    return sorted(rows, key=lambda r: -math.inf if r.best is None else r.best, reverse=True)


def _trial_row(
    trial: str, values: dict, run_dir: Path, metric: str, *, max_epochs: int, error: Exception | None
) -> TrialRow:
    history = read_history(run_dir)
    evals = [h for h in history if metric in h.get("eval", {})]
    best = max(evals, key=lambda h: h["eval"][metric]) if evals else None
    if error is not None:
        status = f"error: {type(error).__name__}"
    else:
        # results.json: fit returned (all epochs or early stopping). ASHA may also stop a
        # trial at its last epoch, before its test evaluation: that trial was not cut short.
        done = (run_dir / RESULTS_FILE).exists() or len(history) >= max_epochs
        status = "finished" if done else "stopped"
    return TrialRow(
        trial=trial,
        values=values,
        best=best["eval"][metric] if best else None,
        best_epoch=best["epoch"] if best else None,
        epochs=len(history),
        status=status,
        run_dir=run_dir,
    )


def check_graph(job: TrainJobConfig) -> None:
    """Trials are compared on the validation split: refuse a graph without one (selecting on the
    test split would report an optimistic test score)."""
    meta = json.loads((Path(job.graph) / "meta.json").read_text())
    if int(meta.get("num_interactions", {}).get("val", 0)) == 0:
        raise DataError(
            f"{job.graph}: the graph has no validation split, and trials must not be "
            f"compared on test; prepare it with --val_fraction > 0"
        )


# ---------------------------------------------------------------------------------------------------
# Outputs


def results_columns(space: list[Dimension], rows: list[TrialRow], metric: str) -> list[str]:
    keys = [d.key for d in space]
    keys += [k for k in (FANOUTS_KEY,) if k not in keys and any(k in r.values for r in rows)]
    return ["trial", *keys, f"val/{metric}", "best_epoch", "epochs", "status", "run_dir"]


def _cells(row: TrialRow, columns: list[str], metric: str) -> list[str]:
    fixed = {
        "trial": row.trial,
        f"val/{metric}": row.best,
        "best_epoch": row.best_epoch,
        "epochs": row.epochs,
        "status": row.status,
        "run_dir": row.run_dir,
    }
    cells = []
    for c in columns:
        value = fixed[c] if c in fixed else row.values.get(c)
        if value is None:
            cells.append("")
        elif isinstance(value, float):
            cells.append(f"{value:.6g}")
        elif isinstance(value, (list, tuple)):
            cells.append(",".join(map(str, value)))
        else:
            cells.append(str(value))
    return cells


def write_results_csv(path: Path, rows: list[TrialRow], columns: list[str], metric: str) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(_cells(r, columns, metric) for r in rows)
    tmp.replace(path)


def format_table(rows: list[TrialRow], columns: list[str], metric: str) -> str:
    shown = [c for c in columns if c != "run_dir"]
    table = [shown] + [_cells(r, shown, metric) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table)


def write_best_config(path: Path, base: TrainJobConfig, best: TrialRow, *, metric: str, num_trials: int) -> None:
    """The base config (its epochs, cluster and run settings) with the best trial's values."""
    job = replace_nested(base, **best.values)
    header = (
        f"# Best of {num_trials} trials (distgnn.training.search): val/{metric} {best.best:.4f} at epoch "
        f"{best.best_epoch}, trial {best.trial} ({best.run_dir}).\n"
        f"# Train it with: python -m distgnn.train --config {path}\n"
    )
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(config_to_dict(job), sort_keys=False))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------
# Command line

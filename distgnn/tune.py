"""python -m distgnn.tune: hyper-parameter search with Ray Tune (ASHA early stopping) over the
training loop; writes results.csv and best.yaml."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from distgnn.core.cli import configure_logging
from distgnn.core.config import (
    CommandParser,
    ConfigError,
    TrainJobConfig,
    add_config_arguments,
    config_from_args,
    config_to_dict,
    replace_nested,
)
from distgnn.core.errors import DataError
from distgnn.core.rundir import CONFIG_FILE
from distgnn.training.checks import check_job
from distgnn.training.launcher import resolve_graph
from distgnn.training.search import (
    BEST_FILE,
    RESULTS_CSV,
    SEARCH_FILE,
    check_graph,
    derive_fanouts,
    format_table,
    load_search_space,
    results_columns,
    run_search,
    write_best_config,
    write_results_csv,
)

log = logging.getLogger("distgnn.tune")


def make_tune_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m distgnn.tune",
        description="Search training hyperparameters with Ray Tune: each trial trains in one process "
        "(trials run in parallel, one per --cpus-per-trial CPUs), ASHA stops weak trials "
        "early on the validation metric (eval.metric), and the best configuration is "
        "written as a complete YAML config for python -m distgnn.train (the distributed "
        "run).",
    )
    group = parser.add_argument_group("search")
    group.add_argument(
        "--samples",
        type=int,
        metavar="N",
        default=8,
        help="number of configurations drawn from the search space (trials) (default: 8)",
    )
    group.add_argument(
        "--search",
        metavar="YAML",
        default="configs/search/lightgcn.yaml",
        help="search space: dotted config keys mapped to {choice: [...]}, "
        "{uniform: [low, high]}, {loguniform: [low, high]} or {randint: [low, high)}; "
        "searching model.num_layers alone derives sampler.num_neighbors from --config's "
        "fanouts (first ones kept, last one repeated) (default: %(default)s)",
    )
    group.add_argument(
        "--max-epochs",
        type=int,
        metavar="E",
        default=None,
        help="epochs of a trial that ASHA never stops (ASHA's max_t); default: "
        "optim.epochs of the config. best.yaml keeps the config's optim.epochs",
    )
    group.add_argument(
        "--grace-period",
        type=int,
        metavar="E",
        default=2,
        help="epochs every trial runs before ASHA may stop it; ASHA compares trials on "
        "val/<eval.metric> at 1, 4, 16, ... times this many epochs (default: 2)",
    )
    group.add_argument(
        "--output-dir", metavar="DIR", default="runs/tune", help="folder holding tuning folders (default: runs/tune)"
    )
    group.add_argument(
        "--name",
        default="",
        help="tuning folder name under --output-dir (must not exist yet); default: tune-<date>-<time>",
    )
    group.add_argument(
        "--cpus-per-trial",
        type=float,
        metavar="CPUS",
        default=1.0,
        help="CPUs Ray reserves per trial (trials run at once = cluster CPUs / this); a "
        "trial uses max(1, int(this)) torch threads (default: 1)",
    )
    group.add_argument(
        "--seed",
        type=int,
        metavar="SEED",
        default=0,
        help="seed of the random search (which configurations are drawn); the trials' "
        "own seed is run.seed (default: 0)",
    )
    base = parser.add_argument_group("base config (what every trial starts from)")
    base.add_argument(
        "--config",
        metavar="YAML",
        default=None,
        help="YAML file of config sections (see configs/); the flags below override it",
    )
    add_config_arguments(base, TrainJobConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_tune_parser().parse_args(argv)
    tune_args = {
        k: args.__dict__.pop(k)
        for k in ("samples", "search", "max_epochs", "grace_period", "output_dir", "name", "cpus_per_trial", "seed")
    }
    configure_logging()
    try:
        base = config_from_args(TrainJobConfig, args)
        max_epochs = tune_args["max_epochs"] or base.optim.epochs
        for name in ("samples", "grace_period"):
            if tune_args[name] < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {tune_args[name]}")
        if max_epochs < 1 or tune_args["cpus_per_trial"] <= 0:
            raise ConfigError("--max-epochs and --cpus-per-trial must be positive")
        space = load_search_space(tune_args["search"], base)
        # a searched layer count takes its fanouts from the base's (derive_fanouts): check it that way
        if "model.num_layers" in {d.key for d in space}:
            check_job(
                replace_nested(
                    base, **{"sampler.num_neighbors": derive_fanouts(base.sampler.num_neighbors, base.model.num_layers)}
                )
            )
        else:
            check_job(base)
        resolved = resolve_graph(base)
        check_graph(resolved)
        tune_dir = Path(tune_args["output_dir"]) / (tune_args["name"] or time.strftime("tune-%Y%m%d-%H%M%S"))
        if tune_dir.exists() and any(tune_dir.iterdir()):
            raise ConfigError(f"--name: {tune_dir} already exists; choose another name")
        tune_dir.mkdir(parents=True, exist_ok=True)
        (tune_dir / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(base), sort_keys=False))
        (tune_dir / SEARCH_FILE).write_text(Path(tune_args["search"]).read_text())
        log.info("tuning folder: %s (%d trials of up to %d epochs)", tune_dir, tune_args["samples"], max_epochs)
        t0 = time.perf_counter()
        rows = run_search(
            resolved,
            space,
            tune_dir.resolve(),
            num_samples=tune_args["samples"],
            max_epochs=max_epochs,
            grace_period=tune_args["grace_period"],
            cpus_per_trial=tune_args["cpus_per_trial"],
            seed=tune_args["seed"],
        )
        wall_s = time.perf_counter() - t0
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    columns = results_columns(space, rows, base.eval.metric)
    write_results_csv(tune_dir / RESULTS_CSV, rows, columns, base.eval.metric)
    print(f"\n{len(rows)} trials in {wall_s:.0f} s, best first:")
    print(format_table(rows, columns, base.eval.metric))
    print(f"\nresults: {tune_dir / RESULTS_CSV}  (trial run directories in {tune_dir / 'trials'})")
    if not rows or rows[0].best is None:
        print("error: no trial reported a validation metric; see the errors above", file=sys.stderr)
        return 1
    write_best_config(tune_dir / BEST_FILE, base, rows[0], metric=base.eval.metric, num_trials=len(rows))
    print(f"best config (val/{base.eval.metric} {rows[0].best:.4f}): {tune_dir / BEST_FILE}")
    print(f"train it with:  python -m distgnn.train --config {tune_dir / BEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

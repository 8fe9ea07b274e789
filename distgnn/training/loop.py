"""The training loop: one plain function, the same in one process and in every Ray Train worker,
for the replicated and the partitioned strategy alike.

:func:`fit` reads top to bottom: build the strategy's loader; each epoch train, evaluate, keep the
best model, report with a checkpoint; then test the best model. What differs between strategies
(how a step gets its rows and averages its gradients, how evaluation embeddings are computed, how
the best model is saved) is the strategy object (:mod:`.replicated`, :mod:`.partitioned`).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distgnn.core import dist, stage
from distgnn.core.config import OptimConfig, TrainJobConfig, config_to_dict
from distgnn.core.errors import ConfigError
from distgnn.core.files import write_json_atomic
from distgnn.core.rundir import RESULTS_FILE, write_history
from distgnn.training.checks import check_job

log = logging.getLogger(__name__)

ReportFn = Callable[[dict, "Path | None"], None]


def fit(
    job: TrainJobConfig, run_dir: Path, strategy: Any, *, report: ReportFn | None = None, restore: Path | None = None
) -> dict[str, Any]:
    """Train, validate every ``eval.every`` epochs, checkpoint, stop early; then test the best model.

    Args:
        strategy: a built :class:`~distgnn.training.replicated.Replicated` or
            :class:`~distgnn.training.partitioned.Partitioned`.
        report: called once per epoch with the metrics and a checkpoint folder (Ray Train's report).
        restore: a checkpoint folder to resume from (the next epoch after the one it saved).

    Returns the final results (test metrics of the model and of the popularity baseline). Longer
    than the house's ~60 lines on purpose: the whole procedure reads top to bottom on one screen.
    """
    check_job(job)
    o, e = job.optim, job.eval
    start_epoch, history, best = 0, [], None
    if restore is not None:
        state = strategy.restore(restore)
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        log.info("resumed from %s at epoch %d", restore, start_epoch)
    stage.enter_stage("load")  # each stage is noted for the driver, which names it if Ray kills the worker
    loader, num_edges = strategy.make_loader(start_epoch)
    steps = dist.all_reduce_min(len(loader))  # equal steps on every rank: each step runs collectives
    if o.max_steps_per_epoch:
        steps = min(steps, o.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(
            f"config key 'optim.batch_size': {o.batch_size} exceeds a worker's {num_edges} "
            "training edges; use fewer workers or smaller batches"
        )
    split = strategy.eval_split
    if o.mixed_precision == "bf16" and next(strategy.model.parameters()).device.type == "cpu":
        log.warning(
            "optim.mixed_precision bf16 on a CPU: it is meant for GPUs; on a CPU without bfloat16 "
            "instructions it measured 3.1-3.5x slower (benchmarks/RESULTS.md)"
        )
    log.info(
        "%d worker(s), %s edges each, %d steps of %d per epoch, evaluating on %s",
        dist.world_size(),
        f"{num_edges:,}",
        steps,
        o.batch_size,
        split,
    )

    spent_s = sum(h["train_s"] + h.get("eval_s", 0.0) for h in history)
    for epoch in range(start_epoch, o.epochs):
        if o.time_budget_min and history and over_budget(history, spent_s, o.time_budget_min):
            log.info("time budget of %g min reached after %d epochs: stopping", o.time_budget_min, epoch)
            break
        maybe_crash(job, run_dir, epoch)
        t0 = time.perf_counter()
        stage.enter_stage("training step")
        loss_sum, clock = train_steps(strategy, loader, steps, o, epoch, profile=job.run.profile)
        train_s = dist.all_reduce_max(time.perf_counter() - t0)  # the slowest rank: same history everywhere
        totals = dist.all_reduce_sum({"loss": loss_sum, "steps": steps, **clock.seconds})
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": totals["loss"] / totals["steps"],
            "steps": steps,
            "train_s": round(train_s, 3),
            "edges_per_s": round(totals["steps"] * o.batch_size / train_s, 1),
            # mean over workers, ms per step: where a step's time goes
            "step_ms": {k: round(1000 * totals[k] / totals["steps"], 2) for k in clock.seconds},
            **strategy.epoch_stats(steps),
        }
        if (epoch + 1) % e.every == 0 or epoch == o.epochs - 1:
            strategy.model.eval()
            t1 = time.perf_counter()
            stage.enter_stage("evaluation")
            record["eval"], record["eval_split"] = strategy.evaluate(split), split
            record["eval_s"] = round(dist.all_reduce_max(time.perf_counter() - t1), 3)
            # Without a validation split the last epoch is kept: choosing by test would be cheating.
            if best is None or split == "test" or improves(e.metric, record["eval"][e.metric], best["value"]):
                best = {"epoch": epoch, "value": record["eval"][e.metric]}
                stage.enter_stage("checkpoint")
                strategy.save_best(run_dir, {"epoch": epoch, e.metric: best["value"], "config": config_to_dict(job)})
        history.append(record)
        spent_s += record["train_s"] + record.get("eval_s", 0.0)
        if dist.rank() == 0:
            write_history(run_dir, history)
            log.info(epoch_line(record, e.metric))
        stop = split == "val" and e.patience > 0 and best is not None and epoch - best["epoch"] >= e.patience * e.every
        report_epoch(report, {**flat_metrics(record), "stop": stop}, strategy, epoch, history, best)
        if stop:
            log.info("no %s improvement for %d epochs: stopping early", e.metric, epoch - best["epoch"])
            break

    training_peak_mb = dist.all_reduce_max(peak_rss_mb())  # before the final evaluation's buffers
    stage.enter_stage("checkpoint")
    info = strategy.load_best(run_dir)
    strategy.model.eval()
    stage.enter_stage("baselines")
    baselines = strategy.baselines("test")
    stage.enter_stage("test")
    test = strategy.evaluate("test", samples_to=run_dir)  # and samples.csv: a few test users' top-k
    results = {
        "model": job.model.name,
        "task": job.task,
        "best_epoch": info["epoch"],
        "test": test,
        "baselines_test": baselines,
        **({"popularity_test": baselines["popularity"]} if "popularity" in baselines else {}),
        "epochs_run": len(history),
        "train_s": sum(h["train_s"] for h in history),
        "num_workers": dist.world_size(),
        "peak_rss_mb_per_worker": dist.all_reduce_max(peak_rss_mb()),
        "peak_rss_mb_training": training_peak_mb,
        **strategy.results(history),
    }
    if dist.rank() == 0:
        write_json_atomic(results, run_dir / RESULTS_FILE)
    if report is not None:
        report({"final": True, **{f"test/{k}": v for k, v in results["test"].items()}}, None)
    return results


class StepClock:
    """Seconds per phase of the steps of an epoch on this worker. Each :meth:`lap` charges the time
    since the previous lap to a phase. ``wait_at_collectives`` inserts a barrier before the gradient
    exchange, so that waiting for the slowest worker is measured apart from the exchange itself
    (it costs one extra collective per step: for profiling only)."""

    PHASES = ("sample", "forward", "backward", "wait", "exchange", "optimizer", "share")

    def __init__(self, *, wait_at_collectives: bool = False):
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.wait_at_collectives = wait_at_collectives
        self.last = time.perf_counter()

    def lap(self, phase: str, value: Any = None) -> Any:
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now
        return value

    def wait(self) -> None:
        if self.wait_at_collectives:
            dist.barrier()
        self.lap("wait")


def train_steps(
    strategy: Any, loader, steps: int, o: OptimConfig, epoch: int, *, profile: bool = False
) -> tuple[torch.Tensor, StepClock]:
    """One epoch's ``steps`` steps: loss, backward, gradient exchange, update, updated rows shared.
    Returns the summed loss and where the time went."""
    strategy.begin_epoch()
    strategy.model.train()
    device = next(strategy.model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # no device-to-host wait per step
    clock = StepClock(wait_at_collectives=profile)
    batches = iter(loader)
    in_flight: list = []  # the updated rows of the previous step, still travelling
    for step in range(steps):
        batch = clock.lap("sample", next(batches))  # needs no weights: overlaps the transfers
        clock.lap("share", [work.wait() for work in in_flight])
        set_lr(strategy.optimizers, scheduled_lr(o, (epoch + step / steps) / o.epochs))
        with autocast(o, device):
            loss = clock.lap("forward", strategy.loss(batch))
        for opt in strategy.optimizers:
            opt.zero_grad()
        clock.lap("backward", loss.backward())
        clock.wait()  # with run.profile: time spent waiting for the slowest worker, apart
        clock.lap("exchange", strategy.sync_gradients())
        clock.lap("optimizer", [opt.step() for opt in strategy.optimizers])
        in_flight = clock.lap("share", strategy.share_parameters())
        loss_sum += loss.detach()
    clock.lap("share", [work.wait() for work in in_flight])
    for opt in strategy.optimizers:  # the last step's gradients (the touched rows) would live on into evaluation
        opt.zero_grad()
    return loss_sum.cpu(), clock


def autocast(o: OptimConfig, device: torch.device) -> torch.autocast:
    """The step's forward under bfloat16 autocast with ``optim.mixed_precision bf16`` (bfloat16 keeps
    float32's range, so no loss scaling is needed); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=o.mixed_precision == "bf16")


LOWER_IS_BETTER = ("rmse", "mae")


def improves(metric: str, value: float, best: float) -> bool:
    """Whether a validation value beats the best so far: errors (rmse, mae) go down, the rest up."""
    return value < best if metric in LOWER_IS_BETTER else value > best


def scheduled_lr(o: OptimConfig, progress: float) -> float:
    """Learning rate at ``progress`` (fraction of ``optim.epochs`` done, in [0, 1]). A pure function
    of progress rather than a stateful scheduler, so a resumed run continues the same curve."""
    if o.lr_schedule == "constant":
        return o.lr
    final = o.lr * o.lr_final_fraction
    return final + (o.lr - final) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def over_budget(history: list[dict], spent_s: float, budget_min: float) -> bool:
    """True when one more epoch, as long as the slowest so far, would end past the budget. Every
    rank decides from the same reduced history, so all stop together."""
    longest_s = max(h["train_s"] + h.get("eval_s", 0.0) for h in history)
    return spent_s + longest_s > 60 * budget_min


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flat_metrics(record: dict) -> dict:
    """An epoch record as one flat dict of numbers (what Ray Train's report takes)."""
    out = {k: v for k, v in record.items() if not isinstance(v, dict)}
    out.update({f"{record.get('eval_split', 'val')}/{k}": v for k, v in record.get("eval", {}).items()})
    return out


def report_epoch(
    report: ReportFn | None, metrics: dict, strategy: Any, epoch: int, history: list, best: dict | None
) -> None:
    """Report an epoch with a checkpoint: every rank writes its own file (its shard of the state,
    no collective; Ray merges the files into one folder)."""
    if report is None:
        return
    stage.enter_stage("checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        strategy.save_state(Path(tmp), epoch, history, best)
        report(metrics, Path(tmp))


def maybe_crash(job: TrainJobConfig, run_dir: Path, epoch: int) -> None:
    """Testing aid: worker 0 dies abruptly once, at the start of ``run.crash_at_epoch``."""
    marker = run_dir / ".crashed-once"
    if epoch == job.run.crash_at_epoch and dist.rank() == 0 and not marker.exists():
        marker.touch()
        log.warning("crash_at_epoch=%d: worker 0 exits now (testing fault tolerance)", epoch)
        os._exit(1)


def epoch_line(record: dict, metric: str) -> str:
    """One log line per epoch: loss, time, throughput and the validation metrics."""
    text = (
        f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  train {record['train_s']:.1f}s  "
        f"{record['edges_per_s']:,.0f} edges/s"
    )
    if "eval" in record:
        shown = dict.fromkeys([metric, "recall@20", "ndcg@20"])
        text += "".join(f"  {record['eval_split']} {m} {record['eval'][m]:.4f}" for m in shown if m in record["eval"])
    return text

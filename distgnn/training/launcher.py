"""The Ray Train shell around :func:`distgnn.training.loop.fit`: it builds the strategy in each
worker, hands ``fit`` Ray's report and checkpoint, and starts the workers from the driver.

Ray stays at the edges: ``fit`` takes ``report`` as a callable, so the single-process path (tests,
``--single-process``) is the same loop without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distgnn.core import stage
from distgnn.core.cli import configure_logging
from distgnn.core.cluster import start_ray
from distgnn.core.config import PrepareConfig, TrainJobConfig, build_config, config_to_dict, replace_nested
from distgnn.core.errors import ConfigError
from distgnn.core.rundir import RESULTS_FILE
from distgnn.data.graph import load_graph, verify_graph_dir
from distgnn.data.partition import verify_partitions
from distgnn.training import plan as planning
from distgnn.training.loop import fit
from distgnn.training.partitioned import Partitioned
from distgnn.training.replicated import Replicated

log = logging.getLogger(__name__)


def build_strategy(job: TrainJobConfig, device: torch.device = torch.device("cpu")) -> Replicated | Partitioned:
    """The strategy ``cluster.partitioned`` names, built in this worker (threads set first)."""
    torch.set_num_threads(job.cluster.threads_per_worker)
    return (Partitioned if job.cluster.partitioned else Replicated)(job, device=device)


def train_in_process(job: TrainJobConfig, run_dir: Path) -> dict[str, Any]:
    """The whole loop in this process, without Ray (tests, debugging)."""
    return fit(job, run_dir, build_strategy(job))


def ray_worker(loop_config: dict) -> None:
    """What each Ray Train worker runs."""
    import ray.train
    import ray.train.torch

    job = build_config(TrainJobConfig, loop_config["job"])
    configure_logging(verbose=job.run.verbose)
    if not job.run.verbose:
        # Ray gives workers a root handler at INFO: its per-report lines would come through it, and
        # ours twice. Ours go through our handler only; the rest from WARNING.
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("distgnn").propagate = False
    if ray.train.get_context().get_world_rank() != 0:  # one worker's log is enough
        logging.getLogger("distgnn").setLevel(logging.WARNING)
    run_dir = Path(loop_config["run_dir"])
    stage.install(run_dir, ray.train.get_context().get_world_rank())  # what the driver reads if this worker dies
    stage.enter_stage("load")
    strategy = build_strategy(job, ray.train.torch.get_device())

    def report(metrics: dict, folder: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fit(job, run_dir, strategy, report=report)
    else:
        with checkpoint.as_directory() as folder:
            fit(job, run_dir, strategy, report=report, restore=Path(folder))


@dataclass(frozen=True)
class LaunchPlan:
    """What the driver planned before Ray started: kept to explain a worker Ray kills later."""

    planner: planning.Planner
    plan: planning.Plan
    machine: planning.Machine
    verdict: planning.Verdict


def plan_before_launch(job: TrainJobConfig) -> LaunchPlan:
    """Plan the job from its graph's files (never loading the graph), log the plan in one line, and
    refuse, in one line naming the options that would fit, a job the plan says does not fit this
    node. Runs in the driver before Ray starts."""
    planner = planning.make_planner(job)
    plan = planner.plan(job)
    machine = this_machine(job)
    verdict = planning.judge(plan, machine)
    log.info(planning.plan_line(plan, verdict))
    if verdict.checked and not verdict.fits:  # a remote cluster's nodes are not known here
        options = planning.options_that_fit(planner, job, machine)
        raise ConfigError(
            f"this job does not fit by its plan: {planning.need_line(verdict)}{planning.options_line(options)} "
            f"(python -m distgnn.plan --graph {job.graph} --workers {job.cluster.num_workers} shows the table)"
        )
    return LaunchPlan(planner, plan, machine, verdict)


def this_machine(job: TrainJobConfig) -> planning.Machine:
    """:func:`planning.machine_here`, less this process's own memory from what others use (the
    driver is in the plan); with Ray already up here, its processes are in the used memory."""
    import psutil
    import ray

    machine = planning.machine_here(job)
    own = psutil.Process().memory_info().rss
    return replace(
        machine,
        available_bytes=min(machine.total_bytes, machine.available_bytes + own),
        ray_counted=ray.is_initialized() or not machine.checked,
    )


def memory_kill_text(err: BaseException) -> str | None:
    """Ray's report when its memory monitor killed processes of this run, else None. Ray 2.60's
    Train V2 gives the driver a ControllerError wrapping ray.exceptions.OutOfMemoryError (the
    monitor killed the workers and the controller's poll failed), the OutOfMemoryError itself (it
    killed the controller), or a WorkerGroupError whose worker failures carry it or its text."""
    from ray.exceptions import OutOfMemoryError

    errors, todo = [], [err]
    while todo:  # the error and every error it wraps
        e = todo.pop()
        if e is None or any(e is seen for seen in errors):
            continue
        errors.append(e)
        todo += [getattr(e, "controller_failure", None), getattr(e, "health_check_failure", None), e.__cause__]
        todo += list((getattr(e, "worker_failures", None) or {}).values())
    for e in errors:
        if isinstance(e, OutOfMemoryError):
            return str(e)
    return next((str(e) for e in errors if MEMORY_KILL_MARK in str(e)), None)


MEMORY_KILL_MARK = "killed due to the node running low on memory"
# one line of Ray's report per killed process: "Selected to kill: (Actor(...): ..., task
# name=RayTrainWorker.__init__, ..., pid=18697, ...)"
KILLED_WORKER = r"Selected to kill: [^\n]*?task name=RayTrainWorker[^\n]*?pid=(\d+)"


def memory_kill_line(ray_text: str, notes: dict[int, dict], launched: LaunchPlan, options: list[str]) -> str:
    """One line for a run Ray's memory monitor ended: which workers it killed and in which stage
    (their :mod:`distgnn.core.stage` notes, matched to Ray's report by process id), how full the
    node was, what the plan had said, and the options that fit."""
    import re

    killed_pids = {int(pid) for pid in re.findall(KILLED_WORKER, ray_text)}
    killed = [r for r, note in sorted(notes.items()) if note.get("pid") in killed_pids]
    if killed:
        where = ", ".join(f"worker {r} in {notes[r]['stage']}" for r in killed)
        head = f"Ray's memory monitor killed {where}"
    else:
        stages = ", ".join(f"worker {r} in {n['stage']}" for r, n in sorted(notes.items())) or "workers not started"
        head = f"Ray's memory monitor killed processes of this run ({stages})"
    node = re.search(r"was ([\d.]+GB) used / ([\d.]+GB) limit", ray_text)
    line = re.search(r"threshold of \d+B \(([\d.]+)% of", ray_text)
    if node:
        head += f"; the node used {node[1]} of {node[2]}" + (f", past Ray's {line[1]}% line" if line else "")
    worker, node_total = planning.gib(launched.plan.worker.peak), planning.gib(launched.verdict.needed_bytes)
    head += f"; the plan had {worker} per worker ({node_total} on the node)"
    head += (
        f"; options that fit: {', '.join(options)}"
        if options
        else "; no single option fits: more memory or more machines"
    )
    return head + " (--run.verbose true shows Ray's report)"


def explain_memory_kill(
    err: BaseException, run_dir: Path, job: TrainJobConfig, launched: LaunchPlan
) -> ConfigError | None:
    """The one-line error for ``err`` when Ray's memory monitor caused it, else None. The plan was
    short by at least the ratio of what the job held at the kill (Ray's line, less what other
    processes held when it was planned) to what it predicted, so options are judged against Ray's
    line as its report gives it, with the budget shrunk by that ratio."""
    import re

    text = memory_kill_text(err)
    if text is None:
        return None
    machine, verdict = launched.machine, launched.verdict
    line = re.search(r"threshold of (\d+)B", text)
    if line:  # the line Ray drew (RAY_memory_usage_threshold as the cluster was started)
        machine = replace(machine, threshold=int(line[1]) / machine.total_bytes)
    job_at_kill = machine.threshold * machine.total_bytes - (machine.total_bytes - machine.available_bytes)
    short = max(1.0, job_at_kill / max(verdict.needed_bytes, 1))
    options = planning.options_that_fit(launched.planner, job, replace(machine, budget_scale=1 / short))
    return ConfigError(memory_kill_line(text, stage.read_stages(run_dir), launched, options))


def launch(job: TrainJobConfig, run_dir: Path, *, plan: LaunchPlan | None = None) -> dict[str, Any]:
    """Run :func:`fit` on ``cluster.num_workers`` Ray Train workers; returns the results. The job is
    planned first (:func:`plan_before_launch`, unless ``plan`` is given): one that does not fit is
    refused before Ray starts; a worker that Ray's memory monitor kills ends the run in one line."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    plan = plan or plan_before_launch(job)
    start_ray(job.cluster.address, verbose=job.run.verbose)
    use_gpu = job.cluster.use_gpu == "true" or (
        job.cluster.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"job": config_to_dict(job), "run_dir": str(run_dir.resolve())},
        scaling_config=ScalingConfig(
            num_workers=job.cluster.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": job.cluster.cpus_per_worker},
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=storage_path(job, run_dir),
            failure_config=FailureConfig(max_failures=job.cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray's per-report and per-checkpoint lines are noise to a person; and every failure
            # reaches this process as the exception fit() raises (below: one line for a memory
            # kill), so the controller's own error log (270 lines for a memory kill) stays off too
            logging_config=LoggingConfig(log_level="INFO" if job.run.verbose else "CRITICAL"),
        ),
    )
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    except Exception as err:
        explained = explain_memory_kill(err, run_dir, job, plan)
        if explained is None:
            raise
        raise explained from None
    return json.loads((run_dir / RESULTS_FILE).read_text())


def storage_path(job: TrainJobConfig, run_dir: Path) -> str:
    """Where Ray Train keeps the checkpoints: ``run.storage/NAME`` when set, else the run directory."""
    return f"{job.run.storage.rstrip('/')}/{run_dir.name}" if job.run.storage else str(run_dir.resolve())


def resolve_graph(job: TrainJobConfig) -> TrainJobConfig:
    """Point the job at a verified graph directory (an absolute path: Ray workers run in other
    folders), preparing the synthetic default if none is given."""
    if job.graph:
        verify_graph_dir(job.graph)
        needed = (["rating"] if job.task == "rating" else []) + (["weight"] if job.optim.edge_weight else [])
        graph = load_graph(job.graph)
        for column in needed:  # fail here, in one line, rather than inside every Ray worker
            graph.require_column("train", column)
        if job.cluster.partitioned:
            verify_partitions(job.graph, job.cluster.num_workers)
        return replace_nested(job, graph=str(Path(job.graph).resolve()))
    if job.cluster.partitioned:
        raise ConfigError(
            "config key 'cluster.partitioned': needs a partitioned --graph (python -m "
            "distgnn.partition --graph DIR --partitions N, N = cluster.num_workers)"
        )
    from distgnn.data.prepare import prepare

    s = job.synthetic
    # the folder name carries a digest of every generator setting, so a changed setting never
    # reuses a stale graph
    digest = hashlib.sha1(json.dumps(config_to_dict(s), sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(job.run.output_dir) / f"synthetic-u{s.num_users}-i{s.num_items}-{digest}"
    if not (folder / "meta.json").exists():
        log.info("no --graph given: preparing the built-in synthetic dataset in %s", folder)
        prepare_log = logging.getLogger("distgnn.data.prepare")
        level = prepare_log.level
        prepare_log.setLevel(logging.WARNING)  # its per-step lines are one line too many here
        try:
            prepare(PrepareConfig(output=str(folder), synthetic=s, split="random"))
        finally:
            prepare_log.setLevel(level)
    return replace_nested(job, graph=str(folder.resolve()))

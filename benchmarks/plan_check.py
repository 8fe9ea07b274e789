"""The plan (distgnn.training.plan) against what a real run measures: peak RSS per worker and of the
driver, per stage, the memory of Ray's own processes, and the bytes a step sends.

    python -m benchmarks.plan_check check --graph G [--steps 30] [--lock /work/scratch/big.lock] \\
        [--runs DIR] [--json OUT] -- --cluster.partitioned true --eval.max_users 2000 ...
    python -m benchmarks.plan_check baseline --graph SMALL [--lock ...]     # plan.MEASURED's constants
    python -m benchmarks.plan_check phases --graph G [--steps 30] -- [train flags]   # per-stage peaks

``check`` plans the job twice (the step sampled from 4 real batches, as ``python -m distgnn.plan``
does, and by the degree formula, as ``train`` does), then runs ``python -m distgnn.train`` on it (one
epoch of ``--steps`` steps, one validation, the test; under ``flock LOCK`` with ``--lock``). It reads
``results.json`` (``peak_rss_mb_per_worker``), the workers' stage notes (``RUN/.stages``: the peak so
far as each stage ended), the driver's peak (the line train prints) and samples the summed PSS of the
run's Ray processes (descendants of the driver other than the train workers) every 0.5 s. It prints
predicted against measured with the error in percent, and writes them to ``--json``.

``baseline`` runs 5 steps on a small graph (``--graph``) and prints the bare worker's
memory (its stage note's ``start_mb``), the driver's peak and Ray's processes: the numbers
``distgnn/training/plan.py``'s ``Measured`` holds.

``phases`` runs fit() in ``cluster.num_workers`` plain processes in a gloo group (no Ray), samples
each one's VmRSS every 3 ms into the stage it is in, and prints each stage's peak above the
process's start next to the plan's terms for that stage: how the working-set factors of
``Measured`` were fitted (run it under the lock for large graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

PY = sys.executable
MiB = 2**20


class RaySampler(threading.Thread):
    """Peak summed PSS of a process's descendants, train workers and the process itself left out
    (what Ray runs beside the workers), sampled every ``every_s`` seconds."""

    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_bytes = 0
        self.peak_node_used = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in children:
                try:
                    if any("RayTrainWorker" in part for part in proc.cmdline()):
                        continue
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            memory = psutil.virtual_memory()
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_node_used = max(self.peak_node_used, memory.total - memory.available)
            self.done.wait(self.every_s)


def run_train(args: list[str], *, lock: str, log: Path) -> tuple[int, str, RaySampler]:
    """``python -m distgnn.train ARGS`` (under ``flock LOCK``); returns its status, its output and
    the Ray sampler."""
    command = [PY, "-m", "distgnn.train", *args]
    if lock:
        command = ["flock", lock, *command]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
        # with flock the driver is flock's child
        driver = proc.pid
        sampler = None
        while proc.poll() is None:
            if sampler is None:
                kids = psutil.Process(proc.pid).children() if lock else [psutil.Process(proc.pid)]
                if kids:
                    driver = kids[0].pid
                    sampler = RaySampler(driver)
                    sampler.start()
            time.sleep(0.2)
        if sampler is None:
            sampler = RaySampler(driver)
        sampler.done.set()
    return proc.returncode, log.read_text(), sampler


def driver_peak_mb(output: str) -> float | None:
    """The driver's peak from train's last lines ("peak RSS per worker X MiB, driver Y MiB")."""
    match = re.search(r"peak RSS per worker [\d.]+ MiB, driver ([\d.]+) MiB", output)
    return float(match[1]) if match else None


def stage_notes(run_dir: Path) -> dict[int, dict]:
    from distgnn.core.stage import read_stages

    return read_stages(run_dir)


def error_pct(predicted: float, measured: float | None) -> str:
    return "-" if not measured else f"{100 * (predicted - measured) / measured:+.0f}%"


def check_main(argv: list[str]) -> int:
    from distgnn.core.config import TrainJobConfig, config_from_args, make_parser
    from distgnn.training import plan as planning

    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_check check")
    parser.add_argument("--graph", required=True)
    parser.add_argument("--steps", type=int, default=30, help="training steps (one epoch)")
    parser.add_argument("--lock", default="", help="run the training under flock LOCK")
    parser.add_argument("--runs", default="/tmp/plan_check/runs", help="run.output_dir of the training")
    parser.add_argument("--name", default="", help="run name (default: plan-check-<time>)")
    parser.add_argument("--json", default="", help="write predicted and measured figures here")
    parser.add_argument("train_args", nargs="*", help="train flags after --, e.g. --cluster.partitioned true")
    args = parser.parse_args(argv)
    name = args.name or time.strftime("plan-check-%Y%m%d-%H%M%S")
    train_args = [
        "--graph",
        args.graph,
        "--optim.epochs",
        "1",
        "--optim.max_steps_per_epoch",
        str(args.steps),
        *args.train_args,
        "--run.output_dir",
        args.runs,
        "--run.name",
        name,
    ]
    job = config_from_args(TrainJobConfig, make_parser(TrainJobConfig, "train", "x").parse_args(train_args))
    sampled = planning.make_planner(job, sample_batches=4)
    formula = planning.make_planner(job)
    plans = {"sampled": sampled.plan(job), "formula": formula.plan(job)}
    machine = planning.machine_here(job)
    verdict = planning.judge(plans["sampled"], machine)
    print(planning.plan_table(plans["sampled"], verdict, [], job=job, size=sampled.size), flush=True)

    Path(args.runs).mkdir(parents=True, exist_ok=True)
    log = Path(args.runs) / f"{name}.log"
    t0 = time.perf_counter()
    status, output, ray = run_train(train_args, lock=args.lock, log=log)
    wall_s = time.perf_counter() - t0
    run_dir = Path(args.runs) / name
    if status != 0 or not (run_dir / "results.json").is_file():
        print(f"training failed (exit {status}); its output: {log}")
        print("\n".join(output.splitlines()[-5:]))
        return 1
    results = json.loads((run_dir / "results.json").read_text())
    notes = stage_notes(run_dir)
    measured = {
        "worker_mb": results["peak_rss_mb_per_worker"],
        "worker_training_mb": results.get("peak_rss_mb_training"),
        "driver_mb": driver_peak_mb(output),
        "ray_system_mb": ray.peak_bytes / MiB,
        "node_used_peak_mb": ray.peak_node_used / MiB,
        "worker_start_mb": max((n.get("start_mb", 0) for n in notes.values()), default=None),
        "stage_peaks_mb": {
            stage: max(n["peak_mb_by_stage"].get(stage, 0) for n in notes.values())
            for stage in planning.PHASES
            if any(stage in n["peak_mb_by_stage"] for n in notes.values())
        },
        "traffic_per_step": results.get("traffic_per_step", {}),
        "wall_s": round(wall_s, 1),
    }
    rows = []
    for label, plan in plans.items():
        w = plan.worker
        rows.append((f"worker peak ({label} step)", w.peak / MiB, measured["worker_mb"]))
        # the peak so far as each stage ended: the running maximum of the phases up to it
        running = 0.0
        for phase in planning.PHASES:
            running = max(running, w.at(phase) / MiB)
            if phase in measured["stage_peaks_mb"]:
                rows.append((f"  peak by end of {phase} ({label})", running, measured["stage_peaks_mb"][phase]))
    rows.append(
        ("bare worker (MEASURED.worker_bytes)", planning.MEASURED.worker_bytes / MiB, measured["worker_start_mb"])
    )
    rows.append(("driver peak", plans["sampled"].driver.peak / MiB, measured["driver_mb"]))
    rows.append(("Ray's processes (PSS)", plans["sampled"].ray_system / MiB, measured["ray_system_mb"]))
    if measured["traffic_per_step"]:
        sent = measured["traffic_per_step"].get("bytes_sent_per_step")
        rows.append(("bytes sent per step (MiB)", plans["sampled"].bytes_per_step / MiB, sent / MiB if sent else None))
    print(f"\n{'':<44} {'predicted':>10} {'measured':>10} {'error':>7}")
    for label, predicted, got in rows:
        shown = f"{got:10.0f}" if got else f"{'-':>10}"
        print(f"{label:<44} {predicted:10.0f} {shown} {error_pct(predicted, got):>7}")
    print(f"(MiB; run {run_dir}, {wall_s:.0f} s; steps sampled: {plans['sampled'].step.rows:,.0f} rows/step, "
          f"formula: {plans['formula'].step.rows:,.0f})")  # fmt: skip
    if args.json:
        record = {
            "graph": args.graph,
            "train_args": train_args,
            "predicted_mb": {
                label: {p: plan.worker.at(p) / MiB for p in planning.PHASES} for label, plan in plans.items()
            },
            "predicted_peak_mb": {label: plan.worker.peak / MiB for label, plan in plans.items()},
            "predicted_driver_mb": plans["sampled"].driver.peak / MiB,
            "predicted_bytes_per_step": plans["sampled"].bytes_per_step,
            "rows_per_step": {label: plan.step.rows for label, plan in plans.items()},
            "measured": measured,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


def baseline_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_check baseline")
    parser.add_argument("--graph", required=True, help="a small prepared graph (the driver never loads it)")
    parser.add_argument("--lock", default="")
    parser.add_argument("--runs", default="/tmp/plan_check/runs")
    args = parser.parse_args(argv)
    name = time.strftime("plan-baseline-%Y%m%d-%H%M%S")
    train_args = ["--graph", args.graph, "--optim.epochs", "1", "--optim.max_steps_per_epoch", "5"]
    train_args += ["--eval.max_users", "500", "--run.output_dir", args.runs]
    train_args += ["--run.name", name]
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    status, output, ray = run_train(train_args, lock=args.lock, log=Path(args.runs) / f"{name}.log")
    if status != 0:
        print("\n".join(output.splitlines()[-5:]))
        return 1
    notes = stage_notes(Path(args.runs) / name)
    print(
        f"bare worker (imports, process group; stage note start_mb): {max(n['start_mb'] for n in notes.values())} MiB"
    )
    print(f"driver peak: {driver_peak_mb(output)} MiB")
    print(f"Ray's own processes, peak summed PSS: {ray.peak_bytes / MiB:.0f} MiB")
    return 0


def status_mb() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process now, in MiB (/proc/self/status)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) // 1024
    return out


def phases_worker(rank: int, world: int, port: int, job_dict: dict, run_dir: str, out: str) -> None:
    """One rank of :func:`phases_main`: fit() with its stages noted as Ray workers note them, and
    a thread sampling this process's memory every 3 ms into the current stage's peak."""
    import torch.distributed as tdist

    from distgnn.core import stage
    from distgnn.core.config import TrainJobConfig, build_config
    from distgnn.training import loop
    from distgnn.training.launcher import StagedStrategy, build_strategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if world > 1:
        tdist.init_process_group("gloo", rank=rank, world_size=world)
    current, peaks = ["start"], {}

    def sample() -> None:
        now = status_mb()
        peak = peaks.setdefault(current[0], dict(now))
        for key, value in now.items():
            peak[key] = max(peak[key], value)

    def enter(name: str) -> None:
        sample()
        current[0] = name
        sample()

    def sampler() -> None:
        while True:
            sample()
            time.sleep(0.003)

    stage.enter_stage = enter  # this process only: the strategy's calls land here
    threading.Thread(target=sampler, daemon=True).start()
    job = build_config(TrainJobConfig, job_dict)
    enter("load")
    strategy = StagedStrategy(build_strategy(job))
    loop.fit(job, Path(run_dir), strategy, report=lambda metrics, folder: enter("checkpoint" if folder else "test"))
    enter("end")
    Path(f"{out}.rank{rank}").write_text(json.dumps(peaks))
    if world > 1:
        tdist.destroy_process_group()


def phases_main(argv: list[str]) -> int:
    """Per-stage peak memory of fit() in P plain processes joined in a gloo group (no Ray: each
    rank's memory above its own start is what the plan's terms add to a worker), printed next to
    the plan's. How MEASURED's working-set factors were fitted."""
    import socket

    import torch.multiprocessing as mp

    from distgnn.core.config import TrainJobConfig, config_from_args, config_to_dict, make_parser
    from distgnn.core.rundir import create_run_dir
    from distgnn.training import plan as planning

    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_check phases")
    parser.add_argument("--graph", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", default="/tmp/plan_check/runs")
    parser.add_argument("train_args", nargs="*")
    args = parser.parse_args(argv)
    flags = ["--graph", args.graph, "--optim.epochs", "1", "--optim.max_steps_per_epoch", str(args.steps)]
    flags += [*args.train_args, "--run.output_dir", args.runs]
    job = config_from_args(TrainJobConfig, make_parser(TrainJobConfig, "train", "x").parse_args(flags))
    run_dir = create_run_dir(job, args.runs, "")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    world, out = job.cluster.num_workers, str(run_dir / "phases")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=phases_worker, args=(r, world, port, config_to_dict(job), str(run_dir), out))
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        print(f"a rank failed: exit codes {[proc.exitcode for proc in procs]}")
        return 1
    worker = planning.make_planner(job, sample_batches=4).plan(job).worker
    bare = planning.MEASURED.worker_bytes / MiB
    print(f"{'stage':<16} {'planned above bare':>19}   measured above start per rank (RssAnon + RssFile)")
    peaks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(world)]
    for phase in planning.PHASES:
        got = [
            f"{p[phase]['VmRSS'] - p['start']['VmRSS']} ({p[phase]['RssAnon']}+{p[phase]['RssFile']})"
            for p in peaks
            if phase in p
        ]
        print(f"{phase:<16} {worker.at(phase) / MiB - bare:19.0f}   {', '.join(got) or '-'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"check": check_main, "baseline": baseline_main, "phases": phases_main}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""The pipeline at 1M, 10M and 100M interactions (issue 22, item 7): every stage's wall time and peak
RSS, training's edges/s and step split, test Recall@20 against popularity after a fixed number of steps.

    python -m benchmarks.scale --sizes 1M,10M --workdir /work/scratch/scale --lock /work/scratch/big.lock
    python -m benchmarks.scale --sizes 50k --workdir /tmp/scale --steps 20    # a quick check

For each size N the planted-taste generator (:mod:`distgnn.data.synthetic`) writes a Parquet log of
N/10 users with ``mean_interactions`` 10 over N/50 items (its other settings default), and the stages
of :data:`STAGES` run on it, each as its own process under ``/usr/bin/time -v``: generate, prepare,
partition (2 parts), partitioned training with 2 Ray workers (LightGCN, dim 64, one epoch of
``--steps`` steps, ``--eval-users`` users evaluated), export with an IVF index. A stage's peak RSS is
time's "Maximum resident set size": its largest process among those it waited for. For training that
is the driver (Ray's worker processes are not its children: at 1M, time said 535 MiB, the driver
532, the workers 1,048); the workers' peak is ``peak_rss_mb_per_worker`` (results.json), the driver's
the line train prints, and the epoch's ``edges_per_s`` and ``step_ms`` come from metrics.jsonl.

A stage that fails is recorded with its exit status and the last line it wrote to stderr; the stages
after it for that size are skipped, and ``--on-failure stop`` also skips the sizes after it. With
``--lock``, every stage runs under ``flock LOCK`` (the lock is released between stages). Results go
to ``WORKDIR/scale.json`` (``--json``) and a markdown table, printed and, with ``--append FILE``,
appended to FILE. ``--log-input file`` writes the log as a single Parquet file and gives prepare that
file, for a prepare that does not read folders yet.

    python -m benchmarks.scale write-log --interactions 1M --output DIR [--item-features FILE]

is the generate stage alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PY = sys.executable


@dataclass(frozen=True)
class Stage:
    name: str
    command: tuple[str, ...]  # str.format fields: see stage_fields


# The stage commands, in order; change them here as the commands gain flags.
STAGES = (
    Stage(
        "generate",
        (
            PY, "-m", "benchmarks.scale", "write-log", "--interactions", "{n}", "--output", "{log}",
            "--item-features", "{item_features}", "--rows-per-file", "{rows_per_file}", "--summary", "{log_summary}",
        ),
    ),
    Stage(
        "prepare",
        (
            PY, "-m", "distgnn.prepare", "--input", "{log_input}", "--format", "parquet", "--split", "random",
            "--output", "{graph}", "--overwrite", "true",
        ),
    ),
    Stage(
        "partition",
        (PY, "-m", "distgnn.partition", "--graph", "{graph}", "--partitions", "2", "--method", "{method}"),
    ),
    Stage(
        "train",
        (
            PY, "-m", "distgnn.train", "--graph", "{graph}", "--model.name", "lightgcn", "--model.dim", "64",
            "--cluster.partitioned", "true", "--cluster.num_workers", "2", "--optim.epochs", "1",
            "--optim.max_steps_per_epoch", "{steps}", "--eval.max_users", "{eval_users}",
            "--run.output_dir", "{runs}", "--run.name", "scale",
        ),
    ),
    Stage("export", (PY, "-m", "distgnn.export", "--run", "{run}", "--output", "{export}", "--indexes", "ivf")),
)  # fmt: skip

USERS_PER_INTERACTION = 1 / 10  # the shape: 100M interactions = 10M users x 2M items
ITEMS_PER_INTERACTION = 1 / 50
MEAN_INTERACTIONS = 10.0
_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9}


def parse_size(text: str) -> int:
    """``50k``, ``1M``, ``100M`` or a plain number -> interactions."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMG]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 50k, 1M or 100M, got {text!r}")
    return int(float(match.group(1)) * _SUFFIXES.get(match.group(2), 1))


def size_label(n: int) -> str:
    for suffix, unit in sorted(_SUFFIXES.items(), key=lambda kv: -kv[1]):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def synthetic_config(n: int):
    from distgnn.core.config import SyntheticConfig

    return SyntheticConfig(
        num_users=max(1, round(n * USERS_PER_INTERACTION)),
        num_items=max(10, round(n * ITEMS_PER_INTERACTION)),
        mean_interactions=MEAN_INTERACTIONS,
    )


# ---------------------------------------------------------------------------------------------------
# The generate stage


def write_log_main(argv: list[str]) -> int:
    from distgnn.data.synthetic import DEFAULT_ROWS_PER_FILE, write_log

    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale write-log")
    parser.add_argument("--interactions", type=parse_size, required=True, help="size: 1M = 100k users x 20k items")
    parser.add_argument("--output", required=True, help="log folder to write (replaced)")
    parser.add_argument("--item-features", default="", help="also write the item features to this Parquet file")
    parser.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE)
    parser.add_argument("--summary", default="", help="write num_interactions, files and elapsed_s to this JSON file")
    args = parser.parse_args(argv)
    cfg = synthetic_config(args.interactions)
    t0 = time.perf_counter()
    written = write_log(
        cfg, args.output, rows_per_file=args.rows_per_file, item_features=args.item_features or None, overwrite=True
    )
    summary = {
        "num_users": cfg.num_users,
        "num_items": cfg.num_items,
        "num_interactions": written.num_interactions,
        "files": list(written.files),
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------------------------------------------
# Running stages


def stage_fields(args: argparse.Namespace, n: int) -> dict[str, str]:
    """The values of the stage commands' ``{fields}`` for size ``n``."""
    root = Path(args.workdir).resolve() / size_label(n)
    single_file = args.log_input == "file"
    return {
        "n": str(n),
        "log": str(root / "log"),
        "log_input": str(root / "log" / "part-00000.parquet") if single_file else str(root / "log"),
        "rows_per_file": str(n + 1 if single_file else args.rows_per_file),
        "item_features": str(root / "item_features.parquet"),
        "log_summary": str(root / "log.json"),
        "graph": str(root / "graph"),
        "method": args.method,
        "steps": str(args.steps),
        "eval_users": str(args.eval_users),
        "runs": str(root / "runs"),
        "run": str(root / "runs" / "scale"),
        "export": str(root / "export"),
        "root": str(root),
    }


def parse_time_v(text: str) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) from ``/usr/bin/time -v``'s report."""
    out: dict[str, float] = {}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if rss:
        out["peak_rss_mb"] = round(int(rss.group(1)) / 1024, 1)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if wall:
        seconds = 0.0
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
        out["wall_s"] = round(seconds, 1)
    return out


def last_line(path: Path) -> str:
    """The last non-empty line of a file (tqdm's carriage returns count as line ends)."""
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 65536))
        tail = fh.read().decode(errors="replace")
    lines = [line.strip() for line in re.split(r"[\r\n]", tail) if line.strip()]
    return lines[-1][:300] if lines else ""


def run_stage(stage: Stage, fields: dict[str, str], logs: Path, lock: str, timeout_s: float) -> dict[str, Any]:
    """Run one stage under ``/usr/bin/time -v`` (and ``flock``); its status, wall time and peak RSS."""
    command = [part.format(**fields) for part in stage.command]
    time_file = logs / f"{stage.name}.time"
    wrapped = ["/usr/bin/time", "-v", "-o", str(time_file), *command]
    if lock:
        wrapped = ["flock", lock, *wrapped]
    record: dict[str, Any] = {"stage": stage.name, "command": " ".join(command)}
    stdout, stderr = logs / f"{stage.name}.out", logs / f"{stage.name}.err"
    t0 = time.perf_counter()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            code = subprocess.run(wrapped, stdout=out, stderr=err, timeout=timeout_s or None).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    record["harness_wall_s"] = round(time.perf_counter() - t0, 1)  # includes waiting for the lock
    record.update(parse_time_v(time_file.read_text()) if time_file.exists() else {})
    record["status"] = "ok" if code == 0 else "failed"
    record["exit_status"] = code
    if code != 0:
        record["last_stderr_line"] = last_line(stderr)
    return record


def training_figures(fields: dict[str, str]) -> dict[str, Any]:
    """What the train stage's run says: worker and driver peaks, edges/s, step split, Recall@20."""
    run = Path(fields["run"])
    out: dict[str, Any] = {}
    results_file = run / "results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
        out["peak_rss_mb_per_worker"] = results.get("peak_rss_mb_per_worker")
        out["peak_rss_mb_training"] = results.get("peak_rss_mb_training")
        out["recall@20"] = results.get("test", {}).get("recall@20")
        out["popularity_recall@20"] = results.get("popularity_test", {}).get("recall@20")
    metrics_file = run / "metrics.jsonl"
    if metrics_file.exists():
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        if records:
            out["edges_per_s"] = records[-1].get("edges_per_s")
            out["step_ms"] = records[-1].get("step_ms")
            out["steps"] = records[-1].get("steps")
    driver = re.search(r"driver (\d+) MiB", (Path(fields["root"]) / "logs" / "train.out").read_text(errors="replace"))
    if driver:
        out["driver_peak_rss_mb"] = int(driver.group(1))
    return out


def run_size(args: argparse.Namespace, n: int) -> dict[str, Any]:
    fields = stage_fields(args, n)
    root = Path(fields["root"])
    for stale in ("runs", "export"):  # a re-used run name would resume; a fresh measurement wants none
        shutil.rmtree(root / stale, ignore_errors=True)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_config(n)
    result: dict[str, Any] = {
        "size": size_label(n),
        "interactions_asked": n,
        "num_users": cfg.num_users,
        "num_items": cfg.num_items,
        "stages": [],
    }
    failed = False
    for stage in STAGES:
        if stage.name not in args.stages:
            continue
        if failed:
            result["stages"].append({"stage": stage.name, "status": "skipped"})
            continue
        print(f"[{size_label(n)}] {stage.name} ...", flush=True)
        record = run_stage(stage, fields, logs, args.lock, args.stage_timeout_s)
        result["stages"].append(record)
        print(f"[{size_label(n)}] {stage.name}: {describe(record)}", flush=True)
        failed = record["status"] != "ok"
        if stage.name == "generate" and not failed:
            result["num_interactions"] = json.loads(Path(fields["log_summary"]).read_text())["num_interactions"]
        if stage.name == "train":
            result["training"] = training_figures(fields)
    result["failed"] = failed
    return result


def describe(record: dict[str, Any]) -> str:
    text = f"{record['status']}, {record.get('wall_s', '?')} s, peak RSS {record.get('peak_rss_mb', '?')} MiB"
    if record["status"] == "failed":
        text += f", exit status {record['exit_status']}: {record.get('last_stderr_line', '')}"
    return text


# ---------------------------------------------------------------------------------------------------
# Tables


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| size | users | items | interactions | stage | status | wall s | peak RSS MiB | notes |",
        "|---|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for size in results:
        for record in size["stages"]:
            notes = ""
            if record["status"] == "failed":
                notes = f"exit {record['exit_status']}: {record.get('last_stderr_line', '')}".replace("|", "/")
            if record["stage"] == "train" and size.get("training"):
                t = size["training"]
                workers, driver = fmt(t.get("peak_rss_mb_per_worker")), fmt(t.get("driver_peak_rss_mb"))
                notes = (notes + "; " if notes else "") + f"workers {workers} MiB each, driver {driver} MiB"
            lines.append(
                f"| {size['size']} | {size['num_users']:,} | {size['num_items']:,} | "
                f"{fmt(size.get('num_interactions'))} | {record['stage']} | {record['status']} | "
                f"{fmt(record.get('wall_s'))} | {fmt(record.get('peak_rss_mb'))} | {notes} |"
            )
    trained = [s for s in results if s.get("training", {}).get("edges_per_s") is not None]
    if trained:
        phases = sorted({k for s in trained for k in (s["training"].get("step_ms") or {})})
        lines += [
            "",
            "| size | steps | edges/s | Recall@20 | popularity Recall@20 | "
            + " | ".join(f"{p} ms" for p in phases)
            + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(phases),
        ]
        for s in trained:
            t = s["training"]
            split = " | ".join(fmt((t.get("step_ms") or {}).get(p), 2) for p in phases)
            lines.append(
                f"| {s['size']} | {fmt(t.get('steps'))} | {fmt(t.get('edges_per_s'))} | {fmt(t.get('recall@20'), 4)} | "
                f"{fmt(t.get('popularity_recall@20'), 4)} | {split} |"
            )
    return "\n".join(lines)


def fmt(value: Any, decimals: int = 1) -> str:
    """A table cell: ``-`` when missing, thousands separated."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{decimals}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def environment() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["write-log"]:
        return write_log_main(argv[1:])
    from distgnn.data.synthetic import DEFAULT_ROWS_PER_FILE

    names = [s.name for s in STAGES]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M", help="comma-separated interaction counts: 50k,1M,10M,100M")
    parser.add_argument("--workdir", required=True, help="folder for the logs, graphs, runs and exports (one per size)")
    parser.add_argument("--stages", default=",".join(names), help=f"stages to run, of {','.join(names)}")
    parser.add_argument("--method", default="metis", help="partition --method (default: metis)")
    parser.add_argument("--steps", type=int, default=60, help="training steps (one epoch) per worker")
    parser.add_argument("--eval-users", type=int, default=2000, help="users evaluated (validation and test)")
    parser.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE, help="interactions per log file")
    parser.add_argument(
        "--log-input", choices=("folder", "file"), default="folder", help="give prepare the log folder or one file"
    )
    parser.add_argument("--lock", default="", help="run every stage under flock LOCK")
    parser.add_argument("--on-failure", choices=("continue", "stop"), default="continue", help="after a failed stage")
    parser.add_argument("--stage-timeout-s", type=float, default=0, help="kill a stage after this long; 0 = never")
    parser.add_argument("--json", default="", help="results file (default: WORKDIR/scale.json)")
    parser.add_argument("--append", default="", help="also append the markdown table to this file")
    args = parser.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(names))
    if unknown:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(names)}")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]

    results = []
    for n in sizes:
        results.append(run_size(args, n))
        if results[-1]["failed"] and args.on_failure == "stop":
            break
    report = {"environment": environment(), "settings": {k: v for k, v in vars(args).items()}, "sizes": results}
    json_path = Path(args.json or Path(args.workdir) / "scale.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(results)
    print(f"\n{table}\n\nresults: {json_path}")
    if args.append:
        with open(args.append, "a") as fh:
            env = report["environment"]
            fh.write(f"\n{env['date']}, commit {env['commit']}, {env['cpus']} CPUs, {env['memory_gib']} GiB:\n\n")
            fh.write(table + "\n")
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

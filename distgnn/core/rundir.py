"""The run directory: resolved config, environment, metrics per epoch, a plot and a results table."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from distgnn.core.config import config_to_dict
from distgnn.core.files import (
    MARKER,
    check_plain_name,
    check_replaceable,
    write_bytes_atomic,
    write_json_atomic,
    write_marker,
)
from distgnn.core.version import VERSION

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
PLOT_FILE = "curves.png"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    import faiss
    import pyarrow
    import ray
    import torch
    import torch_geometric

    return {
        "distgnn": VERSION,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "ray": ray.__version__,
        "faiss": faiss.__version__,
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def create_run_dir(config: Any, output_dir: str, name: str) -> Path:
    """``output_dir/name`` with config.yaml and environment.json (kept from the first start on resume).
    ``name`` must be a plain name; an existing folder is used only if it is a distgnn run (resume)
    or empty."""
    run_dir = Path(output_dir) / check_plain_name(name or time.strftime("run-%Y%m%d-%H%M%S"), "config key 'run.name'")
    check_replaceable(run_dir, "run")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER).exists():
        write_marker(run_dir, "run")
    write_bytes_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(config_to_dict(config), sort_keys=False).encode())
    env_file = run_dir / "environment.json"
    if not env_file.exists():
        write_json_atomic(environment(), env_file)
    return run_dir


def write_history(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl rewritten whole from the (checkpointed) history, so a resumed run never
    duplicates or loses an epoch."""
    write_bytes_atomic(run_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in history).encode())


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_curves(run_dir: Path, history: list[dict], metric: str) -> Path | None:
    """Loss and the validation metric per epoch, side by side, as PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    evals = [h for h in history if metric in h.get("eval", {})]
    if evals:
        ax_metric.plot([h["epoch"] for h in evals], [h["eval"][metric] for h in evals], marker="o", color="C1")
        split = evals[0].get("eval_split", "val")
        ax_metric.set(xlabel="epoch", ylabel=metric, title=f"{split} {metric}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path = Path(run_dir) / PLOT_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A small fixed-width table: one row per model/baseline, one column per metric."""
    width = max(len(r) for r in rows) + 2
    widths = [max(12, len(c) + 2) for c in columns]
    lines = ["".ljust(width) + "".join(c.rjust(w) for c, w in zip(columns, widths))]
    for name, values in rows.items():
        cells = ((f"{values[c]:.4f}" if c in values else "-").rjust(w) for c, w in zip(columns, widths))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)

"""Starting Ray, once per process, the same way for every command."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any


def start_ray(address: str = "", *, num_cpus: int | None = None, verbose: bool = False) -> float:
    """Connect to the cluster of ``address`` or ``RAY_ADDRESS`` (what ``ray job submit`` sets), or
    start a local one with ``num_cpus`` CPUs (default: all); returns the seconds it took, 0 when
    Ray is already up. Workers import this checkout of distgnn, whatever their current folder."""
    import ray

    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    package_root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": package_root}
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "runtime_env": {"env_vars": env},
    }
    if not (address or os.environ.get("RAY_ADDRESS")):
        # the dashboard stays on: Ray Train's state queries need it (without it, a warning every few s)
        kwargs.update(num_cpus=num_cpus)
        # Ray Train's preemption watcher polls for nodes being drained, which a Ray started here, on
        # one machine, never has: one process fewer, and no Ray error line about its restarts in the log
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address=address or None, **kwargs)
    return time.perf_counter() - t0

"""Where the CPU goes while something runs: each process's share of one core over a window,
summed by process name, from ``/proc/<pid>/stat`` (user + system ticks; Linux only).

    python -m benchmarks.cpu_share --seconds 30

Start it while a training runs (for example ``python -m benchmarks.scaling ... --workers 2``);
100% is one core.
"""

from __future__ import annotations

import argparse
import collections
import os
import time


def cpu_ticks() -> dict[str, tuple[str, int]]:
    """``{pid: (name, user + system ticks)}`` of every process readable now."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:  # the process ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[pid] = (name, int(fields[11]) + int(fields[12]))  # utime, stime
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the sampling window")
    parser.add_argument("--top", type=int, default=20, help="process names to list")
    args = parser.parse_args()
    before, t0 = cpu_ticks(), time.time()
    time.sleep(args.seconds)
    after, elapsed = cpu_ticks(), time.time() - t0
    per_core = 100 / os.sysconf("SC_CLK_TCK") / elapsed
    share: collections.Counter = collections.Counter()
    for pid, (name, ticks) in after.items():
        if pid in before:  # processes alive for the whole window
            share[name] += (ticks - before[pid][1]) * per_core
    for name, pct in share.most_common(args.top):
        print(f"{pct:6.1f}%  {name}")
    print(f"{sum(share.values()):6.1f}%  in all, of {100 * (os.cpu_count() or 1)}%")


if __name__ == "__main__":
    main()

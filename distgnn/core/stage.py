"""Which stage each training worker is in, kept as one small file per rank in the run directory.

Ray's memory monitor kills a worker with SIGKILL: the worker cannot say anything, and Ray's report
names a process, not what it was doing. So each worker notes its stage (``load``, ``training step``,
``evaluation``, ``checkpoint``, ``test``) when it changes, with its memory at that moment, and the
driver reads the notes when a worker dies (:func:`read_stages`).

    recorder = install(run_dir, rank)     # in each worker, once
    enter_stage("evaluation")             # anywhere in the worker; a no-op where none is installed

A note is written only when the stage changes (a few times per epoch), to a temporary name and
renamed, so a reader never sees half a file. No fsync: the reader is on the same machine, and a
note lost to a power cut is worth nothing anyway.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

STAGES_DIR = ".stages"

_recorder: StageRecorder | None = None


def stage_file(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / STAGES_DIR / f"rank-{rank:03d}.json"


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux: /proc/self/statm's second field)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StageRecorder:
    """Writes this worker's stage note: ``{"rank", "pid", "stage", "since", "rss_mb", "peak_mb",
    "start_mb", "peak_mb_by_stage"}``: memory now and the peak so far (MiB), the peak when the
    recorder was installed, and the peak so far when each stage was last left (the stage whose peak
    jumps is the one that grew the process)."""

    def __init__(self, run_dir: str | Path, rank: int):
        self.path = stage_file(run_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.stage = rank, ""
        self.peaks: dict[str, float] = {}
        self.start_mb = round(peak_rss_mb(), 1)  # the bare process: imports done, nothing loaded

    def enter(self, stage: str) -> None:
        if stage == self.stage:
            return
        peak = peak_rss_mb()
        if self.stage:
            self.peaks[self.stage] = round(peak, 1)
        self.stage = stage
        note = {
            "rank": self.rank,
            "pid": os.getpid(),
            "stage": stage,
            "since": time.time(),
            "rss_mb": round(rss_mb(), 1),
            "peak_mb": round(peak, 1),
            "start_mb": self.start_mb,
            "peak_mb_by_stage": self.peaks,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(note))
        os.replace(tmp, self.path)


def install(run_dir: str | Path, rank: int) -> StageRecorder:
    """Make :func:`enter_stage` record this process's stages in ``run_dir`` as worker ``rank``."""
    global _recorder
    _recorder = StageRecorder(run_dir, rank)
    return _recorder


def uninstall() -> None:
    global _recorder
    _recorder = None


def enter_stage(stage: str) -> None:
    """Note that this worker now is in ``stage`` (a no-op unless :func:`install` was called)."""
    if _recorder is not None:
        _recorder.enter(stage)


def read_stages(run_dir: str | Path) -> dict[int, dict]:
    """Every worker's last note in ``run_dir``, by rank (unreadable notes are skipped)."""
    notes = {}
    folder = Path(run_dir) / STAGES_DIR
    for path in sorted(folder.glob("rank-*.json")) if folder.is_dir() else []:
        try:
            note = json.loads(path.read_text())
            notes[int(note["rank"])] = note
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return notes

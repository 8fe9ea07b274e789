"""Faults injected by the test, not by the training loop: a Ray Train worker SIGKILLed mid-epoch,
the driver SIGKILLed mid-run and started again, a process killed while writing a checkpoint."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from distgnn.core.checkpoint import load_checked, save_checked
from distgnn.core.rundir import create_run_dir, read_history
from distgnn.data.graph import load_graph
from distgnn.training.launcher import launch

from test_train import tiny_job, tiny_train_command

EPOCHS = 5


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def train_workers() -> list[psutil.Process]:
    """The Ray Train worker processes on this machine (Ray titles them ``ray::RayTrainWorker...``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def kill_a_worker_mid_epoch(run_dir: Path, done: threading.Event, killed: list) -> None:
    """Wait for the first epoch's line, then half an epoch more, and SIGKILL one train worker."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not done.is_set():
        history = read_history(run_dir) if (run_dir / "metrics.jsonl").exists() else []
        if history:
            time.sleep(history[0]["train_s"] / 2)
            workers = train_workers()
            if workers:
                workers[-1].send_signal(signal.SIGKILL)
                killed.append(workers[-1].pid)
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_worker_sigkilled_mid_epoch_is_replaced_and_no_epoch_is_lost_or_repeated(tiny_graph, tmp_path, ray_session):
    job = tiny_job(tiny_graph, **{"optim.epochs": EPOCHS, "cluster.num_workers": 2, "cluster.max_failures": 2})
    clean_dir = create_run_dir(job, str(tmp_path), "clean")
    clean = launch(job, clean_dir)
    # two real Ray Train workers learn, and reduce their metrics as sums over both ranks' users
    assert clean["test"]["num_users"] == int((load_graph(tiny_graph).test.counts > 0).sum())
    assert clean["test"]["recall@20"] > 1.4 * clean["popularity_test"]["recall@20"]
    assert json.loads((clean_dir / "results.json").read_text())["test"] == clean["test"]

    run_dir = create_run_dir(job, str(tmp_path), "killed")
    done, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_worker_mid_epoch, args=(run_dir, done, killed))
    killer.start()
    try:
        results = launch(job, run_dir)
    finally:
        done.set()
        killer.join()
    assert killed, "no train worker was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    history = read_history(run_dir)
    assert [h["epoch"] for h in history] == list(range(EPOCHS))  # none skipped, none twice
    # within noise of the uninterrupted run with the same seed (the resumed epochs draw other batches)
    ours, reference = results["test"]["recall@20"], clean["test"]["recall@20"]
    assert abs(ours - reference) < 0.1 * reference, (ours, reference)
    assert results["test"]["num_users"] == clean["test"]["num_users"]


@pytest.mark.slow
def test_a_driver_sigkilled_mid_run_resumes_from_its_last_checkpoint(tiny_graph, tmp_path):
    runs = tmp_path / "runs"
    command = tiny_train_command(
        tiny_graph,
        **{"run.output_dir": runs, "run.name": "resumable", "optim.epochs": EPOCHS, "cluster.num_workers": 2},
    )
    # Ray's socket paths must stay under 108 bytes: a short folder of its own
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    with open(tmp_path / "first.log", "wb") as log:
        # a session of its own, so the kill takes the driver and the local Ray it started
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while len(read_history(runs / "resumable")) < 2:
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the first run never finished two epochs"
                time.sleep(0.2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not (runs / "resumable" / "results.json").exists()
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = second.stdout + second.stderr
    resumed_at = [int(line.rsplit("epoch", 1)[1]) for line in output.splitlines() if "resumed from" in line]
    assert resumed_at and resumed_at[0] >= 1, output[-3000:]
    # a Ray started by distgnn on one machine runs without Ray Train's preemption watcher, whose
    # restart warning is a Ray error line (core_worker.cc) in the user's log
    assert "PreemptionWatcher" not in output and "core_worker.cc" not in output, output[-3000:]
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    history = read_history(runs / "resumable")
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert json.loads((runs / "resumable" / "results.json").read_text())["epochs_run"] == EPOCHS


# A process that writes a checkpoint with the file write paused half-way, so the test can SIGKILL it
# while the temporary file is torn (deterministic, no hook in the library).
KILLED_WHILE_SAVING = """
import io, sys, time
from pathlib import Path
import torch
from distgnn.core.checkpoint import save_checked

real_save = torch.save

def torn_save(obj, tmp):  # what save_checked streams into its temporary file, stopped half-way
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    with open(tmp, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        Path(sys.argv[2]).touch()
        time.sleep(600)

torch.save = torn_save
save_checked({"model": {"w": torch.full((1000,), 2.0)}, "epoch": 2}, Path(sys.argv[1]))
"""


def test_sigkill_while_writing_a_checkpoint_never_leaves_a_torn_file_loadable(tmp_path):
    path = tmp_path / "state.pt"
    save_checked({"model": {"w": torch.full((1000,), 1.0)}, "epoch": 1}, path)
    marker = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_SAVING, str(path), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    torn = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert torn and torn[0].stat().st_size > 0  # the half-written temporary file is there...
    state = load_checked(path, "checkpoint")  # ...and the checkpoint is still the previous, whole one
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.full((1000,), 1.0))
    with pytest.raises(Exception, match="truncated or damaged|checksum"):
        load_checked(torn[0], "checkpoint")

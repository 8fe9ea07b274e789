"""End to end on this machine: launch/start_cluster.sh starts a loopback Ray head, launch/submit.sh trains on it
with a relative --run.output_dir, the run lands in the project folder (not in Ray's temporary copy of the
working dir), and export reads it.

The head gets its own ports, Ray temp dir and HOME (Ray keeps its token under ~/.ray: start and submit must
share HOME). It is stopped by pid, never with `ray stop`, which stops every Ray on the machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

PROJECT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    """n free TCP ports outside Ray's worker port range (10002-19999)."""
    sockets, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            port = s.getsockname()[1]
            if not 10002 <= port <= 19999:
                ports.append(port)
    finally:
        for s in sockets:
            s.close()
    return ports


def head_processes(root: Path) -> list[psutil.Process]:
    """The head's processes: those naming ROOT (its Ray temp dir) in their command line or holding a file
    under it (the Ray Client server does only the latter: its logs), and all their descendants."""
    me = {os.getpid(), os.getppid()}
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid in me:
                continue
            if any(str(root) in a for a in p.info["cmdline"] or []) or any(
                f.path.startswith(str(root)) for f in p.open_files()
            ):
                found[p.pid] = p
                found.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            continue
    return list(found.values())


def stop_head(root: Path) -> None:
    procs = head_processes(root)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head():
    # Short folder: Ray's socket paths under it must stay within the 107-byte limit of Unix sockets.
    root = Path(tempfile.mkdtemp(prefix="dgray-", dir="/tmp" if Path("/tmp").is_dir() else None))
    dashboard, gcs, client, agent, autoscaler_metrics, dashboard_metrics = free_ports(6)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "DISTGNN_BASE_DIR", "RAY_HEAD_HOST")
    }
    env.update(
        HOME=str(root),
        RAY_TMPDIR=str(root),
        NUM_CPUS="2",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the head's python
        DASHBOARD_PORT=str(dashboard),
        GCS_PORT=str(gcs),
        CLIENT_PORT=str(client),
        DASHBOARD_AGENT_PORT=str(agent),
        AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
        DASHBOARD_METRIC_PORT=str(dashboard_metrics),
    )
    try:
        started = subprocess.run(
            ["bash", "launch/start_cluster.sh"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180
        )
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield env, root
    finally:
        stop_head(root)
        shutil.rmtree(root, ignore_errors=True)


def listening_sockets(root: Path) -> dict[tuple[str, int], str]:
    listening = {}
    for p in head_processes(root):
        try:
            connections = p.net_connections if hasattr(p, "net_connections") else p.connections  # psutil < 6
            for c in connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    listening[(c.laddr.ip, c.laddr.port)] = p.name()
        except psutil.Error:
            continue
    return listening


def test_head_listens_on_loopback_only(ray_head):
    env, root = ray_head
    expected = {int(env[k]) for k in ("DASHBOARD_PORT", "GCS_PORT", "CLIENT_PORT")}
    # the dashboard comes up in the background, after `ray start` returns: on a loaded machine it can
    # take tens of seconds, so wait for every expected port (then check all of them, not a subset)
    deadline = time.monotonic() + 90
    while True:
        listening = listening_sockets(root)
        ports = {port for _, port in listening}
        if expected <= ports or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert expected <= ports
    exposed = {f"{ip}:{port} ({name})" for (ip, port), name in listening.items() if ip not in LOOPBACK}
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"


def run_submit(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "launch/submit.sh", *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_submit_train_then_export(ray_head, tmp_path):
    env, root = ray_head
    output_dir = f"runs/submit-test-{os.getpid()}"  # relative on purpose: the user's case
    try:
        done = run_submit(
            env,
            "--optim.epochs",
            "1",
            "--run.name",
            "submit-test",
            "--run.output_dir",
            output_dir,
            "--synthetic.num_users",
            "300",
            "--synthetic.num_items",
            "200",
            "--cluster.num_workers",
            "2",
            "--cluster.cpus_per_worker",
            "0.5",
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        # a loopback-only head (launch/start_cluster.sh) runs jobs without the preemption watcher,
        # whose restart warning would be a Ray error line in the job's log
        assert "PreemptionWatcher" not in done.stdout + done.stderr, done.stdout[-4000:]
        run = PROJECT / output_dir / "submit-test"
        for name in ("model.pt", "config.yaml", "results.json", "metrics.jsonl"):
            assert (run / name).is_file(), f"{run / name} missing"
        copies = list(root.glob("ray/session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
        assert [c for c in copies if c.is_dir()], "no working-dir copy: was the job run by Ray?"
        for copy in copies:
            assert not (copy / output_dir).exists(), "the run was written into Ray's copy of the working dir"
            assert not (copy / "data").exists() and not (copy / "runs").exists()

        export = tmp_path / "export"
        exported = subprocess.run(
            [sys.executable, "-m", "distgnn.export", "--run", str(run), "--output", str(export), "--indexes", "flat"],
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
        assert (export / "manifest.json").is_file()
    finally:
        shutil.rmtree(PROJECT / output_dir, ignore_errors=True)


def test_submit_exits_with_the_jobs_status(ray_head):
    env, _ = ray_head
    done = run_submit(env, "--optim.no_such_option", "1", timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]  # argparse's status, not Ray's 1
    assert "ended FAILED, exit status 2" in done.stderr

"""The plan before launch (distgnn.training.plan, python -m distgnn.plan), the worker stage notes
(distgnn.core.stage) and the one line that replaces Ray's report of a memory kill."""

import inspect
import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest

import distgnn.data.graph
import distgnn.eval.metrics
import distgnn.nn.models
import distgnn.training.gradients
from distgnn.core import stage
from distgnn.core.config import TrainJobConfig, load_config, replace_nested
from distgnn.core.errors import ConfigError
from distgnn.training import launcher
from distgnn.training import plan as planning

GiB, MiB = 2**30, 2**20

# A bipartite graph small enough to count by hand: users 0..2, items 3..5 (item indices 0..2).
# user 0: items 0, 1; user 1: item 0; user 2: items 0, 1, 2
EDGES = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
NUM_USERS, NUM_ITEMS = 3, 3


def write_graph(folder, edges=EDGES, num_users=NUM_USERS, num_items=NUM_ITEMS, *, parts=None, val=2, test=1):
    """meta.json and graph/{indptr,indices}.npy of a bipartite graph (what a plan reads, and the
    CSR sampling reads), both directions, rows sorted."""
    n = num_users + num_items
    neighbors = [[] for _ in range(n)]
    for u, i in edges:
        neighbors[u].append(num_users + i)
        neighbors[num_users + i].append(u)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in neighbors])
    indices = np.array([v for row in neighbors for v in sorted(row)], dtype=np.int64)
    (folder / "graph").mkdir(parents=True)
    np.save(folder / "graph" / "indptr.npy", indptr)
    np.save(folder / "graph" / "indices.npy", indices)
    meta = {
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": {"train": len(edges), "val": val, "test": test},
        "features": {},
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    if parts is not None:
        (folder / "parts").mkdir()
        (folder / "parts" / "meta.json").write_text(json.dumps({"stats": parts}))
    return folder


def job_for(graph, **overrides) -> TrainJobConfig:
    return load_config(TrainJobConfig, **{"graph": str(graph), **overrides})


def term(process: planning.ProcessPlan, name: str) -> planning.Term:
    (found,) = [t for t in process.terms if t.name == name]
    return found


# ---------------------------------------------------------------------------------------------------
# What the plan reads


def test_graph_size_is_read_from_meta_and_the_row_pointer_by_hand(tmp_path):
    size = planning.read_graph_size(write_graph(tmp_path / "g"))
    assert (size.num_users, size.num_items, size.num_train_edges, size.num_val, size.num_test) == (3, 3, 6, 2, 1)
    # user degrees 2, 1, 3; item degrees 3, 2, 1
    assert size.user_degrees.degrees.tolist() == [1, 2, 3] and size.user_degrees.counts.tolist() == [1, 1, 1]
    assert size.item_degrees.degrees.tolist() == [1, 2, 3] and size.item_degrees.counts.tolist() == [1, 1, 1]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1 << 20])
def test_degree_histograms_by_chunks_equal_the_whole_row_pointer(tmp_path, chunk):
    rng = np.random.default_rng(0)
    degree = rng.integers(0, 40, 101)
    indptr = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
    np.save(tmp_path / "indptr.npy", indptr)
    users, items = planning.degree_histograms(tmp_path / "indptr.npy", 37, chunk=chunk)
    for hist, part in ((users, degree[:37]), (items, degree[37:])):
        values, counts = np.unique(part, return_counts=True)
        assert hist.degrees.tolist() == values.tolist() and hist.counts.tolist() == counts.tolist()


def test_the_driver_side_plan_never_loads_the_graph(tmp_path, monkeypatch):
    graph = write_graph(tmp_path / "g")
    (graph / "graph" / "indices.npy").unlink()  # a plan that read the CSR's entries would fail

    def refuse(*args, **kwargs):
        raise AssertionError("the plan loaded the graph")

    monkeypatch.setattr(distgnn.data.graph, "load_graph", refuse)
    monkeypatch.setattr(distgnn.data.graph.Graph, "__init__", refuse)
    monkeypatch.setattr(np, "load", refuse)  # indptr.npy is read by chunks, never mapped
    job = job_for(graph, **{"model.dim": 8, "sampler.num_neighbors": "2,2,2"})
    plan = planning.make_planner(job).plan(job)
    assert plan.worker.peak > planning.MEASURED.worker_bytes and plan.step.method == "degree formula"


# ---------------------------------------------------------------------------------------------------
# The terms against hand-computed sizes


def test_replicated_terms_by_hand(tmp_path):
    job = job_for(write_graph(tmp_path / "g"), **{"model.dim": 8, "cluster.num_workers": 2})
    planner = planning.make_planner(job)
    worker = planner.plan(job).worker
    n, e, d = 6, 6, 8
    assert term(worker, "embedding table (whole)").bytes == n * d * 4
    assert term(worker, "Adam moments (own block)").bytes == 2 * 3 * d * 4  # ceil(6 / 2) rows
    assert term(worker, "CSR (memory-mapped)").bytes == 8 * (n + 1) + 8 * 2 * e
    assert term(worker, "eval: item sets").bytes == 2 * 8 * (3 + 1) + 8 * (2 + 1)
    # 1 of val/test's users each (ceil(2 / 2)) plus every item; 3 layers hold two [N, d] layers
    assert term(worker, "eval: scoring vectors").bytes == (1 + 3) * d * 4
    assert term(worker, "eval: exact layers").bytes == 2 * n * d * 4
    # the chunk of users' scores: eval.batch_size users at most, every item, float32
    assert term(worker, "eval: score chunk").bytes == 1024 * 3 * 4
    assert "Adam moments (own block)" not in [t.name for t in worker.terms if "load" in t.phases]
    assert worker.peak == max(worker.at(p) for p in planning.PHASES)


def test_partitioned_terms_by_hand_take_the_largest_part(tmp_path):
    stats = {
        "num_parts": 2,
        "num_nodes": [2, 4],
        "num_users": [1, 2],
        "num_items": [1, 2],
        "num_edges": [4, 8],
        "num_train_edges": [2, 4],
        "num_halo_nodes": [2, 2],
        "edge_cut": 0.5,
    }
    job = job_for(
        write_graph(tmp_path / "g", parts=stats),
        **{"model.dim": 8, "cluster.num_workers": 2, "cluster.partitioned": True},
    )
    worker = planning.make_planner(job).plan(job).worker
    d = 8
    assert term(worker, "embedding rows (own part)").bytes == 4 * d * 4  # the part of 4 nodes
    assert term(worker, "Adam moments (own rows)").bytes == 2 * 4 * d * 4
    assert term(worker, "part CSR (memory-mapped)").bytes == 8 * (2 * 4 + 1) + 8 * 8 + 2 * 8 * 4
    assert term(worker, "routing arrays [N]").bytes == 6 * (8 + 4 + 8)


def test_the_plans_code_constants_are_the_codes():
    from distgnn.training.partitioned import partitioned_embeddings

    assert planning.MAX_CHUNK_SCORES == distgnn.eval.metrics.MAX_CHUNK_SCORES
    assert planning.EVAL_CHUNK_ENTRIES == distgnn.nn.models.MAX_CHUNK_ENTRIES
    assert planning.SMALL_TABLE == distgnn.training.gradients.SMALL_TABLE
    default = inspect.signature(partitioned_embeddings).parameters["max_entries"].default
    assert planning.PART_CHUNK_ENTRIES == default
    for width in (8, 64, 65, 129, 513):  # the fewest users a score piece holds
        assert max(4, width // 8) == distgnn.eval.metrics.min_piece_rows(width)


def test_the_degree_formula_counts_a_step_as_sampling_real_batches_does(tmp_path):
    """On a graph without structure (the formula's assumption) the expected rows and edges of a
    step agree with sampling batches with the project's sampler."""
    rng = np.random.default_rng(1)
    num_users, num_items = 3000, 800
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    edges = set()
    for u in range(num_users):
        k = int(rng.integers(2, 12))
        for i in rng.choice(num_items, size=k, replace=False, p=popularity / popularity.sum()):
            edges.add((u, int(i)))
    graph = write_graph(tmp_path / "g", sorted(edges), num_users, num_items)
    size = planning.read_graph_size(graph)
    for fanouts in ((5, 5), (10, 10, 10)):
        expected = planning.expected_step(size, fanouts, batch_size=256, num_negatives=1)
        sampled = planning.sampled_step(graph, fanouts, batch_size=256, num_negatives=1, num_batches=8)
        assert sampled.seeds == pytest.approx(expected.seeds, rel=0.05)
        assert sampled.entries == pytest.approx(expected.entries, rel=0.10)
        assert sampled.rows == pytest.approx(expected.rows, rel=0.10)


# ---------------------------------------------------------------------------------------------------
# The verdict and the options that fit


def big_size() -> planning.GraphSize:
    """10M users, 2M items, 100M training edges (the issue's large graph), as counts only."""
    users = planning.DegreeHistogram(np.array([10]), np.array([10_000_000]))
    items = planning.DegreeHistogram(np.array([20, 100, 5000]), np.array([1_900_000, 90_000, 10_000]))
    return planning.GraphSize(10_000_000, 2_000_000, 100_000_000, 10_000_000, 10_000_000, 0, 0, users, items)


def test_a_job_that_does_not_fit_is_refused_with_options_that_do_fit_by_the_same_model():
    job = load_config(TrainJobConfig, **{"graph": "/nowhere", "model.dim": 64, "cluster.num_workers": 2})
    size = big_size()
    step = planning.expected_step(size, job.fanouts, batch_size=job.optim.batch_size, num_negatives=1)
    planner = planning.Planner("/nowhere", size, job, step)
    machine = planning.Machine(total_bytes=44 * GiB, available_bytes=43 * GiB)
    plan = planner.plan(job)
    # two workers each holding the whole 12M x 64 table, its moments' block and two [N, d] layers
    # in evaluation: over what 44 GB leave
    verdict = planning.judge(plan, machine)
    assert not verdict.fits and verdict.needed_bytes > machine.budget_bytes
    options = planning.options_that_fit(planner, job, machine)
    assert "--model.dim 32" in options and "--cluster.partitioned true" in options
    flags = {flag: overrides for flag, overrides in planning.candidate_changes(job)}
    for option in options:
        changed = replace_nested(job, **flags[option])
        assert planning.judge(planner.plan(changed), machine).fits
    line = planning.verdict_line(verdict, options)
    assert "does NOT fit" in line and all(option in line for option in options) and "\n" not in line


def test_the_budget_is_below_rays_line_less_what_others_use():
    machine = planning.Machine(total_bytes=100 * GiB, available_bytes=80 * GiB, threshold=0.95)
    assert machine.budget_bytes == int((95 - 20) * GiB * (1 - planning.SAFETY))
    assert planning.Machine(100 * GiB, 80 * GiB, budget_scale=0.5).budget_bytes == machine.budget_bytes // 2


def test_a_gpu_verdict_counts_only_what_lives_on_the_device(tmp_path):
    job = job_for(write_graph(tmp_path / "g"), **{"model.dim": 8})
    plan = planning.make_planner(job).plan(job)
    needed = planning.judge(plan, planning.Machine(GiB, GiB, gpu_bytes=GiB)).needed_bytes
    assert needed == plan.worker.device_peak() < plan.worker.peak  # the process itself is host memory
    assert not planning.judge(plan, planning.Machine(GiB, GiB, gpu_bytes=needed - 1)).fits


def test_train_refuses_a_job_the_plan_says_does_not_fit_before_ray_starts(tmp_path, monkeypatch):
    job = job_for(write_graph(tmp_path / "g"), **{"model.dim": 8})
    small = planning.Machine(total_bytes=4 * GiB, available_bytes=2 * GiB)  # Ray's own processes alone
    monkeypatch.setattr(launcher, "this_machine", lambda job: small)
    monkeypatch.setattr(launcher, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(ConfigError, match="does not fit by its plan") as err:
        launcher.launch(job, tmp_path / "run")
    assert "\n" not in str(err.value) and "python -m distgnn.plan" in str(err.value)
    # on a cluster whose nodes are not known here the plan is logged, not judged
    monkeypatch.setattr(launcher, "this_machine", lambda job: replace(small, checked=False))
    assert launcher.plan_before_launch(job).verdict.checked is False


def test_the_plan_command_prints_the_table(tmp_path, capsys):
    from distgnn.plan import main

    graph = write_graph(tmp_path / "g")
    assert main(["--graph", str(graph), "--workers", "2", "--model.dim", "16", "--sample-batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "embedding table (whole)" in out and "Adam moments" in out and "<- peak" in out
    assert "sampled 2 batches" in out and "sent per step per worker" in out
    assert out.strip().splitlines()[-1].startswith(("fits", "does NOT fit"))
    assert main(["--graph", str(graph), "--model.dim", "16", "--gpu-memory", "0.000001"]) == 0
    assert "does NOT fit" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# Stage notes and the memory kill


def test_stage_notes_say_the_last_stage_and_the_peaks_so_far(tmp_path):
    stage.install(tmp_path, 3)
    try:
        for name in ("load", "training step", "training step", "evaluation"):
            stage.enter_stage(name)
    finally:
        stage.uninstall()
    stage.enter_stage("test")  # uninstalled: a no-op
    note = stage.read_stages(tmp_path)[3]
    assert note["stage"] == "evaluation" and note["rank"] == 3 and note["pid"] == os.getpid()
    assert list(note["peak_mb_by_stage"]) == ["load", "training step"] and note["start_mb"] > 0
    assert stage.read_stages(tmp_path / "none") == {}


def test_the_training_loop_notes_its_stages_in_order(tiny_graph, tmp_path):
    from distgnn.core.rundir import create_run_dir
    from distgnn.training.launcher import train_in_process

    job = load_config(
        TrainJobConfig,
        graph=str(tiny_graph),
        **{"model.dim": 8, "optim.epochs": 1, "optim.max_steps_per_epoch": 2, "eval.max_users": 50},
    )
    run_dir = create_run_dir(job, str(tmp_path), "run")
    stage.install(run_dir, 0)
    try:
        train_in_process(job, run_dir)
    finally:
        stage.uninstall()
    note = stage.read_stages(run_dir)[0]
    # the stages a worker passes through, each noted when left; "test" is the one it ended in
    assert list(note["peak_mb_by_stage"]) == ["load", "training step", "evaluation", "checkpoint", "baselines"]
    assert note["stage"] == "test"


RAY_REPORT = (
    "4 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 192.0.2.2, ID: 8f2f) "
    "was 4.06GB used / 23.54GB limit (0.172490)\nOOM kill reason: Memory usage 4359860224B exceeded threshold of "
    "4347484672B (17.2% of 25276071936B limit)\nRay killed 4 worker(s) based on the killing policy\n"
    "Considered workers: [\nSelected to kill: (Actor(fc60): job ID=01000000, lease ID=0100, task "
    "name=AutoscalingCoordinator:_AutoscalingCoordinatorActor.__init__, required resources={}, pid=18597, actual "
    "memory used=0.11GB, worker ID=99fc)\nSelected to kill: (Actor(ea29): job ID=01000000, lease ID=0500, task "
    "name=RayTrainWorker.__init__, required resources={CPU_group_1: 1}, pid=18697, actual memory used=0.70GB, "
    "worker ID=e4cc)\n(Actor(9c83): job ID=01000000, task name=RayTrainWorker.__init__, pid=18668)\n]"
)  # what Ray 2.60 reported in /work/scratch/D/oom (abridged), one of the two workers selected


def launched_plan(tmp_path) -> tuple[TrainJobConfig, launcher.LaunchPlan]:
    job = job_for(write_graph(tmp_path / "g"), **{"model.dim": 8})
    planner = planning.make_planner(job)
    plan = planner.plan(job)
    machine = planning.Machine(total_bytes=25276071936, available_bytes=24 * GiB)
    return job, launcher.LaunchPlan(planner, plan, machine, planning.judge(plan, machine))


def test_rays_memory_kill_becomes_one_line_naming_the_killed_worker_and_its_stage(tmp_path):
    notes = {0: {"pid": 18668, "stage": "training step"}, 1: {"pid": 18697, "stage": "evaluation"}}
    job, launched = launched_plan(tmp_path)
    line = launcher.memory_kill_line(RAY_REPORT, notes, launched, ["--eval.max_users 2000"])
    assert "\n" not in line
    assert "killed worker 1 in evaluation" in line and "worker 0" not in line
    assert "4.06GB of 23.54GB" in line and "17.2%" in line and "options that fit: --eval.max_users 2000" in line
    assert "--run.verbose true" in line
    # the controller killed, no train worker selected: every worker's stage is said
    controller_only = RAY_REPORT.replace("name=RayTrainWorker.__init__, required", "name=TrainController, required")
    line = launcher.memory_kill_line(controller_only, notes, launched, [])
    assert "worker 0 in training step, worker 1 in evaluation" in line and "no single option fits" in line


def test_the_memory_kill_is_found_in_every_shape_ray_gives_it():
    from ray.exceptions import OutOfMemoryError
    from ray.train import ControllerError, WorkerGroupError

    oom = OutOfMemoryError(RAY_REPORT)
    assert launcher.memory_kill_text(ControllerError(oom)) == RAY_REPORT  # workers killed (measured)
    assert launcher.memory_kill_text(oom) == RAY_REPORT  # the controller killed (measured)
    in_worker = WorkerGroupError("worker 1 died", {1: RuntimeError(RAY_REPORT), 0: RuntimeError("gloo: closed")})
    assert launcher.memory_kill_text(in_worker) == RAY_REPORT
    assert launcher.memory_kill_text(WorkerGroupError("x", {0: ValueError("a bug")})) is None
    assert launcher.memory_kill_text(ValueError("a bug")) is None


def test_a_memory_kill_is_explained_with_options_judged_at_rays_line(tmp_path):
    from ray.exceptions import OutOfMemoryError

    job, launched = launched_plan(tmp_path)
    stage.install(tmp_path / "run", 1)
    stage.enter_stage("evaluation")
    stage.uninstall()
    report = RAY_REPORT.replace("pid=18697", f"pid={os.getpid()}")
    err = launcher.explain_memory_kill(OutOfMemoryError(report), tmp_path / "run", job, launched)
    assert isinstance(err, ConfigError) and "killed worker 1 in evaluation" in str(err)
    # Ray's line of 4.3 GB leaves no room for Ray's processes, a driver and a worker: nothing fits
    assert "no single option fits" in str(err)
    assert launcher.explain_memory_kill(ValueError("a bug"), tmp_path / "run", job, launched) is None


def test_more_workers_and_parts_are_planned_as_even_parts():
    size = big_size()
    four = planning.even_parts(size, 4)
    assert len(four.parts) == 4 and four.parts[0].num_nodes == math.ceil(1.05 * size.num_nodes / 4)
    assert four.edge_cut == pytest.approx(3 / 4)  # unknown: a hash partition's


@pytest.mark.slow
def test_a_real_memory_kill_ends_the_run_in_one_line(tiny_graph, tmp_path, monkeypatch):
    """Ray started with its memory line 1.4 GB above what the node uses now: its monitor kills this
    run's processes (Ray's own take ~1.8 GB, each worker ~0.5 GB), and launch says so in one line."""
    import psutil
    import ray

    from distgnn.core.rundir import create_run_dir

    if ray.is_initialized():
        pytest.skip("needs a Ray of its own, started with a low memory threshold")
    job = job_for(tiny_graph, **{"model.dim": 16, "optim.epochs": 20, "eval.patience": 0, "cluster.num_workers": 2})
    planner = planning.make_planner(job)
    plan = planner.plan(job)
    memory = psutil.virtual_memory()
    machine = planning.Machine(total_bytes=memory.total, available_bytes=memory.available)
    launched = launcher.LaunchPlan(planner, plan, machine, planning.judge(plan, machine))
    used = memory.total - memory.available
    monkeypatch.setenv("RAY_memory_usage_threshold", f"{(used + 1.4 * GiB) / memory.total:.4f}")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    run_dir = create_run_dir(job, str(tmp_path), "killed")
    try:
        with pytest.raises(ConfigError, match="Ray's memory monitor killed") as err:
            launcher.launch(job, run_dir, plan=launched)
    finally:
        ray.shutdown()
    assert "\n" not in str(err.value) and "--run.verbose true" in str(err.value)

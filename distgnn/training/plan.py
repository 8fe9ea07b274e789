"""The plan of a training job before it runs: each worker's and the driver's peak memory, term by
term, the bytes a step moves between workers, and whether the job fits this machine.

    python -m distgnn.plan --graph data/big --workers 2 --partitioned      # the table
    python -m distgnn.train --graph data/big ...                           # the same plan, one line

The model follows the code, phase by phase (:data:`PHASES`): what a worker holds for the whole run
(its embedding rows, their Adam moments, its share of the CSR, the ``[N]`` per-node arrays), and
what each phase adds while it runs (a step's sampled subgraph, evaluation's scoring vectors and
score chunk, the best model read back before the test). A worker's peak is the largest phase. Every
size comes from the graph directory's ``meta.json``, ``parts/meta.json`` and the row pointer
``graph/indptr.npy`` (read by chunks), never from the graph itself, so the driver can plan a graph
it could not load. The rows a step samples come from sampling a few real batches on the
memory-mapped CSR (:func:`sampled_step`, what ``python -m distgnn.plan`` does) or, without touching
the CSR, from the degree distribution (:func:`expected_step`, what ``train`` does before Ray starts).

Constants measured rather than derived are in :data:`MEASURED`, each with the command that measured
it; ``python -m benchmarks.plan_check`` compares the plan with measured peaks.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from distgnn.core.config import TrainJobConfig, replace_nested
from distgnn.core.errors import ConfigError, DataError

GiB, MiB = 2**30, 2**20
F32, I64, I32, F64 = 4, 8, 4, 8

# The phases of a worker's run, in order (the stage names workers record, distgnn.core.stage).
PHASES = ("load", "training step", "evaluation", "checkpoint", "baselines", "test")
ALL = PHASES
FROM_STEP = PHASES[1:]
FROM_EVAL = PHASES[2:]


@dataclass(frozen=True)
class Measured:
    """Sizes the code does not determine, measured on this machine kind (2 cores, torch 2.13 CPU,
    Ray 2.60). Re-measure with ``python -m benchmarks.plan_check baseline`` (the first three) and
    ``python -m benchmarks.plan_check phases`` / ``check`` (the working-set factors: each stage's
    peak above what the plan holds, at 1M and 10M interactions, both strategies, 2 workers); each
    field says which."""

    # A Ray Train worker after importing torch, PyG and distgnn and joining the gloo group, before it
    # reads the graph: ru_maxrss (benchmarks.plan_check baseline). ENVIRONMENT.md: ~460 MB.
    worker_bytes: int = 471 * MiB
    # The train driver before the workers start: Python, torch, distgnn, ray.init (its core worker)
    # (benchmarks.plan_check baseline: peak RSS of the driver of a tiny run).
    driver_bytes: int = 532 * MiB
    # Ray's own processes on the head node (GCS, raylet, dashboard and its agents, the Train
    # controller), summed PSS while a job runs (benchmarks.plan_check baseline).
    ray_system_bytes: int = 1840 * MiB
    # A training step's working set per sampled row: [rows, d] float32 buffers alive at the step's
    # peak (the gathered inputs, the layers' outputs and their gradients, the sparse gradient and
    # the rows sent to their owners). Counted from the code, then checked with benchmarks.plan_check
    # phases: the training step's peak above what is held, replicated, 1M and 10M, within 1-7%
    # with these three factors (batch 2048 and fanouts 10,10,10 only: not fitted over them).
    step_row_buffers: float = 6.0
    # ... and bytes per sampled edge (the subgraph's row/col/edge ids, the adjacency, its weights).
    step_edge_bytes: float = 64.0
    # ... and [B, C] float32 score matrices of the sampled softmax (logits, mask, softmax, gradient).
    step_score_buffers: float = 5.0
    # A partitioned step's [rows, d] buffers besides: the rows fetched from their owners, the rows
    # served to the others and the gradients sent back (benchmarks.plan_check phases, partitioned,
    # 1M and 10M: the step's peak above the replicated terms).
    fetch_row_buffers: float = 2.0
    # Code and buffers torch, PyG and distgnn take when first used (benchmarks.plan_check phases:
    # the load stage's peak less its terms, 1M and 10M, between 0 and 60 MiB).
    first_use_bytes: int = 30 * MiB
    # Of a partitioned step's working set, what the allocator keeps after the steps (freed heap
    # chunks glibc does not return), which the later phases' buffers come on top of: a partitioned
    # worker's evaluation peak at 10M (benchmarks.plan_check check, 2,170 MiB against 1,841
    # planned without it: 0.44 of the step's 751 MiB; its checkpoint and baselines stages by
    # benchmarks.plan_check phases agree). Replicated evaluation reuses it (its peak was planned
    # within 2% without), so only the partitioned plan has this term.
    step_kept_fraction: float = 0.4
    # Bytes a worker keeps per held-out pair it read at load (pyarrow's memory pool keeps the
    # buffers of read_table, and the item sets built from them): benchmarks.plan_check phases,
    # partitioned 10M, load stage (+140 MiB for 2.6M val and test pairs).
    held_out_pair_bytes: float = 54.0


MEASURED = Measured()

# Ray's memory monitor kills workers when the node's used memory passes this fraction
# (RAY_memory_usage_threshold, default 0.95, ray/_private/ray_constants.py).
RAY_THRESHOLD_ENV, RAY_DEFAULT_THRESHOLD = "RAY_memory_usage_threshold", 0.95
# Of what is left below Ray's line, the plan keeps this fraction free: the model's error (within
# 20% in benchmarks/RESULTS.md) and what other processes start meanwhile.
SAFETY = 0.15
# Code constants the terms read (kept equal to the code's; tests/test_plan.py checks them).
EVAL_CHUNK_ENTRIES = 1 << 20  # distgnn.nn.models.MAX_CHUNK_ENTRIES
EVAL_CHUNK_ROWS = 1 << 16  # full_graph_embeddings' chunk_size
PART_CHUNK_ENTRIES = 1 << 17  # distgnn.training.partitioned.partitioned_embeddings' max_entries
MAX_CHUNK_SCORES = 1 << 25  # distgnn.eval.metrics.MAX_CHUNK_SCORES
CHUNK_ENTRY_BYTES = 60  # an adjacency entry's index and weight temporaries (models.py says ~60 B)
SMALL_TABLE = 2**18  # distgnn.training.gradients.SMALL_TABLE


# ---------------------------------------------------------------------------------------------------
# What the plan reads of a graph directory


@dataclass(frozen=True)
class DegreeHistogram:
    """How many nodes have each degree: ``counts[i]`` nodes of degree ``degrees[i]``."""

    degrees: np.ndarray  # [m] int64 ascending
    counts: np.ndarray  # [m] int64

    @property
    def num_nodes(self) -> int:
        return int(self.counts.sum())

    @property
    def total(self) -> int:
        return int((self.degrees * self.counts).sum())


@dataclass(frozen=True)
class PartSize:
    """One part's counts, from ``parts/meta.json``'s statistics."""

    num_nodes: int
    num_users: int
    num_items: int
    num_entries: int  # CSR entries of the owned rows
    num_train_edges: int
    num_halo_nodes: int


@dataclass(frozen=True)
class GraphSize:
    """The counts of a graph directory a plan needs."""

    num_users: int
    num_items: int
    num_train_edges: int  # E (the CSR holds 2E entries)
    num_val: int
    num_test: int
    user_features: int
    item_features: int
    user_degrees: DegreeHistogram
    item_degrees: DegreeHistogram
    parts: tuple[PartSize, ...] = ()
    edge_cut: float = 0.0

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items


def degree_histograms(indptr_file: Path, num_users: int, *, chunk: int = 1 << 20) -> tuple[DegreeHistogram, ...]:
    """Degree histograms of users and items from ``graph/indptr.npy``, read by chunks of ``chunk``
    entries with plain reads (no memory map: the pages never count in this process's memory)."""
    with open(indptr_file, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if len(shape) != 1 or dtype != np.int64 or fortran:
            raise DataError(f"{indptr_file}: expected a 1-D int64 row pointer, got {dtype} {shape}")
        sums = [np.zeros(1, np.int64), np.zeros(1, np.int64)]  # users, items: count per degree
        previous, start = None, 0
        while start < shape[0]:
            block = np.fromfile(fh, dtype=np.int64, count=min(chunk, shape[0] - start))
            if block.size == 0:
                raise DataError(f"{indptr_file}: truncated ({start} of {shape[0]} entries)")
            values = block if previous is None else np.concatenate([previous, block])
            degree = np.diff(values)
            first = start - (0 if previous is None else 1)  # node id of degree[0]
            cut = int(np.clip(num_users - first, 0, degree.size))
            for side, part in ((0, degree[:cut]), (1, degree[cut:])):
                if part.size:
                    counts = np.bincount(part)
                    if counts.size > sums[side].size:
                        counts[: sums[side].size] += sums[side]
                        sums[side] = counts
                    else:
                        sums[side][: counts.size] += counts
            previous, start = block[-1:], start + block.size
    out = []
    for counts in sums:
        degrees = np.nonzero(counts)[0]
        out.append(DegreeHistogram(degrees.astype(np.int64), counts[degrees].astype(np.int64)))
    return tuple(out)


def read_graph_size(graph_dir: str | Path) -> GraphSize:
    """The :class:`GraphSize` of a graph directory from ``meta.json``, ``parts/meta.json`` (when
    the graph has parts) and the row pointer; nothing else is read."""
    graph_dir = Path(graph_dir)
    try:
        meta = json.loads((graph_dir / "meta.json").read_text())
    except FileNotFoundError:
        raise DataError(f"{graph_dir}: not a graph directory (no meta.json); run python -m distgnn.prepare") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{graph_dir}/meta.json: not valid JSON ({err})") from None
    num_users, num_items = int(meta["num_users"]), int(meta["num_items"])
    counts = meta.get("num_interactions", {})
    users, items = degree_histograms(graph_dir / "graph" / "indptr.npy", num_users)
    if users.num_nodes != num_users or items.num_nodes != num_items:
        raise DataError(f"{graph_dir}/graph/indptr.npy: does not have {num_users + num_items + 1} entries")
    parts: tuple[PartSize, ...] = ()
    edge_cut = 0.0
    parts_meta = graph_dir / "parts" / "meta.json"
    if parts_meta.is_file():  # none yet: a partitioned job is planned on balanced parts (even_parts)
        stats = json.loads(parts_meta.read_text())["stats"]
        parts = tuple(PartSize(*(int(stats[key][p]) for key in PART_KEYS)) for p in range(int(stats["num_parts"])))
        edge_cut = float(stats["edge_cut"])
    features = meta.get("features", {}) or {}
    return GraphSize(
        num_users=num_users,
        num_items=num_items,
        num_train_edges=users.total,
        num_val=int(counts.get("val", 0)),
        num_test=int(counts.get("test", 0)),
        user_features=int(features.get("user", 0)),
        item_features=int(features.get("item", 0)),
        user_degrees=users,
        item_degrees=items,
        parts=parts,
        edge_cut=edge_cut,
    )


PART_KEYS = ("num_nodes", "num_users", "num_items", "num_edges", "num_train_edges", "num_halo_nodes")


def even_parts(size: GraphSize, num_parts: int, *, balance: float = 1.05) -> GraphSize:
    """``size`` split into ``num_parts`` parts as a balanced partitioner would (each part
    ``balance`` times the mean): for planning a partitioning that does not exist yet."""
    n, e = size.num_nodes, size.num_train_edges

    def share(x: int) -> int:
        return math.ceil(balance * x / num_parts)

    part = PartSize(share(n), share(size.num_users), share(size.num_items), share(2 * e), share(e), share(n))
    cut = size.edge_cut or (num_parts - 1) / num_parts  # unknown: a hash partition's
    return replace(size, parts=(part,) * num_parts, edge_cut=cut)


# ---------------------------------------------------------------------------------------------------
# The rows a training step samples


@dataclass(frozen=True)
class StepSize:
    """What one worker's training step touches, averaged over batches."""

    seeds: float  # distinct seed nodes (the batch's users, positives and negatives)
    rows: float  # distinct nodes of the sampled subgraph (embedding rows gathered)
    entries: float  # sampled edges
    frontier: tuple[float, ...]  # nodes expanded at each hop
    candidates: float  # distinct candidate items of the batch (softmax columns from this worker)
    method: str  # how it was estimated


def _reached(hist: DegreeHistogram, draws: float, uniform: float = 0.0) -> np.ndarray:
    """Per degree: the chance that a node of that degree is among ``draws`` draws made in
    proportion to degree plus ``uniform`` draws made uniformly (independent draws)."""
    rate = draws * hist.degrees / max(hist.total, 1) + uniform / max(hist.num_nodes, 1)
    return -np.expm1(-rate)


def expected_step(
    size: GraphSize,
    fanouts: tuple[int, ...],
    *,
    batch_size: int,
    num_negatives: int,
    edge_sampling: str = "shuffle",
    num_users: int | None = None,
) -> StepSize:
    """The expected :class:`StepSize` from the degree distributions alone, treating each sampled
    neighbor as a draw in proportion to degree on the other side (no correlation between
    neighborhoods: real graphs, with communities, reach somewhat fewer distinct nodes, so this
    errs high). ``num_users``: the users a worker draws its batches from (its part's), default all.

    A node is reached by hop ``h`` with chance ``1 - exp(-M_h d / D)`` after ``M_h`` degree-biased
    draws on its side (``d`` its degree, ``D`` the side's total); the nodes first reached at hop
    ``h`` are expanded at hop ``h + 1``, each into ``min(k, d)`` sampled neighbors."""
    sides = (size.user_degrees, size.item_degrees)
    b = float(batch_size)
    # hop 0: the batch's users (edge-drawn: degree-biased; user_uniform: uniform over users), its
    # positive items (degree-biased) and its uniform negative items
    user_draws, user_uniform = (0.0, b) if edge_sampling == "user_uniform" else (b, 0.0)
    if num_users is not None and num_users < size.num_users:  # a part's users: a slice of the side
        frac = num_users / size.num_users
        user_draws, user_uniform = user_draws / frac, user_uniform / frac
    draws = [user_draws, b]  # cumulative degree-biased draws per side
    uniform = [user_uniform, b * num_negatives]
    reached = [_reached(sides[s], draws[s], uniform[s]) for s in (0, 1)]
    if num_users is not None and num_users < size.num_users:
        reached[0] = reached[0] * (num_users / size.num_users)
    new = [r.copy() for r in reached]  # chance per degree of being first reached at this hop
    seeds = sum(float((sides[s].counts * new[s]).sum()) for s in (0, 1))
    candidates = float((sides[1].counts * new[1]).sum())
    rows, entries, frontier = seeds, 0.0, []
    for k in fanouts:
        frontier.append(sum(float((sides[s].counts * new[s]).sum()) for s in (0, 1)))
        sampled = [
            float((sides[s].counts * new[s] * (sides[s].degrees if k < 0 else np.minimum(sides[s].degrees, k))).sum())
            for s in (0, 1)
        ]
        entries += sum(sampled)
        for s in (0, 1):  # neighbors of side s's frontier land on the other side
            draws[1 - s] += sampled[s]
        before = reached
        reached = [_reached(sides[s], draws[s], uniform[s]) for s in (0, 1)]
        if num_users is not None and num_users < size.num_users:
            # the part's own users were drawn first; other users are reached only by sampling
            reached[0] = np.maximum(reached[0], before[0])
        new = [np.maximum(reached[s] - before[s], 0.0) for s in (0, 1)]
        rows += sum(float((sides[s].counts * new[s]).sum()) for s in (0, 1))
    return StepSize(seeds, rows, entries, tuple(frontier), candidates, "degree formula")


def sampled_step(
    graph_dir: str | Path,
    fanouts: tuple[int, ...],
    *,
    batch_size: int,
    num_negatives: int,
    edge_sampling: str = "shuffle",
    num_batches: int = 4,
    seed: int = 0,
) -> StepSize:
    """The :class:`StepSize` of ``num_batches`` real batches: training edges drawn as the loader
    draws them, negatives and the subgraph sampled by the project's sampler on the memory-mapped
    CSR (its pages stay in the page cache, shared with the workers). Exact in expectation for the
    replicated strategy; for a partitioned worker, whose users are one part's, close."""
    import torch

    from distgnn.nn.sampler import sample_negative_items, sample_subgraph

    graph_dir = Path(graph_dir)
    meta = json.loads((graph_dir / "meta.json").read_text())
    num_users, num_items = int(meta["num_users"]), int(meta["num_items"])
    indptr = torch.from_numpy(np.load(graph_dir / "graph" / "indptr.npy", mmap_mode="c"))
    indices = torch.from_numpy(np.load(graph_dir / "graph" / "indices.npy", mmap_mode="c"))
    num_edges = int(indptr[num_users])
    generator = torch.Generator().manual_seed(seed)
    totals = np.zeros(4)
    hops = np.zeros(len(fanouts))
    for _ in range(num_batches):
        if edge_sampling == "user_uniform":  # a uniform user, then one of their edges
            user = torch.randint(num_users, (batch_size,), generator=generator)
            start, degree = indptr[user], indptr[user + 1] - indptr[user]
            position = start + (torch.rand(batch_size, generator=generator) * degree).long()
        else:
            position = torch.randint(num_edges, (batch_size,), generator=generator)
            user = torch.searchsorted(indptr[: num_users + 1], position, right=True) - 1
        item = indices.index_select(0, position)
        negatives = sample_negative_items(
            indptr, indices, user, max(num_negatives, 0), num_users=num_users, num_items=num_items, generator=generator
        ).flatten()
        seeds = torch.unique(torch.cat([user, item, negatives]))
        out = sample_subgraph(indptr, indices, seeds, list(fanouts), generator=generator)
        candidates = torch.unique(torch.cat([item, negatives])).numel()
        totals += [seeds.numel(), out.node.numel(), out.row.numel(), candidates]
        hops += out.num_sampled_nodes[:-1] if fanouts else 0
    mean = totals / num_batches
    return StepSize(*mean[:3], tuple(hops / num_batches), float(mean[3]), f"sampled {num_batches} batches")


def scaled_step(step: StepSize, reference: StepSize, target: StepSize) -> StepSize:
    """``step`` (measured for a ``reference`` job) carried over to another job: each count times the
    ratio of the degree formula's counts for the two jobs (how the options of a refusal are sized
    from one sampled estimate)."""

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 1.0

    if step is reference:
        return target
    frontier = (
        tuple(f * ratio(t, r) for f, t, r in zip(step.frontier, target.frontier, reference.frontier, strict=False))
        or target.frontier
    )
    return StepSize(
        seeds=step.seeds * ratio(target.seeds, reference.seeds),
        rows=step.rows * ratio(target.rows, reference.rows),
        entries=step.entries * ratio(target.entries, reference.entries),
        frontier=frontier,
        candidates=step.candidates * ratio(target.candidates, reference.candidates),
        method=step.method + ", scaled",
    )


# ---------------------------------------------------------------------------------------------------
# Terms


@dataclass(frozen=True)
class Term:
    """A block of memory a process holds: its size, the phases it is alive in, where it lives."""

    name: str
    bytes: int
    phases: tuple[str, ...] = ALL
    detail: str = ""
    device: bool = False  # on the training GPU when there is one


@dataclass(frozen=True)
class ProcessPlan:
    """The terms of one process (a worker, the driver) and its peak over the phases."""

    role: str
    terms: tuple[Term, ...]

    def at(self, phase: str, *, device_only: bool = False) -> int:
        return sum(t.bytes for t in self.terms if phase in t.phases and (t.device or not device_only))

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.at)

    @property
    def peak(self) -> int:
        return self.at(self.peak_phase)

    def device_peak(self) -> int:
        return max(self.at(p, device_only=True) for p in PHASES)


@dataclass(frozen=True)
class Plan:
    """A job's plan: one worker (the largest part's, for partitioned), the driver, Ray's own
    processes, and the bytes one worker sends per step."""

    num_workers: int
    partitioned: bool
    worker: ProcessPlan
    driver: ProcessPlan
    ray_system: int
    traffic: tuple[Term, ...]
    step: StepSize

    @property
    def bytes_per_step(self) -> int:
        return sum(t.bytes for t in self.traffic)

    def node_total(self, workers_here: int) -> int:
        """Memory of everything on the driver's node: the workers placed there, the driver, Ray."""
        return workers_here * self.worker.peak + self.driver.peak + self.ray_system


def _fmt_count(x: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def model_width(job: TrainJobConfig) -> int:
    """Columns of the id table: NCF's rows hold a GMF half and an MLP half."""
    return 2 * job.model.dim if job.model.name == "ncf" else job.model.dim


def has_bias_table(job: TrainJobConfig) -> bool:
    return job.model.item_bias or job.task == "rating"


def scoring_columns(job: TrainJobConfig) -> int:
    """Columns the scoring vectors add (distgnn.nn.models.scoring_columns)."""
    return 2 if job.task == "rating" else (1 if job.model.item_bias else 0)


def layer_buffers(job: TrainJobConfig) -> int:
    """``[rows, d]`` layers the layer-wise exact embeddings hold at once: none for one layer, one
    for two, two while a middle layer of three or more is built."""
    layers = 0 if job.model.name in ("mf", "ncf") else job.model.num_layers
    return min(max(layers - 1, 0), 2)


def step_terms(job: TrainJobConfig, step: StepSize, num_workers: int) -> list[Term]:
    """A training step's working set (alive during steps only)."""
    m, width = MEASURED, model_width(job)
    terms = [
        Term(
            "step: sampled rows",
            int(m.step_row_buffers * step.rows * width * F32),
            ("training step",),
            f"{_fmt_count(step.rows)} rows x {width} x 4 B x {m.step_row_buffers:g} buffers",
            device=True,
        ),
        Term(
            "step: sampled edges",
            int(m.step_edge_bytes * step.entries),
            ("training step",),
            f"{_fmt_count(step.entries)} edges x {m.step_edge_bytes:g} B",
            device=True,
        ),
    ]
    if job.optim.loss == "softmax":
        columns = step.candidates * (num_workers if job.optim.shared_negatives else 1)
        batch = job.optim.batch_size
        terms.append(
            Term(
                "step: softmax scores",
                int(m.step_score_buffers * batch * columns * F32),
                ("training step",),
                f"{batch} x {_fmt_count(columns)} x 4 B x {m.step_score_buffers:g}",
                device=True,
            )
        )
    return terms


def eval_terms(job: TrainJobConfig, *, vector_rows: int, layer_rows: int, num_items: int, chunk_entries: int) -> list:
    """Evaluation's working set (validation and test): the scoring vectors, the layers of the
    exact embeddings and a chunk's adjacency, and a chunk of users' scores against every item."""
    width, cols = model_width(job), scoring_columns(job)
    layers = layer_buffers(job)
    phases = ("evaluation", "test")
    return [
        Term(
            "eval: scoring vectors",
            vector_rows * (width + cols) * F32,
            phases,
            f"{_fmt_count(vector_rows)} rows x {width + cols} x 4 B",
        ),
        Term(
            "eval: exact layers",
            layers * layer_rows * width * F32,
            phases,
            f"{layers} x {_fmt_count(layer_rows)} x {width} x 4 B",
            device=True,
        ),
        Term(
            "eval: adjacency chunk",
            chunk_entries * CHUNK_ENTRY_BYTES + EVAL_CHUNK_ROWS * width * F32 if chunk_entries and layers else 0,
            phases,
            f"{_fmt_count(chunk_entries)} entries x {CHUNK_ENTRY_BYTES} B + a chunk of rows",
            device=True,
        ),
        score_chunk(job, num_items, F32, phases),
    ]


def score_chunk(job: TrainJobConfig, num_items: int, itemsize: int, phases: tuple[str, ...]) -> Term:
    """A chunk of users' scores against every item: ``eval.batch_size`` users, at most
    ``MAX_CHUNK_SCORES`` scores (distgnn.eval.metrics.score_pieces)."""
    fewest = max(4, (model_width(job) + scoring_columns(job)) // 8)  # distgnn.eval.metrics.min_piece_rows
    piece = min(job.eval.batch_size, max(fewest, MAX_CHUNK_SCORES // max(num_items, 1)))
    kind = "float32" if itemsize == F32 else "float64"
    return Term(
        "eval: score chunk" if itemsize == F32 else "baselines: popularity score chunk",
        piece * num_items * itemsize,
        phases,
        f"{piece} users x {_fmt_count(num_items)} items, {kind} (eval.batch_size)",
        device=itemsize == F32,
    )


def evaluated_users(size: GraphSize, max_users: int, num_workers: int, *, share: float | None = None) -> int:
    """Users one worker scores: its ``share`` (default ``1 / num_workers``) of those with held-out
    items (at most one per held-out pair), or of the ``eval.max_users`` sample."""
    with_held_out = min(size.num_users, max(size.num_val, size.num_test))
    if 0 < max_users < size.num_users:
        with_held_out = min(with_held_out, max_users)
    return math.ceil(with_held_out * (1 / num_workers if share is None else share))


def process_terms() -> list[Term]:
    """What every worker holds before and besides the graph and the model."""
    m = MEASURED
    return [
        Term("process: Python, torch, Ray worker", m.worker_bytes, ALL, "measured (plan.MEASURED)"),
        Term("process: code first used in training", m.first_use_bytes, ALL, "measured (plan.MEASURED)"),
    ]


def held_out_read(size: GraphSize, splits: tuple[str, ...]) -> Term:
    """The held-out splits read at load (pyarrow keeps the memory it read them into)."""
    pairs = (size.num_val if "val" in splits else 0) + (size.num_test if "test" in splits else 0)
    return Term(
        f"{' and '.join(splits)} pairs read",
        int(MEASURED.held_out_pair_bytes * pairs),
        ALL,
        f"{_fmt_count(pairs)} pairs x {MEASURED.held_out_pair_bytes:g} B (plan.MEASURED)",
    )


def replicated_worker(job: TrainJobConfig, size: GraphSize, step: StepSize, num_workers: int) -> ProcessPlan:
    """One replicated worker (:mod:`distgnn.training.replicated`): the whole table, its block of the
    Adam moments, the memory-mapped CSR, its shard of the training edges."""
    n, e, u, i, p = size.num_nodes, size.num_train_edges, size.num_users, size.num_items, num_workers
    width, block = model_width(job), math.ceil(size.num_nodes / num_workers)
    tables = [width] + ([1] if has_bias_table(job) else [])
    table = sum(n * w * F32 for w in tables)
    dense = [step.rows * p * 1.05 > n or n * w <= SMALL_TABLE for w in tables]  # see reduce_gradients
    terms = process_terms() + [
        Term("embedding table (whole)", table, ALL, f"{_fmt_count(n)} rows x {'+'.join(map(str, tables))} x 4 B", True),
        Term(
            "Adam moments (own block)",
            2 * sum(block * w * F32 for w in tables),
            FROM_STEP,
            f"2 x {_fmt_count(block)} rows x {width} x 4 B",
            True,
        ),
        Term("CSR (memory-mapped)", I64 * (n + 1) + I64 * 2 * e, ALL, f"{_fmt_count(2 * e)} entries x 8 B + row ptr"),
        Term(
            "per-node arrays",
            I64 * n * 2 + I64 * block * len(tables),
            ALL,
            "degrees, the sampler's node map [N] int64; the optimizer's row slots",
            True,
        ),
        Term(
            "training edges (shard)",
            (2 * I64 + I64) * math.ceil(e / p),
            ALL,
            f"{_fmt_count(e / p)} edges: [2, E/P] ids + the epoch's order",
        ),
        Term("load: shard permutation", I64 * e + 4 * I64 * math.ceil(e / p), ("load",), "randperm(E) int64 + copies"),
        held_out_read(size, ("val",)),
    ]
    if any(dense):
        dense_bytes = 3 * sum(n * w * F32 for w, d in zip(tables, dense) if d)
        terms.append(
            Term(
                "exchange buffers (whole blocks)",
                dense_bytes + 2 * I64 * n,
                FROM_STEP,
                "sum, received and copies, table-sized: the workers' rows outnumber the table's",
                True,
            )
        )
    if job.model.name == "sage" and job.model.use_features and (size.user_features or size.item_features):
        feats = n * (size.user_features + size.item_features) * F32
        terms.append(Term("node features [N, F]", feats, ALL, "sage: user and item features, block layout"))
    terms += step_terms(job, step, p)
    users = evaluated_users(size, job.eval.max_users, p)
    terms.append(
        Term(
            "eval: item sets",
            2 * I64 * (u + 1) + I64 * (size.num_val + size.num_test),
            FROM_EVAL,
            "val and test sets [U + 1] + [pairs] int64 (training items are read in place)",
        )
    )
    chunk = min(EVAL_CHUNK_ENTRIES, 2 * e)
    terms += eval_terms(job, vector_rows=users + i, layer_rows=n, num_items=i, chunk_entries=chunk)
    terms += [
        Term("checkpoint: best model read back", table, ("checkpoint",), "model.pt, memory-mapped while copied"),
        Term("baselines: popularity vectors", 2 * F64 * n, ("baselines",), "[N, 1] float64, and a copy"),
        score_chunk(job, i, F64, ("baselines",)),
    ]
    return ProcessPlan("worker", tuple(terms))


def partitioned_worker(job: TrainJobConfig, size: GraphSize, step: StepSize, num_workers: int) -> ProcessPlan:
    """The worker of the part whose plan peaks highest (:mod:`distgnn.training.partitioned`)."""
    if len(size.parts) != num_workers:
        raise ConfigError(
            f"config key 'cluster.num_workers': {num_workers} workers need {num_workers} parts, the graph has "
            f"{len(size.parts)} (python -m distgnn.partition --partitions {num_workers})"
        )
    return max((part_worker(job, size, step, part) for part in size.parts), key=lambda w: w.peak)


def part_worker(job: TrainJobConfig, size: GraphSize, step: StepSize, part: PartSize) -> ProcessPlan:
    """One partitioned worker: its rows and their moments, its part's CSR and edges, the ``[N]``
    routing arrays; a step also holds the rows it fetched from their owners and those it served."""
    n, i, width, p = size.num_nodes, size.num_items, model_width(job), len(size.parts)
    tables = [width] + ([1] if has_bias_table(job) else [])
    rows = part.num_nodes
    table = sum(rows * w * F32 for w in tables)
    features = (size.user_features + size.item_features) * F32 * rows
    terms = process_terms() + [
        Term("embedding rows (own part)", table, ALL, f"{_fmt_count(rows)} rows x {width} x 4 B", True),
        Term("Adam moments (own rows)", 2 * table, FROM_STEP, f"2 x {_fmt_count(rows)} x {width} x 4 B", True),
        Term(
            "part CSR (memory-mapped)",
            I64 * (2 * rows + 1) + I64 * part.num_entries + 2 * I64 * part.num_train_edges + features,
            ALL,
            f"{_fmt_count(part.num_entries)} entries, {_fmt_count(part.num_train_edges)} edges, node ids",
        ),
        Term(
            "routing arrays [N]",
            I64 * n + I32 * n + I64 * n,
            ALL,
            "degrees [N] int64, node -> part [N] int32, the sampler's node map [N] int64",
        ),
        Term("optimizer row slots", I64 * rows * len(tables), FROM_STEP, "[n_p] int64 per table", True),
        Term(
            "training edges' draw weights, order",
            2 * F64 * part.num_train_edges,
            ALL,
            "[E_p] float64 (log-Q weights) and the epoch's permutation",
        ),
        Term("load: global row pointer", I64 * (n + 1), ("load",), "indptr.npy, read for the degrees"),
        held_out_read(size, ("val", "test")),
    ]
    terms += step_terms(job, step, p)
    fetched = MEASURED.fetch_row_buffers
    terms.append(
        Term(
            "step: rows fetched and served",
            int(fetched * step.rows * width * F32),
            ("training step",),
            f"{_fmt_count(step.rows)} rows x {width} x 4 B x {fetched:g} (fetched, served, gradients)",
            True,
        )
    )
    users = evaluated_users(size, job.eval.max_users, p, share=part.num_users / max(size.num_users, 1))
    terms += eval_terms(job, vector_rows=users + part.num_items, layer_rows=rows, num_items=i, chunk_entries=0)
    working_set = sum(t.bytes for t in terms if t.phases == ("training step",))
    kept = MEASURED.step_kept_fraction
    detail = f"{kept:g} x the step's working set (allocator)"
    terms.append(Term("step memory kept", int(kept * working_set), FROM_EVAL, detail))
    entries = min(PART_CHUNK_ENTRIES, part.num_entries)  # partitioned_embeddings' chunk
    terms += [
        Term("eval: all items' vectors", i * (width + scoring_columns(job)) * F32, ("evaluation", "test"), "gathered"),
        Term(
            "eval: fetched rows",
            (entries * CHUNK_ENTRY_BYTES + fetched * min(entries, n) * width * F32) if layer_buffers(job) else 0,
            ("evaluation", "test"),
            f"a chunk's adjacency and its neighbors' rows ({_fmt_count(entries)} entries)",
            True,
        ),
        Term("checkpoint: best model read back", table, ("checkpoint",), "the part's shard, memory-mapped"),
        score_chunk(job, i, F64, ("baselines",)),
    ]
    return ProcessPlan("worker", tuple(terms))


def driver_plan(job: TrainJobConfig, size: GraphSize) -> ProcessPlan:
    """The train driver: it checks and plans the graph from its files and never loads it."""
    terms = [
        Term("process: Python, torch, ray.init", MEASURED.driver_bytes, ALL, "measured (plan.MEASURED)"),
        Term("plan: degree histograms", I64 * 3 * (1 << 20), ("load",), "indptr read by chunks of 1M entries"),
    ]
    return ProcessPlan("driver", tuple(terms))


def traffic_terms(job: TrainJobConfig, size: GraphSize, step: StepSize, num_workers: int) -> tuple[Term, ...]:
    """Bytes one worker sends to the others per step (what gloo moves; a worker's own share
    never leaves it)."""
    p, width = num_workers, model_width(job)
    if p == 1:
        return ()
    row = I64 + F32 * width
    terms = []
    if job.cluster.partitioned:
        remote = remote_fractions(size.edge_cut, p, len(step.frontier))
        frontier_remote = sum(f * r for f, r in zip(step.frontier, remote))
        entries = step.entries * (frontier_remote / max(sum(step.frontier), 1.0))
        last_hop = max(step.rows - sum(step.frontier), 0.0)  # reached at the last hop, never expanded
        rows_remote = frontier_remote + last_hop * (remote[-1] if remote else 0.0)
        terms += [
            Term("remote sampling", int(2 * I64 * frontier_remote + I64 * entries), (), "frontier out, neighbors back"),
            Term("row fetch", int(rows_remote * (I64 + F32 * width)), (), f"{_fmt_count(rows_remote)} remote rows"),
            Term("gradients to owners", int(rows_remote * F32 * width), (), "the fetched rows' gradients"),
        ]
    else:
        n, rows = size.num_nodes, step.rows
        if rows * p * 1.05 > n:  # whole blocks (RowShardedSparseAdam.reduce_blocks)
            terms += [
                Term("gradient blocks to owners", int((n - n / p) * (F32 * width + I64)), (), "table-sized sums"),
                Term("updated blocks to all", int(n / p * F32 * width * (p - 1)), (), "own block to each worker"),
            ]
        else:
            touched = n / p * (1 - (1 - min(rows / n, 1.0)) ** p)  # rows of a block any worker touched
            terms += [
                Term("gradient rows to owners", int(rows * (p - 1) / p * row), (), "ids + rows"),
                Term("updated rows to all", int(touched * row * (p - 1)), (), "the owner's touched rows"),
            ]
    if job.optim.loss == "softmax" and job.optim.shared_negatives:
        terms.append(
            Term("shared candidates", int(step.candidates * (p - 1) * (row + F32 * width)), (), "and their gradients")
        )
    return tuple(terms)


def remote_fractions(edge_cut: float, num_parts: int, hops: int) -> list[float]:
    """Per hop, the chance that a node of a partitioned step belongs to another part. The seeds
    are half the worker's own users, half items (owned elsewhere with the edge cut's chance); a
    neighbor is in another part than the node it was sampled for with the edge cut's chance,
    spread evenly over the other parts. Hop ``h + 1`` reaches the nodes expanded at hop ``h``'s
    frontier; the last entry is for the nodes the last hop reaches."""
    if num_parts == 1:
        return [0.0] * (hops + 1)
    cut = edge_cut
    own = 1 - cut / 2
    fractions = []
    for _ in range(hops + 1):
        fractions.append(1 - own)
        own = own * (1 - cut) + (1 - own) * cut / (num_parts - 1)
    return fractions


def plan_job(job: TrainJobConfig, size: GraphSize, step: StepSize) -> Plan:
    """The plan of ``job`` on a graph of ``size`` whose steps touch ``step`` (pure)."""
    p = job.cluster.num_workers
    worker = (partitioned_worker if job.cluster.partitioned else replicated_worker)(job, size, step, p)
    return Plan(
        num_workers=p,
        partitioned=job.cluster.partitioned,
        worker=worker,
        driver=driver_plan(job, size),
        ray_system=MEASURED.ray_system_bytes,
        traffic=traffic_terms(job, size, step, p),
        step=step,
    )


# ---------------------------------------------------------------------------------------------------
# The machine and the verdict


@dataclass(frozen=True)
class Machine:
    """Memory of the node the driver runs on, and of a GPU when one is given."""

    total_bytes: int
    available_bytes: int  # what the node's other processes leave now
    threshold: float = RAY_DEFAULT_THRESHOLD  # Ray's memory monitor kills past this fraction
    workers_here: int | None = None  # workers on this node; None = all of them (a local cluster)
    gpu_bytes: int | None = None
    checked: bool = True  # False: the workers' nodes are not known (a remote cluster)
    ray_counted: bool = False  # Ray already runs here: its processes are in the used memory
    budget_scale: float = 1.0  # < 1 after a memory kill showed the plan short by 1 / budget_scale

    @property
    def budget_bytes(self) -> int:
        """What a job may use here: below Ray's line, less what others use now, less the safety."""
        used_by_others = self.total_bytes - self.available_bytes
        return int((self.threshold * self.total_bytes - used_by_others) * (1 - SAFETY) * self.budget_scale)


def machine_here(job: TrainJobConfig, *, gpu_memory_gb: float | None = None) -> Machine:
    """This node's memory (psutil) and Ray's threshold as the cluster would be started here; a
    remote cluster (``cluster.address`` or ``RAY_ADDRESS``) is planned but not judged."""
    import psutil

    memory = psutil.virtual_memory()
    try:
        threshold = float(os.environ.get(RAY_THRESHOLD_ENV, RAY_DEFAULT_THRESHOLD))
    except ValueError:
        threshold = RAY_DEFAULT_THRESHOLD
    remote = bool(job.cluster.address or os.environ.get("RAY_ADDRESS"))
    return Machine(
        total_bytes=int(memory.total),
        available_bytes=int(memory.available),
        threshold=threshold,
        gpu_bytes=None if gpu_memory_gb is None else int(gpu_memory_gb * GiB),
        checked=not remote,
    )


@dataclass(frozen=True)
class Verdict:
    fits: bool
    needed_bytes: int  # what the job puts on the node (or a GPU)
    budget_bytes: int
    what: str  # "node" or "GPU"
    checked: bool = True


def judge(plan: Plan, machine: Machine) -> Verdict:
    """Whether the plan fits: the node's share (every worker on it, the driver, Ray) under the
    node's budget, and with a GPU a worker's device memory under the GPU's."""
    if machine.gpu_bytes is not None:
        needed = plan.worker.device_peak()
        return Verdict(needed <= machine.gpu_bytes, needed, machine.gpu_bytes, "GPU")
    workers_here = plan.num_workers if machine.workers_here is None else machine.workers_here
    needed = plan.node_total(workers_here) - (plan.ray_system if machine.ray_counted else 0)
    return Verdict(needed <= machine.budget_bytes, needed, machine.budget_bytes, "node", machine.checked)


# ---------------------------------------------------------------------------------------------------
# Options that fit


@dataclass(frozen=True)
class Planner:
    """Plans jobs on one graph: the sizes read once, the step measured once for ``reference``."""

    graph_dir: str
    size: GraphSize
    reference: TrainJobConfig
    reference_step: StepSize
    cache: dict = field(default_factory=dict, compare=False)

    def step_for(self, job: TrainJobConfig) -> StepSize:
        formula = self.formula_step(job)
        if self.reference_step.method == "degree formula":
            return formula
        return scaled_step(self.reference_step, self.formula_step(self.reference), formula)

    def formula_step(self, job: TrainJobConfig) -> StepSize:
        size = self.size_for(job)
        num_users = max(q.num_users for q in size.parts) if job.cluster.partitioned else None
        key = (job.fanouts, job.optim.batch_size, job.num_negatives, job.optim.edge_sampling, num_users)
        if key not in self.cache:
            self.cache[key] = expected_step(
                size,
                job.fanouts,
                batch_size=job.optim.batch_size,
                num_negatives=job.num_negatives,
                edge_sampling=job.optim.edge_sampling,
                num_users=num_users,
            )
        return self.cache[key]

    def size_for(self, job: TrainJobConfig) -> GraphSize:
        if job.cluster.partitioned and len(self.size.parts) != job.cluster.num_workers:
            return even_parts(self.size, job.cluster.num_workers)
        return self.size

    def plan(self, job: TrainJobConfig) -> Plan:
        step = self.reference_step if job is self.reference else self.step_for(job)
        return plan_job(job, self.size_for(job), step)


def make_planner(job: TrainJobConfig, *, sample_batches: int = 0) -> Planner:
    """A :class:`Planner` for ``job``'s graph: sizes from the graph's files; the step sampled from
    ``sample_batches`` real batches, or from the degree formula with 0."""
    size = read_graph_size(job.graph)
    planner = Planner(job.graph, size, job, StepSize(0, 0, 0, (), 0, "degree formula"))
    if sample_batches > 0:
        step = sampled_step(
            job.graph,
            job.fanouts,
            batch_size=job.optim.batch_size,
            num_negatives=job.num_negatives,
            edge_sampling=job.optim.edge_sampling,
            num_batches=sample_batches,
            seed=job.run.seed,
        )
    else:
        step = planner.formula_step(job)
    return replace(planner, reference_step=step)


def candidate_changes(job: TrainJobConfig) -> list[tuple[str, dict]]:
    """Single changes to try, each as (the flag a person types, the dotted overrides), from the
    least to the most intrusive: evaluation settings, batch size, dimension, then parallelism."""
    changes: list[tuple[str, dict]] = []
    e, o, c = job.eval, job.optim, job.cluster
    for users in (100_000, 20_000, 2_000):
        if e.max_users == 0 or users < e.max_users:
            changes.append((f"--eval.max_users {users}", {"eval.max_users": users}))
    for size in (o.batch_size // 2, o.batch_size // 4, o.batch_size // 8):
        if size >= 64:
            changes.append((f"--optim.batch_size {size}", {"optim.batch_size": size}))
    for dim in (job.model.dim // 2, job.model.dim // 4):
        if dim >= 8:
            changes.append((f"--model.dim {dim}", {"model.dim": dim}))
    if not c.partitioned and job.model.name in ("lightgcn", "mf") and o.hard_negative_pool == 1:
        changes.append(("--cluster.partitioned true", {"cluster.partitioned": True, "sampler.num_workers": 0}))
    for workers in (2 * c.num_workers, 4 * c.num_workers):
        flag = f"--cluster.num_workers {workers}"
        if c.partitioned:
            flag += f" (partition with --partitions {workers})"
        changes.append((flag, {"cluster.num_workers": workers}))
    return changes


def options_that_fit(planner: Planner, job: TrainJobConfig, machine: Machine, *, limit: int = 3) -> list[str]:
    """The first ``limit`` single changes of :func:`candidate_changes` that the same model says fit."""
    found = []
    for flag, overrides in candidate_changes(job):
        try:
            changed = replace_nested(job, **overrides)
        except ConfigError:
            continue
        if judge(planner.plan(changed), machine).fits:
            found.append(flag)
            if len(found) == limit:
                break
    return found


# ---------------------------------------------------------------------------------------------------
# How a person reads a plan


def gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB" if x >= GiB / 10 else f"{x / MiB:.0f} MiB"


def job_summary(job: TrainJobConfig, size: GraphSize) -> str:
    strategy = "partitioned" if job.cluster.partitioned else "replicated"
    return (
        f"{job.model.name} dim {job.model.dim}, {job.cluster.num_workers} {strategy} worker(s), batch "
        f"{job.optim.batch_size}, fanouts {','.join(map(str, job.fanouts)) or '-'}; graph {_fmt_count(size.num_users)} "
        f"users, {_fmt_count(size.num_items)} items, {_fmt_count(size.num_train_edges)} training edges"
    )


def verdict_line(verdict: Verdict, options: list[str] | None = None) -> str:
    """``fits: ...`` or ``does NOT fit: ...`` in one line, with the options that fit when given."""
    if not verdict.checked:
        return (
            f"not checked: the workers run on a cluster whose nodes are not known here "
            f"(this node would need {gib(verdict.needed_bytes)})"
        )
    return f"{'fits' if verdict.fits else 'does NOT fit'}: {need_line(verdict)}" + (
        "" if verdict.fits or options is None else options_line(options)
    )


def need_line(verdict: Verdict) -> str:
    where = "this GPU" if verdict.what == "GPU" else "this node"
    return f"{gib(verdict.needed_bytes)} needed, {gib(verdict.budget_bytes)} usable on {where}"


def options_line(options: list[str]) -> str:
    return f"; options that fit: {', '.join(options)}" if options else "; no single option fits"


def plan_table(plan: Plan, verdict: Verdict, options: list[str], *, job: TrainJobConfig, size: GraphSize) -> str:
    """The plan as a small table: one line per term of a worker, its phases and size; the driver;
    the bytes per step; the verdict."""
    worker = plan.worker
    lines = [job_summary(job, size)]
    step = plan.step
    if plan.partitioned and len(size.parts) != plan.num_workers:
        lines.append(
            f"parts: the graph has {len(size.parts) or 'no'} parts; planned as {plan.num_workers} balanced ones "
            f"(python -m distgnn.partition --graph DIR --partitions {plan.num_workers})"
        )
    lines.append(
        f"a step samples {_fmt_count(step.rows)} rows and {_fmt_count(step.entries)} edges per worker ({step.method})"
    )
    lines.append("")
    head = "per worker" + (" (the largest part)" if plan.partitioned else "")
    lines.append(f"{head:<38} {'size':>10}  phases   detail")
    codes = dict(zip(PHASES, "LTECBX"))
    for t in worker.terms:
        if t.bytes == 0:
            continue
        phases = "".join(codes[p] if p in t.phases else "." for p in PHASES)
        lines.append(f"  {t.name:<36} {gib(t.bytes):>10}  {phases}   {t.detail}")
    lines.append("  phases: L load, T training step, E evaluation, C checkpoint, B baselines, X test")
    for p in PHASES:
        mark = "  <- peak" if p == worker.peak_phase else ""
        lines.append(f"  at {p:<33} {gib(worker.at(p)):>10}{mark}")
    lines.append(f"{'driver':<38} {gib(plan.driver.peak):>10}")
    lines.append(f"{'Ray processes (GCS, raylet, ...)':<38} {gib(plan.ray_system):>10}")
    if plan.traffic:
        lines.append(f"{'sent per step per worker':<38} {gib(plan.bytes_per_step):>10}")
        for t in plan.traffic:
            lines.append(f"  {t.name:<36} {gib(t.bytes):>10}  {t.detail}")
    lines.append("")
    lines.append(verdict_line(verdict, options))
    return "\n".join(lines)


def plan_line(plan: Plan, verdict: Verdict) -> str:
    """The plan in one line (``train`` logs it before Ray starts)."""
    w = plan.worker
    return (
        f"plan: {plan.num_workers} {'partitioned' if plan.partitioned else 'replicated'} worker(s) "
        f"~{gib(w.peak)} each (peak in {w.peak_phase}), driver ~{gib(plan.driver.peak)}, "
        f"{gib(plan.bytes_per_step)} sent per step per worker; {verdict_line(verdict)}"
    )

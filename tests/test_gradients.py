"""The row-sharded update of the embedding tables (dense collectives only, so NCCL can run it)
against DDP's sparse all-reduce + SparseAdam on gloo: the same gradients, the same parameters
after training steps, the same optimizer state, and checkpoints that resume on any number of
workers."""

import pytest
import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from distgnn.nn.models import build_model
from distgnn.training import gradients
from distgnn.training.gradients import (
    IndexedSparseAdam,
    RowShardedSparseAdam,
    RowSlots,
    average_dense,
    owned_average,
    row_bounds,
    unique_rows,
)
from distgnn.training.objective import make_optimizers

from test_device import UndevicedFactories
from test_partitioned import run_on_two_ranks
from test_train import tiny_job

NUM_NODES, DIM = 60, 8


def subgraph(rank: int, step: int, size: int):
    """A different random subgraph of ``size`` nodes per rank and step: node ids, CSR adjacency."""
    g = torch.Generator().manual_seed(100 * rank + step)
    n_id = torch.randperm(NUM_NODES, generator=g)[:size]
    row, col = torch.randint(0, size, (2, 3 * size), generator=g)
    order = torch.argsort(col, stable=True)
    row, col = row[order], col[order]
    crow = torch.zeros(size + 1, dtype=torch.long)
    torch.cumsum(torch.bincount(col, minlength=size), 0, out=crow[1:])
    adj_t = torch.sparse_csr_tensor(crow, row, torch.rand(3 * size, generator=g), (size, size))
    return n_id, adj_t


def make_model(name: str):
    torch.manual_seed(0)  # the same start on every rank
    features = torch.randn(NUM_NODES, 5, generator=torch.Generator().manual_seed(1))
    return build_model(name, num_nodes=NUM_NODES, dim=DIM, num_layers=2, features=features, item_bias=True)


def loss_of(model, n_id, adj_t, repeat: bool):
    """repeat: look half the rows up a second time (as a penalty term would), so that the table's
    gradient holds some rows twice; without it, each row once (the exchange then copies rows)."""
    out = model(n_id, adj_t)
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    loss = (out.pow(2).sum(-1) * torch.arange(1.0, n_id.numel() + 1.0)).mean() + inner.item_bias(n_id).sum()
    if repeat:
        loss = loss + 0.3 * inner.ego(n_id[: n_id.numel() // 2].repeat(2)).pow(2).sum()
    return loss


def most_lookups(model) -> int:
    """How many times the id table's most repeated gradient row appears (before the exchange)."""
    return int(torch.bincount(model.embedding.weight.grad._indices()[0]).max())


def train_step(model, opts, n_id, adj_t, *, ours: bool, repeat: bool = False):
    """One step; ours: the row-sharded path (no DDP), as the replicated strategy runs it."""
    for opt in opts:
        opt.zero_grad()
    loss_of(model, n_id, adj_t, repeat).backward()
    repeats = most_lookups(model) if ours else 0
    if ours:
        tables, *dense = opts
        tables.reduce_gradients()
        average_dense([p for opt in dense for group in opt.param_groups for p in group["params"]])
    for opt in opts:
        opt.step()
    if ours:
        for work in opts[0].share_updated_rows():
            work.wait()
    return repeats


def torch_optimizers(model, lr: float) -> list:
    """The reference: distgnn's optimizers with torch's own SparseAdam for the tables."""
    tables, *dense = make_optimizers(model, lr)
    return [torch.optim.SparseAdam(tables.param_groups[0]["params"], lr=lr), *dense]


def block_gradients(opts) -> dict[int, torch.Tensor]:
    """This rank's averaged table gradients, as dense blocks."""
    return {i: shard.grad.to_dense().clone() for i, shard in enumerate(opts[0].shards)}


def ddp_block_gradients(model, opts, rank) -> dict[int, torch.Tensor]:
    out = {}
    for i, p in enumerate(opts[0].param_groups[0]["params"]):
        bounds = row_bounds(p.shape[0], 2)
        out[i] = p.grad.to_dense()[bounds[rank] : bounds[rank + 1]].clone()
    return out


def _compare(rank, name, size, small_table):
    gradients.SMALL_TABLE = small_table  # this test's tables are tiny: 0 lets rows travel one by one
    ddp_model = DistributedDataParallel(make_model(name))  # gloo: sparse all-reduce of the tables
    ours = make_model(name)
    ddp_opts, our_opts = torch_optimizers(ddp_model.module, 0.05), make_optimizers(ours, 0.05, row_sharded=True)
    grads, params, repeats = [], [], []
    undeviced = UndevicedFactories()  # what the exchange makes must name its device (NCCL: the GPU's)
    for step in range(3):
        n_id, adj_t = subgraph(rank, step, size)
        train_step(ddp_model, ddp_opts, n_id, adj_t, ours=False, repeat=step == 1)
        with undeviced:
            repeats.append(train_step(ours, our_opts, n_id, adj_t, ours=True, repeat=step == 1))
        grads.append((block_gradients(our_opts), ddp_block_gradients(ddp_model.module, ddp_opts, rank)))
        params.append(tuple({n: p.detach().clone() for n, p in m.named_parameters()} for m in (ours, ddp_model.module)))
    with undeviced:
        states = (our_opts[0].state_dict(), ddp_opts[0].state_dict())
    return grads, params, states, our_opts[0].dense, repeats, undeviced.calls


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6, msg=str(key))


CASES = [  # (rows per rank, small-table limit, whether the id table travels as whole blocks)
    (20, 0, False),  # 2 x 20 rows < 60: rows go to their owners one by one
    (45, 0, True),  # 2 x 45 > 60: whole blocks
    (20, gradients.SMALL_TABLE, True),  # a small table: whole blocks whatever the rows
]
MODELS = ("lightgcn", "sage")  # sage: dense weights too; both: a sparse item-bias table


def _compare_all(rank):
    """Every case in one pair of processes (each start costs seconds of imports)."""
    return [_compare(rank, name, size, small_table) for size, small_table, _ in CASES for name in MODELS]


def test_row_sharded_update_equals_ddp_sparse_all_reduce():
    cases = [(size, blocks) for size, _, blocks in CASES for _ in MODELS]
    for rank_results in run_on_two_ranks(_compare_all):
        for (grads, params, (our_state, ddp_state), dense, repeats, undeviced), (size, blocks) in zip(
            rank_results, cases, strict=True
        ):
            assert not undeviced, undeviced
            assert dense[0] == blocks  # the id table took the path its size calls for
            assert repeats == [1, 2, 1]  # rows once (copied into the blocks), then some twice (added)
            for ours, theirs in grads:
                assert_same(ours, theirs)
                # the rows other ranks touched arrived: the block's gradient is not this rank's alone
                assert ours[0].abs().sum(1).gt(0).sum() > size // 2
            for ours, theirs in params:  # every rank's whole table, after every step
                assert_same(ours, theirs)
            # the gathered optimizer state is SparseAdam's own, over whole tables
            assert our_state["param_groups"] == ddp_state["param_groups"]
            for index in ddp_state["state"]:
                assert_same(our_state["state"][index], ddp_state["state"][index])


def _untouched_table(rank, small_table):
    gradients.SMALL_TABLE = small_table  # 0: rows one by one; the default: whole blocks
    model = make_model("lightgcn")
    opts = make_optimizers(model, 0.1, row_sharded=True)
    if rank == 0:  # rank 1 touches nothing of the bias table: the collectives must still match
        model.item_bias(torch.tensor([3, 4, 40])).sum().backward()
    else:
        model.embedding(torch.tensor([5])).sum().backward()
    opts[0].reduce_gradients()
    grads = [shard.grad.to_dense().clone() for shard in opts[0].shards]
    for opt in opts:
        opt.step()
    for work in opts[0].share_updated_rows():
        work.wait()
    steps = [s["step"] for s in opts[0].state_dict()["state"].values()]
    return grads, model.bias_embedding.weight.detach().clone(), steps


def _untouched_table_both_paths(rank):
    return [_untouched_table(rank, small_table) for small_table in (0, gradients.SMALL_TABLE)]


def test_a_table_one_rank_did_not_touch_still_averages_and_steps_everywhere():
    rank0, rank1 = run_on_two_ranks(_untouched_table_both_paths)
    for path in range(2):
        check_untouched_table(*rank0[path], *rank1[path])


def check_untouched_table(grads0, bias0, steps0, grads1, bias1, steps1):
    torch.testing.assert_close(bias0, bias1)  # the update of rank 1's row 40 reached rank 0, and back
    start = make_model("lightgcn").bias_embedding.weight.detach()
    assert torch.nonzero((bias0 != start).any(1)).flatten().tolist() == [3, 4, 40]
    # rows 0-29 are rank 0's, 30-59 rank 1's: each owner holds the average (sum / 2 workers)
    assert grads0[1][3, 0] == 0.5 and grads0[1][4, 0] == 0.5 and grads1[1][10, 0] == 0.5
    assert grads0[0][5].tolist() == [0.5] * DIM and grads1[0].abs().sum() == 0
    assert steps0 == steps1 == [1, 1]  # every block stepped, as the whole table does under DDP


def _checkpoint_round_trip(rank, one_worker_shard, job, folder):
    """Train 2 steps, save each rank's shard of the state (no collective), load both shards into
    fresh optimizers, train 2 more; the same as 4 steps straight. Also: resume from the shard one
    worker wrote (its block is the whole table)."""
    straight = make_model("lightgcn")
    opts = make_optimizers(straight, 0.05, row_sharded=True)
    for step in range(4):
        train_step(straight, opts, *subgraph(rank, step, 45), ours=True)
        if step == 1:
            saved_model = {k: v.clone() for k, v in straight.state_dict().items()}
            shards = [None, None]
            tdist.all_gather_object(shards, opts[0].shard_state_dict())  # as Ray merges the files
            whole = opts[0].state_dict()  # the gathered whole tables: the reference
    resumed = make_model("lightgcn")
    resumed.load_state_dict(saved_model)
    fresh = make_optimizers(resumed, 0.05, row_sharded=True)
    fresh[0].load_shard_states(iter(shards))
    for step in range(2, 4):
        train_step(resumed, fresh, *subgraph(rank, step, 45), ours=True)
    from_one = make_optimizers(make_model("lightgcn"), 0.05, row_sharded=True)[0]
    from_one.load_shard_states([one_worker_shard])
    strategy = _replicated_checkpoint(job, folder)  # the same 2 processes: one start for both
    return straight.state_dict(), resumed.state_dict(), shards, whole, from_one.state_dict(), strategy


def one_worker_shard() -> dict:
    """The shard of the state one worker writes after 2 steps (outside a process group)."""
    model = make_model("lightgcn")
    opts = make_optimizers(model, 0.05, row_sharded=True)
    for step in range(2):
        train_step(model, opts, *subgraph(0, step, 45), ours=True)
    return opts[0].shard_state_dict()


def test_checkpoint_shards_resume_on_two_workers_and_load_on_one(tiny_graph, tmp_path):
    single = one_worker_shard()
    job = tiny_job(tiny_graph, **{"optim.batch_size": 256})
    results = run_on_two_ranks(_checkpoint_round_trip, single, job, tmp_path)
    check_replicated_checkpoint(job, tmp_path, *results[0][5])
    for straight, resumed, _, _, from_one, _ in results:
        assert_same(straight, resumed)
        for index in single["state"]:  # 2 workers resumed a checkpoint 1 worker wrote
            assert_same(from_one["state"][index], single["state"][index])
    shards, whole = results[0][2], results[0][3]
    for index in whole["state"]:  # each shard holds its block's rows only
        assert [s["state"][index]["exp_avg"].shape[0] for s in shards] == [NUM_NODES // 2] * 2
    one_worker = make_optimizers(make_model("lightgcn"), 0.05, row_sharded=True)[0]
    assert isinstance(one_worker, RowShardedSparseAdam)
    one_worker.load_shard_states(shards)  # outside a process group: one worker owning every row
    for index in whole["state"]:
        assert_same(one_worker.inner.state_dict()["state"][index], whole["state"][index])
    with pytest.raises(ValueError, match="cover 30 of rows 0..59"):
        make_optimizers(make_model("lightgcn"), 0.05, row_sharded=True)[0].load_shard_states(shards[:1])


@pytest.mark.parametrize("kind", ["row-sharded", "indexed"])
def test_the_row_update_is_torchs_sparse_adam_to_the_bit(kind):
    """One worker's update (no collectives) and the partitioned strategy's optimizer against
    torch.optim.SparseAdam on the same gradients: unique rows unsorted (a subgraph's), rows
    repeated (summed first), coalesced, and empty."""
    g = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(50, 4, generator=g))
    reference = torch.nn.Parameter(table.detach().clone())
    ours = RowShardedSparseAdam([table], lr=0.05) if kind == "row-sharded" else IndexedSparseAdam([table], lr=0.05)
    theirs = torch.optim.SparseAdam([reference], lr=0.05)
    unique = torch.randperm(50, generator=g)[:30]
    repeated = torch.cat([unique[:10], unique[:25]])
    grads = [
        torch.sparse_coo_tensor(unique[None], torch.randn(30, 4, generator=g), (50, 4)),
        torch.sparse_coo_tensor(repeated[None], torch.randn(35, 4, generator=g), (50, 4)),
        torch.sparse_coo_tensor(unique[None], torch.randn(30, 4, generator=g), (50, 4)).coalesce(),
        torch.sparse_coo_tensor(torch.empty(1, 0, dtype=torch.long), torch.empty(0, 4), (50, 4)),
        torch.sparse_coo_tensor(unique[None], torch.randn(30, 4, generator=g), (50, 4)),
    ]
    for lr, grad in zip([0.05, 0.05, 0.02, 0.02, 0.01], grads):
        for group in (*ours.param_groups, *theirs.param_groups):
            group["lr"] = lr  # the schedule sets it between steps
        table.grad, reference.grad = grad.clone(), grad.clone()
        if kind == "row-sharded":
            ours.reduce_gradients()  # one worker: the whole table is its block
        ours.step()
        theirs.step()
        assert torch.equal(table, reference)
    assert ours.state_dict()["state"][0]["step"] == theirs.state_dict()["state"][0]["step"] == 5
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(ours.state_dict()["state"][0][key], theirs.state_dict()["state"][0][key])


@pytest.mark.parametrize("slots", [None, RowSlots(9, torch.device("cpu"))], ids=["sorting", "slots"])
def test_unique_rows_leave_a_subgraphs_rows_in_place_and_sum_repeats(slots):
    rows = torch.tensor([7, 2, 5])  # unique, unsorted: taken as they are, no sort
    values = torch.tensor([[1.0], [2.0], [3.0]])
    got_rows, got_values = unique_rows(torch.sparse_coo_tensor(rows[None], values, (9, 1)), slots)
    assert got_rows.tolist() == [7, 2, 5] and got_values.tolist() == [[1.0], [2.0], [3.0]]
    repeated = torch.sparse_coo_tensor(torch.tensor([[7, 2, 7]]), values, (9, 1))
    got_rows, got_values = unique_rows(repeated, slots)  # summed: 7 -> 1 + 3
    assert got_rows.tolist() == [2, 7] and got_values.tolist() == [[2.0], [4.0]]


def test_owned_average_adds_repeats_in_order_and_never_touches_the_whole_block():
    """Against a block-sized index_add_ (what the average was), to the bit; the block claims 10^12
    rows, so any block-sized buffer would fail."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([7, 3, 7, 9, 3, 7, 0])
    values = torch.randn(7, 4, generator=g)
    reference = torch.zeros(10, 4).index_add_(0, ids, values) / 2
    average = owned_average(ids, values, 10**12, 2, RowSlots(10, torch.device("cpu")))
    rows, got = average._indices()[0], average._values()
    assert sorted(rows.tolist()) == [0, 3, 7, 9] and average.shape == (10**12, 4)
    assert torch.equal(got, reference[rows])
    slots = RowSlots(10, torch.device("cpu"))
    for batch in (ids, torch.tensor([2, 2]), torch.tensor([], dtype=torch.long)):
        distinct, slot = slots.assign(batch)
        assert sorted(distinct.tolist()) == sorted(set(batch.tolist())) and torch.equal(distinct[slot], batch)
    assert bool((slots.map == -1).all())  # left clean for the next step


def test_row_bounds_cover_the_table_in_blocks_that_differ_by_at_most_one():
    for rows, world in [(60, 2), (61, 2), (7, 3), (1000, 7)]:
        bounds = row_bounds(rows, world)
        sizes = bounds[1:] - bounds[:-1]
        assert bounds[0] == 0 and bounds[-1] == rows
        assert int(sizes.max() - sizes.min()) <= 1


def _replicated_checkpoint(job, folder):
    """The replicated strategy's checkpoint after 2 steps on this rank: files in ``folder``."""
    from distgnn.training.loop import train_steps
    from distgnn.training.replicated import Replicated

    strategy = Replicated(job)
    loader, _ = strategy.make_loader(0)
    train_steps(strategy, loader, 2, job.optim, 0)
    strategy.save_state(folder, 0, [{"epoch": 0}], None)
    return strategy.model.state_dict(), strategy.optimizers[0].state_dict()


def check_replicated_checkpoint(job, folder, model, whole):
    """The strategy's files: each rank wrote its own (rank 0 the model); the folder restores on
    one worker, holding both ranks' moment rows and rank 0's loop state."""
    from distgnn.training.replicated import Replicated

    assert sorted(p.name for p in folder.iterdir()) == ["state-rank-000.pt", "state-rank-001.pt"]
    one = Replicated(job)
    assert one.restore(folder) == {"epoch": 0, "history": [{"epoch": 0}], "best": None}
    assert_same(one.model.state_dict(), model)
    for index, state in whole["state"].items():
        assert_same(one.optimizers[0].inner.state_dict()["state"][index], state)

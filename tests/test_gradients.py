"""The touched-row gradient exchange (dense collectives only, so NCCL can run it) against DDP's
sparse all-reduce on gloo: the same gradients, and the same parameters after training steps."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from distgnn.nn.models import build_model
from distgnn.training.gradients import average_gradients
from distgnn.training.objective import make_optimizers

from test_partitioned import run_on_two_ranks

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


def loss_of(model, n_id, adj_t):
    out = model(n_id, adj_t)
    bias = model.item_bias(n_id) if not isinstance(model, DistributedDataParallel) else model.module.item_bias(n_id)
    return (out.pow(2).sum(-1) * torch.arange(1.0, n_id.numel() + 1.0)).mean() + bias.sum()


def _compare(rank, name, size):
    ddp_model = DistributedDataParallel(make_model(name))  # gloo: sparse all-reduce of the tables
    ours = make_model(name)
    ddp_opts, our_opts = make_optimizers(ddp_model.module, 0.05), make_optimizers(ours, 0.05)
    grads = []
    for step in range(3):
        n_id, adj_t = subgraph(rank, step, size)
        for model, opts, sync in ((ddp_model, ddp_opts, False), (ours, our_opts, True)):
            for opt in opts:
                opt.zero_grad()
            loss_of(model, n_id, adj_t).backward()
            if sync:
                average_gradients(model)
            for opt in opts:
                opt.step()
        grads.append(
            {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone() for n, p in ours.named_parameters()}
        )
        grads.append(
            {
                n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
                for n, p in ddp_model.module.named_parameters()
            }
        )
    params = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in (ours, ddp_model.module)]
    return grads, params


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6, msg=key)


@pytest.mark.parametrize("size", [20, 45])  # 2 x 20 rows < 60: gathered; 2 x 45 > 60: dense all-reduce
def test_touched_row_exchange_equals_ddp_sparse_all_reduce(size):
    for name in ("lightgcn", "sage"):  # sage: dense weights too; both: a sparse item-bias table
        for grads, (ours, theirs) in run_on_two_ranks(_compare, name, size):
            for step in range(0, len(grads), 2):
                assert_same(grads[step], grads[step + 1])
                # the rows other ranks touched arrived: gradients are not only this rank's own
                assert grads[step]["embedding.weight"].abs().sum(1).gt(0).sum() > size
            assert_same(ours, theirs)


def _sync_untouched_table(rank):
    model = make_model("lightgcn")
    if rank == 0:  # rank 1 touches nothing of the bias table: the collective must still match
        model.item_bias(torch.tensor([3, 4])).sum().backward()
    else:
        model.embedding(torch.tensor([5])).sum().backward()
    average_gradients(model)
    return model.bias_embedding.weight.grad.to_dense(), model.embedding.weight.grad.to_dense()


def test_a_table_one_rank_did_not_touch_still_averages():
    (bias0, emb0), (bias1, emb1) = run_on_two_ranks(_sync_untouched_table)
    torch.testing.assert_close(bias0, bias1)
    torch.testing.assert_close(emb0, emb1)
    assert bias0[3, 0] == 0.5 and bias0[4, 0] == 0.5 and bias0.sum() == 1.0
    assert emb0[5].tolist() == [0.5] * DIM

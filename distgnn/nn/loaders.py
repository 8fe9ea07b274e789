"""Mini-batches of training edges: PyG's ``LinkLoader`` over an edge order, driven by a sampler.

The loader is built once per worker from plain values (no job config): the sampler (whole graph
or one part), the edges the worker trains on, the batch size and the negatives per positive.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import LinkLoader
from torch_geometric.sampler import BaseSampler, NegativeSampling

EDGE_SAMPLING = ("shuffle", "user_uniform")


class ShuffledIndices(torch.utils.data.Sampler):
    """``0 .. n-1`` in a fresh random order each epoch (torch's global generator), as
    ``RandomSampler`` does, but handed out from the permutation tensor in chunks: RandomSampler
    turns the whole permutation into a Python list, ~36 bytes per training edge per worker."""

    def __init__(self, n: int, chunk: int = 1 << 16):
        self.n, self.chunk = n, chunk

    def __len__(self) -> int:
        return self.n

    def draw(self) -> Tensor:
        return torch.randperm(self.n)

    def __iter__(self):
        for block in self.draw().split(self.chunk):
            yield from block.tolist()


class WeightedIndices(ShuffledIndices):
    """``n`` draws of edge indices with replacement, each edge in proportion to its weight
    (:func:`edge_draw_weights`: user-uniform draws, the prepared edge weights, or both)."""

    def __init__(self, weights: Tensor, chunk: int = 1 << 16):
        super().__init__(weights.numel(), chunk)
        self.weights = weights

    def draw(self) -> Tensor:
        return torch.multinomial(self.weights, self.n, replacement=True)


def edge_draw_weights(users: Tensor, edge_sampling: str, edge_weight: Tensor | None = None) -> Tensor:
    """``[E]`` float64 weight of each training edge (its user node given) in an epoch's draws, up to
    a constant: 1 under shuffle, 1 / its user's edge count under user_uniform (a uniform user, then
    a uniform one of their edges: LightGCN's own sampling); times ``edge_weight [E]`` if given."""
    if edge_sampling == "user_uniform":
        weights = 1.0 / torch.bincount(users)[users].to(torch.float64)
    else:
        weights = torch.ones(users.numel(), dtype=torch.float64)
    return weights if edge_weight is None else weights * edge_weight.to(torch.float64)


def positive_draw_weights(
    edge_label_index: Tensor, num_users: int, num_items: int, edge_sampling: str, edge_weight: Tensor | None = None
) -> Tensor:
    """``[num_items]`` how often the epoch's draws bring each item in as a positive, up to a
    constant: the sum of its edges' draw weights (:func:`edge_draw_weights`). The in-batch half of
    the log-Q correction must follow the sampling actually used."""
    users, items = edge_label_index
    weights = edge_draw_weights(users, edge_sampling, edge_weight)
    return torch.bincount(items - num_users, weights=weights, minlength=num_items)


def edge_order(
    edge_label_index: Tensor, edge_sampling: str, edge_weight: Tensor | None = None
) -> torch.utils.data.Sampler:
    """The epoch's order of edge indices: each edge once (shuffle), or weighted draws."""
    if edge_sampling == "user_uniform" or edge_weight is not None:
        return WeightedIndices(edge_draw_weights(edge_label_index[0], edge_sampling, edge_weight))
    return ShuffledIndices(edge_label_index.shape[1])


def link_loader(
    sampler: BaseSampler,
    num_nodes: int,
    edge_label_index: Tensor,
    *,
    batch_size: int,
    num_negatives: int,
    edge_sampling: str = "shuffle",
    edge_weight: Tensor | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    device: torch.device = torch.device("cpu"),
) -> LinkLoader:
    """PyG's LinkLoader over ``edge_label_index [2, E]`` (user node, item node) with ``num_negatives``
    triplet negatives per positive (0: none, the batch's ``edge_label_index`` holds its pairs),
    driven by ``sampler``; every batch is full (``drop_last``). Each batch's ``input_id`` indexes
    its edges in ``edge_label_index`` (to look up their ratings). ``edge_weight [E]`` draws edges in
    proportion to it. ``num_workers > 0`` samples in that many background processes, two batches
    ahead each. ``device`` is where the sampler returns its tensors (:attr:`NeighborSampler.device`);
    ``pin_memory`` pins CPU batches for non-blocking copies to a GPU."""
    prefetch = {"num_workers": num_workers, "persistent_workers": True, "prefetch_factor": 2} if num_workers else {}
    if num_nodes < 2**31:  # PyG's LinkLoader keeps the edges and a copy of each of their rows: int32
        edge_label_index = edge_label_index.to(torch.int32)  # ids halve that (the sampler reads int64)
    # The graph itself lives in the sampler; LinkLoader only needs an `edge_index` key to emit the
    # sampled one, which PyG moves to this placeholder's device.
    data = Data(num_nodes=num_nodes, edge_index=torch.empty(2, 0, dtype=torch.long, device=device))
    return LinkLoader(
        data,
        link_sampler=sampler,
        edge_label_index=edge_label_index,
        neg_sampling=NegativeSampling("triplet", amount=num_negatives) if num_negatives else None,
        batch_size=batch_size,
        sampler=edge_order(edge_label_index, edge_sampling, edge_weight),
        drop_last=True,
        pin_memory=pin_memory and device.type == "cpu",
        # what PyG infers for in-memory data; inferring it logs through logging.debug(), which
        # installs a root handler and then prints every distgnn line twice in one process
        filter_per_worker=False,
        **prefetch,
    )

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


class UserUniformIndices(ShuffledIndices):
    """``n`` draws of edge indices, each edge with probability ``1 / (num users * its user's edge
    count)``: a uniform user, then a uniform one of their edges (LightGCN's own sampling)."""

    def __init__(self, users: Tensor, chunk: int = 1 << 16):
        super().__init__(users.numel(), chunk)
        self.weights = edge_draw_weights(users, "user_uniform")

    def draw(self) -> Tensor:
        return torch.multinomial(self.weights, self.n, replacement=True)


def edge_draw_weights(users: Tensor, edge_sampling: str) -> Tensor:
    """``[E]`` float64 weight of each training edge (its user node given) in an epoch's draws, up to
    a constant: 1 under shuffle, 1 / its user's edge count under user_uniform."""
    if edge_sampling == "user_uniform":
        return 1.0 / torch.bincount(users)[users].to(torch.float64)
    return torch.ones(users.numel(), dtype=torch.float64)


def positive_draw_weights(edge_label_index: Tensor, num_users: int, num_items: int, edge_sampling: str) -> Tensor:
    """``[num_items]`` how often the epoch's draws bring each item in as a positive, up to a
    constant: its edge count under shuffle, the sum of its users' 1 / edge count under user_uniform.
    The in-batch half of the log-Q correction must follow the sampling actually used."""
    users, items = edge_label_index
    return torch.bincount(items - num_users, weights=edge_draw_weights(users, edge_sampling), minlength=num_items)


def edge_order(edge_label_index: Tensor, edge_sampling: str) -> torch.utils.data.Sampler:
    """The epoch's order of edge indices: each edge once (shuffle) or user-uniform draws."""
    if edge_sampling == "user_uniform":
        return UserUniformIndices(edge_label_index[0])
    return ShuffledIndices(edge_label_index.shape[1])


def link_loader(
    sampler: BaseSampler,
    num_nodes: int,
    edge_label_index: Tensor,
    *,
    batch_size: int,
    num_negatives: int,
    edge_sampling: str = "shuffle",
    num_workers: int = 0,
    pin_memory: bool = False,
) -> LinkLoader:
    """PyG's LinkLoader over ``edge_label_index [2, E]`` (user node, item node) with ``num_negatives``
    triplet negatives per positive, driven by ``sampler``; every batch is full (``drop_last``).
    ``num_workers > 0`` samples in that many background processes, two batches ahead each."""
    prefetch = {"num_workers": num_workers, "persistent_workers": True, "prefetch_factor": 2} if num_workers else {}
    # The graph itself lives in the sampler; LinkLoader only needs an `edge_index` key to emit the
    # sampled one.
    data = Data(num_nodes=num_nodes, edge_index=torch.empty(2, 0, dtype=torch.long))
    return LinkLoader(
        data,
        link_sampler=sampler,
        edge_label_index=edge_label_index,
        neg_sampling=NegativeSampling("triplet", amount=num_negatives),
        batch_size=batch_size,
        sampler=edge_order(edge_label_index, edge_sampling),
        drop_last=True,
        pin_memory=pin_memory,
        **prefetch,
    )

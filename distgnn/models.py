"""Recommender models over the homogeneous user-item graph. Architecture only: no data, no losses.

Every model maps a (sub)graph to node embeddings: ``forward(n_id [n], adj_t [n, n]) -> [n, dim]``
where ``n_id`` are global node ids and ``adj_t`` is a sparse CSR matrix whose row ``v`` holds the
weighted incoming messages of node ``v``. The same forward serves a sampled subgraph in training
and the whole graph (layer by layer, :func:`full_graph_embeddings`) in evaluation and export.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv, SAGEConv

from distgnn.graph import csr_row_positions

# torch's CSR tensors are stable for the sparse @ dense products used here; its "beta" notice is noise.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def lightgcn_edge_weight(degree: Tensor, src: Tensor, dst: Tensor, num_sampled: Tensor) -> Tensor:
    """Message weights of LightGCN's propagation, unbiased under neighbor sampling.

    Full graph: ``h_v = sum_{u in N(v)} h_u / sqrt(d_u d_v)``. With ``s_v`` of the ``d_v`` neighbors
    sampled uniformly, scaling by ``d_v / s_v`` keeps the expectation exact:
    ``w_uv = sqrt(d_v) / (s_v sqrt(d_u))``. Degrees are full-graph degrees, never sampled ones.

    Args:
        degree: ``[N]`` full training degree per global node id.
        src, dst: ``[e]`` global node ids of each sampled edge (message ``src -> dst``).
        num_sampled: ``[e]`` number of sampled neighbors of each edge's ``dst``.
    """
    d_src = degree[src].clamp(min=1).to(torch.float32)
    d_dst = degree[dst].clamp(min=1).to(torch.float32)
    return d_dst.sqrt() / (num_sampled.to(torch.float32) * d_src.sqrt())


def sampled_adjacency(n_id: Tensor, row: Tensor, col: Tensor, degree: Tensor) -> Tensor:
    """``adj_t [n, n]`` (sparse CSR) of a sampled subgraph with LightGCN weights.

    ``row``/``col`` are local indices as PyG samplers return them: message ``row -> col``.
    """
    n = n_id.numel()
    perm = torch.argsort(col, stable=True)
    row, col = row[perm], col[perm]
    counts = torch.bincount(col, minlength=n)
    weight = lightgcn_edge_weight(degree, n_id[row], n_id[col], counts[col])
    crow = torch.zeros(n + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=crow[1:])
    return torch.sparse_csr_tensor(crow, row, weight, (n, n))


def full_adjacency(indptr: Tensor, indices: Tensor, *, rows: Tensor | None = None) -> Tensor:
    """``adj_t`` of the whole graph (or of the given destination rows) with weights ``1/sqrt(d_u d_v)``.

    Returns ``[len(rows), N]`` sparse CSR; ``rows`` defaults to all nodes.
    """
    degree = indptr[1:] - indptr[:-1]
    num_nodes = degree.numel()
    if rows is None:
        crow, col = indptr, indices
        dst = torch.repeat_interleave(torch.arange(num_nodes), degree)
    else:
        segment, position = csr_row_positions(indptr, rows)
        crow = torch.zeros(rows.numel() + 1, dtype=torch.long)
        torch.cumsum(degree[rows], 0, out=crow[1:])
        col, dst = indices[position], rows[segment]
    weight = lightgcn_edge_weight(degree, col, dst, degree[dst])
    return torch.sparse_csr_tensor(crow, col, weight, (crow.numel() - 1, num_nodes))


def trim_rows(adj_t: Tensor, num_rows: int, num_cols: int) -> Tensor:
    """The first ``num_rows`` rows of a CSR ``adj_t`` whose columns all fall below ``num_cols``
    (a hop-ordered sampled subgraph: nodes up to hop h only hear from nodes up to hop h+1)."""
    crow = adj_t.crow_indices()[: num_rows + 1]
    nnz = int(crow[-1])
    return torch.sparse_csr_tensor(crow, adj_t.col_indices()[:nnz], adj_t.values()[:nnz], (num_rows, num_cols))


class LightGCN(nn.Module):
    r"""LightGCN (He et al., 2020): ``e^{(l+1)} = \hat A e^{(l)}``, output ``\sum_l e^{(l)} / (L+1)``.

    Args:
        num_nodes: users + items.
        dim: embedding size.
        num_layers: propagation layers ``L``.
    """

    def __init__(self, num_nodes: int, dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        # sparse=True: gradients (and DDP's all-reduce) touch only the rows of a batch.
        self.embedding = nn.Embedding(num_nodes, dim, sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.conv = LGConv(normalize=False)

    def ego(self, n_id: Tensor) -> Tensor:
        return self.embedding(n_id)

    def forward(self, n_id: Tensor, adj_t: Tensor, hop_sizes: list[int] | None = None) -> Tensor:
        return self.propagate(self.embedding(n_id), adj_t, hop_sizes)

    def propagate(self, x: Tensor, adj_t: Tensor, hop_sizes: list[int] | None = None, *,
                  noise: float = 0.0) -> Tensor:
        """Layer mean of ``x`` propagated ``num_layers`` times; ``x`` holds the rows of the nodes of
        ``adj_t`` (the partitioned trainer fetches them from the workers that own them).

        With ``hop_sizes`` (a sampled subgraph's ``num_sampled_nodes``: seeds, then each hop's new
        nodes, numbered in that order) each layer computes only the rows later layers read (layer
        ``l`` needs nodes up to hop ``L-1-l``), and only the seeds' rows are returned: the same
        values for the seeds, with most of the sparse work skipped (the last hop holds most nodes).

        ``noise > 0`` perturbs each layer's output as SimGCL does: ``x + noise * sign(x) * r / |r|``,
        ``r`` uniform in [0, 1)^d, so a row moves by ``noise`` within its own orthant.
        """
        def layer_output(x: Tensor) -> Tensor:
            if noise:
                x = x + noise * torch.sign(x) * torch.nn.functional.normalize(torch.rand_like(x), dim=-1)
            return x

        if hop_sizes is None:
            out = x / (self.num_layers + 1)
            for _ in range(self.num_layers):
                x = layer_output(self.conv(x, adj_t))
                out = out + x / (self.num_layers + 1)
            return out
        reach = torch.tensor(hop_sizes).cumsum(0).tolist()  # reach[h]: nodes within h hops
        out = x[: reach[0]] / (self.num_layers + 1)
        for layer in range(self.num_layers):
            x = layer_output(self.conv(x, trim_rows(adj_t, reach[self.num_layers - 1 - layer], x.shape[0])))
            out = out + x[: reach[0]] / (self.num_layers + 1)
        return out


class MF(nn.Module):
    """Matrix factorisation: the zero-layer baseline, ``score(u, i) = <e_u, e_i>``."""

    num_layers = 0

    def __init__(self, num_nodes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_nodes, dim, sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def ego(self, n_id: Tensor) -> Tensor:
        return self.embedding(n_id)

    def forward(self, n_id: Tensor, adj_t: Tensor | None = None, hop_sizes: list[int] | None = None) -> Tensor:
        return self.embedding(n_id)

    def propagate(self, x: Tensor, adj_t: Tensor | None = None, hop_sizes: list[int] | None = None) -> Tensor:
        return x


class BipartiteSAGE(nn.Module):
    """GraphSAGE-style recommender: learnable id embeddings plus projected node features, then
    ``num_layers`` mean-aggregating :class:`SAGEConv` layers with ReLU in between.

    Args:
        num_nodes: users + items.
        dim: hidden and output size.
        num_layers: SAGE layers.
        features: optional ``[N, F]`` float32 node features (zeros for nodes without any).
    """

    def __init__(self, num_nodes: int, dim: int, num_layers: int, features: Tensor | None = None):
        super().__init__()
        self.num_layers = num_layers
        self.embedding = nn.Embedding(num_nodes, dim, sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.register_buffer("features", features, persistent=False)
        self.feature_proj = nn.Linear(features.shape[1], dim) if features is not None else None
        self.convs = nn.ModuleList(SAGEConv(dim, dim, aggr="mean") for _ in range(num_layers))

    def ego(self, n_id: Tensor) -> Tensor:
        return self.embedding(n_id)

    def inputs(self, n_id: Tensor) -> Tensor:
        x = self.embedding(n_id)
        if self.feature_proj is not None:
            x = x + self.feature_proj(self.features[n_id])
        return x

    def forward(self, n_id: Tensor, adj_t: Tensor) -> Tensor:
        x = self.inputs(n_id)
        for i in range(self.num_layers):
            x = self.layer(i, x, adj_t)
        return x

    def layer(self, index: int, x: Tensor, adj_t: Tensor) -> Tensor:
        # SAGEConv's mean aggregation ignores edge weights: a pattern-only copy of adj_t.
        pattern = torch.sparse_csr_tensor(adj_t.crow_indices(), adj_t.col_indices(),
                                          torch.ones_like(adj_t.values()), adj_t.shape)
        x = self.convs[index](x, pattern)
        return x if index == self.num_layers - 1 else torch.relu(x)


def build_model(name: str, *, num_nodes: int, dim: int, num_layers: int,
                features: Tensor | None = None, item_bias: bool = False) -> nn.Module:
    if name == "lightgcn":
        model = LightGCN(num_nodes, dim, num_layers)
    elif name == "mf":
        model = MF(num_nodes, dim)
    elif name == "sage":
        model = BipartiteSAGE(num_nodes, dim, num_layers, features)
    else:
        raise ValueError(f"unknown model {name!r}")
    if item_bias:
        # One logit offset per node, indexed by node id like the embeddings (users' rows stay unused
        # and zero). Sparse and named *embedding so that SparseAdam updates only the batch's rows.
        model.bias_embedding = nn.Embedding(num_nodes, 1, sparse=True)
        nn.init.zeros_(model.bias_embedding.weight)
    return model


@torch.no_grad()
def full_graph_embeddings(model: nn.Module, indptr: Tensor, indices: Tensor, *,
                          chunk_size: int = 65536, progress: bool = False) -> Tensor:
    """Exact embeddings of every node, layer by layer over the whole graph (no sampling).

    Each layer is materialised for all nodes before the next, in chunks of destination rows, so
    the cost is ``O(E * L * dim)`` and peak memory is a few ``[N, dim]`` tables.

    Runs on the device of the model's weights (the graph stays on the CPU; each chunk's adjacency
    is moved over). Returns ``[N, dim]`` float32 on the CPU.
    """
    from tqdm import tqdm

    num_nodes = indptr.numel() - 1
    device = model.embedding.weight.device
    if isinstance(model, MF) or model.num_layers == 0:
        return model.embedding.weight.detach().cpu().clone()
    n_id = torch.arange(num_nodes)
    x = model.inputs(n_id.to(device)) if isinstance(model, BipartiteSAGE) else model.embedding.weight.detach()
    out = x / (model.num_layers + 1) if isinstance(model, LightGCN) else None
    chunks = [(layer, start) for layer in range(model.num_layers) for start in range(0, num_nodes, chunk_size)]
    nxt = torch.empty_like(x)
    for layer, start in tqdm(chunks, desc="layer-wise inference", unit="chunk", disable=not progress):
        rows = n_id[start:start + chunk_size]
        adj_t = full_adjacency(indptr, indices, rows=rows).to(device)
        nxt[start:start + rows.numel()] = _layer_rows(model, layer, x, adj_t, rows.to(device))
        if start + chunk_size >= num_nodes:  # layer complete: it becomes the next layer's input
            x, nxt = nxt, torch.empty_like(nxt)
            if out is not None:
                out = out + x / (model.num_layers + 1)
    return (out if out is not None else x).cpu()


def _layer_rows(model: nn.Module, layer: int, x: Tensor, adj_t: Tensor, rows: Tensor) -> Tensor:
    """One layer for a chunk of destination rows: ``adj_t [R, N]`` against ``x [N, d]``."""
    if isinstance(model, LightGCN):
        return torch.sparse.mm(adj_t, x)
    # SAGEConv needs the destination's own features: pass (x_src, x_dst) as PyG's bipartite form.
    pattern = torch.sparse_csr_tensor(adj_t.crow_indices(), adj_t.col_indices(),
                                      torch.ones_like(adj_t.values()), adj_t.shape)
    h = model.convs[layer]((x, x[rows]), pattern)
    return h if layer == model.num_layers - 1 else torch.relu(h)

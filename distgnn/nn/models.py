"""Recommender models over the homogeneous user-item graph. Architecture only: no data, no losses.

Every model maps a (sub)graph to node embeddings: ``forward(n_id [n], adj_t [n, n]) -> [n, dim]``
where ``n_id`` are global node ids and ``adj_t`` is a sparse CSR matrix whose row ``v`` holds the
weighted incoming messages of node ``v``. The same forward serves a sampled subgraph in training
and the whole graph (layer by layer, :func:`full_graph_embeddings`) in evaluation and export.
"""

from __future__ import annotations

import itertools
import warnings

import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv, SAGEConv

from distgnn.core.config import ModelConfig, TrainJobConfig
from distgnn.data.graph import Graph, csr_row_positions, row_chunks

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
    crow = torch.zeros(n + 1, dtype=torch.long, device=n_id.device)
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
        dst = torch.repeat_interleave(torch.arange(num_nodes, device=indptr.device), degree)
    else:
        segment, position = csr_row_positions(indptr, rows)
        crow = torch.zeros(rows.numel() + 1, dtype=torch.long, device=indptr.device)
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


class Recommender(nn.Module):
    """What every model here shares: an id embedding per node (users ``0..U-1``, items after them),
    an optional learned logit offset per item, and one public per-layer step (:meth:`layer`) that
    sampled training (:meth:`propagate`), exact evaluation and export (:func:`full_graph_embeddings`)
    and the distributed exporter all call.

    Args:
        num_nodes: users + items.
        dim: embedding size.
        num_layers: message-passing layers ``L`` (0 for MF).
        item_bias: learn one logit offset per node (users' rows stay unused and zero), added to an
            item's score by the softmax loss; exported as one extra vector column.
    """

    mean_of_layers = False  # output = last layer; LightGCN overrides: the mean of layers 0..L
    pair_model = False  # scores are inner products of outputs; NCF overrides: an MLP scores a pair
    # whether :meth:`layer` computes each output row from its own adjacency row alone, in an order
    # that does not depend on the rows computed with it (a sparse product, no dense projection):
    # then layer-wise inference may cut chunks anywhere without changing a bit
    rows_alone = False

    def __init__(self, num_nodes: int, dim: int, num_layers: int, *, item_bias: bool = False, rating: bool = False):
        super().__init__()
        self.num_layers = num_layers
        item_bias = item_bias or rating
        # sparse=True: gradients touch only the rows of a batch (and are exchanged as rows).
        self.embedding = nn.Embedding(num_nodes, dim, sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.bias_embedding = None
        if item_bias:
            # named *embedding and sparse, like the id table: SparseAdam updates only a batch's rows
            self.bias_embedding = nn.Embedding(num_nodes, 1, sparse=True)
            nn.init.zeros_(self.bias_embedding.weight)
        # rating task: users' bias rows are used too, plus one global offset (set to the mean rating)
        self.global_bias = nn.Parameter(torch.zeros(())) if rating else None

    def ego(self, n_id: Tensor) -> Tensor:
        """Layer-0 id embeddings ``[n, dim]`` (what the L2 penalty regularises)."""
        return self.embedding(n_id)

    @property
    def inputs_are_ego(self) -> bool:
        """Whether :meth:`inputs` is :meth:`ego` (id embeddings only): then the penalty can take its
        rows from the inputs already gathered, and the table's gradient holds each row once."""
        return True

    def inputs(self, n_id: Tensor) -> Tensor:
        """``[n, dim]`` input of the first layer."""
        return self.embedding(n_id)

    def item_bias(self, nodes: Tensor) -> Tensor | None:
        """``[n]`` learned logit offsets of item nodes, or None without an item bias."""
        return None if self.bias_embedding is None else self.bias_embedding(nodes).squeeze(-1)

    def score(self, user_out: Tensor, item_out: Tensor) -> Tensor:
        """Ranking scores from outputs: ``user_out [B, D]`` against ``item_out [C, D]`` (every pair,
        ``[B, C]``) or ``[B, M, D]`` (each user's own items, ``[B, M]``). The inner product here."""
        if item_out.dim() == 2:
            return user_out @ item_out.T
        return torch.einsum("bd,bmd->bm", user_out, item_out)

    def predict_rating(self, user_out: Tensor, item_out: Tensor, user_nodes: Tensor, item_nodes: Tensor) -> Tensor:
        """``[B]`` predicted ratings ``<u, i> + b_u + b_i + mean`` of aligned pairs (rating task)."""
        bias = self.bias_embedding(torch.stack([user_nodes, item_nodes])).squeeze(-1).sum(0)
        return (user_out * item_out).sum(-1) + bias + self.global_bias

    def layer(self, index: int, x: Tensor, adj_t: Tensor, x_dst: Tensor | None = None) -> Tensor:
        """Layer ``index`` for the destination rows of ``adj_t [R, n]`` from ``x [n, dim]``;
        ``x_dst [R, dim]`` are the destinations' own rows (models with a root weight use them)."""
        raise NotImplementedError

    def readout(self, out: Tensor | None, x: Tensor) -> Tensor:
        """The running output after one more layer's result ``x`` (``out`` None at layer 0)."""
        if not self.mean_of_layers:
            return x
        share = x / (self.num_layers + 1)
        return share if out is None else out + share

    def propagate(
        self, x: Tensor, adj_t: Tensor | None, hop_sizes: list[int] | None = None, *, noise: float = 0.0
    ) -> Tensor:
        """Outputs of a sampled subgraph from its nodes' inputs ``x [n, dim]``.

        With ``hop_sizes`` (a sampled subgraph's ``num_sampled_nodes``: seeds, then each hop's new
        nodes, numbered in that order) layer ``l`` computes only the rows later layers read (nodes up
        to hop ``L-1-l``) and only the seeds' rows are returned: the same values for the seeds, with
        most of the sparse work skipped (the last hop holds most nodes).

        ``noise > 0`` perturbs each layer's output as SimGCL does: ``x + noise * sign(x) * r / |r|``,
        ``r`` uniform in [0, 1)^d, so a row moves by ``noise`` within its own orthant.
        """
        with torch.autocast(x.device.type, enabled=False):  # float32: see optim.mixed_precision
            x = x.float()  # whatever dtype autocast gave the inputs (a feature projection runs under it)
            num_nodes = x.shape[0]
            reach = list(itertools.accumulate(hop_sizes)) if hop_sizes is not None else None
            seeds = reach[0] if reach is not None else num_nodes
            out = self.readout(None, x[:seeds])
            for index in range(self.num_layers):
                rows = reach[self.num_layers - 1 - index] if reach is not None else num_nodes
                a = trim_rows(adj_t, rows, x.shape[0]) if rows < adj_t.shape[0] else adj_t
                x = self.layer(index, x, a, x[:rows])
                if noise:
                    x = x + noise * torch.sign(x) * torch.nn.functional.normalize(torch.rand_like(x), dim=-1)
                out = self.readout(out, x[:seeds])
            return out

    def forward(self, n_id: Tensor, adj_t: Tensor | None, hop_sizes: list[int] | None = None) -> Tensor:
        return self.propagate(self.inputs(n_id), adj_t, hop_sizes)


class LightGCN(Recommender):
    r"""LightGCN (He et al., 2020): ``e^{(l+1)} = \hat A e^{(l)}``, output ``\sum_l e^{(l)} / (L+1)``.
    ``adj_t`` carries the symmetric normalisation (:func:`full_adjacency`) or its unbiased sampled
    estimate (:func:`sampled_adjacency`)."""

    mean_of_layers = True
    rows_alone = True  # a sparse product only

    def __init__(self, num_nodes: int, dim: int, num_layers: int, *, item_bias: bool = False, rating: bool = False):
        super().__init__(num_nodes, dim, num_layers, item_bias=item_bias, rating=rating)
        self.conv = LGConv(normalize=False)

    def layer(self, index: int, x: Tensor, adj_t: Tensor, x_dst: Tensor | None = None) -> Tensor:
        return self.conv(x, adj_t)


class MF(Recommender):
    """Matrix factorisation: the zero-layer baseline, ``score(u, i) = <e_u, e_i>``."""

    def __init__(self, num_nodes: int, dim: int, *, item_bias: bool = False, rating: bool = False):
        super().__init__(num_nodes, dim, 0, item_bias=item_bias, rating=rating)


class NeuMF(Recommender):
    r"""Neural collaborative filtering (He et al., WWW 2017), NeuMF: a GMF tower
    ``p_u \odot q_i`` and an MLP tower over ``[p'_u ; q'_i]``, joined by one output layer:
    ``score = h^T [p_u \odot q_i ; MLP([p'_u ; q'_i])]``. Each node's embedding row holds its GMF
    half and its MLP half (``2 * dim`` columns). No message passing; a pair is scored by the MLP,
    so no inner product of two vectors ranks as it does (see :attr:`pair_model`).

    Args:
        mlp_layers: widths of the MLP tower's layers (ReLU after each).
    """

    pair_model = True

    def __init__(self, num_nodes: int, dim: int, mlp_layers: tuple[int, ...] = (64, 32, 16)):
        super().__init__(num_nodes, 2 * dim, 0)
        self.dim = dim
        widths = [2 * dim, *mlp_layers]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output = nn.Linear(dim + widths[-1], 1)

    def score(self, user_out: Tensor, item_out: Tensor) -> Tensor:
        u = user_out.unsqueeze(1)  # [B, 1, 2d]
        v = item_out.unsqueeze(0) if item_out.dim() == 2 else item_out  # [1 or B, C, 2d]
        d = self.dim
        gmf = u[..., :d] * v[..., :d]
        # the first layer on the concatenation [p'_u ; q'_i] as two halves added: the [B, C, 2d]
        # concatenation is never built (evaluation scores every user against every item)
        first = self.mlp[0]
        h = torch.relu(u[..., d:] @ first.weight[:, :d].T + v[..., d:] @ first.weight[:, d:].T + first.bias)
        for linear in self.mlp[1:]:
            h = torch.relu(linear(h))
        return self.output(torch.cat([gmf.expand(*h.shape[:-1], d), h], dim=-1)).squeeze(-1)


class BipartiteSAGE(Recommender):
    """GraphSAGE-style recommender: learnable id embeddings plus projected node features, then
    ``num_layers`` mean-aggregating :class:`SAGEConv` layers with ReLU in between.

    Args:
        features: optional ``[N, F]`` float32 node features (zeros for nodes without any).
    """

    def __init__(
        self,
        num_nodes: int,
        dim: int,
        num_layers: int,
        features: Tensor | None = None,
        *,
        item_bias: bool = False,
        rating: bool = False,
    ):
        super().__init__(num_nodes, dim, num_layers, item_bias=item_bias, rating=rating)
        self.register_buffer("features", features, persistent=False)
        self.feature_proj = nn.Linear(features.shape[1], dim) if features is not None else None
        self.convs = nn.ModuleList(SAGEConv(dim, dim, aggr="mean") for _ in range(num_layers))

    @property
    def inputs_are_ego(self) -> bool:
        return self.feature_proj is None

    def inputs(self, n_id: Tensor) -> Tensor:
        x = self.embedding(n_id)
        if self.feature_proj is not None:
            x = x + self.feature_proj(self.features[n_id])
        return x

    def layer(self, index: int, x: Tensor, adj_t: Tensor, x_dst: Tensor | None = None) -> Tensor:
        # SAGEConv's mean aggregation ignores edge weights: a pattern-only copy of adj_t; the
        # destinations' own rows go in PyG's bipartite (x_src, x_dst) form for the root weight.
        pattern = torch.sparse_csr_tensor(
            adj_t.crow_indices(), adj_t.col_indices(), torch.ones_like(adj_t.values()), adj_t.shape
        )
        x_dst = x[: adj_t.shape[0]] if x_dst is None else x_dst
        h = self.convs[index]((x, x_dst), pattern)
        return h if index == self.num_layers - 1 else torch.relu(h)


MODELS = ("lightgcn", "sage", "mf", "ncf")


def build_model(
    name: str,
    *,
    num_nodes: int,
    dim: int,
    num_layers: int,
    features: Tensor | None = None,
    item_bias: bool = False,
    rating: bool = False,
    mlp_layers: tuple[int, ...] = (64, 32, 16),
) -> Recommender:
    """The one factory: ``name`` in :data:`MODELS`; ``features`` are used by ``sage`` only,
    ``mlp_layers`` by ``ncf`` only; ``rating`` adds user/item biases and a global offset."""
    if name == "lightgcn":
        return LightGCN(num_nodes, dim, num_layers, item_bias=item_bias, rating=rating)
    if name == "mf":
        return MF(num_nodes, dim, item_bias=item_bias, rating=rating)
    if name == "sage":
        return BipartiteSAGE(num_nodes, dim, num_layers, features, item_bias=item_bias, rating=rating)
    if name == "ncf":
        return NeuMF(num_nodes, dim, mlp_layers)
    raise ValueError(f"unknown model {name!r} (one of {', '.join(MODELS)})")


def model_from_config(cfg: ModelConfig, graph: Graph, *, task: str = "ranking") -> Recommender:
    """The model a :class:`~distgnn.core.config.ModelConfig` describes, sized for ``graph``, for
    the job's task (``TrainJobConfig.task``: the rating task adds biases, see :meth:`predict_rating`)."""
    features = graph.node_features() if cfg.name == "sage" and cfg.use_features else None
    num_layers = 0 if cfg.name in ("mf", "ncf") else cfg.num_layers
    return build_model(
        cfg.name,
        num_nodes=graph.num_nodes,
        dim=cfg.dim,
        num_layers=num_layers,
        features=features,
        item_bias=cfg.item_bias,
        rating=task == "rating",
        mlp_layers=cfg.mlp_layers,
    )


# Adjacency entries per piece of layer-wise inference: its index and weight temporaries take ~60
# bytes an entry (~60 MB), whatever the degrees (a chunk of rows alone is unbounded: hub items).
MAX_CHUNK_ENTRIES = 1 << 20


def inference_pieces(
    indptr: Tensor,
    chunk_size: int,
    *,
    rows: Tensor | None = None,
    cut: bool = True,
    max_entries: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """What one layer of :func:`full_graph_embeddings` computes at a time: ``(ids, kept)`` pairs,
    ``ids [m]`` ascending node ids computed together and ``kept [k]`` the positions in ``ids`` of
    the rows asked (``rows``, default all; in order, over all pieces). Pieces lie within the grid
    of ``chunk_size`` rows (the chunks this function has always used). With ``cut`` (a model whose
    layer computes each row alone, :attr:`Recommender.rows_alone`) a piece holds the rows asked
    and at most ``max_entries`` adjacency entries (a hub row alone may hold more); without, a
    piece is a whole grid chunk holding rows asked: dense projections take other kernels, so
    other bits, for other numbers of rows (measured: 1-15 rows differ at width 513)."""
    max_entries = MAX_CHUNK_ENTRIES if max_entries is None else max_entries
    num_nodes, pieces = indptr.numel() - 1, []
    for first in range(0, num_nodes, chunk_size):
        last = min(first + chunk_size, num_nodes)
        grid = torch.arange(first, last, device=indptr.device)
        if rows is None:
            asked = grid
        else:
            asked = rows[int(torch.searchsorted(rows, first)) : int(torch.searchsorted(rows, last))]
        if asked.numel() == 0:
            continue
        if not cut:
            pieces.append((grid, asked - first))
            continue
        degree = indptr.index_select(0, asked + 1) - indptr.index_select(0, asked)
        for a, b in row_chunks(torch.cat([degree.new_zeros(1), torch.cumsum(degree, 0)]), max_entries):
            pieces.append((asked[a:b], torch.arange(b - a, device=indptr.device)))
    return pieces


@torch.no_grad()
def full_graph_embeddings(
    model: Recommender,
    indptr: Tensor,
    indices: Tensor,
    *,
    chunk_size: int = 65536,
    progress: bool = False,
    out: Tensor | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """Exact embeddings of every node (or of the nodes ``rows``), layer by layer over the whole
    graph (no sampling).

    Each layer is materialised for all nodes before the next, in chunks of ``chunk_size``
    destination rows cut into pieces of at most :data:`MAX_CHUNK_ENTRIES` adjacency entries
    (:func:`inference_pieces`), so the cost is ``O(E * L * dim)``. The last layer is computed for
    the rows asked only. Memory beyond the model: the output ``[R, dim]`` (``out``, when given: the
    first columns of the scoring vectors, see :func:`exact_vectors`), and one ``[N, dim]`` layer
    (two while a middle layer of a 3+-layer model is built). The id table is read in place as the
    first layer's input, and the last layer goes into the output piece by piece, never whole.

    Args:
        rows: ``[R]`` ascending node ids whose outputs are wanted (evaluation reads a sample of the
            users and every item); None: every node. A row's numbers are the same either way.

    Runs on the device of the model's weights (the graph stays on the CPU; each chunk's adjacency
    is moved over). Returns ``[R, dim]`` float32 on the CPU (``out`` itself when given).
    """
    from tqdm import tqdm

    num_nodes = indptr.numel() - 1
    device = model.embedding.weight.device
    if model.inputs_are_ego:  # the id embeddings are the inputs: read the table, copy nothing
        x = model.embedding.weight.detach()
    else:
        x = model.inputs(torch.arange(num_nodes, device=device)).detach()
    num_rows = num_nodes if rows is None else rows.numel()
    if out is None:
        out = torch.empty(num_rows, x.shape[1], dtype=x.dtype, device="cpu")

    def rows_of(table: Tensor, start: int, end: int) -> Tensor:  # table's rows at output rows start..end-1
        return table[start:end] if rows is None else table.index_select(0, rows[start:end].to(table.device))

    for start in range(0, num_rows, chunk_size):
        out[start : start + chunk_size] = model.readout(None, rows_of(x, start, start + chunk_size)).cpu()
    every_row = inference_pieces(indptr, chunk_size, cut=model.rows_alone)
    wanted = every_row if rows is None else inference_pieces(indptr, chunk_size, rows=rows, cut=model.rows_alone)
    bar = tqdm(
        total=len(every_row) * max(model.num_layers - 1, 0) + len(wanted) * min(model.num_layers, 1),
        desc="layer-wise inference",
        unit="chunk",
        disable=not progress,
    )

    def layer_rows(layer: int, ids: Tensor) -> Tensor:  # layer ``layer`` of the nodes ids, from x
        adj_t = full_adjacency(indptr, indices, rows=ids).to(device)
        return model.layer(layer, x, adj_t, x.index_select(0, ids.to(device)))

    for layer in range(model.num_layers):
        if layer < model.num_layers - 1:  # a layer a later layer reads: materialised for every node
            layer_out = torch.empty_like(x)
            for ids, _ in every_row:
                start, end = int(ids[0]), int(ids[-1]) + 1
                layer_out[start:end] = layer_rows(layer, ids)
                if rows is None:
                    out[start:end] = model.readout(out[start:end], layer_out[start:end].cpu())
                bar.update()
            if rows is not None:
                for start in range(0, num_rows, chunk_size):
                    end = min(start + chunk_size, num_rows)
                    out[start:end] = model.readout(out[start:end], rows_of(layer_out, start, end).cpu())
            x = layer_out
            continue
        done = 0
        for ids, kept in wanted:  # the last layer: straight into the output
            h = layer_rows(layer, ids).index_select(0, kept.to(device)).cpu()
            out[done : done + kept.numel()] = model.readout(out[done : done + kept.numel()], h)
            done += kept.numel()
            bar.update()
    bar.close()
    return out


def scoring_columns(model: Recommender) -> int:
    """Columns :func:`scoring_vectors` adds to the model's outputs: 2 for a rating model, 1 for a
    learned item bias, else 0."""
    if model.global_bias is not None:
        return 2
    return 0 if model.bias_embedding is None else 1


@torch.no_grad()
def scoring_vectors(emb: Tensor, model: Recommender, *, cosine: bool, temperature: float, num_users: int) -> Tensor:
    """``[N, d]`` model outputs -> vectors whose plain inner product ranks as the model scores:
    normalised for cosine scoring, plus a column ``[1 | temperature * item bias]`` for a learned
    item bias (``cos + t * b`` ranks as the logit ``cos / t + b``). A rating model gets two columns,
    users ``[b_u + mean | 1]`` and items ``[1 | b_i]``: the inner product is then the predicted rating
    (:meth:`Recommender.predict_rating`), and ranking by it ranks by predicted rating. A new tensor
    (see :func:`finish_scoring_vectors` to fill one in place)."""
    vectors = emb.new_empty((emb.shape[0], emb.shape[1] + scoring_columns(model)))
    vectors[:, : emb.shape[1]] = emb
    return finish_scoring_vectors(
        vectors, model, dim=emb.shape[1], cosine=cosine, temperature=temperature, num_user_rows=num_users
    )


@torch.no_grad()
def finish_scoring_vectors(
    vectors: Tensor,
    model: Recommender,
    *,
    dim: int,
    cosine: bool,
    temperature: float,
    num_user_rows: int,
    rows: Tensor | None = None,
    chunk_size: int = 65536,
) -> Tensor:
    """:func:`scoring_vectors` in place: ``vectors [n, dim + scoring_columns]`` holds the outputs
    in its first ``dim`` columns; they are normalised chunk by chunk (each row as
    ``F.normalize`` of the whole would) and the extra columns written from the model's bias rows
    (``rows [n]`` of its table, default all). The first ``num_user_rows`` rows are users (a graph's
    users come first, and so do a part's). Returns ``vectors``."""
    if cosine:
        for start in range(0, vectors.shape[0], chunk_size):
            emb = vectors[start : start + chunk_size, :dim]
            emb.copy_(torch.nn.functional.normalize(emb.contiguous(), dim=-1))
    users = num_user_rows
    if model.bias_embedding is None:
        return vectors
    bias = model.bias_embedding.weight.detach()[:, 0]
    bias = (bias if rows is None else bias.index_select(0, rows.to(bias.device))).to(vectors.device, vectors.dtype)
    if model.global_bias is not None:
        vectors[:, dim] = bias
        vectors[:users, dim] += float(model.global_bias.detach())
        vectors[users:, dim] = 1.0
        vectors[:users, dim + 1] = 1.0
        vectors[users:, dim + 1] = bias[users:]
        return vectors
    torch.mul(bias, temperature, out=vectors[:, dim])
    vectors[:users, dim] = 1.0
    return vectors


def exact_vectors(
    model: Recommender,
    graph: Graph,
    job: TrainJobConfig,
    *,
    chunk_size: int = 65536,
    progress: bool = False,
    rows: Tensor | None = None,
) -> Tensor:
    """``[N, d]`` (``d + 1`` with an item bias) exact scoring vectors of every node (or of the
    ascending node ids ``rows``, ``[R, d]``): a plain inner product ranks as the model does, in
    evaluation, export and FAISS alike. Built in one ``[R, d + columns]`` buffer (the embeddings
    are computed into its first columns), so memory is that buffer plus
    :func:`full_graph_embeddings`' one layer."""
    dim = model.embedding.weight.shape[1]
    num_rows = graph.num_nodes if rows is None else rows.numel()
    vectors = torch.empty(num_rows, dim + scoring_columns(model), device="cpu")
    full_graph_embeddings(
        model, graph.indptr, graph.indices, chunk_size=chunk_size, progress=progress, out=vectors[:, :dim], rows=rows
    )
    return finish_scoring_vectors(
        vectors,
        model,
        dim=dim,
        cosine=job.cosine_scores,
        temperature=job.optim.temperature,
        num_user_rows=graph.num_users if rows is None else int(torch.searchsorted(rows, graph.num_users)),
        rows=rows,
        chunk_size=chunk_size,
    )

"""Diagnosis: does a trained export under-rank popular items?

Re-ranks an export's items by ``score(u, i) + beta * log(training degree of i)`` for a few beta and
prints test Recall/NDCG@K for each, nothing retrained. If a positive beta helps, the model's scores
cannot carry item popularity (bounded cosine scores cannot): train with ``--model.item_bias true``.
Beta is read off the test split here, so use this to diagnose, never to report a result.

    python -m benchmarks.popularity_prior --export exports/gowalla-L2
"""

from __future__ import annotations

import argparse

import torch

from distgnn.data.graph import load_graph
from distgnn.eval.protocol import evaluate
from distgnn.serving.recommend import load_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="export folder (python -m distgnn.export)")
    parser.add_argument(
        "--graph",
        default="",
        help="the graph directory the run trained on; default: the one the export's manifest names",
    )
    parser.add_argument(
        "--betas",
        default="0,0.005,0.01,0.02,0.03,0.05,0.07,0.1,0.13",
        help="comma-separated weights of log(item degree) added to the scores",
    )
    parser.add_argument("--k", type=int, default=20, help="cut-off K")
    args = parser.parse_args()
    export = load_export(args.export)
    graph = load_graph(args.graph or export.manifest["graph"])
    users, items = torch.from_numpy(export.user_emb), torch.from_numpy(export.item_emb)
    log_degree = graph.degree[graph.num_users :].double().clamp(min=1).log().float()
    print(f"| beta | Recall@{args.k} | NDCG@{args.k} |\n|---|---|---|")
    for beta in (float(b) for b in args.betas.split(",")):
        # one extra column adds beta * log degree to every inner product
        vectors = torch.cat(
            [torch.cat([users, torch.ones(len(users), 1)], 1), torch.cat([items, beta * log_degree[:, None]], 1)]
        )
        m = evaluate(vectors, graph, "test", (args.k,), batch_size=2048)
        print(f"| {beta:g} | {m[f'recall@{args.k}']:.4f} | {m[f'ndcg@{args.k}']:.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""What MMR re-ranking costs in accuracy and buys in diversity, on the test users of an export.

    python -m benchmarks.rerank --export exports/rerank-ml100k --lambdas 1.0,0.9,0.7,0.5 --out benchmarks/out/rerank

The export's ``seen.parquet`` holds every interaction, test ones included (serving must not
recommend them), so accuracy is measured as the evaluation protocol does it: the graph directory the
export names (manifest ``graph``, or ``--graph``) gives the exclusions (training and validation
items) and the truth (test items). With ``mmr_lambda = 1`` the NDCG@10 printed must equal the
manifest's recomputed test NDCG@10, which checks the setup.

For each lambda, over every test user (chunks of ``--chunk-size``): NDCG@10 and Recall@10
(:mod:`distgnn.eval.metrics`), intra-list diversity (mean over users of the mean pairwise
``1 - cosine`` of the k items' vectors, bias columns left out: :meth:`Export.item_unit_vectors`),
catalogue coverage (distinct items recommended / items), and the time of ``Export.top_items`` per
1,000 users (the median of ``--repeats`` passes; ``--threads`` sets torch's and FAISS's threads).
Prints a markdown table and the process's peak RSS, and writes ``rerank.json`` and ``rerank.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

import distgnn
from distgnn.data.graph import item_sets_from_pairs, load_graph
from distgnn.eval.metrics import finalize, ranking_sums
from distgnn.eval.protocol import excluded, truth
from distgnn.serving.rerank import catalogue_coverage, intra_list_diversity


def protocol_export(export, graph):
    """``export`` with the test protocol's exclusions (training + validation items) instead of every
    known interaction, so that the test items can be recommended and counted as hits."""
    users, items = [], []
    for indptr, indices in excluded(graph, "test"):
        counts = (indptr[1:] - indptr[:-1]).numpy()
        users.append(np.repeat(np.arange(graph.num_users), counts))
        items.append(indices.numpy())
    sets = item_sets_from_pairs(np.concatenate(users), np.concatenate(items), graph.num_users)
    return dataclasses.replace(export, seen_indptr=sets.indptr, seen_indices=sets.indices)


def measure(export, users: np.ndarray, truth_csr, *, k: int, mmr_lambda: float, pool: int, chunk_size: int) -> dict:
    rules = export.rerank_rules(mmr_lambda=mmr_lambda, pool=pool)
    vectors = export.item_unit_vectors()
    t0 = time.perf_counter()
    topk = []
    for start in range(0, len(users), chunk_size):  # chunks, as python -m distgnn.recommend --all-users runs
        _, I = export.top_items(users[start : start + chunk_size], k, rules=rules)
        topk.append(torch.from_numpy(I))
    elapsed_s = time.perf_counter() - t0
    topk = torch.cat(topk)
    users_t = torch.from_numpy(users)
    metrics = finalize(ranking_sums(topk, users_t, *truth_csr, [k]))
    diversity = intra_list_diversity(topk, vectors)
    return {
        "mmr_lambda": mmr_lambda,
        f"ndcg@{k}": metrics[f"ndcg@{k}"],
        f"recall@{k}": metrics[f"recall@{k}"],
        "num_users": metrics["num_users"],
        "diversity": float(torch.nanmean(diversity)),
        "coverage": catalogue_coverage(topk, len(export.item_ids)),
        "elapsed_s": elapsed_s,
        "topk": topk,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default="exports/rerank-ml100k", help="export folder (default: %(default)s)")
    parser.add_argument("--graph", help="graph directory of the export (default: the manifest's 'graph')")
    parser.add_argument("--lambdas", default="1.0,0.9,0.7,0.5", help="comma-separated MMR lambdas")
    parser.add_argument("--k", type=int, default=10, help="items per user (default: %(default)s)")
    parser.add_argument("--pool", type=int, default=100, help="MMR candidate pool per user (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="users per search (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per lambda; the median is reported")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch and FAISS threads; 0 = the libraries' defaults (default: 0)"
    )
    parser.add_argument("--out", default="benchmarks/out/rerank", help="folder for rerank.json and rerank.md")
    args = parser.parse_args(argv)

    if args.threads:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    export = distgnn.load_export(args.export)
    graph = load_graph(args.graph or export.manifest["graph"])
    if (graph.num_users, graph.num_items) != (len(export.user_ids), len(export.item_ids)):
        raise SystemExit(f"{args.export}: its users/items do not match the graph {graph.path}")
    export = protocol_export(export, graph)
    truth_csr = truth(graph, "test")
    users = torch.nonzero(graph.test.counts > 0).flatten().numpy().astype(np.int64)
    load_before = os.getloadavg()[0]

    rows = []
    for mmr_lambda in [float(x) for x in args.lambdas.split(",")]:
        runs = [
            measure(
                export, users, truth_csr, k=args.k, mmr_lambda=mmr_lambda, pool=args.pool, chunk_size=args.chunk_size
            )
            for _ in range(args.repeats)
        ]
        assert all(torch.equal(r["topk"], runs[0]["topk"]) for r in runs)  # deterministic
        row = {key: value for key, value in runs[0].items() if key != "topk"}
        row["elapsed_s"] = float(np.median([r["elapsed_s"] for r in runs]))
        row["ms_per_1000_users"] = 1000.0 * row["elapsed_s"] / len(users) * 1000.0
        rows.append(row)

    k = args.k
    recorded = export.manifest.get("test_metrics", {}).get(f"ndcg@{k}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lines = [
        f"Export `{args.export}` ({len(export.user_ids):,} users, {len(export.item_ids):,} items, "
        f"dim {export.item_emb.shape[1]}), {len(users):,} test users, k = {k}, pool = {args.pool}, "
        f"flat index, chunks of {args.chunk_size} users; {os.cpu_count()}-core CPU ({platform.machine()}), "
        f"torch threads {torch.get_num_threads()}, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}.",
        "",
        f"| mmr_lambda | NDCG@{k} | Recall@{k} | intra-list diversity | catalogue coverage | ms / 1,000 users |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mmr_lambda']:.1f} | {r[f'ndcg@{k}']:.4f} | {r[f'recall@{k}']:.4f} | {r['diversity']:.4f} | "
            f"{r['coverage']:.4f} | {r['ms_per_1000_users']:.1f} |"
        )
    lines += [
        "",
        f"Manifest's recomputed test NDCG@{k}: {recorded if recorded is None else f'{recorded:.4f}'}. "
        f"Peak RSS {peak_rss_mib:.0f} MiB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rerank.md").write_text(text)
    summary = {
        "export": args.export,
        "graph": str(graph.path),
        "k": k,
        "pool": args.pool,
        "chunk_size": args.chunk_size,
        "torch_threads": torch.get_num_threads(),
        "num_test_users": len(users),
        "manifest_ndcg": recorded,
        "peak_rss_mib": peak_rss_mib,
        "rows": rows,
    }
    (out / "rerank.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation: metrics (sums, reducible over workers), the protocol on a graph, baselines."""

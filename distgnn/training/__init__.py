"""Training: one loop (fit), the replicated and partitioned strategies, gradient and row exchange,
the Ray Train shell and the Ray Tune search."""

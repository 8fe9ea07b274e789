"""Data on disk: reading and splitting interaction logs into a graph directory, the synthetic
generator, the graph store and its partitions."""

"""Neural parts: models (one per-layer step each), losses, the neighbor sampler and the loaders."""

"""distgnn: distributed training of GNN recommenders and export of their embeddings to FAISS.

Stages (each a module and a command): ``prepare`` -> ``train`` -> ``export`` -> ``recommend``.
"""

from distgnn.core.version import VERSION as __version__

__all__ = ["__version__", "load_export"]


def load_export(path, *, verify=False):
    """Load an export folder for serving: ``load_export(path).recommend(user_ids, k)``; ``verify``
    also checks the files' checksums against the manifest."""
    from distgnn.serving.recommend import load_export as _load

    return _load(path, verify=verify)

"""Serving: layer-wise embeddings, FAISS indexes, export folders, top-k recommendation, HTTP."""

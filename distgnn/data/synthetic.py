"""A built-in interaction generator with realistic structure, so distgnn runs without any download.

Items have Zipf-distributed popularity; users and items have planted latent taste vectors. Each user
draws candidate items in proportion to popularity and keeps the ones that best match their taste
(Gumbel top-k, i.e. sampling without replacement from ``softmax(taste_strength * <u, v>)`` over the
candidates). A popularity ranking therefore gets some hits, and a model that learns the tastes gets
clearly more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distgnn.core.config import SyntheticConfig
from distgnn.core.errors import ConfigError

_USER_CHUNK = 4096  # users generated at once: bounds memory at chunk x candidates


@dataclass(frozen=True)
class SyntheticInteractions:
    user: np.ndarray  # [n] int64 user index
    item: np.ndarray  # [n] int64 item index
    timestamp: np.ndarray  # [n] int64 seconds, increasing within each user
    item_features: np.ndarray  # [num_items, num_factors] float32, noisy planted item tastes


def check_synthetic_config(cfg: SyntheticConfig) -> None:
    """Values the generator cannot honour, as a ConfigError naming the key (the CLIs print it as one line)."""
    checks = (
        ("num_users", cfg.num_users >= 1, "at least 1"),
        ("num_items", cfg.num_items >= 10, "at least 10"),
        ("num_factors", cfg.num_factors >= 1, "at least 1"),
        ("mean_interactions", np.isfinite(cfg.mean_interactions) and cfg.mean_interactions > 0, "a positive number"),
        ("popularity_exponent", np.isfinite(cfg.popularity_exponent) and cfg.popularity_exponent >= 0, "a number >= 0"),
        ("taste_strength", np.isfinite(cfg.taste_strength), "a finite number"),
    )
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"config key 'synthetic.{key}': expected {expected}, got {getattr(cfg, key)!r}")


def generate(cfg: SyntheticConfig) -> SyntheticInteractions:
    """Draw interactions for ``cfg.num_users`` users over ``cfg.num_items`` items (vectorised by chunk)."""
    check_synthetic_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    num_items, f = cfg.num_items, cfg.num_factors

    rank = rng.permutation(num_items) + 1
    popularity = rank.astype(np.float64) ** -cfg.popularity_exponent
    cum_popularity = np.cumsum(popularity / popularity.sum())
    log_popularity = np.log(popularity / popularity.max())
    item_taste = rng.standard_normal((num_items, f)) / np.sqrt(f)
    user_taste = rng.standard_normal((cfg.num_users, f))

    # Log-normal activity: a long tail of heavy users, as in real logs.
    sigma = 0.8
    counts = rng.lognormal(np.log(cfg.mean_interactions) - sigma**2 / 2, sigma, cfg.num_users)
    counts = np.clip(np.rint(counts), 5, num_items // 4).astype(np.int64)

    users, items = [], []
    for start in range(0, cfg.num_users, _USER_CHUNK):
        stop = min(start + _USER_CHUNK, cfg.num_users)
        n = counts[start:stop]
        num_candidates = min(num_items, int(2 * n.max()))
        cand = np.searchsorted(cum_popularity, rng.random((stop - start, num_candidates)))
        cand = np.minimum(cand, num_items - 1)
        # Popularity enters twice: in which candidates a user sees, and in the choice among them, so
        # the catalogue keeps its power law even for heavy users whose candidates cover most items.
        score = cfg.taste_strength * np.einsum("bf,bcf->bc", user_taste[start:stop], item_taste[cand])
        score += log_popularity[cand]
        score += rng.gumbel(size=score.shape)
        # repeated candidates of one user: keep a single copy
        order = np.argsort(cand, axis=1, kind="stable")
        sorted_cand = np.take_along_axis(cand, order, 1)
        repeated = np.zeros_like(sorted_cand, dtype=bool)
        repeated[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
        np.put_along_axis(score, order, np.where(repeated, -np.inf, np.take_along_axis(score, order, 1)), 1)
        best = np.argsort(-score, axis=1)
        keep = (np.arange(num_candidates)[None, :] < n[:, None]) & np.isfinite(np.take_along_axis(score, best, 1))
        rows = np.broadcast_to(np.arange(start, stop)[:, None], best.shape)
        users.append(rows[keep])
        items.append(np.take_along_axis(cand, best, 1)[keep])
    user = np.concatenate(users).astype(np.int64)
    item = np.concatenate(items).astype(np.int64)

    # Timestamps: uniform over a year, so temporal splits hold out a random-looking but real 'latest'.
    timestamp = (1_600_000_000 + rng.integers(0, 365 * 86400, user.size)).astype(np.int64)
    item_features = (item_taste + 0.5 * rng.standard_normal(item_taste.shape) / np.sqrt(f)).astype(np.float32)
    return SyntheticInteractions(user=user, item=item, timestamp=timestamp, item_features=item_features)

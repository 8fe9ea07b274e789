"""A built-in interaction generator with realistic structure, so distgnn runs without any download.

Items have Zipf-distributed popularity; users and items have planted latent taste vectors. Each user
draws candidate items in proportion to popularity and keeps the ones that best match their taste
(Gumbel top-k, i.e. sampling without replacement from ``softmax(taste_strength * <u, v>)`` over the
candidates). A popularity ranking therefore gets some hits, and a model that learns the tastes gets
clearly more.

The interactions come as a stream (:func:`stream`) whose memory does not grow with their number:
O(num_items x num_factors) for the items, a few bytes per user for the activity counts, and a
bounded working set. :func:`generate` concatenates the stream; :func:`write_log` writes it as a
folder of Parquet files, a log ``prepare`` reads like a user's.

How the stream draws the same numbers as drawing everything at once: numpy's generator draws values
in sequence, so a block of a draw is a slice of the whole draw, and where a draw comes from depends
only on how many raw 64-bit outputs came before it. The original draws, in order, were: the
popularity permutation, item tastes, user tastes, activity counts, then for each chunk of 4,096 users
the candidates' uniforms and their Gumbel noise, then all timestamps, then the item-feature noise.
The stream keeps three generators at three positions of that one sequence: at the user tastes, at
the candidates, and at the timestamps. The timestamps' position is computed before the pass: each
uniform takes exactly one raw output and each Gumbel value one, plus one more per raw output below
2**11 (numpy rejects a zero uniform there), which :func:`_gumbel_raw_draws` counts. Bounded integers
(the timestamps) take 32-bit halves whose spare half numpy keeps in the bit generator's own state
(``has_uint32``), so they too continue across calls. ``tests/test_synthetic.py`` checks each of these
facts and the digests of the arrays the original all-at-once code drew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from distgnn.core.config import SyntheticConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import atomic_folder, write_atomic

# Users whose candidate lists share one width (twice the chunk's largest count). The width decides
# how many uniforms the chunk draws, so this is part of the generated numbers: never change it.
_USER_CHUNK = 4096
_ACTIVITY_SIGMA = 0.8  # log-normal spread of the interactions per user
_TIME_START_S = 1_600_000_000
_TIME_SPAN_S = 365 * 86400
# numpy's gumbel draws U = 1 - next_double and redraws when U == 1, i.e. when the raw output's top
# 53 bits are zero (random_gumbel in numpy/random/src/distributions/distributions.c).
_GUMBEL_REJECTED_BELOW = 1 << 11
_RAW_SCAN = 1 << 22  # raw outputs inspected at once when counting the Gumbel draws (32 MB)

DEFAULT_MAX_ROWS = 1 << 20  # interactions per chunk the stream yields
# user x candidate cells scored at once; each costs about (num_factors + 12) x 8 bytes of temporaries,
# ~115 MB at 16 factors.
DEFAULT_MAX_CELLS = 1 << 19
DEFAULT_ROWS_PER_FILE = 1 << 22  # interactions per Parquet file of write_log (~100 MB in memory at a time)


@dataclass(frozen=True)
class SyntheticInteractions:
    user: np.ndarray  # [n] int64 user index
    item: np.ndarray  # [n] int64 item index
    timestamp: np.ndarray  # [n] int64 seconds, uniform over a year (in no order)
    item_features: np.ndarray  # [num_items, num_factors] float32, noisy planted item tastes


@dataclass(frozen=True)
class InteractionChunk:
    """Consecutive interactions of the stream, users in increasing order."""

    user: np.ndarray  # [rows] int64 user index
    item: np.ndarray  # [rows] int64 item index
    timestamp: np.ndarray  # [rows] int64 seconds


@dataclass(frozen=True)
class _Plan:
    """What a pass over the users needs: O(num_items x num_factors) + O(num_users) small ints, and the
    generator states at the three positions of the random sequence (module docstring)."""

    cum_popularity: np.ndarray  # [num_items] float64
    popularity_buckets: np.ndarray  # [4 x num_items] int32/int64, see bucket_starts()
    log_popularity: np.ndarray  # [num_items] float64, 0 for the most popular item
    item_taste: np.ndarray  # [num_items, num_factors] float64
    counts: np.ndarray  # [num_users] int32/int64 interactions wanted per user
    widths: np.ndarray  # [num_chunks] int64 candidates per user of each 4,096-user chunk
    taste_state: dict[str, Any]  # before the user tastes
    draw_state: dict[str, Any]  # before the first chunk's candidates
    time_state: dict[str, Any]  # before the timestamps


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


def _generator_at(state: dict[str, Any], *, advance: int = 0) -> np.random.Generator:
    """A generator at ``state``, moved on by ``advance`` raw outputs. ``PCG64.advance`` clears the
    spare 32-bit half; callers that need it put it back (:func:`_plan`)."""
    bitgen = np.random.PCG64()
    bitgen.state = state
    if advance:
        bitgen.advance(advance)
    return np.random.Generator(bitgen)


def _gumbel_raw_draws(bitgen: Any, num_values: int) -> int:
    """The raw outputs ``Generator.gumbel`` takes from ``bitgen``'s position to make ``num_values``
    values: one each, and one more per rejected output (below 2**11). Moves ``bitgen`` on by as many."""
    drawn, missing = 0, num_values
    while missing:  # over blocks of raw outputs, a few per chunk of users
        take = min(missing, _RAW_SCAN)
        raw = bitgen.random_raw(take)
        drawn += take
        missing -= take - int(np.count_nonzero(raw < _GUMBEL_REJECTED_BELOW))
    return drawn


def _plan(cfg: SyntheticConfig) -> _Plan:
    check_synthetic_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    num_items, f = cfg.num_items, cfg.num_factors

    rank = rng.permutation(num_items) + 1
    popularity = rank.astype(np.float64) ** -cfg.popularity_exponent
    cum_popularity = np.cumsum(popularity / popularity.sum())
    log_popularity = np.log(popularity / popularity.max())
    item_taste = rng.standard_normal((num_items, f)) / np.sqrt(f)

    # The user tastes are drawn here only to move past them (a normal takes a variable number of raw
    # outputs, so no jump can); each pass draws them again from taste_state, a block at a time.
    taste_state = rng.bit_generator.state
    taste_rows = max(1, (1 << 20) // f)
    for start in range(0, cfg.num_users, taste_rows):  # over blocks of users: bounded memory
        rng.standard_normal((min(taste_rows, cfg.num_users - start), f))

    # Log-normal activity: a long tail of heavy users, as in real logs.
    count_type = np.int32 if num_items // 4 <= np.iinfo(np.int32).max else np.int64
    counts = np.empty(cfg.num_users, count_type)
    mean_log = np.log(cfg.mean_interactions) - _ACTIVITY_SIGMA**2 / 2
    for start in range(0, cfg.num_users, 1 << 20):  # over blocks of users: no float64 array of all users
        block = rng.lognormal(mean_log, _ACTIVITY_SIGMA, min(1 << 20, cfg.num_users - start))
        counts[start : start + block.size] = np.clip(np.rint(block), 5, num_items // 4)

    draw_state = rng.bit_generator.state
    chunk_starts = np.arange(0, cfg.num_users, _USER_CHUNK)
    chunk_users = np.diff(np.append(chunk_starts, cfg.num_users))
    widths = np.minimum(num_items, 2 * np.maximum.reduceat(counts, chunk_starts).astype(np.int64))
    scan = _generator_at(draw_state).bit_generator
    for num_chunk_users, width in zip(chunk_users.tolist(), widths.tolist()):  # over chunks of 4,096 users
        scan.advance(num_chunk_users * width)  # the candidates' uniforms: one raw output each
        _gumbel_raw_draws(scan, num_chunk_users * width)
    # Neither uniforms nor Gumbel values touch the spare 32-bit half (advance() cleared it): the
    # timestamps start from the half left by the permutation.
    time_state = {**scan.state, "has_uint32": draw_state["has_uint32"], "uinteger": draw_state["uinteger"]}

    buckets = bucket_starts(cum_popularity)
    for array in (cum_popularity, buckets, log_popularity, item_taste, counts, widths):
        array.setflags(write=False)
    return _Plan(
        cum_popularity, buckets, log_popularity, item_taste, counts, widths, taste_state, draw_state, time_state
    )


def bucket_starts(cum_popularity: np.ndarray) -> np.ndarray:
    """``[4 x num_items]``: for each bucket [b/K, (b+1)/K) of [0, 1), the first item whose cumulative
    popularity reaches the bucket's start (``np.searchsorted``); :func:`sample_by_popularity` starts there."""
    num_buckets = 4 * cum_popularity.size  # measured: 0.02% of draws left to numpy at 2M items, Zipf 0.8
    starts = np.searchsorted(cum_popularity, np.arange(num_buckets) / num_buckets)
    return starts.astype(np.int32 if cum_popularity.size < np.iinfo(np.int32).max else np.int64)


def sample_by_popularity(uniforms: np.ndarray, cum_popularity: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """``np.searchsorted(cum_popularity, uniforms)`` (int64, same shape), exactly, for non-decreasing
    ``cum_popularity``: the bucket's first item, moved on by one when short, is the answer when it is
    the first item whose cumulative popularity is >= the draw; the rest go to numpy. Written by hand
    because a binary search makes ~log2(num_items) scattered reads per draw: 0.50 s against 0.06 s
    per million draws at 2M items; numpy's search was 37% of a pass at 1M interactions (20k items)."""
    num_items, num_buckets = cum_popularity.size, buckets.size
    found = buckets[np.minimum((uniforms * num_buckets).astype(np.int64), num_buckets - 1)].astype(np.int64)
    found += cum_popularity[np.minimum(found, num_items - 1)] < uniforms
    reaches = (found == num_items) | (cum_popularity[np.minimum(found, num_items - 1)] >= uniforms)
    first = (found == 0) | (cum_popularity[np.maximum(found - 1, 0)] < uniforms)
    unsettled = ~(reaches & first)
    if unsettled.any():
        found[unsettled] = np.searchsorted(cum_popularity, uniforms[unsettled])
    return found


def choose_items(
    first_user: int,
    counts: np.ndarray,
    user_taste: np.ndarray,
    uniforms: np.ndarray,
    gumbel: np.ndarray,
    *,
    cum_popularity: np.ndarray,
    popularity_buckets: np.ndarray,
    log_popularity: np.ndarray,
    item_taste: np.ndarray,
    taste_strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The items users ``first_user, first_user + 1, ...`` pick from their candidates.

    counts ``[B]`` interactions wanted, user_taste ``[B, F]``, uniforms and gumbel ``[B, C]`` (the
    candidates' popularity draws and their Gumbel noise). Returns (user, item), both ``[rows]``
    int64, each user's items from best to worst score; at most ``counts`` per user, fewer when
    the candidates repeat. Each row depends only on its own inputs.
    """
    num_items = cum_popularity.size
    num_users, num_candidates = uniforms.shape
    cand = sample_by_popularity(uniforms, cum_popularity, popularity_buckets)
    cand = np.minimum(cand, num_items - 1)
    # Popularity enters twice: in which candidates a user sees, and in the choice among them, so
    # the catalogue keeps its power law even for heavy users whose candidates cover most items.
    score = taste_strength * np.einsum("bf,bcf->bc", user_taste, item_taste[cand])
    score += log_popularity[cand]
    score += gumbel
    # repeated candidates of one user: keep a single copy
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_cand = np.take_along_axis(cand, order, 1)
    repeated = np.zeros_like(sorted_cand, dtype=bool)
    repeated[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
    np.put_along_axis(score, order, np.where(repeated, -np.inf, np.take_along_axis(score, order, 1)), 1)
    best = np.argsort(-score, axis=1)
    keep = (np.arange(num_candidates)[None, :] < counts[:, None]) & np.isfinite(np.take_along_axis(score, best, 1))
    rows = np.broadcast_to(np.arange(first_user, first_user + num_users)[:, None], best.shape)
    return rows[keep].astype(np.int64, copy=False), np.take_along_axis(cand, best, 1)[keep].astype(np.int64, copy=False)


def _rechunk(pieces: Iterator[tuple[np.ndarray, np.ndarray]], max_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pieces of (user, item) regrouped into chunks of exactly ``max_rows`` rows, the last one shorter."""
    held: list[tuple[np.ndarray, np.ndarray]] = []
    num_held = 0
    for user, item in pieces:  # over blocks of users
        held.append((user, item))
        num_held += user.size
        if num_held < max_rows:
            continue
        user, item = np.concatenate([u for u, _ in held]), np.concatenate([i for _, i in held])
        full = num_held - num_held % max_rows
        for start in range(0, full, max_rows):
            yield user[start : start + max_rows], item[start : start + max_rows]
        held, num_held = [(user[full:], item[full:])], num_held - full
    if num_held:
        yield np.concatenate([u for u, _ in held]), np.concatenate([i for _, i in held])


class SyntheticStream:
    """The generator's interactions for ``cfg``, chunk by chunk: ``for chunk in stream(cfg): ...``.

    Chunks (:class:`InteractionChunk`) have exactly ``max_rows`` rows, the last one 1 to ``max_rows``;
    users come in increasing order, and the concatenated chunks are :func:`generate`'s arrays. Memory:
    the plan (O(num_items x num_factors) float64, ~60 bytes per item, 4 bytes per user), one chunk and about
    ``max_cells x (num_factors + 12) x 8`` bytes of temporaries. Each iteration is a new pass drawing
    the same numbers. :meth:`item_features` comes from the random sequence after every timestamp:
    free after a complete pass, otherwise it makes one.
    """

    def __init__(self, cfg: SyntheticConfig, *, max_rows: int = DEFAULT_MAX_ROWS, max_cells: int = DEFAULT_MAX_CELLS):
        if max_rows < 1 or max_cells < 1:
            raise ValueError(f"max_rows and max_cells must be at least 1, got {max_rows} and {max_cells}")
        self.cfg, self.max_rows, self.max_cells = cfg, max_rows, max_cells
        self._plan = _plan(cfg)
        self._item_features: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return self.cfg.num_users

    @property
    def num_items(self) -> int:
        return self.cfg.num_items

    def __iter__(self) -> Iterator[InteractionChunk]:
        time_rng = _generator_at(self._plan.time_state)
        for user, item in _rechunk(self._choices(), self.max_rows):
            # Timestamps: uniform over a year, so temporal splits hold out a random-looking but real 'latest'.
            timestamp = _TIME_START_S + time_rng.integers(0, _TIME_SPAN_S, user.size)
            yield InteractionChunk(user=user, item=item, timestamp=timestamp.astype(np.int64, copy=False))
        item_taste, f = self._plan.item_taste, self.cfg.num_factors
        # item_taste + 0.5 * noise / sqrt(f), in place: no table-sized temporaries (+ commutes exactly)
        noise = time_rng.standard_normal(item_taste.shape)
        noise *= 0.5
        noise /= np.sqrt(f)
        noise += item_taste
        self._item_features = noise.astype(np.float32)

    def item_features(self) -> np.ndarray:
        """``[num_items, num_factors]`` float32: the planted item tastes plus noise."""
        if self._item_features is None:
            for _ in self:  # the noise follows every timestamp: a pass is the only way to reach it
                pass
        return self._item_features

    def _choices(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(user, item) block by block: each 4,096-user chunk is scored ``max_cells // width`` users
        at a time, with the chunk's uniforms and Gumbel noise read from two positions of the sequence."""
        plan, cfg = self._plan, self.cfg
        taste_rng = _generator_at(plan.taste_state)
        draw_rng = _generator_at(plan.draw_state)
        items = dict(
            cum_popularity=plan.cum_popularity,
            popularity_buckets=plan.popularity_buckets,
            log_popularity=plan.log_popularity,
            item_taste=plan.item_taste,
            taste_strength=cfg.taste_strength,
        )
        for chunk, width in enumerate(plan.widths.tolist()):  # over chunks of 4,096 users
            chunk_start = chunk * _USER_CHUNK
            chunk_stop = min(chunk_start + _USER_CHUNK, cfg.num_users)
            # the chunk's Gumbel noise follows all of its uniforms
            gumbel_rng = _generator_at(draw_rng.bit_generator.state, advance=(chunk_stop - chunk_start) * width)
            block_users = max(1, self.max_cells // width)
            for start in range(chunk_start, chunk_stop, block_users):  # over blocks: bounded temporaries
                stop = min(start + block_users, chunk_stop)
                uniforms = draw_rng.random((stop - start, width))
                user_taste = taste_rng.standard_normal((stop - start, cfg.num_factors))
                gumbel = gumbel_rng.gumbel(size=(stop - start, width))
                yield choose_items(start, plan.counts[start:stop], user_taste, uniforms, gumbel, **items)
            draw_rng = gumbel_rng  # the next chunk's uniforms follow this chunk's noise
        end, expected = draw_rng.bit_generator.state["state"], plan.time_state["state"]
        assert end == expected, "the Gumbel draws took other raw outputs than _plan counted"


def stream(
    cfg: SyntheticConfig, *, max_rows: int = DEFAULT_MAX_ROWS, max_cells: int = DEFAULT_MAX_CELLS
) -> SyntheticStream:
    """The interactions of ``cfg`` as chunks of ``max_rows`` rows (:class:`SyntheticStream`); a bad
    config raises its ConfigError here, before anything is drawn."""
    return SyntheticStream(cfg, max_rows=max_rows, max_cells=max_cells)


def generate(cfg: SyntheticConfig) -> SyntheticInteractions:
    """Draw interactions for ``cfg.num_users`` users over ``cfg.num_items`` items, all in memory."""
    interactions = stream(cfg)
    chunks = list(interactions)
    return SyntheticInteractions(
        user=np.concatenate([c.user for c in chunks]),
        item=np.concatenate([c.item for c in chunks]),
        timestamp=np.concatenate([c.timestamp for c in chunks]),
        item_features=interactions.item_features(),
    )


@dataclass(frozen=True)
class WrittenLog:
    folder: Path  # part-00000.parquet, ...: columns user, item, timestamp (int64)
    files: tuple[str, ...]  # file names in the folder, in order
    num_interactions: int
    item_features: Path | None  # item + f0..f{num_factors-1} float32, when asked for


def item_feature_table(features: np.ndarray) -> pa.Table:
    """``item`` (int64, the raw item id) and ``f0 .. f{K-1}`` (float32), one row per item."""
    columns = {"item": pa.array(np.arange(features.shape[0], dtype=np.int64))}
    columns.update({f"f{k}": pa.array(features[:, k]) for k in range(features.shape[1])})
    return pa.table(columns)


def write_log(
    cfg: SyntheticConfig,
    folder: str | Path,
    *,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    item_features: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> WrittenLog:
    """The generator's interactions as a folder of Parquet files ``part-00000.parquet, ...`` of
    ``rows_per_file`` rows each (the last one fewer), columns ``user``, ``item`` and ``timestamp``
    (int64, the ids as raw ids), in :func:`generate`'s order: a log ``prepare --input FOLDER --format
    parquet`` reads like a user's. With ``item_features``, the item features go to that Parquet file
    too (:func:`item_feature_table`). Memory: :class:`SyntheticStream`'s with ``max_rows=rows_per_file``.
    The folder appears only when complete; an existing non-empty one is replaced only with ``overwrite``."""
    folder = Path(folder)
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    features_path = None if item_features is None else Path(item_features)
    if features_path is not None and features_path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{features_path}: inside the log folder {folder}, where it would be read as interactions")
    interactions = stream(cfg, max_rows=rows_per_file)
    files: list[str] = []
    num_interactions = 0
    with atomic_folder(folder, kind="log", overwrite=overwrite) as tmp:
        with tqdm(total=cfg.num_users, unit="user", desc="synthetic log", disable=not progress) as bar:
            for chunk in interactions:  # over files
                table = pa.table({"user": chunk.user, "item": chunk.item, "timestamp": chunk.timestamp})
                files.append(f"part-{len(files):05d}.parquet")
                pq.write_table(table, tmp / files[-1])
                num_interactions += chunk.user.size
                bar.update(int(chunk.user[-1]) + 1 - bar.n)
            bar.update(cfg.num_users - bar.n)
    if features_path is not None:
        table = item_feature_table(interactions.item_features())
        write_atomic(features_path, lambda tmp: pq.write_table(table, tmp))
    return WrittenLog(folder, tuple(files), num_interactions, features_path)

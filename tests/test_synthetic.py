"""The planted-taste generator as a stream: the same numbers as the all-at-once original, in bounded
chunks, and as a Parquet log.

The digests below were taken from the original ``generate`` (main at 7f1e850, numpy 2.4.6), which drew
every array in one call, before it became a concatenation of the stream: they are the independent
truth for every way of cutting the stream.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from distgnn.core.config import SyntheticConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import MARKER
from distgnn.data import synthetic
from distgnn.data.synthetic import generate, stream, write_log

CONFIGS = {
    "default": SyntheticConfig(),
    # three 4,096-user chunks, the last one short
    "chunks": SyntheticConfig(num_users=9000, num_items=500, mean_interactions=12.0, num_factors=8, seed=3),
    "other": SyntheticConfig(
        num_users=700,
        num_items=80,
        mean_interactions=6.0,
        num_factors=5,
        popularity_exponent=1.3,
        taste_strength=-1.5,
        seed=12345,
    ),
    # counts clipped to num_items // 4 = 2, repeated candidates, a one-user last chunk
    "flat": SyntheticConfig(
        num_users=4097,
        num_items=10,
        mean_interactions=50.0,
        num_factors=1,
        popularity_exponent=0.0,
        taste_strength=0.0,
        seed=7,
    ),
    # rank ** -200 underflows: all but one item have popularity 0 (log -inf), a flat cumulative sum
    "underflow": SyntheticConfig(
        num_users=300, num_items=2000, mean_interactions=8.0, popularity_exponent=200.0, seed=1
    ),
}
NUM_INTERACTIONS = {"default": 184574, "chunks": 111878, "other": 4766, "flat": 8188, "underflow": 300}
DIGESTS = {
    "default": {
        "user": "8bcd7722a924afffafe25846803a2b441949d0329c15af8294acb3cfba01d2ab",
        "item": "b6ac84e583c07ede5c2b3af13c06e7fab5fea451d50323aa7c3659f7b021cc52",
        "timestamp": "41a81dc4a386d307119db4c1aa9ab2105544ae026406906091d71df47d28d22f",
        "item_features": "20caf390f6747776261bc894ed6c4940b7e4e2e80b88f01b0b3ce44178aa665e",
    },
    "chunks": {
        "user": "440c915a65e77180f0b5d8849778ec51a5ae3b49d0c199b937f167acb28787cc",
        "item": "ed6ceb4fc7952ad8785106dcd0ca158e534b48db12b1cd5d953f31a4e740157c",
        "timestamp": "79deba35bc934c5244aa0d72e26fef8759d86f30dd684dc2ad0a52f6f8da139e",
        "item_features": "8a45237df840298626a9b6e561ebba93d46bcd824819a1a69888d92e36f5eba9",
    },
    "other": {
        "user": "4824fc13b5177fbc3cd0a580635f28946ef288f111ccc61426758ab8dc7d6703",
        "item": "9ca8cbcc8258a4debd08de429743c0c1ef162d909497baa9d6456e6c291a2a78",
        "timestamp": "0721d1f4bff8f2d99b2f1e83faab63826cb5ece4cca1855a16189570a755a2ce",
        "item_features": "37387669f86a8e0e253577a61b944b19a7cb23e79f3e94b75d4f5aafde3b7df2",
    },
    "flat": {
        "user": "c0e1748c5a8e415c8b564d1665244bc8d43f4b4e6b5ab2a04242bd9a8e70e3c6",
        "item": "e6be4a6edb28a2b48fc6e722eebb11ebcb98c6bc43a687b271c13c1876f025c7",
        "timestamp": "cd1ab6b73258a81c3ff7b2762e162076aba6dbe1d48c29ba648e9b83c8f2ca77",
        "item_features": "0cf313ed34b66e8d267a7c12bc2fcf85cd62e5fe6cc36c32b2c25b0159e8f68e",
    },
    "underflow": {
        "user": "98e038d3a30a991777ce2f66d2e9b9f377e44b6444635d2b5dd70d38ae78f241",
        "item": "42770236223cd5135ce5a550c676ac2340bac7269146e23efcda72807d2a4407",
        "timestamp": "b132dbe076929c213ba985fe855dff88508fc5aeaf76bd94e522c7ccad78a8ff",
        "item_features": "27b9ade944d743729d1ab3ae4716e6b853e80d255167474399cac5f2ae60444d",
    },
}


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def assert_recorded(name: str, user, item, timestamp, item_features) -> None:
    arrays = {"user": user, "item": item, "timestamp": timestamp, "item_features": item_features}
    for key, array in arrays.items():
        expected_dtype = np.float32 if key == "item_features" else np.int64
        assert array.dtype == expected_dtype, key
        assert sha256(array) == DIGESTS[name][key], f"{name}: {key} differs from the original generator's"
    assert user.size == NUM_INTERACTIONS[name]


# ---------------------------------------------------------------------------------------------------
# The same numbers as the original


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")
@pytest.mark.parametrize("name", CONFIGS)
def test_generate_draws_the_original_numbers(name):
    s = generate(CONFIGS[name])
    assert_recorded(name, s.user, s.item, s.timestamp, s.item_features)
    assert s.item_features.shape == (CONFIGS[name].num_items, CONFIGS[name].num_factors)


@pytest.mark.parametrize(
    ("name", "max_rows", "max_cells"),
    [
        ("chunks", 997, 1),  # one user scored at a time, chunks ending mid-user
        ("chunks", 30_000, 777),  # blocks of a few users, not dividing the 4,096-user chunks
        ("flat", 1, 3),  # one row per chunk: every timestamp drawn by its own call
        ("other", 7, 10**9),
    ],
)
def test_stream_in_small_pieces_draws_the_original_numbers(name, max_rows, max_cells):
    interactions = stream(CONFIGS[name], max_rows=max_rows, max_cells=max_cells)
    chunks = list(interactions)
    sizes = [c.user.size for c in chunks]
    assert all(size == max_rows for size in sizes[:-1]) and 1 <= sizes[-1] <= max_rows
    assert len(chunks) == math.ceil(NUM_INTERACTIONS[name] / max_rows)
    assert_recorded(
        name,
        np.concatenate([c.user for c in chunks]),
        np.concatenate([c.item for c in chunks]),
        np.concatenate([c.timestamp for c in chunks]),
        interactions.item_features(),
    )


def test_a_second_pass_and_item_features_without_a_pass_are_the_same_numbers():
    interactions = stream(CONFIGS["other"], max_rows=1000)
    assert sha256(interactions.item_features()) == DIGESTS["other"]["item_features"]  # makes its own pass
    first, second = list(interactions), list(interactions)
    assert sha256(np.concatenate([c.timestamp for c in second])) == DIGESTS["other"]["timestamp"]
    assert all(np.array_equal(a.item, b.item) for a, b in zip(first, second, strict=True))


def test_users_come_in_order_with_at_most_their_count_and_no_repeated_item():
    cfg = CONFIGS["chunks"]
    s = generate(cfg)
    assert np.all(np.diff(s.user) >= 0) and s.user.min() >= 0 and s.user.max() < cfg.num_users
    assert s.item.min() >= 0 and s.item.max() < cfg.num_items
    pairs = s.user * cfg.num_items + s.item
    assert np.unique(pairs).size == pairs.size
    assert np.bincount(s.user).max() <= cfg.num_items // 4
    low, high = synthetic._TIME_START_S, synthetic._TIME_START_S + synthetic._TIME_SPAN_S
    assert s.timestamp.min() >= low and s.timestamp.max() < high


def test_sample_by_popularity_is_numpys_searchsorted_even_with_a_wrong_table():
    rng = np.random.default_rng(4)
    # ties, flat stretches (zero popularity), a total short of 1, draws equal to the sums themselves
    popularity = rng.choice([0.0, 0.0, 1e-300, 0.5, 1.0, 3.0], 5000)
    cum = np.cumsum(popularity / popularity.sum()) * (1 - 1e-12)
    draws = np.concatenate([rng.random(20_000), cum[rng.integers(0, cum.size, 2000)], [0.0, np.nextafter(1, 0)]])
    draws = draws.reshape(-1, 2)  # 2-d, as the candidates are
    expected = np.searchsorted(cum, draws)
    assert np.array_equal(synthetic.sample_by_popularity(draws, cum, synthetic.bucket_starts(cum)), expected)
    wrong_table = rng.integers(0, cum.size + 1, 4 * cum.size)  # the table is only a first guess
    assert np.array_equal(synthetic.sample_by_popularity(draws, cum, wrong_table), expected)


# ---------------------------------------------------------------------------------------------------
# The numpy facts the stream relies on (module docstring of distgnn.data.synthetic)

DRAWS = {
    "random": lambda rng, n: rng.random(n),
    "standard_normal": lambda rng, n: rng.standard_normal(n),
    "gumbel": lambda rng, n: rng.gumbel(size=n),
    "lognormal": lambda rng, n: rng.lognormal(2.0, 0.8, n),
    "timestamps": lambda rng, n: rng.integers(0, 365 * 86400, n),
}


@pytest.mark.parametrize("kind", DRAWS)
def test_numpy_draws_in_pieces_equal_one_draw(kind):
    draw = DRAWS[kind]
    whole, pieces = np.random.default_rng(11), np.random.default_rng(11)
    expected = draw(whole, 5000)
    # odd piece sizes: for the timestamps, the spare 32-bit half must carry from one call to the next
    got = np.concatenate([draw(pieces, n) for n in (1, 1, 3, 997, 3998)])
    assert np.array_equal(got, expected)
    assert pieces.bit_generator.state == whole.bit_generator.state


@pytest.mark.parametrize("kind", ["random", "gumbel"])
def test_uniforms_and_gumbel_values_take_one_raw_output_each(kind):
    drawn, raw = np.random.default_rng(5), np.random.default_rng(5)
    DRAWS[kind](drawn, 10_001)
    raw.bit_generator.random_raw(10_001)
    assert drawn.bit_generator.state == raw.bit_generator.state


_PCG64_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645  # numpy's PCG64 (pcg_setseq_128_xsl_rr_64)


def pcg64_with_zero_at(position: int, *, seed: int = 0) -> np.random.PCG64:
    """A PCG64 whose raw output number ``position`` (0-based) is 0: the output of a state with equal
    halves is 0 whatever its rotation; the start is that state stepped back with the LCG's inverse."""
    modulus = 1 << 128
    inverse = pow(_PCG64_MULTIPLIER, -1, modulus)
    inc = np.random.PCG64(seed).state["state"]["inc"]
    state = (0x0123456789ABCDEF << 64) | 0x0123456789ABCDEF
    for _ in range(position + 1):  # numpy steps the state, then outputs: position + 1 steps back
        state = ((state - inc) * inverse) % modulus
    bitgen = np.random.PCG64()
    bitgen.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0, "uinteger": 0}
    return bitgen


@pytest.mark.parametrize(("zero_at", "num_values", "raw_scan"), [(0, 5, 1 << 22), (6, 9, 4), (3, 4, 4)])
def test_gumbel_raw_draws_counts_numpys_rejections(monkeypatch, zero_at, num_values, raw_scan):
    monkeypatch.setattr(synthetic, "_RAW_SCAN", raw_scan)  # small blocks: the rejection in a later block or refill
    bitgen = pcg64_with_zero_at(zero_at)
    start = bitgen.state
    assert bitgen.random_raw(zero_at + 1)[-1] == 0
    bitgen.state = start
    assert synthetic._gumbel_raw_draws(bitgen, num_values) == num_values + 1
    counted_end = bitgen.state
    bitgen.state = start
    np.random.Generator(bitgen).gumbel(size=num_values)  # numpy itself redraws the zero
    assert bitgen.state == counted_end


def test_a_miscounted_plan_is_caught(monkeypatch):
    monkeypatch.setattr(synthetic, "_GUMBEL_REJECTED_BELOW", 1 << 62)  # pretend a quarter is rejected
    with pytest.raises(AssertionError, match="raw outputs"):
        list(stream(CONFIGS["other"]))


# ---------------------------------------------------------------------------------------------------
# The Parquet log


def test_the_log_round_trips_to_the_original_numbers(tmp_path):
    cfg = CONFIGS["chunks"]
    written = write_log(
        cfg, tmp_path / "log", rows_per_file=30_000, item_features=tmp_path / "features.parquet", progress=False
    )
    assert written.files == tuple(f"part-{k:05d}.parquet" for k in range(4))
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == [MARKER, *written.files]  # prepare skips ".*"
    assert [pq.ParquetFile(tmp_path / "log" / f).metadata.num_rows for f in written.files] == [30_000] * 3 + [21_878]
    table = ds.dataset(tmp_path / "log", format="parquet").to_table()  # files in name order
    assert table.schema.names == ["user", "item", "timestamp"]
    features = pq.read_table(tmp_path / "features.parquet")
    assert features.schema.names == ["item"] + [f"f{k}" for k in range(cfg.num_factors)]
    assert np.array_equal(features["item"].to_numpy(), np.arange(cfg.num_items))
    assert_recorded(
        "chunks",
        table["user"].to_numpy(),
        table["item"].to_numpy(),
        table["timestamp"].to_numpy(),
        np.column_stack([features[f"f{k}"].to_numpy() for k in range(cfg.num_factors)]),
    )
    assert written.num_interactions == NUM_INTERACTIONS["chunks"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet", "log"]  # no temporaries left


def test_the_log_replaces_a_folder_only_when_told(tmp_path):
    cfg = CONFIGS["other"]
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "mine.txt").write_text("a user's file")
    with pytest.raises(DataError, match="overwrite"):
        write_log(cfg, tmp_path / "log", progress=False)
    assert (tmp_path / "log" / "mine.txt").exists()
    write_log(cfg, tmp_path / "log", progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == [MARKER, "part-00000.parquet"]
    with pytest.raises(DataError, match="read as interactions"):
        write_log(cfg, tmp_path / "log", item_features=tmp_path / "log" / "f.parquet", overwrite=True, progress=False)


def test_a_log_that_fails_halfway_leaves_nothing(tmp_path, monkeypatch):
    written = []

    def write_two_then_fail(table, path):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(path)
        pq.write_table(table, path)

    monkeypatch.setattr(synthetic.pq, "write_table", write_two_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_log(CONFIGS["other"], tmp_path / "log", rows_per_file=1000, progress=False)
    assert len(written) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "value"), [("num_items", 5), ("mean_interactions", float("nan")), ("taste_strength", float("inf"))]
)
def test_a_bad_config_is_a_config_error_before_anything_is_written(tmp_path, key, value):
    cfg = SyntheticConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"'synthetic.{key}'"):
        stream(cfg)
    with pytest.raises(ConfigError, match=f"'synthetic.{key}'"):
        write_log(cfg, tmp_path / "log", progress=False)
    assert not Path(tmp_path / "log").exists()

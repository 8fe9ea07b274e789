"""Ranking and rating metrics: a hand-computed example, then vectorised paths against a per-user loop."""

import math
import random

import pytest
import torch

from distgnn.eval import metrics
from distgnn.eval.metrics import (
    evaluate_popularity,
    evaluate_ranking,
    finalize,
    finalize_rating,
    ranking_sums,
    rating_sums,
    score_pieces,
    topk_items,
    topk_of_scores,
)


def to_csr(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    indices = torch.tensor([i for r in rows for i in sorted(r)], dtype=torch.int64)
    return indptr, indices


# 4 users x 6 items. item_emb = identity, so each user's embedding row *is* its score row.
# user 0 ranks 0,1,2,3,4,5 and has trained on 0; user 1 ranks 5,4,3,2,1,0 and has trained on 5;
# user 2 has no truth; user 3 ranks 0,2,3,4,5,1.
USER_EMB = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
        [0.6, 0.1, 0.5, 0.4, 0.3, 0.2],
    ]
)
ITEM_EMB = torch.eye(6)
TRAIN = to_csr([[0], [5], [], []])
TRUTH = to_csr([[2, 5], [2, 4], [], [3]])
ALL_USERS = torch.arange(4)


def test_topk_excludes_training_items():
    topk = topk_items(USER_EMB, ITEM_EMB, ALL_USERS, [TRAIN], 3)
    # user 0's best item (0) and user 1's best item (5) are training items and must not appear
    assert topk[0].tolist() == [1, 2, 3]
    assert topk[1].tolist() == [4, 3, 2]
    assert topk[3].tolist() == [0, 2, 3]  # user 3 has no training items


def test_topk_several_exclusion_csrs():
    valid = to_csr([[1], [], [], [0, 2]])
    topk = topk_items(USER_EMB, ITEM_EMB, ALL_USERS, [TRAIN, valid], 2)
    assert topk[0].tolist() == [2, 3]
    assert topk[1].tolist() == [4, 3]
    assert topk[3].tolist() == [3, 4]


def test_topk_k_beyond_candidates_pads_with_minus_one():
    topk = topk_items(USER_EMB[:2], ITEM_EMB, ALL_USERS[:2], [TRAIN], 7)
    assert topk.tolist() == [[1, 2, 3, 4, 5, -1, -1], [4, 3, 2, 1, 0, -1, -1]]


def test_hand_computed_example():
    sums = evaluate_ranking(USER_EMB, ITEM_EMB, ALL_USERS, [TRAIN], TRUTH, [1, 3])
    got = finalize(sums)
    # top-3: user 0 [1,2,3] (hit at rank 2 of truth {2,5}); user 1 [4,3,2] (hits at ranks 1 and 3
    # of {2,4}); user 2 skipped (no truth); user 3 [0,2,3] (hit at rank 3 of {3}).
    idcg2 = 1 + 1 / math.log2(3)
    expected = {
        "recall@1": (0 + 1 / 2 + 0) / 3,
        "precision@1": 1 / 3,
        "ndcg@1": 1 / 3,
        "hr@1": 1 / 3,
        "mrr@1": 1 / 3,
        "recall@3": (1 / 2 + 1 + 1) / 3,
        "precision@3": (1 / 3 + 2 / 3 + 1 / 3) / 3,
        "ndcg@3": ((1 / math.log2(3)) / idcg2 + (1 / math.log2(2) + 1 / math.log2(4)) / idcg2 + (1 / math.log2(4)) / 1)
        / 3,
        "hr@3": 1.0,
        "mrr@3": (1 / 2 + 1 + 1 / 3) / 3,
        "num_users": 3,
    }
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_empty_slots_are_never_hits():
    # -1 slots (fewer candidates than k) would alias item num_items-1 of the previous row if keyed naively
    topk = torch.tensor([[1, -1, -1], [-1, -1, -1]])
    truth = to_csr([[5], [0]])
    sums = ranking_sums(topk, torch.arange(2), *truth, [3])
    assert float(sums["hr@3"]) == 0.0 and float(sums["num_users"]) == 2.0


def test_popularity_baseline_hand_computed():
    degree = torch.tensor([5, 1, 4, 0, 3, 2])  # popularity order 0,2,4,5,1,3
    got = finalize(evaluate_popularity(degree, ALL_USERS, [TRAIN], TRUTH, [3]))
    # user 0 (minus 0): [2,4,5] hits ranks 1,3; user 1 (minus 5): [0,2,4] hits ranks 2,3;
    # user 3: [0,2,4] misses {3}
    assert got["recall@3"] == pytest.approx(2 / 3)
    assert got["precision@3"] == pytest.approx(4 / 9)
    assert got["hr@3"] == pytest.approx(2 / 3)
    assert got["mrr@3"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert got["num_users"] == 3


def test_no_users_gives_zeros_not_nan():
    got = finalize(evaluate_ranking(USER_EMB, ITEM_EMB, torch.tensor([2]), [TRAIN], TRUTH, [3]))
    assert got["num_users"] == 0
    assert all(v == 0.0 for name, v in got.items() if name != "num_users")


# ---- random data against a per-user reference -------------------------------------------------


def reference_metrics(scores, train_rows, truth_rows, ks):
    """One user at a time, LightGCN's way."""
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "precision", "ndcg", "hr", "mrr")}
    num_users = 0
    for u, truth in enumerate(truth_rows):
        if not truth:
            continue
        num_users += 1
        order = [
            i for i in sorted(range(scores.shape[1]), key=lambda i: -float(scores[u, i])) if i not in train_rows[u]
        ]
        for k in ks:
            hits = [1 if i in truth else 0 for i in order[:k]]
            totals[f"recall@{k}"] += sum(hits) / len(truth)
            totals[f"precision@{k}"] += sum(hits) / k
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
            totals[f"ndcg@{k}"] += dcg / idcg
            totals[f"hr@{k}"] += float(any(hits))
            totals[f"mrr@{k}"] += next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0)
    return {name: v / num_users for name, v in totals.items()} | {"num_users": num_users}


@pytest.fixture(scope="module")
def random_case():
    rng = random.Random(0)
    torch.manual_seed(0)
    num_users, num_items, ks = 50, 40, [1, 5, 10]
    train_rows, truth_rows = [], []
    for u in range(num_users):
        items = rng.sample(range(num_items), 12)
        train_rows.append(set(items[: rng.randint(0, 8)]))
        # every 7th user has no truth, to be skipped
        truth_rows.append(set() if u % 7 == 0 else set(items[8 : 8 + rng.randint(1, 4)]))
    user_emb = torch.randn(num_users, 8)
    item_emb = torch.randn(num_items, 8)
    train = to_csr([sorted(r) for r in train_rows])
    truth = to_csr([sorted(r) for r in truth_rows])
    expected = reference_metrics(user_emb @ item_emb.T, train_rows, truth_rows, ks)
    return user_emb, item_emb, train, truth, ks, expected


def assert_metrics_equal(got, expected):
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_vectorised_matches_per_user_reference(random_case):
    user_emb, item_emb, train, truth, ks, expected = random_case
    users = torch.arange(user_emb.shape[0])
    assert_metrics_equal(finalize(evaluate_ranking(user_emb, item_emb, users, [train], truth, ks)), expected)


def test_chunked_equals_one_shot(random_case):
    user_emb, item_emb, train, truth, ks, _ = random_case
    users = torch.arange(user_emb.shape[0])
    one_shot = evaluate_ranking(user_emb, item_emb, users, [train], truth, ks, batch_size=10_000)
    chunked = evaluate_ranking(user_emb, item_emb, users, [train], truth, ks, batch_size=7)
    for name in one_shot:
        assert float(chunked[name]) == pytest.approx(float(one_shot[name]), abs=1e-9), name


def test_pieces_bound_the_scores_and_never_drop_below_the_kernels_limit(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_CHUNK_SCORES", 100)
    assert score_pieces(10, 20) == [(0, 5), (5, 10)]  # 5 users x 20 items = 100 scores each
    assert score_pieces(11, 20) == [(0, 5), (5, 11)]  # a remainder of 1 joins the piece before
    assert score_pieces(14, 20) == [(0, 5), (5, 10), (10, 14)]
    assert score_pieces(10, 1000) == [(0, 4), (4, 10)]  # never under 4 users
    assert score_pieces(40, 1000, width=129) == [(0, 16), (16, 40)]  # wider vectors: taller pieces
    assert score_pieces(2, 1000) == [(0, 2)]  # a chunk of 2 stays whole
    assert score_pieces(10, None) == [(0, 10)]  # no catalogue size: no split


@pytest.mark.parametrize("width", [8, 129])
def test_scoring_in_pieces_changes_no_bit(random_case, monkeypatch, width):
    """A catalogue too large for a chunk's scores: the chunk of 42 users is scored in pieces; every
    score is the unsplit chunk's to the bit (129 wide: 5-row products would differ), the sums are
    the unsplit ones and the reference's."""
    _, _, train, truth, ks, _ = random_case
    g = torch.Generator().manual_seed(width)
    user_emb, item_emb = torch.randn(50, width, generator=g), torch.randn(40, width, generator=g)
    users = torch.arange(50)
    seen = []
    monkeypatch.setattr(metrics, "topk_of_scores", lambda s, *a: seen.append(s.clone()) or topk_of_scores(s, *a))
    whole = evaluate_ranking(user_emb, item_emb, users, [train], truth, ks, batch_size=48)
    whole_scores, seen[:] = torch.cat(seen), []
    monkeypatch.setattr(metrics, "MAX_CHUNK_SCORES", 5 * item_emb.shape[0])
    pieces = evaluate_ranking(user_emb, item_emb, users, [train], truth, ks, batch_size=48)
    assert len(seen) >= 2 and max(s.shape[0] for s in seen) < 42  # 42 users have truth: one chunk
    assert torch.equal(torch.cat(seen), whole_scores)
    assert all(torch.equal(pieces[name], whole[name]) for name in whole)


def test_sums_of_two_workers_equal_all_at_once(random_case):
    user_emb, item_emb, train, truth, ks, expected = random_case
    perm = torch.randperm(user_emb.shape[0], generator=torch.Generator().manual_seed(1))
    # uneven halves: a mean of per-worker means would be wrong here, a sum of sums is not
    part_a = evaluate_ranking(user_emb, item_emb, perm[:13], [train], truth, ks, batch_size=4)
    part_b = evaluate_ranking(user_emb, item_emb, perm[13:], [train], truth, ks, batch_size=16)
    assert_metrics_equal(finalize({name: part_a[name] + part_b[name] for name in part_a}), expected)


def test_progress_bar_runs(random_case):
    user_emb, item_emb, train, truth, ks, expected = random_case
    users = torch.arange(user_emb.shape[0])
    got = evaluate_ranking(user_emb, item_emb, users, [train], truth, ks, batch_size=9, progress=True)
    assert_metrics_equal(finalize(got), expected)


def test_ks_beyond_topk_width_rejected():
    with pytest.raises(ValueError, match="cutoff"):
        ranking_sums(torch.zeros(1, 2, dtype=torch.int64), torch.arange(1), *to_csr([[0]]), [3])


def test_rating_metrics():
    sums = rating_sums(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 5.0]))
    # errors 0, -1, -2: squared 0+1+4 = 5, absolute 0+1+2 = 3
    assert float(sums["sq_err"]) == 5.0 and float(sums["abs_err"]) == 3.0
    got = finalize_rating(sums)
    assert got == {"rmse": pytest.approx(math.sqrt(5 / 3)), "mae": pytest.approx(1.0), "count": 3}
    empty = finalize_rating(rating_sums(torch.zeros(0), torch.zeros(0)))
    assert empty == {"rmse": 0.0, "mae": 0.0, "count": 0}

"""Re-ranking (distgnn.serving.rerank): MMR on a case computed by hand and against a per-user Python
reference, exclusions and boosts through Export.recommend against brute-force numpy, and the
diversity and coverage measures on hand-computed lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import distgnn
from distgnn.core.errors import DataError
from distgnn.serving.rerank import (
    RerankRules,
    catalogue_coverage,
    in_rows,
    intra_list_diversity,
    keep_best,
    maximal_marginal_relevance,
    merge_by_score,
    mmr_rerank,
    normalise_relevance,
)

from test_serve import HEAVY_USER, NUM_UNSEEN_BY_HEAVY, item_raw, random_export, user_raw

NEG = float("-inf")
# Five unit vectors: 0 and 1 identical, 2 orthogonal to them, 3 between (cos 0.6 with 0, 0.8 with 2),
# 4 opposite to 0.
VECTORS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
RELEVANCE = torch.tensor([[1.0, 0.9, 0.8, 0.5, 0.0]])


@pytest.mark.parametrize(
    ("mmr_lambda", "expected"),
    [
        # slot 1 gains 0.5 * rel - 0.5 * cos(., 0): item 1 -0.05, 2 0.40, 3 -0.05, 4 0.5 -> 4;
        # slot 2, max cos to {0, 4}: item 1 1, 2 0, 3 0.6 -> gains -0.05, 0.40, -0.05 -> 2
        (0.5, [0, 4, 2]),
        # slot 1: 0.7 rel - 0.3 cos: 1 0.33, 2 0.56, 3 0.17, 4 0.30 -> 2;
        # slot 2, max cos to {0, 2}: 1 1, 3 0.8, 4 0 -> gains 0.33, 0.11, 0.00 -> 1
        (0.7, [0, 2, 1]),
        (1.0, [0, 1, 2]),  # relevance only: the candidates' own order
        # pure novelty: the first pick is still the most relevant (every gain is 0, the first wins)
        (0.0, [0, 4, 2]),
    ],
)
def test_mmr_matches_the_hand_computed_case(mmr_lambda, expected):
    picks = maximal_marginal_relevance(RELEVANCE, VECTORS.unsqueeze(0), 3, mmr_lambda=mmr_lambda)
    assert picks.tolist() == [expected]


def test_mmr_is_vectorised_over_users_and_stops_at_empty_slots():
    # user 0: the hand case; user 1: two candidates only (the rest -inf), picked in score order
    relevance = torch.cat([RELEVANCE, torch.tensor([[NEG, 0.2, NEG, 0.7, NEG]])])
    vectors = VECTORS.expand(2, -1, -1)
    picks = maximal_marginal_relevance(relevance, vectors, 4, mmr_lambda=0.5)
    assert picks.tolist() == [[0, 4, 2, 1], [3, 1, -1, -1]]


def test_mmr_rerank_normalises_scores_and_keeps_them():
    # scores 3.0 .. 1.0 normalise to the hand case's relevance 1, 0.9, 0.8, 0.5, 0
    D = torch.tensor([[3.0, 2.8, 2.6, 2.0, 1.0]])
    I = torch.tensor([[10, 11, 12, 13, 14]])
    item_vectors = torch.zeros(15, 2)
    item_vectors[10:] = VECTORS
    D_out, I_out = mmr_rerank(D, I, item_vectors, 3, mmr_lambda=0.5)
    assert I_out.tolist() == [[10, 14, 12]]
    assert torch.equal(D_out, D[:, [0, 4, 2]])


def test_normalise_relevance():
    scores = torch.tensor([[3.0, 1.0, 2.0, NEG], [2.0, 2.0, NEG, NEG]])
    assert normalise_relevance(scores).tolist() == [[1.0, 0.0, 0.5, NEG], [1.0, 1.0, NEG, NEG]]


def test_lambda_one_is_exactly_the_candidate_order():
    gen = torch.Generator().manual_seed(0)
    D = torch.sort(torch.randn(16, 50, generator=gen), dim=1, descending=True).values
    D[3, 20:] = NEG  # a user with only 20 candidates
    I = torch.randperm(200, generator=gen)[:50].expand(16, -1).clone()
    I[3, 20:] = -1
    vectors = torch.nn.functional.normalize(torch.randn(200, 8, generator=gen), dim=1)
    relevance = normalise_relevance(D)
    picks = maximal_marginal_relevance(relevance, vectors[I.clamp(min=0)], 30, mmr_lambda=1.0)
    expected = torch.arange(30).expand(16, -1).clone()
    expected[3, 20:] = -1
    assert torch.equal(picks, expected)
    D_out, I_out = mmr_rerank(D, I, vectors, 10, mmr_lambda=1.0)
    assert torch.equal(I_out, I[:, :10]) and torch.equal(D_out, D[:, :10])


def test_keep_best_and_merge_by_score():
    D = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    I = torch.tensor([[7, 8, 9, 6]])
    D_kept, I_kept = keep_best(D, I, torch.tensor([[True, False, True, True]]), 4)
    assert I_kept.tolist() == [[7, 9, 6, -1]] and D_kept.tolist() == [[5.0, 3.0, 2.0, NEG]]
    # the second set's 3.0 ties with the first set's 3.0 and comes after it; -inf is dropped
    D_m, I_m = merge_by_score(D_kept, I_kept, torch.tensor([[3.0, 4.5, NEG]]), torch.tensor([[1, 2, 3]]), 5)
    assert I_m.tolist() == [[7, 2, 9, 1, 6]] and D_m.tolist() == [[5.0, 4.5, 3.0, 3.0, 2.0]]


def test_in_rows():
    indptr = torch.tensor([0, 2, 2, 5])  # row 0: {1, 4}, row 1: {}, row 2: {0, 3, 4}
    indices = torch.tensor([1, 4, 0, 3, 4])
    items = torch.tensor([[4, 0, -1], [1, 4, 0], [3, 1, 4], [1, 2, 4]])
    got = in_rows(indptr, indices, torch.tensor([0, 1, 2, 0]), items)
    assert got.tolist() == [[True, False, False], [False, False, False], [True, False, True], [True, False, True]]


def test_rules_are_validated():
    for bad in (-0.1, 1.5, True):
        with pytest.raises(DataError, match="mmr_lambda"):
            RerankRules(mmr_lambda=bad)
    with pytest.raises(DataError, match="pool"):
        RerankRules(pool=0)
    with pytest.raises(DataError, match="listed twice"):
        RerankRules(boost_items=np.array([1, 1]), boost=np.array([0.1, 0.2], dtype=np.float32))
    with pytest.raises(DataError, match="2 weights for 1"):
        RerankRules(boost_items=np.array([1]), boost=np.array([0.1, 0.2], dtype=np.float32))


def test_intra_list_diversity_by_hand():
    # list 0: pairs (0,2) 1 - 0, (0,4) 1 - (-1), (2,4) 1 - 0 -> (1 + 2 + 1) / 3; list 1: one identical
    # pair -> 0; list 2: a single item -> no pair, NaN
    topk = torch.tensor([[0, 2, 4], [0, 1, -1], [3, -1, -1]])
    got = intra_list_diversity(topk, VECTORS).tolist()
    assert got[0] == pytest.approx(4 / 3) and got[1] == pytest.approx(0.0) and math.isnan(got[2])
    assert intra_list_diversity(torch.tensor([[0, 3]]), VECTORS).item() == pytest.approx(0.4)


def test_catalogue_coverage_by_hand():
    assert catalogue_coverage(torch.tensor([[0, 1, 2], [2, 3, -1]]), 10) == pytest.approx(0.4)
    assert catalogue_coverage(torch.tensor([[-1, -1]]), 10) == 0.0


# ---------------------------------------------------------------------------------------------------
# Through Export.recommend, against brute force over every item


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return distgnn.load_export(random_export(tmp_path_factory.mktemp("rerank") / "export"))


def brute_scores(exp, user: int) -> np.ndarray:
    """Scores of every item for one user, seen items -inf."""
    scores = exp.user_emb[user] @ exp.item_emb.T
    seen = exp.seen_indices[exp.seen_indptr[user] : exp.seen_indptr[user + 1]].numpy()
    scores[seen] = -np.inf
    return scores


def items_of(table, user: str) -> list[str]:
    rows = [r for r in table.to_pylist() if r["user_id"] == user]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["item_id"] for r in rows]


def reference_mmr(scores: np.ndarray, vectors: np.ndarray, k: int, pool: int, mmr_lambda: float) -> list[int]:
    """MMR for one user written plainly: a Python loop over picks and candidates."""
    candidates = [int(i) for i in np.argsort(-scores, kind="stable")[:pool] if np.isfinite(scores[i])]
    values = scores[candidates]
    low, high = values.min(), values.max()
    relevance = {c: (scores[c] - low) / (high - low) for c in candidates}
    picked: list[int] = []
    while candidates and len(picked) < k:
        gains = [
            mmr_lambda * relevance[c]
            - (1 - mmr_lambda) * (max(float(vectors[c] @ vectors[p]) for p in picked) if picked else 0.0)
            for c in candidates
        ]
        picked.append(candidates.pop(int(np.argmax(gains))))
    return picked


def test_mmr_through_recommend_matches_a_per_user_reference(exp):
    users = [user_raw(u) for u in range(12)]
    vectors = exp.item_unit_vectors().numpy()
    for mmr_lambda in (0.3, 0.8):
        table = exp.recommend(users, k=8, mmr_lambda=mmr_lambda, pool=30)
        assert table["item_id"].to_pylist() != exp.recommend(users, k=8)["item_id"].to_pylist()  # MMR changed lists
        for u, raw in enumerate(users):
            want = reference_mmr(brute_scores(exp, u), vectors, 8, 30, mmr_lambda)
            assert items_of(table, raw) == [item_raw(i) for i in want]
    assert len(items_of(exp.recommend([user_raw(HEAVY_USER)], k=8, mmr_lambda=0.5), user_raw(HEAVY_USER))) == 3


def test_lambda_one_through_recommend_is_the_plain_top_k(exp):
    users = [user_raw(u) for u in range(40)]
    plain = exp.recommend(users, k=10)
    assert exp.recommend(users, k=10, mmr_lambda=1.0, pool=50).equals(plain)
    # through the re-ranking path too (a boost, here of weight 0, takes it): the same items
    boosted = exp.recommend(users, k=10, mmr_lambda=1.0, boost={item_raw(0): 0.0})
    assert boosted["item_id"].to_pylist() == plain["item_id"].to_pylist()
    np.testing.assert_allclose(boosted["score"].to_numpy(), plain["score"].to_numpy(), rtol=0, atol=1e-6)


def test_exclude_never_returns_an_excluded_item(exp):
    users = [user_raw(u) for u in range(40)]
    plain = exp.recommend(users, k=10)
    excluded = sorted(set(plain["item_id"].to_pylist()[::3]))  # every third recommendation, of all users
    for mmr_lambda in (1.0, 0.5):
        table = exp.recommend(users, k=10, exclude=excluded, mmr_lambda=mmr_lambda)
        assert not set(table["item_id"].to_pylist()) & set(excluded)
        if mmr_lambda == 1.0:  # exactly the top 10 of the items left
            for u, raw in enumerate(users):
                scores = brute_scores(exp, u)
                scores[[int(i[1:]) for i in excluded]] = -np.inf
                want = [item_raw(i) for i in np.argsort(-scores, kind="stable")[:10] if np.isfinite(scores[i])]
                assert items_of(table, raw) == want
    # excluded and boosted: excluded wins
    table = exp.recommend(users, k=10, exclude=excluded, boost=dict.fromkeys(excluded, 100.0))
    assert not set(table["item_id"].to_pylist()) & set(excluded)


def test_boost_moves_an_item_up_by_the_expected_amount(exp):
    user = 5
    scores = brute_scores(exp, user)
    order = np.argsort(-scores, kind="stable")
    target = int(order[14])  # rank 15 without boost
    # a weight that lands it between ranks 3 and 4: it becomes rank 4, the old ranks 4..14 move down one
    weight = float((scores[order[2]] + scores[order[3]]) / 2 - scores[target])
    table = exp.recommend([user_raw(user)], k=10, boost={item_raw(target): weight}).to_pylist()
    assert [r["item_id"] for r in table] == [item_raw(i) for i in [*order[:3], target, *order[3:9]]]
    assert table[3]["score"] == pytest.approx(scores[target] + weight, abs=1e-5)
    # an item near the bottom of the catalogue, far below any search depth, still comes in when boosted
    last = int(order[np.isfinite(scores[order])][-1])
    top = exp.recommend([user_raw(user)], k=10, boost={item_raw(last): 100.0}).to_pylist()
    assert top[0]["item_id"] == item_raw(last) and top[0]["score"] == pytest.approx(scores[last] + 100.0, abs=1e-4)
    # a negative boost demotes the best item out of the top 10
    demoted = exp.recommend([user_raw(user)], k=10, boost={item_raw(order[0]): -100.0}).to_pylist()
    assert [r["item_id"] for r in demoted] == [item_raw(i) for i in order[1:11]]


def test_boosted_seen_items_stay_excluded(exp):
    seen = exp.seen_indices[exp.seen_indptr[HEAVY_USER] : exp.seen_indptr[HEAVY_USER + 1]].numpy()
    boost = {item_raw(i): 100.0 for i in seen[:20]}
    table = exp.recommend([user_raw(HEAVY_USER)], k=10, boost=boost)
    assert table.num_rows == NUM_UNSEEN_BY_HEAVY and not set(table["item_id"].to_pylist()) & set(boost)


def test_unknown_item_ids_are_skipped_with_a_warning_and_all_unknown_is_an_error(exp, caplog):
    with caplog.at_level("WARNING", logger="distgnn"):
        table = exp.recommend([user_raw(1)], k=5, exclude=[item_raw(0), "nope", "gone"])
    assert "exclude: skipped 2 of 3 item ids the export does not know ('nope', 'gone')" in caplog.text
    assert table.num_rows == 5
    with pytest.raises(DataError, match="none of its 1 item ids is an item"):
        exp.recommend([user_raw(1)], k=5, boost={"nope": 1.0})

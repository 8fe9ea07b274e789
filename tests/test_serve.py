"""The HTTP endpoint (distgnn.serving.http) against Export.recommend and brute-force numpy, on an
export folder written by hand from random vectors (no model is trained)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import distgnn
import distgnn.serve as serve_module
from distgnn.core.files import checksums
from distgnn.serving.export import embedding_table
from distgnn.serving.http import MAX_BODY_BYTES, make_server
from distgnn.serving.index import build_index, save_index

NUM_USERS, NUM_ITEMS, DIM = 40, 120, 8
HEAVY_USER = 0  # has seen all items but 3: fewer than k results
NUM_UNSEEN_BY_HEAVY = 3


def user_raw(u: int) -> str:
    return str(1000 + u)  # raw ids differ from row numbers, so a mix-up shows


def item_raw(i: int) -> str:
    return f"i{i}"


def write_export(
    folder: Path,
    user_vec: np.ndarray,
    item_vec: np.ndarray,
    seen: np.ndarray,
    indexes: tuple[str, ...] = ("flat", "hnsw"),
) -> Path:
    """An export folder in the layout distgnn.export writes (``seen`` is ``[nnz, 2]`` user, item rows)."""
    folder.mkdir(parents=True)
    pq.write_table(
        embedding_table(pa.array([user_raw(u) for u in range(len(user_vec))]), user_vec), folder / "users.parquet"
    )
    pq.write_table(
        embedding_table(pa.array([item_raw(i) for i in range(len(item_vec))]), item_vec), folder / "items.parquet"
    )
    pq.write_table(pa.table({"user": seen[:, 0], "item": seen[:, 1]}), folder / "seen.parquet")
    index_info = {}
    for index_type in indexes:
        index = build_index(item_vec, index_type, metric="ip", use_gpu=False)
        save_index(index, folder / f"index-{index_type}.faiss")
        index_info[index_type] = {"file": f"index-{index_type}.faiss", "ntotal": int(index.ntotal)}
    manifest = {
        "dim": item_vec.shape[1],
        "metric": "ip",
        "num_users": len(user_vec),
        "num_items": len(item_vec),
        "indexes": index_info,
        "checksums": checksums(folder),
    }
    manifest["sizes"] = {name: (folder / name).stat().st_size for name in manifest["checksums"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def random_export(folder: Path, *, seed: int = 0, bias_column: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    user_vec = rng.standard_normal((NUM_USERS, DIM)).astype(np.float32)
    item_vec = rng.standard_normal((NUM_ITEMS, DIM)).astype(np.float32)
    if bias_column:  # as scoring_vectors writes it: [1 | t * item bias]
        user_vec[:, -1] = 1.0
        item_vec[:, -1] = rng.uniform(-2, 2, NUM_ITEMS)
    pairs = [(u, i) for u in range(1, NUM_USERS) for i in rng.choice(NUM_ITEMS, 10, replace=False)]
    pairs += [(HEAVY_USER, i) for i in range(NUM_ITEMS - NUM_UNSEEN_BY_HEAVY)]
    return write_export(folder, user_vec, item_vec, np.array(pairs, dtype=np.int64))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return random_export(tmp_path_factory.mktemp("serve") / "export")


@pytest.fixture(scope="module")
def exp(export_dir):
    return distgnn.load_export(export_dir)


@pytest.fixture(scope="module")
def server(export_dir):
    torch_threads = torch.get_num_threads()
    srv = make_server(distgnn.load_export(export_dir), port=0, threads=1)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)
    torch.set_num_threads(torch_threads)  # the handlers set it process-wide


def call(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def expected_results(exp, user_ids: list[str], k: int, index: str = "flat") -> list[dict]:
    """Export.recommend's answer in the endpoint's shape (user ids unique)."""
    table = exp.recommend(user_ids, k, index=index).to_pylist()
    return [{"user_id": u, "items": [(r["item_id"], r["score"]) for r in table if r["user_id"] == u]} for u in user_ids]


def assert_same(results: list[dict], expected: list[dict]) -> None:
    assert [r["user_id"] for r in results] == [e["user_id"] for e in expected]
    for got, want in zip(results, expected):
        assert [i["item_id"] for i in got["items"]] == [item for item, _ in want["items"]]
        np.testing.assert_allclose([i["score"] for i in got["items"]], [s for _, s in want["items"]], atol=1e-6)


def test_healthz(server):
    status, body = call(server, "GET", "/healthz")
    assert status == 200
    assert body == {
        "status": "ok",
        "num_users": NUM_USERS,
        "num_items": NUM_ITEMS,
        "indexes": ["flat", "hnsw"],
        "default_index": "flat",
    }


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_get_and_post_equal_export_recommend(server, exp, index):
    users = [user_raw(u) for u in (HEAVY_USER, 1, 7, 39)]
    want = expected_results(exp, users, 10, index)
    assert len(want[0]["items"]) == NUM_UNSEEN_BY_HEAVY and len(want[1]["items"]) == 10
    for user, expected in zip(users, want):
        status, body = call(server, "GET", f"/recommend?user_id={user}&k=10&index={index}")
        assert status == 200
        assert_same(body["results"], [expected])
    status, body = call(server, "POST", "/recommend", {"user_ids": users, "k": 10, "index": index})
    assert status == 200
    assert_same(body["results"], want)
    # several user_id parameters, and a repeated id answered again
    status, body = call(server, "GET", f"/recommend?user_id={users[1]}&user_id={users[2]}&index={index}")
    assert status == 200 and len(body["results"][0]["items"]) == 10  # k defaults to 10
    assert_same(body["results"], want[1:3])
    status, body = call(server, "POST", "/recommend", {"user_ids": [users[1], int(users[2]), users[1]], "index": index})
    assert_same(body["results"], [want[1], want[2], want[1]])


def test_default_index_is_used(export_dir, exp):
    srv = make_server(exp, index="hnsw")
    try:
        assert srv.health()["default_index"] == "hnsw"
        got = srv.recommend_users([user_raw(3)], 5, srv.default_index)["results"]
    finally:
        srv.server_close()
    assert_same(got, expected_results(exp, [user_raw(3)], 5, "hnsw"))


def test_seen_items_are_never_returned(server, exp):
    users = [user_raw(u) for u in range(NUM_USERS)]
    status, body = call(server, "POST", "/recommend", {"user_ids": users, "k": NUM_ITEMS})
    assert status == 200
    seen = pq.read_table(exp.path / "seen.parquet")
    seen_by_user = {user_raw(u): set() for u in range(NUM_USERS)}
    for u, i in zip(seen["user"].to_pylist(), seen["item"].to_pylist()):
        seen_by_user[user_raw(u)].add(item_raw(i))
    for result in body["results"]:
        returned = [i["item_id"] for i in result["items"]]
        # the exact index with k = all items returns exactly the unseen items, each once
        assert sorted(returned) == sorted(set(map(item_raw, range(NUM_ITEMS))) - seen_by_user[result["user_id"]])
        scores = [i["score"] for i in result["items"]]
        assert scores == sorted(scores, reverse=True)


def brute_force_history(item_emb: np.ndarray, history: list[int], k: int, *, bias_column: bool = False):
    xq = item_emb[history].mean(axis=0)
    if bias_column:
        xq[-1] = 1.0
    scores = item_emb @ xq
    scores[history] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [item_raw(i) for i in top], scores[top]


def test_history_matches_brute_force(server, exp):
    history = [5, 17, 99, 17]  # a repeat weighs twice in the mean, as in the brute force
    want_items, want_scores = brute_force_history(exp.item_emb, history, 10)
    status, body = call(server, "POST", "/recommend", {"history": [item_raw(i) for i in history], "k": 10})
    assert status == 200
    (result,) = body["results"]
    assert result["user_id"] is None
    assert [i["item_id"] for i in result["items"]] == want_items
    np.testing.assert_allclose([i["score"] for i in result["items"]], want_scores, atol=1e-5)
    # k beyond the items left after excluding the history: every other item, once
    status, body = call(server, "POST", "/recommend", {"history": [item_raw(i) for i in history], "k": NUM_ITEMS})
    assert len(body["results"][0]["items"]) == NUM_ITEMS - 3


def test_history_with_item_bias_column_uses_a_user_bias_weight_of_one(tmp_path):
    exp = distgnn.load_export(random_export(tmp_path / "biased", seed=1, bias_column=True))
    srv = make_server(exp)
    try:
        assert srv.bias_column
        (result,) = srv.recommend_history([item_raw(i) for i in (3, 4)], 10, "flat")["results"]
    finally:
        srv.server_close()
    want_items, want_scores = brute_force_history(exp.item_emb, [3, 4], 10, bias_column=True)
    assert [i["item_id"] for i in result["items"]] == want_items
    np.testing.assert_allclose([i["score"] for i in result["items"]], want_scores, atol=1e-5)


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/recommend?user_id=nobody", None, 404),
        ("GET", "/recommend?user_id=1001&user_id=nobody", None, 404),
        ("POST", "/recommend", {"user_ids": ["1001", "nobody"]}, 404),
        ("POST", "/recommend", {"history": ["i1", "no-such-item"]}, 404),
        ("GET", "/recommend?user_id=1001&k=abc", None, 400),
        ("GET", "/recommend?user_id=1001&k=0", None, 400),
        ("GET", "/recommend?user_id=1001&k=-1", None, 400),
        ("GET", "/recommend?user_id=1001&k=1.5", None, 400),
        ("GET", f"/recommend?user_id=1001&k={NUM_ITEMS + 1}", None, 400),
        ("GET", "/recommend?user_id=1001&k=1001", None, 400),
        ("GET", "/recommend?user_id=1001&k=1&k=2", None, 400),
        ("GET", "/recommend?user_id=1001&index=ivf", None, 400),
        ("GET", "/recommend?user=1001", None, 400),
        ("GET", "/recommend", None, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "k": "10"}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "k": True}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "k": 10.0}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "k": 0}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "k": 5000}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "index": ["flat"]}, 400),
        ("POST", "/recommend", {"user_ids": "1001"}, 400),
        ("POST", "/recommend", {"user_ids": []}, 400),
        ("POST", "/recommend", {"user_ids": [None]}, 400),
        ("POST", "/recommend", {"history": []}, 400),
        ("POST", "/recommend", {"k": 10}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "history": ["i1"]}, 400),
        ("POST", "/recommend", {"user_ids": ["1001"], "kk": 10}, 400),
        ("POST", "/recommend", ["1001"], 400),
        ("POST", "/recommend", b"{not json", 400),
        ("POST", "/recommend", b"", 400),
        ("POST", "/recommend", b"\xff\xfe\x00garbage", 400),
        ("POST", "/recommend", b"[" * 100_000, 400),
        ("GET", "/no/such/path", None, 404),
        ("POST", "/healthz", b"{}", 405),
        ("DELETE", "/recommend", None, 501),
    ],
)
def test_errors_are_one_line_json(server, method, path, body, status):
    got, answer = call(server, method, path, body)
    assert got == status
    assert list(answer) == ["error"] and isinstance(answer["error"], str) and answer["error"]
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert str(server.export.path) not in answer["error"]  # no server paths in answers


def test_body_over_the_limit_is_refused_unread(server):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        conn.putrequest("POST", "/recommend")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.endheaders()  # the body is never sent: the server must answer from the header alone
        response = conn.getresponse()
        assert response.status == 413 and response.getheader("Connection") == "close"
        assert "over the limit" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_a_bug_is_a_one_line_500(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(server, "recommend_users", broken)
    status, answer = call(server, "GET", "/recommend?user_id=1001")
    assert status == 500 and answer == {"error": "internal error (see the server log)"}
    status, _ = call(server, "GET", "/healthz")  # still serving
    assert status == 200


def test_handlers_run_one_openmp_thread(server, monkeypatch):
    # read the thread counts inside a handler thread: OpenMP keeps them per thread
    monkeypatch.setattr(
        server, "health", lambda: {"faiss": faiss.omp_get_max_threads(), "torch": torch.get_num_threads()}
    )
    assert call(server, "GET", "/healthz") == (200, {"faiss": 1, "torch": 1})


def test_concurrent_keep_alive_clients_all_get_correct_answers(server, exp):
    users = [user_raw(u) for u in range(NUM_USERS)]
    expected = {e["user_id"]: e for e in expected_results(exp, users, 10)}
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)  # one keep-alive connection
        try:
            for user in rng.choice(users, 200):
                conn.request("GET", f"/recommend?user_id={user}&k=10")
                response = conn.getresponse()
                body = json.loads(response.read())
                try:
                    assert response.status == 200
                    assert_same(body["results"], [expected[user]])
                except AssertionError as err:
                    failures.append(f"user {user}: {err}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_command_reports_a_missing_export_in_one_line(tmp_path, capsys):
    assert serve_module.main(["--export", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such export folder" in err and "\n" not in err


def test_command_serves_on_a_free_port_and_stops_on_sigterm(export_dir, monkeypatch, capsys):
    """The command's own loop, in this process (a subprocess would spend most of the test importing
    torch): a request, then SIGTERM; the command returns 0."""
    servers = []

    def recording_make_server(*args, **kwargs):
        servers.append(make_server(*args, **kwargs))
        return servers[-1]

    monkeypatch.setattr(serve_module, "make_server", recording_make_server)
    statuses = []

    def client() -> None:
        deadline = time.monotonic() + 30
        while not servers and time.monotonic() < deadline:
            time.sleep(0.05)
        if not servers:
            return  # the command failed before listening; the assertions below say how
        try:
            conn = http.client.HTTPConnection(*servers[0].server_address[:2], timeout=10)
            conn.request("GET", "/recommend?user_id=1001&k=3")
            statuses.append(conn.getresponse().status)
            conn.close()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # only once listening: the command handles it from then on

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=client)
    thread.start()
    try:
        code = serve_module.main(["--export", str(export_dir), "--port", "0"])
    finally:
        thread.join(timeout=30)
        signal.signal(signal.SIGTERM, previous)
    assert code == 0 and statuses == [200]
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"listening on {servers[0].url} ")

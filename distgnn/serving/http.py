"""A JSON HTTP endpoint for top-k recommendations from a loaded export.

    server = make_server(distgnn.load_export("exports/my-run"), port=8000)
    server.serve_forever()                      # or: python -m distgnn.serve --export exports/my-run

Endpoints (all answers are JSON; every error is ``{"error": "<one line>"}``, never a traceback):

- ``GET /healthz`` -> ``{"status": "ok", "num_users", "num_items", "indexes", "default_index"}``
- ``GET /recommend?user_id=17&k=10[&index=hnsw]`` (``user_id`` may repeat) and
  ``POST /recommend`` with ``{"user_ids": ["17", "42"], "k": 10, "index": "flat"}``
  -> ``{"results": [{"user_id": "17", "items": [{"item_id": "...", "score": 0.93}, ...]}, ...]}``,
  best first, the user's seen items excluded; exactly ``Export.recommend``'s answer.
- ``POST /recommend`` with ``{"history": ["item raw id", ...], "k": 10}``: cold start for a user the
  export does not know. The query vector is the mean of the history items' vectors (with an item-bias
  column, that column is set to 1 as in every user vector); the history items are excluded.
  Answer as above with ``"user_id": null``.

``k`` defaults to 10 and must be an integer from 1 to min(num_items, 1000). Status codes: 400 for a
malformed request (bad ``k``, unknown index or parameter, invalid JSON, missing field), 404 for an
unknown user id, item id or path, 405 for a wrong method, 411/413 for a body without a length or over
``max_body_bytes``, 500 for a bug (logged with its traceback, answered with one line).

Built on the standard library's ``ThreadingHTTPServer``: a JSON endpoint over an in-memory index needs
no framework, and no dependency. It makes one thread per connection (keep-alive connections reuse
theirs), so it is meant for 127.0.0.1 or behind a proxy that bounds connections, not for the open
internet: it has no authentication.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import faiss
import numpy as np
import torch

from distgnn.core.errors import ConfigError, DataError
from distgnn.serving.index import search_excluding

logger = logging.getLogger(__name__)

DEFAULT_K = 10
MAX_K = 1000
MAX_BODY_BYTES = 1 << 20
# caps on one request's work: users answered, and history items (each deepens the search by one)
MAX_USERS_PER_REQUEST = 1000
MAX_HISTORY_ITEMS = 10_000
# an idle keep-alive connection holds a thread; close it after this long without a request
IDLE_TIMEOUT_S = 60.0
_MAX_ERROR_CHARS = 300


class RequestError(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class RecommendationServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` holding one loaded export; build it with :func:`make_server`."""

    # handler threads must not keep the process alive or make shutdown wait for idle keep-alive clients
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], export, *, omp_threads: int, default_index: str, max_k: int, max_body_bytes: int
    ):
        self.export = export
        self.omp_threads = omp_threads
        self.default_index = default_index
        self.max_body_bytes = max_body_bytes
        self.num_users = len(export.user_ids)
        self.num_items = len(export.item_ids)
        self.max_k = min(max_k, self.num_items)
        self.index_names = list(export.manifest["indexes"])
        # sorted raw item ids for the history lookup: O(log I) per id, no per-request hash of all items
        raw_items = np.asarray(export.item_ids).astype(str)
        self.item_order = np.argsort(raw_items, kind="stable")
        self.sorted_items = raw_items[self.item_order]
        # scoring_vectors appends [1 | t * item bias]: a column of exact ones in every user vector
        user_emb = np.asarray(export.user_emb)
        self.bias_column = len(user_emb) > 1 and bool(np.all(user_emb[:, -1] == 1.0))
        super().__init__(address, RecommendationHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "num_users": self.num_users,
            "num_items": self.num_items,
            "indexes": self.index_names,
            "default_index": self.default_index,
        }

    def recommend_users(self, user_ids: list[str], k: int, index: str) -> dict[str, Any]:
        """Top-``k`` for known users; one result per requested id (repeats answered again)."""
        unique = list(dict.fromkeys(user_ids))
        try:
            table = self.export.recommend(unique, k, index=index)
        except DataError as err:  # the index name was checked before, so: an unknown user id
            raise RequestError(HTTPStatus.NOT_FOUND, self._without_path(err)) from None
        by_user: dict[str, list] = {user: [] for user in unique}
        # a Python loop over result rows, at most MAX_USERS_PER_REQUEST * MAX_K: building the JSON is per row anyway
        for user, item, score in zip(
            table["user_id"].to_pylist(), table["item_id"].to_pylist(), table["score"].to_pylist()
        ):
            by_user[user].append({"item_id": item, "score": score})
        return {"results": [{"user_id": user, "items": by_user[user]} for user in user_ids]}

    def recommend_history(self, history: list[str], k: int, index: str) -> dict[str, Any]:
        """Top-``k`` for the mean of the history items' vectors, the history items excluded."""
        rows = self.item_rows(history)
        xq = self.export.item_emb[rows].mean(axis=0, keepdims=True)
        if self.bias_column:
            xq[:, -1] = 1.0
        exclude = np.unique(rows)
        D, I = search_excluding(
            self.export.index(index),
            xq,
            k,
            np.array([0, len(exclude)]),
            exclude,
            np.zeros(1, dtype=np.int64),
            metric="ip",
        )
        valid = I[0] >= 0
        items = [
            {"item_id": item, "score": score}
            for item, score in zip(np.asarray(self.export.item_ids)[I[0][valid]].tolist(), D[0][valid].tolist())
        ]
        return {"results": [{"user_id": None, "items": items}]}

    def item_rows(self, raw_ids: list[str]) -> np.ndarray:
        """Dense item indices of raw item ids; an unknown id is a 404 naming it."""
        query = np.asarray(raw_ids).astype(str)
        slot = np.minimum(np.searchsorted(self.sorted_items, query), self.num_items - 1)
        found = self.sorted_items[slot] == query
        if not found.all():
            missing = query[~found][:5].tolist()
            raise RequestError(
                HTTPStatus.NOT_FOUND,
                f"unknown item id(s) {', '.join(missing)} (the export knows {self.num_items:,} items)",
            )
        return self.item_order[slot]

    def _without_path(self, err: Exception) -> str:
        # the export's errors start with its folder: a server path clients need not see
        message = str(err)
        prefix = f"{self.export.path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message


def make_server(
    export,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = 1,
    *,
    index: str = "flat",
    max_k: int = MAX_K,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> RecommendationServer:
    """A bound (not yet serving) HTTP server for ``export`` (from ``distgnn.load_export``).

    Args:
        export: the loaded export; its indexes are all loaded now, so no request pays for it.
        host, port: where to listen; ``port=0`` takes any free port (see ``server.server_address``).
        threads: OpenMP threads (FAISS and torch) of each request-handler thread; ``0`` leaves the
            libraries' defaults. One, because handler threads run at once: four threads sharing one
            export on 2 cores had p99 59-92 ms with default OpenMP threads, ~21 ms with one each
            (ENVIRONMENT.md), from OpenMP oversubscription.
        index: the index searched when a request names none.
        max_k: largest ``k`` accepted (also at most the number of items).
        max_body_bytes: larger request bodies are refused with 413, unread.

    Call ``serve_forever()`` (e.g. in a thread), then ``shutdown()`` and ``server_close()``.
    """
    if threads < 0:
        raise ConfigError(f"threads must be 0 (library default) or more, got {threads}")
    if max_k < 1 or max_body_bytes < 1:
        raise ConfigError(f"max_k and max_body_bytes must be positive, got {max_k} and {max_body_bytes}")
    for name in export.manifest["indexes"]:
        export.index(name)  # loads it; also keeps the lazy load out of concurrent requests
    export.index(index)  # an index the export lacks raises DataError naming those it has
    try:
        return RecommendationServer(
            (host, port), export, omp_threads=threads, default_index=index, max_k=max_k, max_body_bytes=max_body_bytes
        )
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


class RecommendationHandler(BaseHTTPRequestHandler):
    """One connection's requests (HTTP/1.1 keep-alive); see the module docstring for the API."""

    protocol_version = "HTTP/1.1"
    server_version = "distgnn"
    timeout = IDLE_TIMEOUT_S
    # TCP_NODELAY: the headers and the body go out as two writes, and Nagle's algorithm held the second
    # until the client's delayed ACK: ~40 ms per keep-alive request instead of ~1 ms
    disable_nagle_algorithm = True
    server: RecommendationServer

    def setup(self) -> None:
        super().setup()
        # OpenMP thread counts are per calling thread: set them in each handler thread
        if self.server.omp_threads:
            faiss.omp_set_num_threads(self.server.omp_threads)
            torch.set_num_threads(self.server.omp_threads)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # the base class's own refusals (bad request line, unsupported method, ...) as JSON too
        self.close_connection = True
        self._send_json(code, {"error": _one_line(message or HTTPStatus(code).phrase)})

    def _answer(self, method: str) -> None:
        try:
            body = self._read_body()
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._require_method(method, ("GET",))
                payload = self.server.health()
            elif url.path == "/recommend":
                payload = self._recommend_get(url.query) if method == "GET" else self._recommend_post(body)
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such path {url.path!r} (have /healthz, /recommend)")
            status = HTTPStatus.OK
        except RequestError as err:
            status, payload = err.status, {"error": _one_line(str(err))}
        except Exception:
            logger.exception("request %s %s failed", method, self.path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the server log)"}
        self._send_json(status, payload)

    def _read_body(self) -> bytes:
        """The request body, at most ``max_body_bytes``; on refusal the connection is closed, since
        the unread body would be taken for the next request."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command == "POST":
                self.close_connection = True
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "POST needs a Content-Length header")
            return b""
        if not length.strip().isdigit():
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, f"Content-Length must be a byte count, got {length[:40]!r}")
        if int(length) > self.server.max_body_bytes:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {int(length):,} bytes is over the limit of {self.server.max_body_bytes:,}",
            )
        return self.rfile.read(int(length))

    @staticmethod
    def _require_method(method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here (use {', '.join(allowed)})")

    def _recommend_get(self, query: str) -> dict[str, Any]:
        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_USERS_PER_REQUEST + 2)
        except ValueError as err:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"query string: {err}") from None
        _reject_unknown(params, ("user_id", "k", "index"), "query parameter")
        if "user_id" not in params:
            raise RequestError(HTTPStatus.BAD_REQUEST, "missing query parameter user_id")
        for name in ("k", "index"):
            if len(params.get(name, ())) > 1:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"query parameter {name} given more than once")
        k = self._check_k(_parse_k_text(params["k"][0]) if "k" in params else DEFAULT_K)
        index = self._check_index(params["index"][0] if "index" in params else self.server.default_index)
        return self.server.recommend_users(params["user_id"], k, index)

    def _recommend_post(self, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
        except ValueError as err:  # also a body that is not UTF-8
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {err}") from None
        except RecursionError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "body is nested too deeply") from None
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        _reject_unknown(request, ("user_ids", "history", "k", "index"), "field")
        k = self._check_k(request.get("k", DEFAULT_K))
        index = self._check_index(request.get("index", self.server.default_index))
        if ("user_ids" in request) == ("history" in request):
            raise RequestError(HTTPStatus.BAD_REQUEST, "give exactly one of the fields user_ids and history")
        if "user_ids" in request:
            return self.server.recommend_users(_raw_ids(request, "user_ids", MAX_USERS_PER_REQUEST), k, index)
        return self.server.recommend_history(_raw_ids(request, "history", MAX_HISTORY_ITEMS), k, index)

    def _check_k(self, k: Any) -> int:
        # bool is an int in Python, not in JSON
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.server.max_k:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"k must be an integer from 1 to {self.server.max_k}, got {_short(k)}"
            )
        return k

    def _check_index(self, index: Any) -> str:
        if index not in self.server.index_names:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"index must be one of {', '.join(self.server.index_names)}, got {_short(index)}",
            )
        return index

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        try:
            # allow_nan=False: a NaN score would make the answer invalid JSON
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except ValueError:
            logger.exception("cannot encode the answer to %s %s", self.command, self.path)
            status, data = HTTPStatus.INTERNAL_SERVER_ERROR, b'{"error":"internal error (see the server log)"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _parse_k_text(text: str) -> int | str:
    """``k`` from a query string: an int when it is all digits, else the text (which then fails)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else text


def _raw_ids(request: dict, name: str, limit: int) -> list[str]:
    ids = request[name]
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= limit
        or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in ids)
    ):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a list of 1 to {limit:,} raw ids (strings)")
    return [str(i) for i in ids]


def _reject_unknown(given, known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"unknown {what}(s) {', '.join(map(_short, unknown))} (known: {', '.join(known)})"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(message: str) -> str:
    return " ".join(message.split())[:_MAX_ERROR_CHARS]

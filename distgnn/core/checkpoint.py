"""Tensor files on disk (the best model, training state), safe to load whatever their origin.

A file is ``torch.save({"format", "payload", "sha256"})`` where the payload holds only tensors and
plain values (dicts, lists, numbers, strings), and ``sha256`` is a digest of the payload's content.
Loading uses ``weights_only=True``, so a file carrying a pickled object is refused instead of
running its code; the digest is checked before the payload is used, so a damaged file is refused
instead of giving silent garbage. One self-contained file, written atomically: there is no moment
where a checksum and its data disagree.

Memory: writing streams the tensors into the file (no in-memory copy of the file), the digest reads
each tensor in place, and loading memory-maps the file (its pages are the page cache's, not the
process's own), so saving or loading a table costs no second copy of it.

A model too large for one process is kept as one shard per part (:func:`save_model_shard`, the rows
a worker owns, with their global ids) and a ``model.pt`` that says where the shards are
(:func:`save_sharded_model`); :func:`load_model_into` reads either kind into a model, shard by shard.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distgnn.core.errors import DataError
from distgnn.core.files import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
BEST_MODEL = "model.pt"
FORMAT = "distgnn-tensors-1"
# bytes of a tensor hashed at a time: a device tensor is copied to the host by pieces of this size
DIGEST_PIECE = 1 << 26


def payload_digest(obj: Any) -> str:
    """sha256 of a payload's content: every tensor's dtype, shape and bytes, every plain value,
    in a fixed order (dict keys sorted by their text). A CPU tensor is hashed in place (no copy of
    its bytes), a device tensor by pieces."""
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().contiguous()  # a no-op for the tensors saved here (tables, moments)
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            flat = t.reshape(-1).view(torch.uint8) if t.numel() else t.new_empty(0, dtype=torch.uint8)
            for piece in flat.split(DIGEST_PIECE):
                h.update(piece.cpu().numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for key in sorted(x, key=str):
                h.update(repr(key).encode())
                visit(x[key])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                visit(item)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    visit(obj)
    return h.hexdigest()


def save_checked(payload: dict, path: Path) -> None:
    """Write ``payload`` with its digest, atomically (temporary file, fsync, rename), straight into
    the file. A tensor that is a view is written with its whole storage (torch.save's rule): save
    tensors that own theirs."""
    obj = {"format": FORMAT, "payload": payload, "sha256": payload_digest(payload)}
    write_atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def load_checked(path: Path, what: str) -> dict:
    """The payload of a file written by :func:`save_checked`, after the safety and integrity checks;
    any failure is a DataError naming the file. Its tensors are memory-mapped from the file (copy
    on write): copy what is kept (``load_state_dict`` into a model does; see :func:`owned`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a {what})")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unsupported object"
        raise DataError(
            f"{path}: refused to load: it holds objects other than tensors and plain values "
            f"({reason[:160]}); distgnn never runs code from a file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable {what} (truncated or damaged: {first})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if payload_digest(obj.get("payload")) != obj.get("sha256"):
            raise DataError(f"{path}: checksum does not match its content; the {what} is damaged")
        return obj["payload"]
    if isinstance(obj, dict) and "model" in obj:  # written before checksums; safe to read (weights_only)
        log.warning("%s carries no checksum (written by an older distgnn); loading it unverified", path)
        return obj
    raise DataError(f"{path}: not a distgnn {what} (unexpected content)")


def owned(obj: Any) -> Any:
    """``obj`` with every tensor copied into memory of its own (one at a time): for state loaded by
    :func:`load_checked` that is kept, such as optimizer moments, which ``load_state_dict`` keeps as
    given; a kept view of the file's mapping would pin the whole file."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {key: owned(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(owned(value) for value in obj)
    return obj


def save_training_state(
    folder: Path,
    *,
    model: nn.Module,
    optimizer_states: list[dict],
    epoch: int,
    history: list[dict],
    best: dict | None,
    name: str = STATE_FILE,
) -> Path:
    """Everything needed to continue after ``epoch`` (the next run starts at ``epoch + 1``).
    ``optimizer_states``: each optimizer's ``state_dict()``. ``name``: the file, one per worker when
    each holds a different shard of the model."""
    save_checked(
        {
            "model": model.state_dict(),
            "optimizers": optimizer_states,
            **loop_state(epoch, history, best),
        },
        Path(folder) / name,
    )
    return Path(folder)


def loop_state(epoch: int, history: list[dict], best: dict | None) -> dict[str, Any]:
    """What the training loop needs to continue after ``epoch``, for a checkpoint's payload."""
    return {"epoch": epoch, "history": history, "best": best, "torch_rng": torch.get_rng_state()}


def restore_loop_state(state: dict) -> dict[str, Any]:
    """Set torch's random state from a checkpoint's payload; returns ``{"epoch", "history", "best"}``."""
    torch.set_rng_state(state["torch_rng"])
    return {"epoch": state["epoch"], "history": state["history"], "best": state["best"]}


def load_training_state(
    folder: Path, *, model: nn.Module, optimizers: list[Any], name: str = STATE_FILE
) -> dict[str, Any]:
    """Restore model and optimisers in place; returns ``{"epoch", "history", "best"}``."""
    # load_state_dict moves weights and optimizer moments onto the model's device
    state = load_checked(Path(folder) / name, "training checkpoint")
    model.load_state_dict(state["model"])
    for opt, opt_state in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(owned(opt_state))
    return restore_loop_state(state)


def save_model(path: Path, model_state: dict[str, torch.Tensor], info: dict) -> None:
    """The weights a later stage (export) needs, plus what produced them (plain values only)."""
    # CPU tensors: a model trained on a GPU must load where export and recommend run, often CPU-only
    save_checked({"model": {k: v.detach().cpu() for k, v in model_state.items()}, "info": info}, path)


def load_model_state(path: Path) -> dict[str, Any]:
    """``{"model": state dict, "info": dict}`` of a file written by :func:`save_model` (or, for a
    sharded model, :func:`save_sharded_model`: then ``"shards"`` too, and ``"model"`` lacks the
    row tables; :func:`load_model_into` reads both kinds)."""
    state = load_checked(path, "model file")
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("info", {}), dict):
        raise DataError(f"{path}: not a distgnn model file (no 'model' weights)")
    return state


def shard_file(folder: Path, part_id: int) -> Path:
    """The model shard of part ``part_id`` in ``folder``."""
    return Path(folder) / f"part-{part_id:03d}.pt"


def save_model_shard(folder: Path, part_id: int, nodes: Tensor, model_state: dict[str, Tensor], info: dict) -> None:
    """One part's model: the rows it owns of every row table (``*embedding.weight``, ``[n_p, ...]``)
    with their global ids ``nodes [n_p]``, plus the weights every part holds alike."""
    save_checked(
        {"nodes": nodes.clone(), "model": {k: v.detach().cpu() for k, v in model_state.items()}, "info": info},
        shard_file(folder, part_id),
    )


def save_sharded_model(path: Path, model_state: dict[str, Tensor], info: dict, *, folder: str, num_parts: int) -> None:
    """``model.pt`` of a model kept as ``num_parts`` shards in ``folder`` (relative to ``path``'s
    folder): the weights outside the row tables, what produced them, and where the shards are. No
    process ever holds the whole tables to write it."""
    rest = {k: v.detach().cpu() for k, v in model_state.items() if not is_row_table(k)}
    save_checked({"model": rest, "info": info, "shards": {"folder": folder, "num_parts": num_parts}}, path)


def is_row_table(key: str) -> bool:
    """Whether a state-dict entry is a row table (one row per node: what a part shards)."""
    return key.endswith("embedding.weight")


@torch.no_grad()
def load_model_into(path: Path, model: nn.Module) -> dict:
    """Load a model file (:func:`save_model`, or :func:`save_sharded_model` and its shards) into
    ``model`` in place; returns its ``info``. Shards are read one at a time, each row copied into
    place, so memory beyond the model is one memory-mapped shard. A shard of another epoch than
    ``model.pt``, or shards that do not cover every row exactly once, are refused."""
    path = Path(path)
    state = load_model_state(path)
    shards = state.get("shards")
    if shards is None:
        model.load_state_dict(state["model"])
        return state["info"]
    params = dict(model.state_dict(keep_vars=True))
    tables = sorted(k for k in params if is_row_table(k))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if sorted(missing) != tables or unexpected:
        raise DataError(f"{path}: weights do not fit the model (missing {sorted(missing)}, unexpected {unexpected})")
    filled = {key: torch.zeros(params[key].shape[0], dtype=torch.int32, device="cpu") for key in tables}
    for part_id in range(int(shards["num_parts"])):
        file = shard_file(path.parent / shards["folder"], part_id)
        shard = load_checked(file, "model shard")
        if shard["info"].get("epoch") != state["info"].get("epoch"):
            raise DataError(
                f"{file}: a shard of epoch {shard['info'].get('epoch')}, but {path.name} is of epoch "
                f"{state['info'].get('epoch')}; the run's best model is incomplete"
            )
        nodes = shard["nodes"]
        for key in tables:
            rows = shard["model"].get(key)
            if rows is None or rows.shape[0] != nodes.numel() or rows.shape[1:] != params[key].shape[1:]:
                raise DataError(f"{file}: '{key}' does not fit the model's {tuple(params[key].shape)} table")
            params[key].index_copy_(0, nodes.to(params[key].device), rows.to(params[key].device))
            filled[key].index_add_(0, nodes, torch.ones(nodes.numel(), dtype=torch.int32, device="cpu"))
    for key, count in filled.items():
        if not bool((count == 1).all()):
            raise DataError(f"{path}: the shards do not cover every row of '{key}' exactly once")
    return state["info"]

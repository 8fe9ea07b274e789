"""Tensor files on disk (the best model, training state), safe to load whatever their origin.

A file is ``torch.save({"format", "payload", "sha256"})`` where the payload holds only tensors and
plain values (dicts, lists, numbers, strings), and ``sha256`` is a digest of the payload's content.
Loading uses ``weights_only=True``, so a file carrying a pickled object is refused instead of
running its code; the digest is checked before the payload is used, so a damaged file is refused
instead of giving silent garbage. One self-contained file, written atomically: there is no moment
where a checksum and its data disagree.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distgnn.core.errors import DataError
from distgnn.core.files import write_bytes_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
BEST_MODEL = "model.pt"
FORMAT = "distgnn-tensors-1"


def payload_digest(obj: Any) -> str:
    """sha256 of a payload's content: every tensor's dtype, shape and bytes, every plain value,
    in a fixed order (dict keys sorted by their text)."""
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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
    """Write ``payload`` with its digest, atomically (temporary file, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "payload": payload, "sha256": payload_digest(payload)}, buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


def load_checked(path: Path, what: str) -> dict:
    """The payload of a file written by :func:`save_checked`, after the safety and integrity checks;
    any failure is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a {what})")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
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
    ``optimizer_states``: each optimizer's ``state_dict()`` (taken on every worker: a row-sharded
    optimizer gathers its state with a collective). ``name``: the file, one per worker when each
    holds a different shard of the model."""
    save_checked(
        {
            "model": model.state_dict(),
            "optimizers": optimizer_states,
            "epoch": epoch,
            "history": history,
            "best": best,
            "torch_rng": torch.get_rng_state(),
        },
        Path(folder) / name,
    )
    return Path(folder)


def load_training_state(
    folder: Path, *, model: nn.Module, optimizers: list[Any], name: str = STATE_FILE
) -> dict[str, Any]:
    """Restore model and optimisers in place; returns ``{"epoch", "history", "best"}``."""
    # load_state_dict moves weights and optimizer moments onto the model's device
    state = load_checked(Path(folder) / name, "training checkpoint")
    model.load_state_dict(state["model"])
    for opt, opt_state in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(opt_state)
    torch.set_rng_state(state["torch_rng"])
    return {"epoch": state["epoch"], "history": state["history"], "best": state["best"]}


def save_model(path: Path, model_state: dict[str, torch.Tensor], info: dict) -> None:
    """The weights a later stage (export) needs, plus what produced them (plain values only)."""
    # CPU tensors: a model trained on a GPU must load where export and recommend run, often CPU-only
    save_checked({"model": {k: v.detach().cpu() for k, v in model_state.items()}, "info": info}, path)


def load_model_state(path: Path) -> dict[str, Any]:
    """``{"model": state dict, "info": dict}`` of a file written by :func:`save_model`."""
    state = load_checked(path, "model file")
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("info", {}), dict):
        raise DataError(f"{path}: not a distgnn model file (no 'model' weights)")
    return state

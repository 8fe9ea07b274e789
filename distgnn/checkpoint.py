"""Training state on disk: model, optimisers, epoch and history, written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"
BEST_MODEL = "model.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def save_training_state(folder: Path, *, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                        epoch: int, history: list[dict], best: dict | None, name: str = STATE_FILE) -> Path:
    """Everything needed to continue after ``epoch`` (the next run starts at ``epoch + 1``).
    ``name``: the file, one per worker when each holds a different shard of the model."""
    save_atomic({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                 "epoch": epoch, "history": history, "best": best,
                 "torch_rng": torch.get_rng_state()}, folder / name)
    return folder


def load_training_state(folder: Path, *, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                        name: str = STATE_FILE) -> dict[str, Any]:
    """Restore model and optimisers in place; returns ``{"epoch", "history", "best"}``."""
    # load_state_dict moves weights and optimizer moments onto the model's device
    state = torch.load(Path(folder) / name, weights_only=False, map_location="cpu")
    model.load_state_dict(state["model"])
    for opt, opt_state in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(opt_state)
    torch.set_rng_state(state["torch_rng"])
    return {"epoch": state["epoch"], "history": state["history"], "best": state["best"]}


def save_model(path: Path, model: nn.Module, info: dict) -> None:
    """The weights a later stage (export) needs, plus what produced them."""
    # CPU tensors: a model trained on a GPU must load where export and recommend run, often CPU-only
    save_atomic({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": info}, path)


def load_model_state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False, map_location="cpu")

"""Checkpoints as safetensors only (no pickle anywhere).

``best.safetensors`` holds the model weights. The resume state (``last.safetensors``) is ONE file, so
weights, optimizer, scheduler, RNG states and trainer bookkeeping can never disagree after a crash:
tensors go in the tensor section, everything else as JSON in the header metadata.

Both hold what the model's ``checkpoint_state()`` returns: its trainable state. Frozen pretrained
weights (``frozen_pretrained()``, e.g. a language model's) are not copied; their identity and sha256
are written in the metadata and must match when the checkpoint is loaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from intentrec.errors import DataError
from intentrec.io import atomic_path
from intentrec.models.base import SessionModel

_STATE_KEY = "intentrec_state"
_FROZEN_KEY = "frozen_pretrained"


def _tensor_dict(prefix: str, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    # clone() breaks storage sharing (tied embeddings), which safetensors refuses to save.
    return {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise DataError("checkpoint not found", path=path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise DataError(f"cannot read checkpoint: {exc}", path=path) from None
    return tensors, metadata


def _frozen(model: SessionModel) -> dict[str, str]:
    frozen = model.frozen_pretrained()
    return {_FROZEN_KEY: json.dumps(frozen, sort_keys=True)} if frozen else {}


def _check_frozen(model: SessionModel, stored: str | None, path: Path) -> None:
    expected = model.frozen_pretrained()
    found = json.loads(stored) if stored else {}
    if found != expected:
        raise DataError(
            f"checkpoint was trained on other frozen pretrained weights: it references {found or 'none'}, "
            f"the model has {expected or 'none'}",
            path=path,
        )


def save_weights(path: str | Path, model: SessionModel, metadata: dict[str, Any] | None = None) -> None:
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    _save(Path(path), _tensor_dict("", model.checkpoint_state()), {**meta, **_frozen(model)})


def load_weights(path: str | Path, model: SessionModel) -> dict[str, Any]:
    """Load weights into ``model``; returns the checkpoint's metadata."""
    path = Path(path)
    tensors, meta = _load(path)
    _check_frozen(model, meta.pop(_FROZEN_KEY, None), path)
    _load_state_dict(model, tensors, path)
    return {k: json.loads(v) for k, v in meta.items()}


def _load_state_dict(model: SessionModel, tensors: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_checkpoint_state(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"checkpoint does not fit the model in config.json: {first}", path=path) from None


# --------------------------------------------------------------------------- resume state


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {
        "rng/torch": torch.get_rng_state(),
        "rng/numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "rng/python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {
        "numpy": {"pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "gauss_next": py_state[2]},
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    np_meta = meta["numpy"]
    keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, np_meta["pos"], np_meta["has_gauss"], np_meta["gauss"]))
    py_meta = meta["python"]
    random.setstate((py_meta["version"], tuple(int(x) for x in tensors["rng/python"].tolist()), py_meta["gauss_next"]))
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_training_state(
    path: str | Path,
    model: SessionModel,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    bookkeeping: dict[str, Any],
) -> None:
    """Everything needed to continue training exactly where it stopped, in one atomic file."""
    tensors = _tensor_dict("model/", model.checkpoint_state())
    opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    scalar_state: dict[str, dict[str, Any]] = {}
    for pid, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalar_state.setdefault(str(pid), {})[name] = value
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    state = {
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalar_state},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_meta,
        "bookkeeping": bookkeeping,
    }
    _save(Path(path), tensors, {_STATE_KEY: json.dumps(state), **_frozen(model)})


def load_training_state(
    path: str | Path,
    model: SessionModel,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNGs; returns the bookkeeping dict."""
    path = Path(path)
    tensors, meta = _load(path)
    if _STATE_KEY not in meta:
        raise DataError("not an intentrec resume state", path=path)
    state = json.loads(meta[_STATE_KEY])
    _check_frozen(model, meta.get(_FROZEN_KEY), path)
    _load_state_dict(model, {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}, path)
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, entries in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(pid), {}).update(entries)
    if optimizer is not None:
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(tensors, state["rng"])
    return state["bookkeeping"]

"""Checkpoints: a surrogate's weights with its config and provenance, and the training state of a
run. No pickled code: JSON text and tensors, read back with ``torch.load(weights_only=True)``,
every size bounded before anything is allocated."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from datagen.limits import loads_bounded
from datagen.safeio import atomic_path

from .errors import SurrogateError
from .model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Surrogate, SurrogateConfig, build_surrogate

__all__ = ["save", "load", "load_training_state", "read_tensors"]


def save(model: Surrogate, path: str | os.PathLike, provenance: Mapping[str, Any] | None = None,
         training: Mapping[str, Any] | None = None) -> Path:
    """Write weights, config and provenance to ``path`` (atomically).

    ``training`` (tensors and plain data: optimizer state, epoch, history) is stored alongside
    for :func:`pdesurrogate.fit` to resume from; :func:`load` ignores it.
    """
    if model.config is None:
        raise SurrogateError("this surrogate has no config; build it with build_surrogate or exact_surrogate")
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True),
        "info": json.dumps(model.info, sort_keys=True, default=str),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training is not None:
        payload["training"] = dict(training)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise SurrogateError(f"writing {path} failed: {exc.strerror or exc}; the previous file, if any, is "
                             "unchanged (free space if the disk is full)") from None
    return path


def read_tensors(path: Path, what: str) -> Any:
    """``torch.load`` restricted to tensors and plain data, with one-line errors."""
    if not path.exists():
        raise SurrogateError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise SurrogateError(f"{path} is not a readable {what}") from None


def _json_field(payload: Mapping[str, Any], key: str, path: Path, kind: type, default: str | None = None) -> Any:
    """A checkpoint's JSON text field ``key`` parsed with its size and nesting bounded."""
    text = payload.get(key, default)
    if not isinstance(text, (str, bytes)):
        raise SurrogateError(f"{path}: its {key} is not JSON text; the file was not written by pdesurrogate.save")
    try:
        value = loads_bounded(text, f"{path}: its {key}")
    except ValueError as exc:
        raise SurrogateError(str(exc)) from None
    if not isinstance(value, kind):
        raise SurrogateError(f"{path}: its {key} is not a JSON object")
    return value


def _state_dict(payload: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, checked to be a mapping of names to tensors."""
    sd = payload.get("state_dict")
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in sd.items()):
        raise SurrogateError(f"{path}: its state_dict is not a mapping of names to tensors; the file was not written "
                             "by pdesurrogate.save")
    return dict(sd)


def load_training_state(path: str | os.PathLike, model: Surrogate) -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``model`` and return its training state."""
    path = Path(path)
    payload = read_tensors(path, "checkpoint (corrupt, or not written by pdesurrogate.save)")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "training" not in payload:
        raise SurrogateError(f"{path} is not a training checkpoint written by pdesurrogate.fit")
    sd = _state_dict(payload, path)
    training = payload["training"]
    kinds = {"history": dict, "options": dict, "optimizer": dict, "epoch": int, "stale": int, "best": (int, float)}
    bad = ([k for k, kind in kinds.items() if not isinstance(training.get(k), kind)] if isinstance(training, dict)
           else ["training"])
    if not bad and not all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)
                           for v in training["history"].values()):
        bad = ["history"]
    if bad:
        raise SurrogateError(f"{path}: its training state is malformed ({bad[0]} is missing or of the wrong type); "
                             "start without --resume in a new folder")
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise SurrogateError(f"{path}: its weights do not fit this model ({str(exc).splitlines()[0]})") from None
    return training


def load(path: str | os.PathLike, integrator: str | None = None, substeps: int | None = None,
         dtype: torch.dtype | None = None) -> Surrogate:
    """Read a checkpoint written by :func:`save`, in the dtype its weights were saved in unless
    ``dtype`` asks for another; optionally switch integrator or substeps."""
    path = Path(path)
    payload = read_tensors(path, "checkpoint (corrupt, or not written by pdesurrogate.save)")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise SurrogateError(f"{path} is not a pdesurrogate checkpoint (a bare state_dict? see load_published)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise SurrogateError(
            f"{path} has checkpoint version {payload.get('version')}, this package reads {CHECKPOINT_VERSION}"
        )
    try:
        cfg = SurrogateConfig.from_dict(_json_field(payload, "config", path, dict))
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, SurrogateError):  # a bound or a range: name the file that asked for it
            raise SurrogateError(f"{path}: its config is refused: {exc}") from None
        raise SurrogateError(f"{path}: its config is malformed ({exc})") from None
    sd = _state_dict(payload, path)
    info = _json_field(payload, "info", path, dict, "{}")
    provenance = _json_field(payload, "provenance", path, dict, "{}")
    model = build_surrogate(cfg)
    for name, buf in model.state_dict().items():
        if name.endswith(("kernel_scale", "bias_scale")) and name not in sd:  # written before kernels were in grid units
            sd[name] = torch.ones_like(buf)
    if dtype is None:  # the checkpoint's own precision: a float64 model cast to float32 loses accuracy
        saved = [sd[n].dtype for n, _ in model.named_parameters() if n in sd and sd[n].is_floating_point()]
        dtype = saved[0] if saved else None
    if dtype is not None:
        model = model.to(dtype)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SurrogateError(f"{path}: weights do not match its config ({first})") from None
    model.info, model.provenance = info, provenance
    if integrator is not None or substeps is not None:
        model = model.with_integrator(integrator, substeps)
    return model


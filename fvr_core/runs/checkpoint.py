"""Checkpoints: safetensors weights plus a JSON file of what a user needs to use them.

Weights never go through pickle, so loading a checkpoint can never run code. The JSON beside the
weights names the model, classes, input size, normalisation, config and metrics.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fvr_core.models.ensemble import build_ensemble
from fvr_core.models.registry import ModelError, build_model, get_spec
from fvr_core.files import atomic_file, atomic_write_json, read_json
from fvr_core.settings import CLASSES, ENSEMBLE, IMAGENET_MEAN, IMAGENET_STD

FORMAT = "fvr-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or for another model; the message names the file."""


def save_checkpoint(stem: Path, model: nn.Module, meta: dict[str, Any], half: bool = False) -> Path:
    """Write `stem`.safetensors and `stem`.json atomically (weights first, so the JSON never
    describes weights that are not on disk yet). `half` stores float weights as fp16."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.clone() if tensor.untyped_storage().nbytes() != tensor.nbytes else tensor
    meta = {
        "format": FORMAT,
        "classes": list(CLASSES),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        **meta,
    }
    target = stem.with_suffix(".safetensors")
    with atomic_file(target) as tmp:
        save_file(tensors, str(tmp), metadata={"fvr": json.dumps({"model": meta.get("model"), "image_size": meta.get("image_size")})})
    atomic_write_json(stem.with_suffix(".json"), meta)
    return target


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    meta = read_json(path.with_suffix(".json"))
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path.with_suffix('.json')} is missing or damaged: it must name the model and image size")
    size, temperature = meta.get("image_size"), meta.get("temperature", 1.0)
    # checked here, where the file can be named: a bad value would fail later inside a prediction
    if type(size) is not int or size < 1:
        raise CheckpointError(f"{path.with_suffix('.json')} gives image_size {size!r}: it must be a whole number of pixels; "
                              "copy the checkpoint's .json again")
    check_temperature(temperature, path.with_suffix(".json"))
    return meta


def check_temperature(value: Any, where: Path) -> float:
    """A calibration temperature read from `where`, or CheckpointError: 0, a negative, NaN or a string
    would make every probability NaN or fail inside a prediction."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise CheckpointError(f"{where} gives temperature {value!r}: it must be a positive number; "
                              "calibrate the run again (python -m fvr_core calibrate RUN)")
    return float(value)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint names and load its weights (as fp32, in eval mode)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = read_checkpoint_meta(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({exc}); retrain or copy it again") from None
    if meta["model"] == "cnn" and is_reconstructed_cnn(state):
        meta = {**meta, "model": "cnn_v0"}  # saved as "cnn" before `cnn` became the write-up's model
    try:
        model = _build_for(meta)
    except (ModelError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    smallest = 1 if meta["model"] == ENSEMBLE else get_spec(meta["model"]).min_image_size
    if meta["image_size"] < smallest:
        raise CheckpointError(f"{path.with_suffix('.json')} gives image_size {meta['image_size']}: {meta['model']} needs at "
                              f"least {smallest} px; copy the checkpoint's .json again")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit model {meta['model']!r} ({first}): the file and its JSON disagree") from None
    return model.to(device).eval(), meta


def _build_for(meta: dict[str, Any]) -> nn.Module:
    """The module a checkpoint's metadata describes: a registry model, or an ensemble of them."""
    if meta["model"] == ENSEMBLE:
        return build_ensemble(meta)
    return build_model(meta["model"])


def is_reconstructed_cnn(state: dict[str, torch.Tensor]) -> bool:
    """Whether weights saved under the name "cnn" are fvr's earlier reconstruction (`cnn_v0`: a
    first convolution of 16 filters), not the write-up's model (6 filters) that `cnn` now builds."""
    first = state.get("features.0.weight")
    return first is not None and tuple(first.shape[:2]) == (16, 3)


def load_training_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A run's last_state.pt (optimizer, schedule, RNG states): tensors and plain values only.
    torch.load(weights_only=True) never runs code from the file; a file holding anything else is
    refused with a CheckpointError naming it (torch's own message suggests loading it without
    weights_only, which would run it)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # what it would have called; not torch's advice to allow it
        raise CheckpointError(
            f"{path} holds more than tensors{f' (it calls {found.group(1)})' if found else ''} and was not loaded: "
            "unpickling it could run code. If you did not put it there, delete it and resume (the run then starts "
            "again from its first epoch)"
        ) from None
    # garbage trips the unpickler in many ways: one random file in ten raised IndexError or KeyError
    except (OSError, RuntimeError, EOFError, ValueError, LookupError) as exc:
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "delete it and resume (the run then starts again from its first epoch)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state; delete it and resume "
                              "(the run then starts again from its first epoch)")
    return state

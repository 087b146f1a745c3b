"""Checkpoints: safetensors weights plus a JSON file of what a user needs to use them.

Weights never go through pickle, so loading a checkpoint can never run code. The JSON beside the
weights names the model, classes, input size, normalisation, config and metrics.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models import ModelError, build_model
from .runs import atomic_write_json, read_json
from .settings import CLASSES, IMAGENET_MEAN, IMAGENET_STD

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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"fvr": json.dumps({"model": meta.get("model"), "image_size": meta.get("image_size")})})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(stem.with_suffix(".json"), meta)
    return target


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    path = Path(path)
    meta = read_json(path.with_suffix(".json"))
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path.with_suffix('.json')} is missing or damaged: it must name the model and image size")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint names and load its weights (as fp32, in eval mode)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = read_checkpoint_meta(path)
    try:
        model = build_model(meta["model"])
    except ModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({exc}); retrain or copy it again") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit model {meta['model']!r} ({first}): the file and its JSON disagree") from None
    return model.to(device).eval(), meta

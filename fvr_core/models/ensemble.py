"""The model of an ensemble run: finished runs' models side by side, their calibrated opinions
averaged (fvr_core.inference.ensembles makes such runs). Here so that loading any checkpoint can build one."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fvr_core.models.registry import build_model
from fvr_core.settings import CLASSES, FAKE

COMBINES = ("log_odds", "probability")


class EnsembleModel(nn.Module):
    """Members' calibrated log-odds of fake (logit difference / member temperature), averaged, or
    their calibrated probabilities averaged and turned back into log-odds; returned as two logits
    (fake = +half, real = -half) like every fvr model. Each member sees the input at its own size:
    a member trained on smaller images gets it shrunk by area averaging (as the data loader's box
    resize does)."""

    def __init__(self, members: Sequence[nn.Module], image_sizes: Sequence[int], temperatures: Sequence[float],
                 combine: str = "log_odds"):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine={combine!r}: choose one of {', '.join(COMBINES)}")
        self.members = nn.ModuleList(members)
        self.image_sizes = [int(s) for s in image_sizes]
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures]))
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_odds = []
        for member, size, temperature in zip(self.members, self.image_sizes, self.temperatures):
            xi = x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")
            logits = member(xi).float()
            log_odds.append((logits[:, FAKE] - logits[:, 1 - FAKE]) / temperature)
        stacked = torch.stack(log_odds)
        if self.combine == "log_odds":
            mean = stacked.mean(0)
        else:
            p = torch.sigmoid(stacked).mean(0).clamp(1e-6, 1 - 1e-6)
            mean = torch.log(p) - torch.log1p(-p)
        out = torch.empty(x.shape[0], len(CLASSES), device=x.device, dtype=mean.dtype)
        out[:, FAKE], out[:, 1 - FAKE] = mean / 2, -mean / 2
        return out


def build_ensemble(meta: dict[str, Any]) -> EnsembleModel:
    """An EnsembleModel with random member weights, shaped as a checkpoint's metadata describes
    (its `members`: model and image size of each), ready for load_state_dict."""
    members = meta.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError("an ensemble checkpoint's JSON must list its members (model and image_size of each)")
    return EnsembleModel([build_model(m["model"]) for m in members], [m["image_size"] for m in members],
                         [1.0] * len(members), meta.get("combine", "log_odds"))

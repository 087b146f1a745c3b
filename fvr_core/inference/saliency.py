"""Grad-CAM heatmaps: which part of a face made a model say "fake" (or "real").

Layout: images are (3, H, W) uint8 arrays, channel first, as fvr_core.data.images.prepare_image
returns them; heatmaps are (H, W) float32 arrays in [0, 1], the size of the image.

Three choices keep the maps from being silently wrong:

- The score explained is the class's log-odds, log p/(1-p) = z_c - logsumexp(other logits), not
  its raw logit: the softmax ignores whatever raises every logit alike, so a raw-logit map can
  light up regions that change no prediction. With two classes the "real" map is the negative
  part of the "fake" map.
- captum hooks a private copy of the model's modules that shares its weights (`_private_shell`),
  never the caller's model. The dashboard shares one cached model between sessions: a hook on it
  would fire in other threads' forward passes too, and captum's hook saves whatever tensor passes
  through it, so a concurrent prediction or saliency call could hand this call another image's
  activations. A lock around attribution would not help, as prediction threads never take it.
  The copy also runs in eval mode whatever the caller's mode, so batch norm neither uses one
  image's statistics nor updates the shared running statistics.
- A map with no positive evidence (the class's gradient is negative wherever the layer is
  active) is all zeros with `empty` set, never stretched to full scale from rounding noise.

Importing this module does not import torch (the dashboard's first page stays torch-free): the
functions that need torch and captum import them.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fvr_core.settings import CLASSES, FAKE
from fvr_core.models.registry import get_spec
from fvr_core.models.registry import has_saliency

if TYPE_CHECKING:
    import torch
    from torch import nn

# a map whose positive peak is below this fraction of its largest magnitude is empty: normalising
# it would blow float noise up to a full-scale heatmap
EMPTY_FRACTION = 1e-3
# a normalised map whose every pixel is within this of its peak is (nearly) uniform: it singles out no
# region, and drawn it is a red wash over the whole face (the small CNN's last block at 64 px)
UNIFORM_SPREAD = 0.25


@dataclass(frozen=True)
class SaliencyMap:
    """A Grad-CAM heatmap and what it explains."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1]; all zeros when empty
    target: int  # class index explained (settings.CLASSES)
    layer: str  # module the map was taken on
    peak: float  # largest positive Grad-CAM value before normalising (log-odds units); 0.0 when empty
    empty: bool  # True: no region raised this class's score
    uniform: bool = False  # True: every region raised it alike (heatmap all zeros): the map points at no region

    @property
    def note(self) -> str:
        name = CLASSES[self.target] if 0 <= self.target < len(CLASSES) else str(self.target)
        if self.empty:
            return (f"no region raised the model's '{name}' score: the Grad-CAM map is empty "
                    f"(not a blank heatmap), so this map shows nothing about '{name}'")
        if self.uniform:
            return (f"the Grad-CAM map is (nearly) uniform: every region raised the model's '{name}' score alike (its layer "
                    f"{self.layer} is only a cell or two wide at this image size), so it points at no region")
        return f"regions that raised the model's '{name}' score (Grad-CAM on {self.layer})"


def gradcam(model: nn.Module, image_uint8: np.ndarray, target: int, layer_name: str) -> np.ndarray:
    """Grad-CAM of `target`'s log-odds on the module `layer_name` of `model`.

    image_uint8: (3, H, W) uint8. Returns (H, W) float32 in [0, 1]: its maximum is exactly 1.0,
    or the map is all zeros when no region raised the class's score (saliency_for says so with
    a flag). Safe under torch.inference_mode / no_grad, on channels-last models, and on a model
    other threads use at the same time; the model is left exactly as it was.
    """
    heatmap, _ = _gradcam(model, image_uint8, target, layer_name)
    return heatmap


def saliency_for(model: nn.Module, model_name: str, image_uint8: np.ndarray, target: int = FAKE) -> SaliencyMap:
    """Grad-CAM on the layer the registry names for `model_name` (models.ModelSpec.saliency_layer)."""
    if not isinstance(target, (int, np.integer)) or not 0 <= target < len(CLASSES):
        raise ValueError(f"target must be a class index 0..{len(CLASSES) - 1} ({', '.join(CLASSES)}), got {target!r}")

    if not has_saliency(model_name):
        raise ValueError(f"{model_name} has no spatial layer for Grad-CAM to explain (a classical detector or an "
                         "ensemble): there is no saliency map for it")
    layer = get_spec(model_name).saliency_layer
    heatmap, peak = _gradcam(model, image_uint8, int(target), layer)
    uniform = peak > 0.0 and float(heatmap.min()) >= 1.0 - UNIFORM_SPREAD
    if uniform:  # normalised, a flat map is a full-scale wash over the whole face: show none
        heatmap = np.zeros_like(heatmap)
    return SaliencyMap(heatmap, int(target), layer, peak, empty=peak == 0.0, uniform=uniform)


def overlay(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the heatmap blended over it in the turbo colormap (blue cold, red hot).

    An all-zero (empty) map returns the image untinted: a uniform blue wash would look like a
    verdict. Check SaliencyMap.empty / .note to tell the user why there is no colour.
    """
    rgb = _check_image(image_uint8).transpose(1, 2, 0).astype(np.float32)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap shape {heat.shape} does not match the image's {rgb.shape[:2]}")
    if not np.isfinite(heat).all():
        raise ValueError("heatmap has NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if not heat.any():
        return Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8)), "RGB")
    blended = (1.0 - alpha) * rgb + alpha * 255.0 * turbo(heat)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


def turbo(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> RGB in [0, 1], shape (..., 3)."""
    from matplotlib import colormaps  # imported on first use: pages that draw no heatmap start without matplotlib

    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.asarray(colormaps["turbo"](v))[..., :3].astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] != 3:
        hint = " (for an (H, W, 3) array pass arr.transpose(2, 0, 1))" if arr.ndim == 3 and arr.shape[-1] == 3 else ""
        raise ValueError(f"image must be a (3, H, W) uint8 array as fvr_core.data.images.prepare_image returns, "
                         f"got shape {arr.shape} dtype {arr.dtype}{hint}")
    return arr


def _gradcam(model: nn.Module, image_uint8: np.ndarray, target: int, layer_name: str) -> tuple[np.ndarray, float]:
    """(heatmap, peak): the normalised map and its positive peak before normalising (0.0: empty)."""
    import torch  # torch loads on first use (start-up speed)
    from captum.attr import LayerAttribution, LayerGradCam  # captum loads on first use (start-up speed)

    from fvr_core.data.augment import normalize  # loads torch: here, not when the module loads (start-up speed)

    chw = _check_image(image_uint8)
    # autograd needs grad mode and normal (not inference-mode) tensors, whatever the caller is in;
    # the input and the copy's modules are made inside, so none of them is an inference tensor
    with torch.inference_mode(False), torch.enable_grad():
        shell = _private_shell(model)
        try:
            layer = shell.get_submodule(layer_name)
        except AttributeError:
            raise ValueError(f"the model has no module named {layer_name!r}") from None
        x = normalize(torch.tensor(chw, device=_device_of(model)).unsqueeze(0))
        cam = LayerGradCam(lambda inputs: _log_odds(shell(inputs)), layer).attribute(x, target=int(target))
        if cam.dim() != 4:
            raise ValueError(f"layer {layer_name!r} has no spatial feature map (its Grad-CAM has shape {tuple(cam.shape)})")
        cam = LayerAttribution.interpolate(cam.detach().float(), tuple(chw.shape[1:]), "bilinear")
        cam_np = cam[0, 0].cpu().numpy()
    return _normalise(cam_np)


def _normalise(cam: np.ndarray) -> tuple[np.ndarray, float]:
    if not np.isfinite(cam).all():
        raise ValueError("Grad-CAM is not finite: the model's output or its gradients contain NaN or infinity")
    positive = np.maximum(cam, 0.0)
    peak = float(positive.max())
    if peak == 0.0 or peak <= EMPTY_FRACTION * float(np.abs(cam).max()):
        return np.zeros(cam.shape, dtype=np.float32), 0.0
    return (positive / peak).astype(np.float32), peak


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -> (B, K) log-odds of each class: z_c - logsumexp of the other classes' z."""
    import torch  # torch loads on first use (start-up speed)

    k = logits.shape[1]
    own = torch.eye(k, dtype=torch.bool, device=logits.device)
    others = logits.unsqueeze(1).expand(-1, k, -1).masked_fill(own, float("-inf"))
    return logits - torch.logsumexp(others, dim=2)


def _private_shell(model: nn.Module) -> nn.Module:
    """A copy of the model's module tree sharing its parameters and buffers (no weights copied):
    captum's hooks go on the copy, invisible to other threads, and eval() on it leaves the
    caller's mode alone. Weights made under inference_mode cannot be saved for backward, so
    those alone are cloned."""
    import torch  # torch loads on first use (start-up speed)

    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_inference():
            clone = tensor.clone()
            if isinstance(tensor, torch.nn.Parameter):
                clone = torch.nn.Parameter(clone, tensor.requires_grad)
            memo[id(tensor)] = clone
        else:
            memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo).eval()


def _device_of(model: nn.Module) -> torch.device:
    import torch  # torch loads on first use (start-up speed)

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")

"""Batch augmentation on the training device: whole uint8 batches in, normalised float batches out.

No per-image Python work: every op draws its random numbers for the whole batch at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvr_core.data.augment_levels import AUGMENTATIONS
from fvr_core.settings import IMAGENET_MEAN, IMAGENET_STD


def _standardize_scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """float (B,3,H,W) with values in [0, scale] -> normalised with ImageNet statistics, in place:
    one multiply and one add, where a subtract and a divide into new buffers took four passes."""
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.mul_(1.0 / (scale * std)).add_(-mean / std)


def normalize(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float32 normalised with ImageNet statistics."""
    return _standardize_scaled(batch_uint8.float(), 255.0)


def _per_image(mask_shape: int, probability: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(mask_shape, generator=generator, device=device) < probability


def _jpeg(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF  # torchvision loads on first use (start-up speed)

    chosen = _per_image(x.shape[0], probability, generator, x.device)
    if not chosen.any():
        return x
    quality = int(torch.randint(50, 96, (1,), generator=generator, device=x.device))
    source = x[chosen] if x.device.type == "cpu" else x[chosen].cpu()
    x = x.clone()
    x[chosen] = TF.jpeg(source.contiguous(), quality).to(x.device)
    return x


def _downscale(x: torch.Tensor, probability: float, generator: torch.Generator, min_scale: float = 0.5) -> torch.Tensor:
    """Shrink the chosen uint8 images by one factor in [min_scale, 1) and enlarge them back, as a
    site's thumbnailer and a viewer do (antialiased bilinear down, bicubic up)."""
    chosen = _per_image(x.shape[0], probability, generator, x.device)
    if not chosen.any():
        return x
    scale = min_scale + (1.0 - min_scale) * float(torch.rand(1, generator=generator, device=x.device))
    height, width = x.shape[-2:]
    small = F.interpolate(x[chosen].float(), size=(max(1, round(height * scale)), max(1, round(width * scale))),
                          mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    x = x.clone()
    x[chosen] = back.clamp_(0.0, 255.0).round_().to(x.dtype)  # bicubic overshoots at edges
    return x


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A `size` x `size` window of each image at its own random place, pixels untouched (no
    resizing: the finest detail, where generators leave traces, stays as it was)."""
    b, _, h, w = x.shape
    if size >= min(h, w):
        return x
    top = torch.randint(0, h - size + 1, (b, 1, 1), generator=generator, device=x.device)
    left = torch.randint(0, w - size + 1, (b, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(size, device=x.device).view(1, size, 1) + top
    cols = torch.arange(size, device=x.device).view(1, 1, size) + left
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half the images (chosen at random); the caller's tensor is left as it was."""
    chosen = _per_image(x.shape[0], 0.5, generator, x.device)
    out = x.clone()
    out[chosen] = x[chosen].flip(-1)
    return out


def _crop_pad(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `fraction` of its side, filling with reflected pixels."""
    b, _, h, w = x.shape
    pad = max(1, int(round(min(h, w) * fraction)))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _colour(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    b = x.shape[0]

    def factor() -> torch.Tensor:
        return 1.0 + (torch.rand(b, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * strength

    x = x * factor()
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - grey) * factor() + grey
    lum = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - lum) * factor() + lum
    return x.clamp_(0.0, 1.0)


def _blur(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    chosen = _per_image(x.shape[0], probability, generator, x.device)
    if not chosen.any():
        return x
    sigma = 0.3 + 1.2 * float(torch.rand(1, generator=generator, device=x.device))
    radius = max(1, int(round(2 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    blurred = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return torch.where(chosen.view(-1, 1, 1, 1), blurred, x)


class BatchAugmenter:
    """Applies an augmentation level to uint8 batches; returns normalised float32 batches."""

    def __init__(self, level: str, seed: int = 0, device: str | torch.device = "cpu"):
        if level not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {level!r}: choose one of {', '.join(AUGMENTATIONS)}")
        self.spec = AUGMENTATIONS[level]
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        spec, gen = self.spec, self.generator
        if spec.downscale:  # before the JPEG: a shared photo is resized, then saved again
            batch = _downscale(batch, spec.downscale, gen)
        if spec.jpeg:
            batch = _jpeg(batch, spec.jpeg, gen)
        if spec.flip:  # on the uint8 batch: a quarter of the bytes a float flip moves
            batch = _flip(batch, gen)
        if not (spec.crop_pad or spec.colour or spec.blur):
            return normalize(batch)
        x = batch.float().div_(255.0)
        if spec.crop_pad:
            x = _crop_pad(x, spec.crop_pad, gen)
        if spec.colour:
            x = _colour(x, spec.colour, gen)
        if spec.blur:
            x = _blur(x, spec.blur, gen)
        return _standardize_scaled(x, 1.0)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

"""The augmentation levels a page, the CLI or a config may choose (no torch here: configs and
tables load without it; fvr_core.data.augment applies them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentSpec:
    flip: bool = False
    crop_pad: float = 0.0  # largest shift, as a fraction of the image side
    colour: float = 0.0  # brightness/contrast/saturation jitter strength
    jpeg: float = 0.0  # probability per image of JPEG re-compression (quality 50-95)
    blur: float = 0.0  # probability per image of a Gaussian blur (sigma 0.3-1.5 px)
    downscale: float = 0.0  # probability per image of a shrink (to 50-100 %) and enlargement back
    description: str = ""


# one place names every augmentation level a page, the CLI or a config may choose
AUGMENTATIONS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(description="no augmentation (the original recipe)"),
    "light": AugmentSpec(flip=True, description="horizontal flip"),
    "standard": AugmentSpec(flip=True, crop_pad=0.06, description="flip and random crop with padding"),
    "strong": AugmentSpec(flip=True, crop_pad=0.08, colour=0.2, description="flip, crop/pad and colour jitter"),
    # the generator's traces are in the finest texture: only moves that copy pixels exactly (a mirror,
    # whole-pixel shifts with reflected borders), nothing that resamples, blurs or re-encodes
    "residual": AugmentSpec(
        flip=True, crop_pad=0.1,
        description="flip and random whole-pixel crops: every pixel is copied unchanged (no blur, JPEG, colour or resizing)",
    ),
    "robust": AugmentSpec(
        flip=True, crop_pad=0.06, jpeg=0.5, blur=0.3, downscale=0.3,
        description="flip, crop/pad, JPEG re-compression, downscaling and blur (for photos that were shared)",
    ),
}

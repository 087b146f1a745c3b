"""How a run's verdicts hold up when a photo is re-saved as JPEG, shrunk or blurred, as photos
are on their way through social media and chat apps.

The corruptions are the real operations, done with Pillow on uint8 images, and deterministic
(the same input gives the same output every time). They are applied to the images the model sees,
i.e. after the data set's resize to the checkpoint's image size S: at the data set's own size
(300 px for the shared faces) that is the photo itself; for a model trained at a smaller S the
corruption is harsher than the same one done to the full-size photo before the resize.

numpy and Pillow only at import; evaluate_robustness imports torch when it runs a model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from fvr_core.inference.calibration import DEFAULT_UNSURE_BAND, calibrated_prob_fake, load_calibration, verdicts
from fvr_core import settings
from fvr_core.metrics import classification_metrics
from fvr_core.files import atomic_write_json, now_iso
from fvr_core.files import read_json
from fvr_core.inference.calibration import run_split_logits

ROBUSTNESS_FILE = "robustness.json"


@dataclass(frozen=True)
class Corruption:
    name: str
    label: str  # for tables and charts
    apply: Callable[[Image.Image], Image.Image]  # RGB image -> RGB image of the same size


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        # 4:2:0 chroma subsampling, what phones and social sites write; no optimisation passes
        # (they change the file size, not the pixels)
        img.save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")

    return apply


def _downscale(factor: float) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        width, height = img.size
        small = (max(1, round(width * factor)), max(1, round(height * factor)))
        # Lanczos down (an antialiased resize, as a site's thumbnailer does), bicubic back up (as
        # a viewer or our own loader enlarges a small photo): the detail above the small image's
        # Nyquist frequency is gone for good
        return img.resize(small, Image.Resampling.LANCZOS).resize((width, height), Image.Resampling.BICUBIC)

    return apply


def _blur(radius: float) -> Callable[[Image.Image], Image.Image]:
    # Pillow's GaussianBlur radius is the standard deviation of the Gaussian, in pixels
    return lambda img: img.filter(ImageFilter.GaussianBlur(radius))


# one place names every corruption the pages, the CLI and the tests may choose
CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("clean", "original", lambda img: img),
        Corruption("jpeg90", "JPEG quality 90", _jpeg(90)),
        Corruption("jpeg70", "JPEG quality 70", _jpeg(70)),
        Corruption("jpeg50", "JPEG quality 50", _jpeg(50)),
        Corruption("downscale0.5", "halved and enlarged back", _downscale(0.5)),
        Corruption("blur1", "Gaussian blur, sigma 1 px", _blur(1.0)),
    )
}


def apply_corruption(images: np.ndarray, name: str) -> np.ndarray:
    """A corrupted copy of uint8 images, channel first: (N, 3, S, S) or one (3, S, S)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: choose one of {', '.join(CORRUPTIONS)}")
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, 3, H, W) or (3, H, W); got {images.dtype} {images.shape}")
    corruption = CORRUPTIONS[name]
    out = np.empty_like(batch)
    for i, chw in enumerate(batch):
        img = Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0)))
        out[i] = np.asarray(corruption.apply(img), dtype=np.uint8).transpose(2, 0, 1)
    return out[0] if single else out


@settings.in_prediction_slot
def evaluate_robustness(
    run,
    data=None,
    which: str = "best",
    split: str = "test",
    device: str = "cpu",
    corruptions: Sequence[str] | None = None,
    temperature: float | None = None,
    unsure_band: tuple[float, float] = DEFAULT_UNSURE_BAND,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of a run's checkpoint on one split under each corruption ("clean" is always
    included, first, as the reference), written to the run folder as robustness.json.

    Each row: corruption, label, n, accuracy, balanced_accuracy, roc_auc (threshold 0.5, as the
    run's test metrics), mean_abs_prob_change (mean |p - p_clean| of the probability of fake),
    flip_rate (share of images whose fake/real call at 0.5 differs from the clean one) and
    verdict_change_rate (share whose fake/real/unsure verdict differs). Probabilities use
    `temperature`; None takes the run's calibration.json when it has one, else 1. `on_progress`
    is called before each pass with (passes done, passes in all, the pass's label).
    """
    from fvr_core.inference.evaluation import load_run_model_and_data, run_split_indices  # loads torch: here, not when the module loads (start-up speed)

    names = list(dict.fromkeys(["clean", *(corruptions or CORRUPTIONS)]))
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}: choose from {', '.join(CORRUPTIONS)}")
    if temperature is None:
        calibration = load_calibration(run)
        temperature = calibration.temperature if calibration else 1.0
    model, image_set = load_run_model_and_data(run, data, which, device)
    indices = run_split_indices(run, image_set, split)
    labels = image_set.labels[indices]
    clean_images = np.asarray(image_set.images[indices])  # one read from the memory-mapped cache
    rows, clean = [], None
    for done, name in enumerate(names):
        if on_progress is not None:  # (passes done, passes in all, the one starting now)
            on_progress(done, len(names), CORRUPTIONS[name].label)
        images = clean_images if name == "clean" else apply_corruption(clean_images, name)
        probs = calibrated_prob_fake(run_split_logits(model, image_set, indices, device, images=images), temperature)
        if clean is None:
            clean = probs
        metrics = classification_metrics(labels, probs)
        rows.append({
            "corruption": name, "label": CORRUPTIONS[name].label, "n": len(labels),
            "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"], "roc_auc": metrics["roc_auc"],
            "mean_abs_prob_change": float(np.abs(probs - clean).mean()) if len(labels) else None,
            "flip_rate": float(np.mean((probs >= 0.5) != (clean >= 0.5))) if len(labels) else None,
            "verdict_change_rate": (float(np.mean(np.array(verdicts(probs, unsure_band)) != np.array(verdicts(clean, unsure_band))))
                                    if len(labels) else None),
        })
    atomic_write_json(run.path / ROBUSTNESS_FILE, {
        "run": run.id, "split": split, "checkpoint": which, "data": str(image_set.root),
        "image_size": image_set.image_size, "temperature": temperature, "unsure_band": list(unsure_band),
        "created": now_iso(), "rows": rows,
    })
    return rows


def robustness_seconds(run, corruptions: Sequence[str] | None = None) -> float | None:
    """About how long evaluate_robustness takes for `run` on this machine: its test split once per
    corruption (and clean), each pass as long as the run's own evaluation of an image took (from
    its finished training); None when the run cannot tell (still training, resumed, or shipped)."""
    per_image = run.eval_seconds_per_image()
    if per_image is None:
        return None
    passes = len(dict.fromkeys(["clean", *(corruptions or CORRUPTIONS)]))
    return per_image * len(run.split().get("test", [])) * passes


def load_robustness(run) -> dict[str, Any] | None:
    """The run's robustness.json (run, split, checkpoint, temperature, ..., and the table under
    "rows"), or None when it has none."""
    report = read_json(run.path / ROBUSTNESS_FILE)
    return report if isinstance(report, dict) and isinstance(report.get("rows"), list) else None

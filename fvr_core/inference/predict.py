"""Predicting whether photos are fake with a trained run's checkpoint.

Each photo is decoded as in training (EXIF rotation, RGB), its faces are found and cropped with
the margin the training images have (fvr_core.inference.faces), and every face is judged on its own; a
photo with no face found is judged whole, and the result says so. A crop is scaled and
centre-cropped to the model's input, never stretched. The probability of "fake" is calibrated
with the temperature the run fitted on its validation split, and a verdict inside the unsure
band is "unsure" instead of a coin flip. A file that cannot be read gets an error in its result,
never an exception for the whole batch.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import cachetools

import numpy as np
import torch
from PIL import Image, ImageDraw

from fvr_core.inference.calibration import load_calibration, verdict
from fvr_core.runs.checkpoint import check_temperature, load_checkpoint
from fvr_core.inference.evaluation import predict_logits
from fvr_core.data.images import ImageError, ImageSource, load_rgb, prepare_image
from fvr_core.runs.store import Run
from fvr_core import settings
from fvr_core.settings import FAKE, NOT_JUDGED, unsure_band as default_unsure_band
from fvr_core.inference.faces import face_crops
from fvr_core.inference.saliency import overlay
from fvr_core.inference.saliency import saliency_for

MAX_FACES = 4  # faces judged per photo (largest first): a crowd photo should not stall the page
NO_FACE_NOT_JUDGED = "no face found: not judged (judge the whole image to get an answer anyway)"
# what a prepared photo keeps once its faces are cut out: the page shows the photo at most this wide,
# and a model's input (at most 512 px) comes from a face crop of at most this side
DISPLAY_SIDE = 1024


@dataclass
class Subject:
    """What a model looks at in one photo: a face crop, or the whole photo when none was found."""

    image: Image.Image
    face_found: bool | None  # None: face cropping was off
    index: int = 0  # 0 is the largest face
    face_count: int = 0
    crop_box: tuple[int, int, int, int] | None = None  # in the photo's pixels (after EXIF rotation)

    @property
    def description(self) -> str:
        if self.face_found is None:
            return "whole image (face crop off)"
        if not self.face_found:
            return "no face found: whole image"
        return "face" if self.face_count == 1 else f"face {self.index + 1} of {self.face_count}"


@dataclass
class PreparedImage:
    """A photo decoded and cut into the subjects the models judge (once, for every model)."""

    name: str
    original: Image.Image | None = None
    subjects: list[Subject] = field(default_factory=list)
    error: str | None = None

    @property
    def nbytes(self) -> int:
        """Memory its pictures take once decoded (RGB bytes)."""
        pictures = [self.original, *(s.image for s in self.subjects)]
        return sum(p.width * p.height * len(p.getbands()) for p in pictures if p is not None) + 1024


def _shrunk(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    scale = min(1.0, side / max(image.size))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0), scale


def for_display(photo: PreparedImage, side: int = DISPLAY_SIDE) -> PreparedImage:
    """The photo and its subjects scaled down to at most `side` pixels (crop boxes scaled with the
    photo): what the page shows and predicts from, without the full decoded original (a 60 MP
    photo is 180 MB decoded, its display copy 3 MB)."""
    if photo.original is None:
        return photo
    original, scale = _shrunk(photo.original, side)
    subjects = [replace(s, image=_shrunk(s.image, side)[0],
                        crop_box=tuple(round(v * scale) for v in s.crop_box) if s.crop_box else None) for s in photo.subjects]
    return replace(photo, original=original, subjects=subjects)


class PhotoCache:
    """Prepared photos by content, for every session of a process, bounded in bytes (least
    recently used out first): visitors re-running a page do not decode and search for faces
    again, and a few visitors with large photos cannot fill the server's memory."""

    def __init__(self, max_bytes: int):
        self._cache = cachetools.LRUCache(maxsize=max(1, max_bytes), getsizeof=lambda photo: photo.nbytes)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return int(self._cache.currsize)

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def prepared(self, data: bytes, name: str, face_crop: bool = True) -> PreparedImage:
        """The photo in `data`, decoded, its faces cut out and kept at display size: from the cache,
        or prepared now (in a prediction slot: face detection is a few at a time for all sessions)."""
        key = (hashlib.sha256(data).hexdigest(), name, face_crop)
        with self._lock:
            found = self._cache.get(key)
        if found is not None:
            return found
        with settings.prediction_slot():
            photo = for_display(prepare_photo(data, name, face_crop))
        with self._lock:
            try:
                self._cache[key] = photo
            except ValueError:  # larger than the whole cache: used once, not kept
                pass
        return photo


_photo_cache: PhotoCache | None = None
_photo_cache_lock = threading.Lock()


def photo_cache() -> PhotoCache:
    """This process's PhotoCache, of settings.photo_cache_mb() MB."""
    global _photo_cache
    with _photo_cache_lock:
        if _photo_cache is None:
            _photo_cache = PhotoCache(settings.photo_cache_mb() * 1024**2)
        return _photo_cache


def prepare_photo(source: ImageSource | Image.Image, name: str, face_crop: bool = True, max_faces: int = MAX_FACES) -> PreparedImage:
    try:
        original = source if isinstance(source, Image.Image) else load_rgb(source)
    except ImageError as exc:
        return PreparedImage(name, error=str(exc))
    if not face_crop:
        return PreparedImage(name, original, [Subject(original, None)])

    crops = face_crops(original, max_faces=max_faces)
    found = sum(c.found for c in crops)
    subjects = [Subject(c.image, c.found, i, found, tuple(c.crop_box)) for i, c in enumerate(crops)]
    return PreparedImage(name, original, subjects)


def prepare_photos(sources: Sequence[ImageSource], names: Sequence[str] | None = None, face_crop: bool = True,
                   max_faces: int = MAX_FACES) -> list[PreparedImage]:
    names = list(names) if names is not None else default_names(sources)
    return [prepare_photo(s, n, face_crop, max_faces) for s, n in zip(sources, names)]


def default_names(sources: Sequence[ImageSource]) -> list[str]:
    return [str(s) if isinstance(s, (str, Path)) else f"image {i + 1}" for i, s in enumerate(sources)]


@dataclass
class Prediction:
    source: str
    prob_fake: float | None = None  # calibrated
    prob_fake_uncalibrated: float | None = None
    verdict: str | None = None  # fake, real or unsure
    face: str = ""
    face_index: int = 0
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.verdict

    def to_dict(self) -> dict:
        return {"source": self.source, "face": self.face, "prob_fake": self.prob_fake,
                "prob_fake_uncalibrated": self.prob_fake_uncalibrated, "verdict": self.verdict, "error": self.error}


class Predictor:
    """A loaded checkpoint ready to judge photos. Thread-safe for prediction: one instance is
    shared by every session of the dashboard (the per-call settings are arguments)."""

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "cpu", temperature: float | None = None):
        # channels-last convolutions: 25 -> 13 ms for the cnn, 86 -> 76 ms for resnet18 on one
        # 300 px image on a 2-core CPU (benchmarks/train_speed.py measures the whole prediction)
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self.meta = meta
        self.model_name = str(meta.get("model", ""))
        self.image_size = int(meta["image_size"])
        self.device = device
        self.temperature = float(temperature if temperature is not None else meta.get("temperature", 1.0))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "Predictor":
        model, meta = load_checkpoint(path, device=device)
        return cls(model, meta, device)

    @classmethod
    def from_run(cls, run: Run, which: str = "best", device: str = "cpu") -> "Predictor":
        model, meta = load_checkpoint(run.checkpoint(which), device=device)
        calibration = load_calibration(run) if which == "best" else None
        temperature = check_temperature(calibration.temperature, run.path / "calibration.json") if calibration else None
        return cls(model, meta, device, temperature)

    def model_input(self, image: Image.Image) -> np.ndarray:
        """The (3, S, S) uint8 array the model sees for a subject."""
        return prepare_image(image, self.image_size)

    def logits(self, arrays: np.ndarray, tta: bool = False, batch_size: int = 32) -> torch.Tensor:
        logits = predict_logits(self.model, arrays, batch_size=batch_size, device=self.device)
        if tta:  # the mirror image is as much a face as the original: average the two opinions
            flipped = np.ascontiguousarray(arrays[..., ::-1])
            logits = (logits + predict_logits(self.model, flipped, batch_size=batch_size, device=self.device)) / 2
        return logits

    def probabilities(self, arrays: np.ndarray, tta: bool = False, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated, uncalibrated) probabilities of fake for (N, 3, S, S) uint8 arrays."""
        logits = self.logits(arrays, tta, batch_size)
        raw = torch.softmax(logits, dim=1)[:, FAKE].numpy()
        calibrated = torch.softmax(logits / self.temperature, dim=1)[:, FAKE].numpy()
        return calibrated, raw

    def predict_prepared(self, prepared: Sequence[PreparedImage], tta: bool = False,
                         unsure_band: tuple[float, float] | None = None, batch_size: int = 32,
                         judge_without_face: bool = False) -> list[Prediction]:
        """One prediction per subject of every photo (an error row for a photo that failed). A photo
        in which face search found no face is "not judged" (no probability) unless
        `judge_without_face`: then the whole photo is judged, and its row says so."""
        results, arrays, judged = [], [], []
        for photo in prepared:
            if photo.error:
                results.append(Prediction(photo.name, error=photo.error))
                continue
            for subject in photo.subjects:
                if subject.face_found is False and not judge_without_face:
                    results.append(Prediction(photo.name, verdict=NOT_JUDGED, face=NO_FACE_NOT_JUDGED, face_index=subject.index))
                    continue
                results.append(Prediction(photo.name, face=subject.description, face_index=subject.index))
                judged.append(results[-1])
                arrays.append(self.model_input(subject.image))
        if arrays:
            calibrated, raw = self.probabilities(np.stack(arrays), tta, batch_size)
            for pred, p, r in zip(judged, calibrated, raw):
                pred.prob_fake, pred.prob_fake_uncalibrated = float(p), float(r)
                pred.verdict = verdict(pred.prob_fake, unsure_band or default_unsure_band())
        return results

    def predict(self, sources: Sequence[ImageSource], names: Iterable[str] | None = None, face_crop: bool = True,
                tta: bool = False, unsure_band: tuple[float, float] | None = None, batch_size: int = 32,
                judge_without_face: bool = False) -> list[Prediction]:
        """Judge photos: one Prediction per face found (per photo when face_crop is off); a photo
        with no face found is "not judged" unless `judge_without_face`."""
        prepared = prepare_photos(sources, list(names) if names is not None else None, face_crop)
        return self.predict_prepared(prepared, tta, unsure_band, batch_size, judge_without_face)

    def predict_one(self, source: ImageSource, face_crop: bool = True, tta: bool = False,
                    judge_without_face: bool = False) -> Prediction:
        """The photo's largest face (or the whole photo): the verdict a single-photo caller wants."""
        return self.predict([source], face_crop=face_crop, tta=tta, judge_without_face=judge_without_face)[0]

    def saliency(self, image: Image.Image, target: int = FAKE):
        """Grad-CAM of `target` over a subject as the model sees it (a fvr_core.inference.saliency.SaliencyMap:
        heatmap (S, S) in [0, 1], and a note when the map is empty)."""
        return saliency_for(self.model, self.model_name, self.model_input(image), target=target)

    def saliency_picture(self, image: Image.Image, target: int = FAKE, size: int = 256):
        """(picture, SaliencyMap): the map blended over the subject at `size` px for display (a
        map at a 32 px model input would otherwise be shown as 32 blurry pixels)."""
        found = self.saliency(image, target)
        heat = Image.fromarray(found.heatmap).resize((size, size), Image.Resampling.BILINEAR)
        picture = overlay(prepare_image(image, size), np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0))
        return picture, found


def predict_with_each(predictors: dict[str, Predictor], prepared: Sequence[PreparedImage], tta: bool = False,
                      unsure_band: tuple[float, float] | None = None, judge_without_face: bool = False) -> list[dict]:
    """Every subject of every photo through every predictor: one row per (photo, face, model), in
    photo order (what the Predict page shows and exports). Photos without a face are "not judged"
    unless `judge_without_face`. In demo mode at most the demo's photo count
    (settings.AppLimits.photo_cap), whoever calls."""
    prepared = settings.enforced_limits().photo_cap(prepared)
    results = {label: p.predict_prepared(prepared, tta, unsure_band, judge_without_face=judge_without_face)
               for label, p in predictors.items()}
    rows = []
    for position in range(len(next(iter(results.values()), []))):  # every predictor sees the same subjects
        for label, preds in results.items():
            pred = preds[position]
            rows.append({"image": pred.source, "face": pred.face, "face_index": pred.face_index, "model": label,
                         "prob_fake": pred.prob_fake, "prob_fake_uncalibrated": pred.prob_fake_uncalibrated,
                         "verdict": pred.verdict, "error": pred.error})
    return rows


def annotate(photo: PreparedImage, width: int = 3) -> Image.Image | None:
    """The photo with a numbered box around each face crop the models judged."""
    if photo.original is None:
        return None

    img = photo.original.copy()
    draw = ImageDraw.Draw(img)
    line = max(width, round(min(img.size) / 150))
    for subject in photo.subjects:
        if subject.face_found and subject.crop_box:
            draw.rectangle(subject.crop_box, outline=(255, 196, 0), width=line)
            draw.text((subject.crop_box[0] + 2 * line, subject.crop_box[1] + 2 * line), str(subject.index + 1), fill=(255, 196, 0))
    return img

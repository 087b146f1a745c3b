"""Find faces in an outside photo and crop each one the way the training images are framed.

The training images (FFHQ photos and StyleGAN2 fakes, both FFHQ-aligned) are tight square crops:
the whole face fills the frame, centred between the eyes and the mouth. A model trained on them
judges an outside photo (a portrait of any size, a group photo...) fairly only once the face in it
is cut out the same way, so predictions crop every photo with `face_crops` first.

The detector is facenet-pytorch's MTCNN: its weights ship inside the wheel, so it works offline.
torch and facenet_pytorch are imported inside functions only: importing this module stays cheap
(the dashboard's first page must not import torch).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from fvr_core.data.images import ImageError, ImageSource, to_rgb, load_rgb

__all__ = [
    "FACE_MARGIN", "FaceBox", "FaceCrop", "FaceDetectorError", "ImageError",
    "crop_box", "cut_square", "detect_faces", "face_crops",
]

# ---- how the training images frame a face (measured, not guessed) -----------------------------
# MTCNN on all 800 images of tpdne-vs-ffhq-300 (200 fake, 600 real: 800/800 faces found), each
# pasted off-centre into a 640x560 grey canvas so the detector sees the face as it sees one in a
# wider outside photo (on the bare 300x300 images most boxes run past the image edge).
#     PYTHONPATH=. python benchmarks/face_detection.py   (torch 2.14.1 CPU, 1 thread, 122 s)
# median (10%-90%), fake | real | all:
#   image side / box's larger side (its height in 100% of images):
#       1.053 (0.990-1.131) | 1.069 (0.991-1.194) | 1.066 (0.991-1.178)
#   box centre below the image centre, in box sides:
#       0.063 (0.040-0.090) | 0.066 (0.034-0.102) | 0.065 (0.036-0.100)
#   image side / max(2.0 * eye distance, 1.8 * eye-to-mouth distance) (FFHQ's own crop rule,
#   from MTCNN's five landmarks; its centre, eye midpoint + 0.1 * eye-to-mouth, is within 1% of the
#   image centre):  1.529 (1.485-1.584) | 1.541 (1.475-1.608) | 1.538 (1.479-1.602)
# The classes agree, so the framing carries no class signal. The check in the same run (crop cut
# from the canvas vs the pasted image): IoU 0.955 (0.890-0.980) with landmarks, 0.865
# (0.751-0.936) with the box only. The landmark rule is the rule FFHQ itself was cropped with and
# is steadier, so it is used whenever the detector gives landmarks (MTCNN always does); the box
# rule is the fallback. The constants below came from a first run on a 900x900 canvas without
# DETECT_PAD (1.071 / 0.066 / 1.536); they are within 0.4% of the figures above.
FACE_MARGIN = 0.07   # crop side = (1 + margin) * face box's larger side: 1.071 measured
FACE_RAISE = 0.066   # crop centre = box centre raised by this many box sides
LANDMARK_SIDE = 1.536  # crop side = this * max(2.0 * eye distance, 1.8 * eye-to-mouth distance)
# -------------------------------------------------------------------------------------------------

MIN_SCORE = 0.9
# MTCNN's pyramid makes detection cost grow with pixel count (a 4000x3000 photo takes ~3 s, 1024x768
# ~0.16 s on one core): detect on a copy whose longer side is at most this, then scale boxes back.
# MTCNN finds faces of 20 px and more, so faces over 2% of the photo's longer side are still found.
DETECT_MAX_SIDE = 1024
MIN_DETECT_SIDE = 20  # MTCNN's smallest face; below this its pyramid is empty and it crashes
# A face that touches the image edge (an already-cropped portrait, a training-like image) gets
# unsteady boxes and landmarks: re-framing the shared 300x300 images gave IoU >= 0.8 with themselves
# for 80% of fakes / 90% of reals bare, 100% / 97.5% once padded by 10% of the longer side with the
# border colour (40 images per class; 25% padding did no better), for ~the same time.
DETECT_PAD = 0.10

Point = tuple[float, float]


class FaceDetectorError(RuntimeError):
    """The face detector itself cannot run (not installed, broken install): not the image's fault."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face, in pixels of the original (EXIF-rotated) image."""

    left: float
    top: float
    right: float
    bottom: float
    score: float
    # left eye, right eye, nose, mouth left, mouth right (as seen in the image), when known
    landmarks: Optional[tuple[Point, Point, Point, Point, Point]] = None

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def side(self) -> float:
        return max(self.width, self.height)

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


@dataclass(frozen=True)
class FaceCrop:
    """One image a model should judge: a face cut out like the training images, or the whole photo.

    found=False means no face was detected and `image` is the whole photo: tell the user, since
    the model then judges a framing it never saw in training.
    """

    image: Image.Image
    box: Optional[FaceBox]
    crop_box: tuple[int, int, int, int]
    found: bool


# ---- detector: loaded once per process and device, on first use -------------------------------
_detectors: dict[str, object] = {}
_detectors_lock = threading.Lock()


def _build_detector(device: str):
    try:
        from facenet_pytorch import MTCNN  # facenet-pytorch loads on first use (start-up speed)
    except ImportError as exc:
        raise FaceDetectorError(
            f"face detection needs facenet-pytorch ({exc}); install it with "
            "`pip install facenet-pytorch==2.5.3` (its weights ship in the wheel, no download)") from exc
    # keep_all: every face, not only the most likely one; eval(): no training-time behaviour
    return MTCNN(keep_all=True, device=device).eval()


def _detector(device: str = "cpu"):
    """The MTCNN for `device`, built by the first caller only (building it takes ~1 s)."""
    detector = _detectors.get(device)
    if detector is None:
        with _detectors_lock:
            detector = _detectors.get(device)
            if detector is None:
                detector = _detectors[device] = _build_detector(device)
    return detector


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    """The mean colour of the image's outer pixels: padding that continues the background."""
    arr = np.asarray(image)
    edges = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(v) for v in edges.mean(axis=0).round())


def _detection_image(image: Image.Image) -> tuple[Image.Image, int]:
    """`image` shrunk to DETECT_MAX_SIDE and padded by DETECT_PAD; returns it and the pad in pixels."""
    width, height = image.size
    scale = min(1.0, DETECT_MAX_SIDE / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    pad = round(DETECT_PAD * max(image.size))
    padded = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), _border_colour(image))
    padded.paste(image, (pad, pad))
    return padded, pad


def detect_faces(image: Image.Image, min_score: float = MIN_SCORE, device: str = "cpu") -> list[FaceBox]:
    """Every face MTCNN finds with at least `min_score`, largest first (pixels of `image`)."""
    image = to_rgb(image)
    if min(image.size) < MIN_DETECT_SIDE:
        return []
    padded, pad = _detection_image(image)
    if min(padded.size) - 2 * pad < MIN_DETECT_SIDE:
        return []
    boxes, scores, points = _detector(device).detect(padded, landmarks=True)
    if boxes is None:
        return []
    # back to `image` pixels: remove the pad, undo the resize per axis (rounding makes them differ)
    sx = image.width / (padded.width - 2 * pad)
    sy = image.height / (padded.height - 2 * pad)

    def back(px: float, py: float) -> Point:
        return float((px - pad) * sx), float((py - pad) * sy)

    faces = []
    for box, score, marks in zip(boxes, scores, points):
        if score is not None and score >= min_score:
            left, top = back(box[0], box[1])
            right, bottom = back(box[2], box[3])
            landmarks = tuple(back(px, py) for px, py in marks) if marks is not None else None
            faces.append(FaceBox(left, top, right, bottom, float(score), landmarks))
    return sorted(faces, key=lambda face: face.area, reverse=True)


# ---- framing ------------------------------------------------------------------------------------
def _face_frame(box: FaceBox, use_landmarks: bool) -> tuple[float, float, float]:
    """(centre x, centre y, box-equivalent side): where the training framing centres and sizes a face."""
    if use_landmarks and box.landmarks is not None:
        left_eye, right_eye, _, mouth_left, mouth_right = (np.asarray(p, dtype=float) for p in box.landmarks)
        eyes = (left_eye + right_eye) / 2
        eye_to_mouth = (mouth_left + mouth_right) / 2 - eyes
        base = max(2.0 * np.linalg.norm(right_eye - left_eye), 1.8 * np.linalg.norm(eye_to_mouth))
        centre = eyes + 0.1 * eye_to_mouth  # FFHQ's crop centre
        # expressed as the face box side it stands for, so `margin` means the same in both rules
        return float(centre[0]), float(centre[1]), LANDMARK_SIDE * base / (1 + FACE_MARGIN)
    side = box.side
    return (box.left + box.right) / 2, (box.top + box.bottom) / 2 - FACE_RAISE * side, side


def _place(centre: float, side: int, limit: int) -> int:
    """Start of a `side`-long span centred on `centre`, shifted to lie inside [0, limit] if it fits."""
    start = int(round(centre - side / 2))
    if side <= limit:
        return min(max(start, 0), limit - side)
    return start  # larger than the image: keep the face centred and let the caller pad


def crop_box(box: FaceBox, image_size: tuple[int, int], margin: float = FACE_MARGIN,
             use_landmarks: bool = True) -> tuple[int, int, int, int]:
    """A square (left, top, right, bottom) framing `box` like the training images frame their face.

    margin: how much larger than the face box the crop is; FACE_MARGIN reproduces the training
    framing. With landmarks the face's size and centre come from the eyes and mouth (steadier than
    the box) and `margin` keeps its meaning. The square is shifted to stay inside the image; when
    it is larger than the image it reaches past the edges (cut_square pads), never stretched.
    """
    if margin <= -1:
        raise ValueError(f"margin must be above -1 (got {margin}); FACE_MARGIN={FACE_MARGIN} matches training")
    cx, cy, face_side = _face_frame(box, use_landmarks)
    side = max(1, int(round(face_side * (1 + margin))))
    width, height = image_size
    left, top = _place(cx, side, width), _place(cy, side, height)
    return left, top, left + side, top + side


def cut_square(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """`image` cut to `box`; parts of the box outside the image are padded with the border colour."""
    left, top, right, bottom = box
    width, height = image.size
    if left >= 0 and top >= 0 and right <= width and bottom <= height:
        return image.crop(box)
    # PIL would pad with black; a dark frame is a strong artefact the model never saw in training
    canvas = Image.new("RGB", (right - left, bottom - top), _border_colour(image))
    canvas.paste(image, (-left, -top))
    return canvas


def face_crops(source: ImageSource | Image.Image, max_faces: int = 4, margin: float = FACE_MARGIN,
               min_score: float = MIN_SCORE, device: str = "cpu") -> list[FaceCrop]:
    """Each face (largest first, at most `max_faces`) cut out like the training images.

    With no face, one crop of the whole image with found=False. Decoding goes through load_rgb
    (EXIF rotation, any colour mode, size limits); unreadable input raises ImageError.
    """
    if max_faces < 1:
        raise ValueError(f"max_faces must be at least 1 (got {max_faces})")
    if isinstance(source, Image.Image):
        # one straight from Image.open still carries its EXIF orientation (a no-op otherwise)
        image = to_rgb(ImageOps.exif_transpose(source))
    else:
        image = load_rgb(source)
    faces = detect_faces(image, min_score=min_score, device=device)[:max_faces]
    if not faces:
        return [FaceCrop(image, None, (0, 0, image.width, image.height), found=False)]
    crops = []
    for face in faces:
        square = crop_box(face, image.size, margin)
        crops.append(FaceCrop(cut_square(image, square), face, square, found=True))
    return crops

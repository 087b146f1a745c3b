"""Face detection on the training images, per class: miss rate, speed, and the framing it measures.

A detector that misses the faces of one class more often than the other's would turn "no face
found" into a class signal, so the found rate is printed per class. The same run measures how the
training images frame their face (the figures behind fvr_core.inference.faces' FACE_MARGIN, FACE_RAISE and
LANDMARK_SIDE) and checks the chosen constants: each image is pasted off-centre into a larger grey
canvas, face_crops cuts it back out, and the crop should coincide with the pasted image (IoU 1,
side ratio 1). The check runs on the images the constants were measured on, so it verifies the
implementation (coordinates, formula, rounding), not how the framing generalises.

    PYTHONPATH=. python benchmarks/face_detection.py [--data PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "tpdne-vs-ffhq-300"
CANVAS = (640, 560)   # grey canvas the image is pasted into for the framing figures and the check
OFFSET = (250, 160)   # off-centre on purpose, so a coordinate mix-up shows


@dataclass
class ClassStats:
    images: int = 0
    found: int = 0             # at least one face on the bare image
    found_canvas: int = 0      # at least one face once pasted into the canvas
    several: int = 0           # more than one face on the bare image (a false detection)
    ms: list = field(default_factory=list)
    box_ratio: list = field(default_factory=list)    # image side / box's larger side
    box_drop: list = field(default_factory=list)     # box centre below image centre, in box sides
    lm_ratio: list = field(default_factory=list)     # image side / max(2 eye dist, 1.8 eye-mouth)
    iou_lm: list = field(default_factory=list)       # crop vs pasted image, landmark framing
    iou_box: list = field(default_factory=list)      # same, box framing (the fallback)
    side_lm: list = field(default_factory=list)      # crop side / image side, landmark framing
    side_box: list = field(default_factory=list)


def _images(data: Path, limit: int | None) -> dict[str, list[Path]]:
    by_class: dict[str, list[Path]] = {}
    with open(data / "data.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            by_class.setdefault(row["label"], []).append(data / row["label"] / f"{row['images_id']}.jpg")
    return {label: paths[:limit] for label, paths in sorted(by_class.items())}


def _iou(a, b) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _landmark_base(face) -> float:
    left_eye, right_eye, _, mouth_left, mouth_right = (np.asarray(p) for p in face.landmarks)
    eyes = (left_eye + right_eye) / 2
    mouth = (mouth_left + mouth_right) / 2
    return max(2.0 * np.linalg.norm(right_eye - left_eye), 1.8 * np.linalg.norm(mouth - eyes))


def _measure(path: Path, stats: ClassStats) -> None:
    from fvr_core.inference.faces import crop_box, detect_faces, face_crops
    from fvr_core.data.images import load_rgb

    image = load_rgb(path)
    side = image.width
    started = time.perf_counter()
    faces = detect_faces(image)
    stats.ms.append((time.perf_counter() - started) * 1000)
    stats.images += 1
    stats.found += bool(faces)
    stats.several += len(faces) > 1

    canvas = Image.new("RGB", CANVAS, (128, 128, 128))
    canvas.paste(image, OFFSET)
    crops = face_crops(canvas, max_faces=1)
    if not crops[0].found:
        return
    stats.found_canvas += 1
    face = crops[0].box
    pasted = (OFFSET[0], OFFSET[1], OFFSET[0] + side, OFFSET[1] + side)
    stats.box_ratio.append(side / face.side)
    stats.box_drop.append(((face.top + face.bottom) / 2 - (OFFSET[1] + side / 2)) / face.side)
    stats.lm_ratio.append(side / _landmark_base(face))
    box_framed = crop_box(face, canvas.size, use_landmarks=False)
    for framed, iou, sides in ((crops[0].crop_box, stats.iou_lm, stats.side_lm),
                               (box_framed, stats.iou_box, stats.side_box)):
        iou.append(_iou(framed, pasted))
        sides.append((framed[2] - framed[0]) / side)


def _merged(stats) -> ClassStats:
    total = ClassStats()
    for part in stats:
        for name, value in vars(part).items():
            setattr(total, name, getattr(total, name) + value)
    return total


def _q(values, spread: bool = False) -> str:
    if not values:
        return "-"
    if not spread:
        return f"{statistics.median(values):.3f}"
    low, mid, high = np.percentile(values, [10, 50, 90])
    return f"{mid:.3f} ({low:.3f}-{high:.3f})"


def _report(all_stats: dict[str, ClassStats]) -> None:
    from fvr_core.inference.faces import FACE_MARGIN, FACE_RAISE, LANDMARK_SIDE

    print(f"\n{'class':<6} {'images':>6} {'found':>6} {'rate':>7} {'canvas':>7} {'>1 face':>7} {'ms/img':>7} "
          f"{'img/box side':>21} {'box drop':>21} {'img/lm base':>21}")
    for label, s in all_stats.items():
        print(f"{label:<6} {s.images:>6} {s.found:>6} {s.found / max(1, s.images):>7.1%} "
              f"{s.found_canvas / max(1, s.images):>7.1%} {s.several:>7} {statistics.median(s.ms):>7.1f} "
              f"{_q(s.box_ratio, True):>21} {_q(s.box_drop, True):>21} {_q(s.lm_ratio, True):>21}")
    print(f"\nchosen: FACE_MARGIN={FACE_MARGIN} (img/box side {1 + FACE_MARGIN:.3f}), FACE_RAISE={FACE_RAISE}, "
          f"LANDMARK_SIDE={LANDMARK_SIDE}")
    print("check: crop cut from the canvas vs the pasted image (1.000 = identical framing)")
    print(f"{'class':<6} {'IoU landmarks':>21} {'IoU>0.8':>8} {'side landmarks':>15} "
          f"{'IoU box':>21} {'IoU>0.8':>8} {'side box':>9}")
    for label, s in all_stats.items():
        good_lm = np.mean(np.asarray(s.iou_lm) > 0.8) if s.iou_lm else 0.0
        good_box = np.mean(np.asarray(s.iou_box) > 0.8) if s.iou_box else 0.0
        print(f"{label:<6} {_q(s.iou_lm, True):>21} {good_lm:>8.1%} {_q(s.side_lm):>15} "
              f"{_q(s.iou_box, True):>21} {good_box:>8.1%} {_q(s.side_box):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="class-folder data set with data.csv")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per class")
    args = parser.parse_args()
    if not (args.data / "data.csv").is_file():
        parser.error(f"no data.csv in {args.data}; pass --data with the tpdne-vs-ffhq-300 folder")

    import torch

    torch.set_num_threads(1)  # the figures are per image on one core, as a dashboard worker runs it
    from fvr_core.inference.faces import detect_faces

    detect_faces(Image.new("RGB", (64, 64)))  # load the detector outside the timings
    started = time.perf_counter()
    all_stats: dict[str, ClassStats] = {}
    for label, paths in _images(args.data, args.limit).items():
        stats = all_stats[label] = ClassStats()
        for path in paths:
            _measure(path, stats)
        print(f"{label}: {stats.images} images done ({time.perf_counter() - started:.0f} s)", flush=True)
    _report({**all_stats, "all": _merged(all_stats.values())})
    print(f"\ntotal {time.perf_counter() - started:.0f} s, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()

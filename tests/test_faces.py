"""Face detection and training-like framing (fvr_core.inference.faces) on the shared real faces."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from fvr_core.inference import faces
from fvr_core.inference.faces import FACE_MARGIN, FaceBox, crop_box, cut_square, detect_faces, face_crops
from fvr_core.data.images import ImageError, load_rgb

needs_detector = pytest.mark.skipif(importlib.util.find_spec("facenet_pytorch") is None,
                                    reason="facenet-pytorch is not installed (requirements.txt has it)")


def _iou(a, b) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _is_square(box) -> bool:
    return box[2] - box[0] == box[3] - box[1] > 0


def _shared(shared_faces, label: str, index: int):
    name = f"fake_{index}.jpg" if label == "fake" else f"{index}.jpg"
    return shared_faces / label / name


# ---- geometry, no detector ---------------------------------------------------------------------
def test_crop_box_is_a_square_around_the_box_shifted_inside_the_image():
    box = FaceBox(400, 300, 500, 440, 0.99)  # 100 wide, 140 high: the crop follows the larger side
    square = crop_box(box, (1000, 800), margin=0.5, use_landmarks=False)
    assert _is_square(square) and square[2] - square[0] == 210
    assert square[0] <= box.left and square[1] <= box.top and square[2] >= box.right and square[3] >= box.bottom
    assert abs((square[0] + square[2]) / 2 - 450) <= 1  # centred sideways, raised a little vertically
    assert (square[1] + square[3]) / 2 < (box.top + box.bottom) / 2

    corner = crop_box(FaceBox(5, 5, 105, 145, 0.99), (1000, 800), margin=0.5, use_landmarks=False)
    assert corner[:2] == (0, 0) and _is_square(corner) and corner[2] == 210  # shifted in, same size


def test_crop_larger_than_the_image_is_padded_not_stretched():
    image = Image.new("RGB", (120, 80), (10, 200, 30))
    square = crop_box(FaceBox(20, 10, 100, 70, 0.99), image.size, margin=1.0, use_landmarks=False)
    assert _is_square(square) and square[0] < 0 and square[1] < 0 and square[3] > 80
    cut = cut_square(image, square)
    assert cut.size == (square[2] - square[0],) * 2
    arr = np.asarray(cut)
    assert (arr[0, 0] == (10, 200, 30)).all()  # padding continues the border colour, not black
    assert (arr[-square[1] + 40, -square[0] + 60] == (10, 200, 30)).all()  # the image, unscaled


def test_invalid_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="margin"):
        crop_box(FaceBox(0, 0, 10, 10, 1.0), (100, 100), margin=-1.5)
    with pytest.raises(ValueError, match="max_faces"):
        face_crops(Image.new("RGB", (50, 50)), max_faces=0)


def test_detector_is_built_once_across_threads(monkeypatch):
    built = []

    def slow_build(device):
        time.sleep(0.05)  # long enough for every thread to arrive while the first one builds
        built.append(device)
        return object()

    monkeypatch.setattr(faces, "_detectors", {})
    monkeypatch.setattr(faces, "_build_detector", slow_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(faces._detector("cpu"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == ["cpu"] and len(got) == 8 and all(d is got[0] for d in got)


def test_missing_detector_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(faces, "_detectors", {})
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes its import fail
    with pytest.raises(faces.FaceDetectorError, match="pip install facenet-pytorch"):
        detect_faces(Image.new("RGB", (64, 64)))


# ---- the detector on real faces -----------------------------------------------------------------
@needs_detector
@pytest.mark.parametrize("label,indices", [("fake", range(0, 200, 10)), ("real", range(0, 600, 30))])
def test_faces_found_in_nearly_all_images_of_each_class(shared_faces, label, indices):
    found = reframed = 0
    for index in indices:
        crop = face_crops(_shared(shared_faces, label, index))[0]
        if not crop.found:
            continue
        found += 1
        box, square = crop.box, crop.crop_box
        assert _is_square(square) and crop.image.size == (square[2] - square[0],) * 2
        # the training framing is tight (the chin often touches the edge) but holds eyes, nose, mouth
        for x, y in box.landmarks:
            assert square[0] <= x <= square[2] and square[1] <= y <= square[3]
        # ... and the face box, once clipped to the image (on these tight crops MTCNN's box often
        # runs past the edge, where there is nothing to keep)
        visible = (max(box.left, 0), max(box.top, 0), min(box.right, 300), min(box.bottom, 300))
        inter = (min(square[2], visible[2]) - max(square[0], visible[0])) * (
            min(square[3], visible[3]) - max(square[1], visible[1]))
        assert inter >= 0.9 * (visible[2] - visible[0]) * (visible[3] - visible[1]), (index, square, box)
        # a training image framed again is nearly itself
        reframed += _iou(square, (0, 0, 300, 300)) > 0.8
    assert found >= 18, f"faces found in only {found}/20 {label} images"
    assert reframed >= 16, f"only {reframed}/{found} {label} images framed like themselves"


@needs_detector
def test_no_face_gives_the_whole_image_marked_not_found():
    ramp = np.linspace(0, 255, 400, dtype=np.float32)[None, :, None] * np.ones((300, 1, 3), np.float32)
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for arr in (ramp.astype(np.uint8), noise):
        crops = face_crops(Image.fromarray(arr))
        assert len(crops) == 1 and not crops[0].found and crops[0].box is None
        assert crops[0].crop_box == (0, 0, 400, 300) and crops[0].image.size == (400, 300)
    tiny = face_crops(Image.new("RGB", (10, 8)))  # below MTCNN's smallest face: no crash
    assert len(tiny) == 1 and not tiny[0].found


@needs_detector
@pytest.mark.parametrize("label,index", [("fake", 3), ("real", 7), ("real", 120)])
def test_face_pasted_into_a_wider_photo_is_cut_back_out(shared_faces, label, index):
    face = load_rgb(_shared(shared_faces, label, index))
    canvas = Image.new("RGB", (900, 600), (128, 128, 128))
    canvas.paste(face, (480, 200))
    pasted = (480, 200, 780, 500)
    crop = face_crops(canvas)[0]
    assert crop.found and _is_square(crop.crop_box)
    assert _iou(crop.crop_box, pasted) > 0.85, crop.crop_box  # the framing reproduces the training crop
    fallback = crop_box(crop.box, canvas.size, FACE_MARGIN, use_landmarks=False)
    assert _iou(fallback, pasted) > 0.6, fallback  # the box-only rule is looser but close


@needs_detector
def test_large_photo_is_detected_downscaled_and_cropped_in_its_own_pixels(shared_faces):
    face = load_rgb(_shared(shared_faces, "real", 7)).resize((750, 750), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (2400, 1600), (90, 110, 100))
    canvas.paste(face, (1400, 300))
    crop = face_crops(canvas)[0]
    assert crop.found and _iou(crop.crop_box, (1400, 300, 2150, 1050)) > 0.8, crop.crop_box


@needs_detector
def test_several_faces_come_largest_first_up_to_max_faces(shared_faces):
    canvas = Image.new("RGB", (900, 600), (128, 128, 128))
    canvas.paste(load_rgb(_shared(shared_faces, "fake", 3)).resize((200, 200)), (60, 300))
    canvas.paste(load_rgb(_shared(shared_faces, "real", 7)), (520, 120))
    crops = face_crops(canvas)
    assert len(crops) == 2 and all(c.found for c in crops)
    assert crops[0].box.area > crops[1].box.area and crops[0].box.left > 450 > crops[1].box.left
    assert len(face_crops(canvas, max_faces=1)) == 1


@needs_detector
def test_exif_rotated_photo_is_turned_upright_before_detection(shared_faces, tmp_path):
    upright = load_rgb(_shared(shared_faces, "real", 11))
    assert detect_faces(upright.transpose(Image.Transpose.ROTATE_90)) == []  # sideways, MTCNN misses this one
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the pixels below lie turned left
    path = tmp_path / "sideways.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    reference = face_crops(upright)[0]
    for source in (path, path.read_bytes(), Image.open(path)):  # decoded here, or opened by the caller
        crop = face_crops(source)[0]
        assert crop.found and _iou(crop.crop_box, reference.crop_box) > 0.9


def test_unreadable_input_raises_image_error(tmp_path):
    with pytest.raises(ImageError):
        face_crops(b"this is not an image")
    with pytest.raises(ImageError, match="not found"):
        face_crops(tmp_path / "missing.jpg")

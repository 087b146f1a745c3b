"""Predictions a user can believe: the run's calibration is applied, the unsure band holds back a
verdict, test-time mirroring averages, every model judges the same faces, and outside folders
(labelled or not) are read as a user lays them out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_class_folders, write_image
from fvr_core.inference.calibration import load_calibration
from fvr_core.config import TrainConfig
from fvr_core.inference.outside import OutsideError, evaluate_labelled, labelled_photos, list_photos
from fvr_core.inference.predict import Predictor, predict_with_each, prepare_photos
from fvr_core.training.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_class_folders(tmp_path_factory.mktemp("colours"), n_fake=20, n_real=20, size=(32, 32))
    return train(TrainConfig(data=str(data), model="tiny_cnn", epochs=2, image_size=48, batch_size=8, threads=1),
                 runs_dir=tmp_path_factory.mktemp("runs"))


def reddish(size=(48, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(np.clip(rng.normal((180, 60, 60), 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8))


def test_a_finished_run_is_calibrated_and_predictions_use_its_temperature(run):
    calibration = load_calibration(run)
    assert calibration is not None and calibration.temperature > 0 and calibration.n == 8
    meta = json.loads((run.path / "best.json").read_text())
    assert meta["temperature"] == pytest.approx(calibration.temperature)  # an exported checkpoint carries it

    predictor = Predictor.from_run(run)
    assert predictor.temperature == pytest.approx(calibration.temperature)
    assert Predictor.from_checkpoint(run.checkpoint("best")).temperature == pytest.approx(calibration.temperature)
    image = reddish()
    (pred,) = predictor.predict([image], face_crop=False)
    logits = predictor.logits(predictor.model_input(image)[None])
    assert pred.prob_fake == pytest.approx(float(torch.softmax(logits / calibration.temperature, 1)[0, 0]), abs=1e-6)
    assert pred.prob_fake_uncalibrated == pytest.approx(float(torch.softmax(logits, 1)[0, 0]), abs=1e-6)


def test_inside_the_unsure_band_there_is_no_verdict(run):
    predictor = Predictor.from_run(run)
    image = reddish()
    (pred,) = predictor.predict([image], face_crop=False)
    p = pred.prob_fake
    assert predictor.predict([image], face_crop=False, unsure_band=(max(0.0, min(p, 0.5) - 0.01), min(1.0, max(p, 0.5) + 0.01)))[0].verdict == "unsure"
    assert predictor.predict([image], face_crop=False, unsure_band=(0.5, 0.5))[0].verdict == ("fake" if p > 0.5 else "real")



def test_an_unsure_band_must_hold_one_half():
    """One check for the Predict page's slider and FVR_UNSURE_BAND: a band without 0.5 would call
    some photos the class the model thinks less likely."""
    from fvr_core.settings import parse_unsure_band, valid_unsure_band

    assert valid_unsure_band((0.35, 0.65)) == (0.35, 0.65) and valid_unsure_band([0.5, 0.5]) == (0.5, 0.5)
    assert valid_unsure_band((0.6, 0.8)) is None and valid_unsure_band((-0.1, 0.6)) is None and valid_unsure_band((0.2, 1.1)) is None
    assert parse_unsure_band("0.3, 0.7") == (0.3, 0.7)
    with pytest.raises(ValueError, match="must hold 0.5"):
        parse_unsure_band("0.6,0.8")
    with pytest.raises(ValueError, match="two probabilities"):
        parse_unsure_band("0.3")

def test_mirror_augmentation_averages_the_photo_and_its_mirror(run):
    predictor = Predictor.from_run(run)
    image = Image.fromarray(np.concatenate([np.full((32, 16, 3), (200, 50, 50), np.uint8),
                                            np.full((32, 16, 3), (50, 50, 200), np.uint8)], axis=1))
    x = predictor.model_input(image)[None]
    mirrored = np.ascontiguousarray(x[..., ::-1])
    expected = (predictor.logits(x) + predictor.logits(mirrored)) / 2
    assert torch.allclose(predictor.logits(x, tta=True), expected, atol=1e-5)
    assert not torch.allclose(predictor.logits(x), predictor.logits(mirrored), atol=1e-4)  # the test means something


def test_every_model_judges_the_same_subjects_and_a_broken_photo_gets_an_error_row(run, tmp_path):
    good = write_image(tmp_path / "flat.png", size=(80, 50))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    prepared = prepare_photos([good, broken], ["flat.png", "broken.jpg"])
    assert [p.subjects[0].description for p in prepared[:1]] == ["no face found: whole image"]
    predictors = {"a": Predictor.from_run(run), "b": Predictor.from_run(run, which="last")}
    rows = predict_with_each(predictors, prepared)
    assert [(r["image"], r["model"]) for r in rows] == [("flat.png", "a"), ("flat.png", "b"), ("broken.jpg", "a"), ("broken.jpg", "b")]
    assert rows[2]["error"] and rows[2]["prob_fake"] is None
    assert prepare_photos([good], face_crop=False)[0].subjects[0].description == "whole image (face crop off)"


def test_a_labelled_folder_from_a_csv_reports_what_it_skipped(tmp_path):
    folder = tmp_path / "wrapped" / "outside photos"  # an unpacked zip often wraps its folder
    write_image(folder / "a.jpg")
    write_image(folder / "sub dir" / "b é.png")
    (folder / "labels.csv").write_text("file,label\na.jpg,FAKE\nsub dir/b é.png,real\nc.jpg,fake\na.jpg,maybe\n", encoding="utf-8")
    photos, problems = labelled_photos(tmp_path / "wrapped")
    assert [(p.name, p.label) for p in photos] == [("a.jpg", 0), ("sub dir/b é.png", 1)]
    assert len(problems) == 2 and "c.jpg" in problems[0] and "'maybe'" in problems[1]


def test_a_labelled_folder_from_class_folders_and_clear_errors(tmp_path):
    make_class_folders(tmp_path / "classes", n_fake=2, n_real=3)
    photos, problems = labelled_photos(tmp_path / "classes")
    assert sorted(p.label for p in photos) == [0, 0, 1, 1, 1] and problems == []
    write_image(tmp_path / "flat" / "x.jpg")
    with pytest.raises(OutsideError, match="labels.csv"):
        labelled_photos(tmp_path / "flat")
    (tmp_path / "flat" / "labels.csv").write_text("name,truth\n")
    with pytest.raises(OutsideError, match="column"):
        labelled_photos(tmp_path / "flat")
    with pytest.raises(OutsideError, match="not a folder"):
        list_photos(tmp_path / "missing")


def test_scores_count_photos_by_their_largest_face():
    from fvr_core.inference.outside import OutsidePhoto

    photos = [OutsidePhoto(None, "group.jpg", 1), OutsidePhoto(None, "solo.jpg", 0)]
    rows = [
        {"image": "group.jpg", "face_index": 0, "model": "m", "prob_fake": 0.2, "verdict": "real", "error": None},
        {"image": "group.jpg", "face_index": 1, "model": "m", "prob_fake": 0.9, "verdict": "fake", "error": None},
        {"image": "solo.jpg", "face_index": 0, "model": "m", "prob_fake": 0.55, "verdict": "unsure", "error": None},
    ]
    (score,), table = evaluate_labelled(rows, photos)
    assert score["photos"] == 2 and score["accuracy"] == 1.0  # both right at 0.5
    assert score["unsure"] == 1 and score["correct_confident"] == 1
    assert [r["correct"] for r in table] == [True, False]


# ---------------------------------------------------------------- memory: a cache of display-size photos


def large_photo(seed: int, size=(6000, 4000)) -> bytes:
    """A 24 MP JPEG (72 MB decoded): smooth colours with a little noise, as a camera's."""
    import io

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 100, size[0] // 100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def test_the_photo_cache_keeps_display_size_pictures_within_its_byte_cap():
    from fvr_core.inference.predict import DISPLAY_SIDE, PhotoCache

    cache = PhotoCache(max_bytes=8 * 1024**2)
    photos = [large_photo(i) for i in range(3)]
    first = cache.prepared(photos[0], "a.jpg", face_crop=False)
    assert max(first.original.size) == DISPLAY_SIDE and first.original.size == (1024, 683)  # not 6000x4000
    assert max(first.subjects[0].image.size) <= DISPLAY_SIDE
    assert first.nbytes < 5 * 1024**2  # about 4 MB kept instead of 144 MB (original and whole-image subject)
    assert cache.prepared(photos[0], "a.jpg", face_crop=False) is first  # a rerun decodes nothing
    for i, data in enumerate(photos[1:], 1):
        cache.prepared(data, f"{i}.jpg", face_crop=False)
        assert cache.nbytes <= 8 * 1024**2
    assert len(cache) < 3  # the least recently used went
    assert cache.prepared(photos[0], "a.jpg", face_crop=False) is not first  # prepared again


def test_display_copies_predict_like_the_originals(run):
    """The page predicts from the display copy: a face crop scaled to at most 1024 px first gives
    the model (48 px here) the same answer within a hair."""
    from fvr_core.inference.predict import for_display, prepare_photo

    data = large_photo(7, (2400, 1800))
    predictor = Predictor.from_run(run)
    full = prepare_photo(data, "big.jpg", face_crop=False)
    small = for_display(full)
    assert max(small.original.size) == 1024
    (a,), (b,) = predictor.predict_prepared([full]), predictor.predict_prepared([small])
    assert abs(a.prob_fake - b.prob_fake) < 0.02


def test_measurements_started_from_pages_wait_for_a_prediction_slot(monkeypatch, run):
    """Speed and robustness measurements take their turn with the predictions (FVR_PAGE_PREDICTIONS
    at once for the whole process) instead of running beside them."""
    import threading
    import time

    from fvr_core.training.estimate import measure_speed
    from fvr_core.inference.robustness import evaluate_robustness
    from fvr_core.settings import prediction_slot

    monkeypatch.setenv("FVR_PAGE_PREDICTIONS", "1")
    for measure in (lambda: measure_speed("tiny_cnn", 48, 8, budget_seconds=0.1, refresh=True),
                    lambda: evaluate_robustness(run, corruptions=["jpeg90"])):
        done = threading.Event()
        with prediction_slot():  # a prediction in progress holds the only slot
            worker = threading.Thread(target=lambda: (measure(), done.set()))
            worker.start()
            assert not done.wait(3.0), "the measurement ran beside a prediction"
        assert done.wait(120.0), "the measurement never ran"
        worker.join()

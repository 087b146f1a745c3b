"""The forensic residual detectors (srm_net, cooc_lr): they learn a trace that lives only in the
highest frequencies, and they go through the ordinary train / save / load / predict path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_planted_folders
from fvr_core.data.augment import normalize
from fvr_core.runs.checkpoint import load_checkpoint, save_checkpoint
from fvr_core.config import TrainConfig
from fvr_core.inference.evaluation import evaluate_run
from fvr_core.models.forensic import CoocDetector, fit_cooc
from fvr_core.inference.predict import Predictor
from fvr_core.runs.store import COMPLETED
from fvr_core.training.trainer import train

SIZE = 48


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory):
    return make_planted_folders(tmp_path_factory.mktemp("planted"), SIZE)


def _config(data, model: str, **changes) -> TrainConfig:
    base = dict(data=str(data), model=model, image_size=SIZE, batch_size=8, threads=1, augment="none", seed=1)
    return TrainConfig(**{**base, **changes})


def test_residual_network_learns_a_pattern_a_blurred_copy_lacks(planted_data, tmp_path):
    run = train(_config(planted_data, "srm_net", epochs=10, lr=3e-3, batch_size=4, train_crop=32), runs_dir=tmp_path)
    assert run.state == COMPLETED, run.status()
    test = run.test_metrics()
    assert test["n"] == 6  # whole 48 px test images, though it trained on 32 px crops
    result = evaluate_run(run, split="all")  # all 30 images, 12 of which it never trained on
    assert result["roc_auc"] >= 0.95, result
    assert result["balanced_accuracy"] >= 0.9, result


@pytest.mark.parametrize("model", ["cooc_lr", "cooc_lr4"])
def test_cooc_detector_learns_the_pattern_in_one_fit_and_is_calibrated(planted_data, tmp_path, model):
    run = train(_config(planted_data, model), runs_dir=tmp_path)
    assert run.state == COMPLETED, run.status()
    epochs = run.epoch_rows()
    assert len(epochs) == 1 and epochs[0]["val_roc_auc"] >= 0.95  # one pass, no gradient epochs
    fitted = [r for r in run.metrics() if r.get("event") == "fitted"]
    assert fitted and fitted[0]["C"] in [row["C"] for row in fitted[0]["scores"]]  # C chosen on validation
    assert (run.path / "calibration.json").is_file()
    result = evaluate_run(run, split="all")
    assert result["roc_auc"] >= 0.95 and result["balanced_accuracy"] >= 0.9, result


def test_cooc_detector_save_and_load_give_identical_probabilities(planted_data, tmp_path):
    from fvr_core.data.dataset import load_dataset

    images = load_dataset(planted_data, SIZE).images
    x = normalize(torch.from_numpy(np.array(images)))  # a writable copy of the memory-mapped cache
    labels = load_dataset(planted_data, SIZE).labels
    model = CoocDetector()
    fit_cooc(model, x[:20], labels[:20], x[20:], labels[20:])
    with torch.no_grad():
        before = torch.softmax(model.eval()(x), 1)
    save_checkpoint(tmp_path / "cooc", model, {"model": "cooc_lr", "image_size": SIZE})
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "cooc.safetensors").is_file()  # no pickle
    loaded, meta = load_checkpoint(tmp_path / "cooc.safetensors")
    with torch.no_grad():
        after = torch.softmax(loaded(x), 1)
    assert meta["model"] == "cooc_lr"
    assert torch.equal(before, after)
    assert not torch.allclose(before, torch.full_like(before, 0.5))  # it says something


def test_cooc_features_are_normalised_histograms_of_the_residuals():
    model = CoocDetector()
    flat = torch.full((1, 3, 20, 20), 128, dtype=torch.uint8)
    features = model.features(normalize(flat))
    assert features.shape == (1, model.features.dim)
    histograms = features.view(-1, 125)
    assert torch.allclose(histograms.sum(1), torch.ones(len(histograms)))
    # a flat picture has every residual 0: all mass in the bin of three zeros (2*25 + 2*5 + 2)
    assert torch.all(histograms[:, 62] == 1.0)


def _histogram_by_definition(symbols: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Counts of (a, b, c) triples of neighbours along (dy, dx), written plainly, one pixel at a time."""
    counts = np.zeros(125)
    height, width = symbols.shape
    for y in range(height):
        for x in range(width):
            points = [(y + i * dy, x + i * dx) for i in range(3)]
            if all(0 <= py < height and 0 <= px < width for py, px in points):
                a, b, c = (symbols[p] for p in points)
                counts[a * 25 + b * 5 + c] += 1
    return counts / counts.sum()


def test_cooc_histograms_count_neighbour_triples_in_each_direction():
    from fvr_core.models.forensic import NEIGHBOURS, CoocFeatures

    symbols = torch.from_numpy(np.random.default_rng(0).integers(0, 5, size=(1, 1, 9, 11), dtype=np.uint8))
    features = CoocFeatures("hvda")
    for direction, (dy, dx) in NEIGHBOURS.items():
        expected = _histogram_by_definition(symbols[0, 0].numpy(), dy, dx)
        assert np.allclose(features._histogram(symbols, direction)[0].numpy(), expected), direction


def test_four_direction_features_extend_the_two_direction_ones():
    x = normalize(torch.from_numpy(np.random.default_rng(1).integers(0, 256, size=(2, 3, 24, 24), dtype=np.uint8)))
    two, four = CoocDetector().features, CoocDetector(directions="hvda").features
    per_step = two.dim // 2  # features come per quantisation step, each with its directions
    hv, hvda = two(x), four(x)
    assert hvda.shape[1] == 2 * hv.shape[1]
    for step in range(2):  # for each step, the first two directions (h, v) are the same numbers
        assert torch.equal(hvda[:, 2 * step * per_step : (2 * step + 1) * per_step], hv[:, step * per_step : (step + 1) * per_step])


def test_both_detectors_predict_photos_through_the_ordinary_path(planted_data, tmp_path):
    from fvr_core.inference.saliency import saliency_for

    photo = sorted((planted_data / "fake").glob("*.png"))[0]
    for model in ("cooc_lr", "srm_net"):
        run = train(_config(planted_data, model, epochs=2), runs_dir=tmp_path)
        predictor = Predictor.from_run(run)
        (prediction,) = predictor.predict([photo], face_crop=False)
        assert prediction.error is None and 0.0 <= prediction.prob_fake <= 1.0
        assert prediction.verdict in ("fake", "real", "unsure")
        image = np.asarray(Image.open(photo).convert("RGB")).transpose(2, 0, 1).copy()
        if model == "srm_net":
            found = saliency_for(predictor.model, model, image)
            assert found.heatmap.shape == (SIZE, SIZE)
        else:
            with pytest.raises(ValueError, match="no spatial layer"):
                saliency_for(predictor.model, model, image)

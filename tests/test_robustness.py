"""Corruptions do what they say (on generated images), and a small trained run's metrics under them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_class_folders
from fvr_core.inference.robustness import (
    CORRUPTIONS, ROBUSTNESS_FILE, apply_corruption, evaluate_robustness, load_robustness,
)


def photo_like(n: int = 3, size: int = 64, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) uint8: smooth gradients and a disc (the structure of a photo) with mild
    sensor noise (its fine detail)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = rng.uniform(40, 200, 3)[:, None, None] + 60 * (xx - 0.5) + 40 * (yy - 0.5)
        disc = ((xx - rng.uniform(0.3, 0.7)) ** 2 + (yy - rng.uniform(0.3, 0.7)) ** 2) < 0.05
        image = base + np.where(disc, rng.uniform(-60, 60, 3)[:, None, None], 0) + rng.normal(0, 8, (3, size, size))
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


def high_frequency_energy(images: np.ndarray) -> float:
    """Mean squared response of a 4-neighbour Laplacian (a high-pass filter)."""
    x = images.astype(np.float64)
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float(np.mean(lap**2))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


def test_registry_names_and_labels():
    assert list(CORRUPTIONS) == ["clean", "jpeg90", "jpeg70", "jpeg50", "downscale0.5", "blur1"]
    assert all(c.name == name and c.label for name, c in CORRUPTIONS.items())


def test_clean_is_the_identity_and_every_corruption_keeps_shape_and_dtype():
    images = photo_like()
    assert np.array_equal(apply_corruption(images, "clean"), images)
    for name in CORRUPTIONS:
        out = apply_corruption(images, name)
        assert out.shape == images.shape and out.dtype == np.uint8, name
        single = apply_corruption(images[0], name)  # one (3, S, S) image works too
        assert single.shape == images[0].shape and np.array_equal(single, out[0]), name
    assert np.array_equal(images, photo_like())  # the input is left alone


def test_corruptions_are_deterministic():
    images = photo_like(seed=4)
    for name in CORRUPTIONS:
        assert np.array_equal(apply_corruption(images, name), apply_corruption(images, name)), name


def test_lower_jpeg_quality_changes_more():
    images = photo_like(n=4, seed=1)
    diffs = [mean_abs_diff(apply_corruption(images, f"jpeg{q}"), images) for q in (90, 70, 50)]
    assert 0 < diffs[0] < diffs[1] < diffs[2], diffs
    # what comes out is a decodable JPEG result: re-encoding it at the same quality changes it little
    once = apply_corruption(images, "jpeg70")
    assert mean_abs_diff(apply_corruption(once, "jpeg70"), once) < diffs[1]


def test_downscale_and_back_removes_fine_detail_but_keeps_the_colour():
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)  # all its energy is fine detail
    out = apply_corruption(noise, "downscale0.5")
    assert high_frequency_energy(out) < 0.05 * high_frequency_energy(noise)
    np.testing.assert_allclose(out.mean(axis=(2, 3)), noise.mean(axis=(2, 3)), atol=2.0)
    smooth = photo_like(seed=3)  # a photo's broad structure survives
    assert mean_abs_diff(apply_corruption(smooth, "downscale0.5"), smooth) < 8


def test_blur_lowers_high_frequency_energy():
    images = photo_like(seed=5)
    out = apply_corruption(images, "blur1")
    assert high_frequency_energy(out) < 0.2 * high_frequency_energy(images)
    np.testing.assert_allclose(out.mean(axis=(2, 3)), images.mean(axis=(2, 3)), atol=2.0)


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="unknown corruption 'jpeg10'"):
        apply_corruption(photo_like(), "jpeg10")
    with pytest.raises(ValueError, match="uint8"):
        apply_corruption(photo_like().astype(np.float32), "jpeg90")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        apply_corruption(np.zeros((2, 1, 8, 8), np.uint8), "jpeg90")


def test_the_robust_augmentation_downscales_like_the_corruption():
    """Training with augment="robust" shrinks and enlarges images back, as downscale0.5 does."""
    torch = pytest.importorskip("torch")
    from fvr_core.data.augment import _downscale

    images = torch.from_numpy(photo_like(n=8, seed=6))
    out = _downscale(images, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert high_frequency_energy(out.numpy()) < 0.7 * high_frequency_energy(images.numpy())
    assert abs(float(out.float().mean()) - float(images.float().mean())) < 2  # the colours stay
    assert torch.equal(_downscale(images, 0.0, torch.Generator().manual_seed(0)), images)  # none chosen: untouched
    assert torch.equal(images, torch.from_numpy(photo_like(n=8, seed=6)))  # the caller's batch is left alone


# ---- a run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from fvr_core.config import TrainConfig
    from fvr_core.training.trainer import train

    root = make_class_folders(tmp_path_factory.mktemp("colours"), n_fake=20, n_real=20, size=(32, 32))
    config = TrainConfig(data=str(root), model="tiny_cnn", epochs=3, image_size=48, batch_size=8, threads=1)
    run = train(config, runs_dir=tmp_path_factory.mktemp("runs"))
    assert run.status()["state"] == "completed"
    return run


def test_evaluate_robustness_on_a_run(small_run):
    from fvr_core.inference.evaluation import evaluate_run

    rows = evaluate_robustness(small_run, temperature=1.0)
    assert [r["corruption"] for r in rows] == list(CORRUPTIONS)
    n = len(small_run.split()["test"])
    for row in rows:
        assert row["n"] == n and row["label"] == CORRUPTIONS[row["corruption"]].label
        for key in ("accuracy", "balanced_accuracy", "roc_auc", "mean_abs_prob_change", "flip_rate", "verdict_change_rate"):
            assert 0.0 <= row[key] <= 1.0, (row["corruption"], key)
    clean = rows[0]
    assert clean["accuracy"] == pytest.approx(evaluate_run(small_run, split="test")["accuracy"])
    assert clean["mean_abs_prob_change"] == clean["flip_rate"] == clean["verdict_change_rate"] == 0.0
    assert any(r["mean_abs_prob_change"] > 0 for r in rows[1:])  # the corruptions reached the model

    report = load_robustness(small_run)
    assert report["rows"] == rows and report["split"] == "test" and report["checkpoint"] == "best"
    assert report["temperature"] == 1.0 and report["run"] == small_run.id
    assert json.loads((small_run.path / ROBUSTNESS_FILE).read_text())["rows"] == rows


def test_evaluate_robustness_subset_and_validation_split(small_run):
    rows = evaluate_robustness(small_run, split="val", corruptions=["jpeg50"])
    assert [r["corruption"] for r in rows] == ["clean", "jpeg50"]  # clean always comes first, as the reference
    assert rows[0]["n"] == len(small_run.split()["val"])
    assert load_robustness(small_run)["split"] == "val"
    with pytest.raises(ValueError, match="unknown corruption"):
        evaluate_robustness(small_run, corruptions=["sepia"])


def test_no_report_yet(tmp_path):
    from fvr_core.runs.store import Run

    assert load_robustness(Run(tmp_path)) is None


def test_progress_is_reported_and_the_time_is_told_beforehand(small_run):
    from fvr_core.inference.robustness import robustness_seconds
    from fvr_core.runs.store import Run

    expected = robustness_seconds(small_run)
    assert expected is not None and expected > 0
    assert robustness_seconds(small_run, ["jpeg50"]) == pytest.approx(expected * 2 / len(CORRUPTIONS))
    assert robustness_seconds(Run(small_run.path.parent / "nothing")) is None  # no finished run, no figure
    calls = []
    evaluate_robustness(small_run, corruptions=["jpeg50", "blur1"], on_progress=lambda *a: calls.append(a))
    assert calls == [(0, 3, CORRUPTIONS["clean"].label), (1, 3, CORRUPTIONS["jpeg50"].label), (2, 3, CORRUPTIONS["blur1"].label)]

"""Temperature scaling, the calibration error and the three-way verdict: on synthetic logits whose
calibration is known, and on a small trained run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import make_class_folders
from fvr_core.inference.calibration import (
    CALIBRATION_FILE, DEFAULT_UNSURE_BAND, MIN_FIT_EXAMPLES, TEMPERATURE_RANGE, Calibration, calibrate_run,
    calibrated_prob_fake, expected_calibration_error, fit_calibration, fit_temperature, load_calibration,
    negative_log_likelihood, reliability_bins, verdict,
)

FAKE, REAL = 0, 1


def sampled(n: int, temperature: float, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): T = temperature is the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, (n, 2))
    prob_fake = calibrated_prob_fake(logits, temperature)
    labels = np.where(rng.random(n) < prob_fake, FAKE, REAL)
    return logits, labels


# ---- temperature


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(true_t):
    logits, labels = sampled(20_000, true_t, seed=int(true_t * 10))
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.06)


def test_an_over_confident_model_is_cooled_and_its_error_drops():
    logits, labels = sampled(5_000, 1.0, seed=1)
    cal = fit_calibration(logits * 4.0, labels)  # same ranking, four times too sure
    assert cal.fitted and cal.note == ""
    assert cal.temperature == pytest.approx(4.0, rel=0.1)
    assert cal.ece_before > 0.05 and cal.ece_after < 0.02 and cal.ece_after < cal.ece_before
    assert cal.nll_after < cal.nll_before


def test_the_fit_is_deterministic_and_takes_torch_tensors():
    torch = pytest.importorskip("torch")
    logits, labels = sampled(500, 2.0, seed=3)
    a = fit_temperature(logits, labels)
    assert fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(labels)) == pytest.approx(a, rel=1e-5)
    assert fit_temperature(logits, labels) == a


def test_temperature_never_worsens_the_nll_it_was_fitted_on():
    for seed in range(5):
        logits, labels = sampled(40, 1.0, seed=seed)
        t = fit_temperature(logits, labels)
        assert negative_log_likelihood(logits, labels, t) <= negative_log_likelihood(logits, labels, 1.0) + 1e-12


@pytest.mark.parametrize("labels", [[FAKE, REAL, FAKE], [FAKE] * 50, [REAL] * 50])
def test_too_little_to_fit_keeps_t_at_1_and_says_why(labels):
    logits = np.random.default_rng(0).normal(0, 5, (len(labels), 2))
    assert fit_temperature(logits, labels) == 1.0
    cal = fit_calibration(logits, labels)
    assert cal.temperature == 1.0 and not cal.fitted
    assert "temperature left at 1" in cal.note
    assert ("3 example" in cal.note) if len(labels) < MIN_FIT_EXAMPLES else ("one class" in cal.note)
    assert cal.ece_before == cal.ece_after  # nothing changed, and it says so in numbers too


def test_a_split_without_errors_clamps_and_says_so():
    labels = np.array([FAKE, REAL] * 10)
    logits = np.where(labels[:, None] == np.array([FAKE, REAL]), 2.0, -2.0)  # always right: wants T -> 0
    cal = fit_calibration(logits, labels)
    assert cal.temperature == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)
    assert "clamped" in cal.note


def test_calibrated_probabilities():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(calibrated_prob_fake(logits, 1.0), [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2)), 0.5])
    np.testing.assert_allclose(calibrated_prob_fake(logits, 2.0), [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1)), 0.5])
    assert calibrated_prob_fake(np.array([[800.0, -800.0]]), 1.0)[0] == 1.0  # no overflow
    with pytest.raises(ValueError, match="greater than 0"):
        calibrated_prob_fake(logits, 0.0)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        calibrated_prob_fake(np.zeros((3, 3)), 1.0)


# ---- calibration error


def test_ece_of_calibrated_probabilities_is_near_zero():
    rng = np.random.default_rng(5)
    prob_fake = rng.random(50_000)
    labels = np.where(rng.random(50_000) < prob_fake, FAKE, REAL)  # p is the true frequency
    assert expected_calibration_error(prob_fake, labels) < 0.01


def test_ece_of_a_confident_coin_toss():
    labels = np.array([FAKE, REAL] * 500)
    assert expected_calibration_error(np.full(1000, 0.99), labels) == pytest.approx(0.49)
    assert expected_calibration_error(np.full(1000, 0.01), labels) == pytest.approx(0.49)  # confidence 0.99 in "real"


def test_ece_by_hand():
    # called fake at 0.9 (right, right, wrong): bin (0.8, 0.9]: acc 2/3, conf 0.9; called real at 0.3 -> conf 0.7 (right)
    prob_fake, labels = [0.9, 0.9, 0.9, 0.3], [FAKE, FAKE, REAL, REAL]
    assert expected_calibration_error(prob_fake, labels) == pytest.approx(3 / 4 * abs(2 / 3 - 0.9) + 1 / 4 * abs(1 - 0.7))
    with pytest.raises(ValueError, match="no predictions"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        expected_calibration_error([1.5], [FAKE])


def test_reliability_bins_add_up_to_the_ece():
    rng = np.random.default_rng(7)
    prob_fake = rng.random(300)
    labels = rng.integers(0, 2, 300)
    rows = reliability_bins(prob_fake, labels, bins=10)
    assert [r["bin_low"] for r in rows] == pytest.approx([k / 10 for k in range(10)])
    assert [r["bin_high"] for r in rows] == pytest.approx([(k + 1) / 10 for k in range(10)])
    assert sum(r["count"] for r in rows) == 300
    assert all(r["count"] == 0 and r["accuracy"] is None for r in rows[:4])  # top-label confidence is >= 0.5
    ece = sum(r["count"] / 300 * abs(r["accuracy"] - r["mean_confidence"]) for r in rows if r["count"])
    assert ece == pytest.approx(expected_calibration_error(prob_fake, labels, bins=10))
    # an edge goes to the lower bin: confidence exactly 0.9 is in (0.8, 0.9]
    assert reliability_bins([0.9], [FAKE])[8]["count"] == 1


# ---- verdict


def test_verdict_band_edges_are_unsure():
    low, high = DEFAULT_UNSURE_BAND
    assert (low, high) == (0.35, 0.65)
    assert verdict(low) == verdict(high) == verdict(0.5) == "unsure"  # both edges inclusive
    assert verdict(np.nextafter(high, 1.0)) == "fake" and verdict(1.0) == "fake"
    assert verdict(np.nextafter(low, 0.0)) == "real" and verdict(0.0) == "real"
    assert verdict(0.55, unsure_band=(0.5, 0.5)) == "fake" and verdict(0.5, unsure_band=(0.5, 0.5)) == "unsure"
    with pytest.raises(ValueError, match="low <= high"):
        verdict(0.5, unsure_band=(0.7, 0.3))
    with pytest.raises(ValueError, match="not in"):
        verdict(1.2)


# ---- a run


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A small trained run on colour-coded images with 20 % of the labels swapped: it cannot be
    right on every image, so how sure it is matters (on separable data a perfect val split would
    push T to 0)."""
    from fvr_core.config import TrainConfig
    from fvr_core.training.trainer import train

    root = make_class_folders(tmp_path_factory.mktemp("noisy"), n_fake=50, n_real=50, size=(32, 32))
    for i in range(10):
        os.replace(root / "fake" / f"f{i}.jpg", root / "real" / f"f{i}.jpg")
        os.replace(root / "real" / f"r{i}.jpg", root / "fake" / f"r{i}.jpg")
    config = TrainConfig(data=str(root), model="tiny_cnn", epochs=4, image_size=48, batch_size=8, threads=1)
    run = train(config, runs_dir=tmp_path_factory.mktemp("runs"))
    assert run.status()["state"] == "completed"
    return run


def overconfident_copy(run, factor: float, destination):
    """The run with its last layer's weights and bias multiplied by `factor`: the same decisions,
    logits `factor` times larger (an over-confident model, e.g. one trained far too long)."""
    from safetensors.torch import load_file, save_file

    from fvr_core.runs.store import Run

    path = shutil.copytree(run.path, destination / run.id)
    for which in ("best", "last"):
        weights = load_file(path / f"{which}.safetensors")
        head = [k for k, v in weights.items() if k.endswith(".weight") and v.ndim == 2 and v.shape[0] == 2][-1]
        for key in (head, head[: -len("weight")] + "bias"):
            weights[key] = weights[key] * factor
        save_file(weights, path / f"{which}.safetensors")
    (path / CALIBRATION_FILE).unlink(missing_ok=True)
    return Run(path)


def test_calibrate_run_writes_what_load_calibration_reads(noisy_run):
    (noisy_run.path / CALIBRATION_FILE).unlink(missing_ok=True)
    assert load_calibration(noisy_run) is None
    cal = calibrate_run(noisy_run)
    split = noisy_run.split()
    assert cal.n == len(split["val"]) == 20 and cal.test["n"] == len(split["test"]) == 20
    assert TEMPERATURE_RANGE[0] <= cal.temperature <= TEMPERATURE_RANGE[1] and cal.fitted
    # fitted on val to the lowest NLL there (at worst T = 1): never worse on the split it saw
    assert cal.nll_after <= cal.nll_before + 1e-9
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert cal.test[key] is not None and 0 <= cal.test[key]
    for split_name in ("val", "test"):
        for when in ("before", "after"):
            assert sum(b["count"] for b in cal.reliability[split_name][when]) == 20
    on_disk = json.loads((noisy_run.path / CALIBRATION_FILE).read_text())
    assert on_disk["temperature"] == cal.temperature and on_disk["run"] == noisy_run.id and on_disk["checkpoint"] == "best"
    assert load_calibration(noisy_run) == cal
    assert isinstance(cal, Calibration)
    # the checkpoint's metadata carries the temperature, so a checkpoint copied alone keeps it
    assert json.loads((noisy_run.path / "best.json").read_text())["temperature"] == cal.temperature
    assert load_calibration(noisy_run, which="last") is None  # fitted for best, not for last
    last = calibrate_run(noisy_run, which="last")  # its own file: best's calibration stays
    assert (noisy_run.path / "calibration-last.json").is_file() and load_calibration(noisy_run, which="last") == last
    assert load_calibration(noisy_run) == cal


def test_a_calibration_of_an_older_checkpoint_is_not_used(noisy_run, tmp_path):
    from fvr_core.runs.store import Run

    run = Run(shutil.copytree(noisy_run.path, tmp_path / noisy_run.id))
    calibrate_run(run, data=noisy_run.config.data)
    meta = json.loads((run.path / "best.json").read_text())
    (run.path / "best.json").write_text(json.dumps({**meta, "step": meta["step"] + 1}))  # a resume saved a better epoch
    assert load_calibration(run) is None


def test_calibration_lowers_the_validation_error_of_an_over_confident_run(noisy_run, tmp_path):
    base = calibrate_run(noisy_run)
    hot = overconfident_copy(noisy_run, 10.0, tmp_path)
    cal = calibrate_run(hot, data=noisy_run.config.data)
    # the logits are exactly 10x larger, so the best temperature is exactly 10x larger
    assert cal.temperature == pytest.approx(10.0 * base.temperature, rel=1e-3)
    assert cal.ece_before > 0.1  # sure of everything, wrong on some
    assert cal.ece_after < cal.ece_before - 0.05
    assert cal.nll_after < cal.nll_before
    assert cal.ece_after == pytest.approx(base.ece_after, abs=1e-6)  # calibration undoes the scaling
    # on unseen images the NLL falls too (their ECE is too noisy to compare on 20 images: a test
    # split with fewer errors than val can look better over-confident)
    assert cal.test["nll_after"] < cal.test["nll_before"]
    assert load_calibration(hot).temperature == cal.temperature

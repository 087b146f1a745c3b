"""Time estimates before training: the arithmetic from a measured speed to a run's seconds, the
speed cache that keeps the Train page from measuring on every slider move, and durations as a
user reads them. (How close the estimates come to real runs: benchmarks/estimate_accuracy.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fvr_core.config import TrainConfig
from fvr_core.estimate import DECODE_SECONDS_PER_IMAGE, Speed, estimate_run, format_duration, measure_speed
from fvr_core.settings import cache_root


@pytest.fixture(autouse=True)
def own_speed_cache(tmp_path, monkeypatch):
    """Each test starts with no measured speeds."""
    monkeypatch.setenv("FVR_CACHE_DIR", str(tmp_path / "cache"))


def speed(train_per_image=0.01, step=0.05, eval_per_image=0.002, eval_batch=0.01, batch_size=32) -> Speed:
    return Speed(model="cnn", image_size=64, device="cpu", threads=2, train_seconds_per_image=train_per_image,
                 eval_seconds_per_image=eval_per_image, measured_unix=0.0, batch_size=batch_size,
                 train_step_seconds=step, eval_batch_seconds=eval_batch)


@pytest.mark.parametrize("seconds, text", [
    (0.2, "under 1 s"), (12.4, "12 s"), (59.4, "59 s"), (61, "1 min"), (150, "2 min"), (3600, "1 h"),
    (4830, "1 h 20 min"), (math.inf, "unknown"),
])
def test_durations_read_as_a_user_plans_time(seconds, text):
    assert format_duration(seconds) == text


def test_step_cost_is_a_fixed_part_plus_a_part_per_image():
    s = speed(train_per_image=0.01, step=0.16, batch_size=32)  # 0.005 s per image beyond the fixed 0.16 s a step
    assert s.train_seconds(images=320, steps=10) == pytest.approx(10 * 0.16 + 320 * 0.005)
    # the same images in smaller batches cost more: more optimizer updates
    assert s.train_seconds(images=320, steps=40) > s.train_seconds(images=320, steps=10)


def test_estimate_counts_steps_epochs_validation_test_and_decoding():
    s = speed()
    config = TrainConfig(data="x", model="cnn", image_size=64, epochs=3, batch_size=32)
    sizes = {"train": 100, "val": 30, "test": 40}
    warm = estimate_run(config, sizes, decoded=True, speed=s)
    steps = 3 * math.ceil(100 / 32)
    assert warm.train_seconds == pytest.approx(s.train_seconds(300, steps))
    # validation after each of the 3 epochs, then one pass over the test split
    assert warm.eval_seconds == pytest.approx(3 * s.eval_seconds(30, 64) + s.eval_seconds(40, 64))
    assert warm.decode_seconds == 0
    assert warm.total_seconds == pytest.approx(warm.train_seconds + warm.eval_seconds)
    cold = estimate_run(config, sizes, decoded=False, speed=s)
    assert cold.decode_seconds == pytest.approx(170 * DECODE_SECONDS_PER_IMAGE)
    assert "decoding images" in cold.describe() and "decoding" not in warm.describe()


def test_max_steps_caps_the_estimate():
    s = speed()
    sizes = {"train": 320, "val": 10, "test": 10}
    full = estimate_run(TrainConfig(data="x", epochs=5, batch_size=32), sizes, speed=s)
    capped = estimate_run(TrainConfig(data="x", epochs=5, batch_size=32, max_steps=10), sizes, speed=s)
    assert capped.train_seconds == pytest.approx(s.train_seconds(320, 10))
    assert capped.train_seconds < full.train_seconds / 4


def test_estimate_grows_with_epochs_and_data():
    s = speed()
    small = estimate_run(TrainConfig(data="x", epochs=2), {"train": 100, "val": 20, "test": 20}, speed=s)
    more_epochs = estimate_run(TrainConfig(data="x", epochs=4), {"train": 100, "val": 20, "test": 20}, speed=s)
    more_data = estimate_run(TrainConfig(data="x", epochs=2), {"train": 400, "val": 80, "test": 80}, speed=s)
    assert more_epochs.total_seconds > small.total_seconds
    assert more_data.total_seconds > small.total_seconds


def test_measured_speed_is_cached_and_refreshed_on_request():
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    first = measure_speed("cnn", 48, batch_size=8, budget_seconds=0.3)
    assert torch.rand(1) == before, "measuring must leave the caller's random stream as it was"
    assert first.model == "cnn" and first.image_size == 48 and first.device == "cpu"
    assert first.train_seconds_per_image > 0 and first.eval_seconds_per_image > 0
    assert first.train_step_seconds >= 0 and first.eval_batch_seconds >= 0
    cache = json.loads((cache_root() / "speed.json").read_text())
    assert any("cnn" in key and "48 px" in key for key in cache)

    again = measure_speed("cnn", 48, batch_size=8, budget_seconds=0.3)
    assert again.measured_unix == first.measured_unix  # read from the cache, not measured again
    fresh = measure_speed("cnn", 48, batch_size=8, budget_seconds=0.3, refresh=True)
    assert fresh.measured_unix > first.measured_unix


def test_a_damaged_speed_cache_is_measured_again():
    path = cache_root() / "speed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    measured = measure_speed("cnn", 48, batch_size=8, budget_seconds=0.2)
    assert measured.train_seconds_per_image > 0
    assert json.loads(path.read_text())  # rewritten whole


def test_estimate_without_a_speed_measures_the_configured_model():
    config = TrainConfig(data="x", model="cnn", image_size=48, epochs=1, batch_size=8, device="cpu")
    estimate = estimate_run(config, {"train": 16, "val": 8, "test": 8})
    assert estimate.speed.model == "cnn" and estimate.speed.image_size == 32
    assert estimate.total_seconds > 0 and not estimate.cached
    assert estimate_run(config, {"train": 16, "val": 8, "test": 8}).cached

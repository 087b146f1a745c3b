"""Time estimates before training: the arithmetic from a measured speed to a run's seconds, the
speed cache that keeps the Train page from measuring on every slider move, and durations as a
user reads them. (How close the estimates come to real runs: benchmarks/estimate_accuracy.py.)"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fvr_core.config import TrainConfig
from fvr_core.training.estimate import DECODE_SECONDS_PER_IMAGE, Speed, estimate_run, format_duration, measure_speed
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


@pytest.mark.parametrize("changes", [dict(epochs=3), dict(epochs=3, max_steps=5), dict(epochs=2, batch_size=5)])
def test_estimate_counts_the_steps_images_and_evaluations_a_real_run_makes(changes, tmp_path):
    """With a speed of 10 s a step, 1 s an image trained and 100 s an image evaluated, the estimate
    must equal what the trainer really did: its steps, the images it trained on (a last partial
    batch, an epoch cut by max_steps), a validation pass per epoch and one test pass."""
    from conftest import make_class_folders
    from fvr_core.training.trainer import train

    data = make_class_folders(tmp_path / "data", 12, 12, size=(32, 32))
    config = TrainConfig(data=str(data), model="tiny_cnn", image_size=48, threads=1, **{"batch_size": 8, **changes})
    run = train(config, runs_dir=tmp_path / "runs")
    split, epochs = run.split(), run.epoch_rows()
    sizes = {name: len(split[name]) for name in ("train", "val", "test")}
    steps = run.status()["total_steps"]
    assert epochs[-1]["step"] == steps
    trained = round(sum(e["images_per_s"] * e["epoch_seconds"] for e in epochs))  # images seen, epoch by epoch
    evaluated = len(epochs) * sizes["val"] + len(run.split()["test"])
    assert run.test_metrics()["n"] == sizes["test"]

    unit = Speed(model="tiny_cnn", image_size=48, device="cpu", threads=1, batch_size=config.batch_size,
                 train_step_seconds=10.0, train_seconds_per_image=1.0 + 10.0 / config.batch_size,
                 eval_batch_seconds=0.0, eval_seconds_per_image=100.0, measured_unix=0.0)
    warm = estimate_run(config, sizes, decoded=True, speed=unit)
    assert warm.train_seconds == pytest.approx(10 * steps + trained)
    assert warm.eval_seconds == pytest.approx(100 * evaluated)
    assert warm.total_seconds == pytest.approx(warm.train_seconds + warm.eval_seconds) and warm.decode_seconds == 0
    cold = estimate_run(config, sizes, decoded=False, speed=unit)
    assert cold.decode_seconds == pytest.approx(sum(sizes.values()) * DECODE_SECONDS_PER_IMAGE)
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
    assert estimate.speed.model == "cnn" and estimate.speed.image_size == 48
    assert estimate.total_seconds > 0 and not estimate.cached
    assert estimate_run(config, {"train": 16, "val": 8, "test": 8}).cached


# ---- estimates that hold: finished runs first, stale or contradicted measurements taken again


@pytest.fixture
def finished_run(demo_data):
    from fvr_core.training.trainer import train

    config = TrainConfig(data=str(demo_data), model="cnn", epochs=2, image_size=48, batch_size=16, device="cpu")
    run = train(config)
    assert run.state == "completed"
    return config, run


def test_a_finished_run_is_the_first_source_and_predicts_itself(finished_run):
    from fvr_core.training.estimate import observed_speed, speed_for
    from fvr_core.runs.store import RunStore

    config, run = finished_run
    runs = RunStore().list()
    seen = observed_speed(runs, "cnn", 48, 16)
    assert seen is not None and seen.source == f"run {run.id}"
    assert observed_speed(runs, "cnn", 64, 16) is None and observed_speed(runs, "cnn", 48, 32) is None
    split = run.split()
    sizes = {name: len(split[name]) for name in ("train", "val", "test")}
    estimate = estimate_run(config, sizes, decoded=False, speed=speed_for(config, runs, measure=False))
    actual = run.status()["train_seconds"]
    # the same settings again: the estimate is that run's own time (decoding counted apart)
    assert estimate.from_run and abs(estimate.total_seconds - estimate.decode_seconds - actual) < 0.05 * actual
    low, high = estimate.range_seconds()
    assert low < estimate.total_seconds < high and "as fast as run" in estimate.describe()


def test_a_measurement_that_disagrees_with_a_finished_run_is_dropped(finished_run):
    from fvr_core.training.estimate import _cache_key, _threads_used, speed_for
    from fvr_core.runs.store import RunStore

    config, _ = finished_run
    key = _cache_key("cnn", 48, 16, "cpu", _threads_used(0, "cpu"))
    wrong = speed(train_per_image=5.0, batch_size=16).to_dict() | {"image_size": 48, "measured_unix": __import__("time").time()}
    (cache_root() / "speed.json").parent.mkdir(parents=True, exist_ok=True)
    (cache_root() / "speed.json").write_text(json.dumps({key: wrong}))
    assert speed_for(config, RunStore().list(), measure=False).source.startswith("run ")
    assert key not in json.loads((cache_root() / "speed.json").read_text()), "the contradicted figure must go"


def test_a_stale_measurement_is_taken_again():
    from fvr_core.training.estimate import STALE_SECONDS, speed_for

    config = TrainConfig(data="x", model="cnn", image_size=48, batch_size=8, device="cpu")
    first = measure_speed("cnn", 48, batch_size=8, budget_seconds=0.2)
    assert speed_for(config, measure=False) == first  # fresh: reused
    cache = json.loads((cache_root() / "speed.json").read_text())
    for entry in cache.values():
        entry["measured_unix"] -= STALE_SECONDS + 1
    (cache_root() / "speed.json").write_text(json.dumps(cache))
    assert speed_for(config, measure=False) is None  # stale: not offered without measuring
    again = speed_for(config, budget_seconds=0.2)
    assert again.measured_unix > first.measured_unix and again.source == "measured"


def test_all_four_together_add_up_and_decode_once():
    from fvr_core.training.estimate import estimate_runs

    sizes = {"train": 480, "val": 160, "test": 160}
    configs = [TrainConfig(data="x", model=m, epochs=2) for m in ("cnn", "resnet18")]
    speeds = [speed(), speed(train_per_image=0.05)]
    parts = [estimate_run(c, sizes, decoded=i > 0, speed=s) for i, (c, s) in enumerate(zip(configs, speeds))]
    together = estimate_runs(configs, sizes, decoded=False, speeds=speeds)
    assert together.total_seconds == pytest.approx(sum(p.total_seconds for p in parts))
    assert together.decode_seconds == pytest.approx(parts[0].decode_seconds) and parts[0].decode_seconds > 0
    low, high = together.range_seconds()
    assert low < together.total_seconds < high

"""The training engine on small generated data: a completed run folder, stop, divergence,
early stopping and resume."""

from __future__ import annotations

import csv
import json
import math
import tempfile

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import make_class_folders
from fvr_core.config import TrainConfig
from fvr_core.data.dataset import DataError
from fvr_core.runs.store import COMPLETED, DIVERGED, FAILED, STOPPED, RunStore
from fvr_core.training.trainer import resume, train


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    """Reddish fakes, bluish reals: learnable in a few steps."""
    return make_class_folders(tmp_path_factory.mktemp("colours"), n_fake=20, n_real=20, size=(32, 32))


def small(data, **changes) -> TrainConfig:
    base = dict(data=str(data), model="tiny_cnn", epochs=2, image_size=48, batch_size=8, threads=1)
    return TrainConfig(**{**base, **changes})


def test_completed_run_folder_has_everything_a_reader_needs(colour_data, tmp_path):
    run = train(small(colour_data, epochs=3), runs_dir=tmp_path)
    status = run.status()
    assert status["state"] == COMPLETED, status
    split = run.split()
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(
        [f"fake/f{i}.jpg" for i in range(20)] + [f"real/r{i}.jpg" for i in range(20)])
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (24, 8, 8)
    epochs = run.epoch_rows()
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_roc_auc", "images_per_s", "epoch_seconds", "elapsed"):
        assert all(key in e for e in epochs), key
    steps = run.step_rows()
    assert [s["step"] for s in steps] == list(range(1, 3 * 3 + 1))  # 24 images / batch 8 = 3 steps per epoch
    assert all(math.isfinite(s["loss"]) and s["grad_norm"] >= 0 and s["lr"] > 0 for s in steps)
    test = run.test_metrics()
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"):
        assert key in test
    assert sum(map(sum, test["confusion_matrix"])) == 8
    with open(run.path / "test_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(split["test"])
    assert all(0.0 <= float(r["prob_fake"]) <= 1.0 for r in rows)
    meta = json.loads((run.path / "best.json").read_text())
    assert meta["model"] == "tiny_cnn" and meta["image_size"] == 48 and meta["classes"] == ["fake", "real"]
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert set(load_file(run.path / "last.safetensors")) == set(load_file(run.path / "best.safetensors"))
    assert json.loads((run.path / "data_report.json").read_text())["counts"] == {"fake": 20, "real": 20}


def test_training_learns_an_easy_task(colour_data, tmp_path):
    run = train(small(colour_data, model="cnn", epochs=6, lr=3e-4), runs_dir=tmp_path)  # the real model learns
    assert run.test_metrics()["accuracy"] >= 0.875
    assert run.epoch_rows()[-1]["train_loss"] < run.epoch_rows()[0]["train_loss"]


def test_same_seed_gives_the_same_split_and_weights(colour_data, tmp_path):
    a = train(small(colour_data, epochs=1), runs_dir=tmp_path / "a")
    b = train(small(colour_data, epochs=1), runs_dir=tmp_path / "b")
    assert a.split()["test"] == b.split()["test"]
    wa, wb = load_file(a.path / "last.safetensors"), load_file(b.path / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_memory_layout_does_not_change_what_is_learnt(colour_data, tmp_path):
    """channels_last is a speed setting: the same seed reaches the same weights up to rounding."""
    a = train(small(colour_data, epochs=1, channels_last="off"), runs_dir=tmp_path / "a")
    b = train(small(colour_data, epochs=1, channels_last="on"), runs_dir=tmp_path / "b")
    wa, wb = load_file(a.path / "last.safetensors"), load_file(b.path / "last.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert all(wb[k].is_contiguous() for k in wb)  # checkpoints stay in the standard layout


def test_compiled_training_completes_and_its_checkpoint_loads_plainly(colour_data, tmp_path, monkeypatch):
    from fvr_core.inference.predict import Predictor

    # inductor's kernels and headers (about 150 MB) go in this test's folder, removed when it passes
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    run = train(small(colour_data, epochs=1, compile=True), runs_dir=tmp_path)
    assert run.state == COMPLETED, run.status()
    assert not any(k.startswith("_orig_mod") for k in load_file(run.path / "best.safetensors"))
    assert Predictor.from_run(run).predict([Image.new("RGB", (40, 40))], face_crop=False)[0].prob_fake is not None


def test_stop_request_ends_the_run_within_one_step(colour_data, tmp_path):
    holder = {}

    def progress(event, info):
        if event == "step" and info["step"] == 4:
            holder["run"].request_stop()

    store = RunStore(tmp_path)
    holder["run"] = run = store.create(small(colour_data, epochs=5))
    from fvr_core.training.trainer import Trainer

    Trainer(run, progress).fit()
    assert run.state == STOPPED
    assert max(s["step"] for s in run.step_rows()) == 4
    assert (run.path / "best.safetensors").is_file()  # epoch 1 ended before the stop: kept
    assert run.test_metrics() is not None


def test_divergence_ends_the_run_with_a_hint(colour_data, tmp_path):
    run = train(small(colour_data, model="cnn", lr=1e6, optimizer="sgd", momentum=0.0, epochs=3), runs_dir=tmp_path)
    status = run.status()
    assert status["state"] == DIVERGED
    assert "diverged at step" in status["message"]
    assert "learning rate" in status["hint"] and "vgg19_bn" in status["hint"]
    assert len(run.step_rows()) < 9  # it did not go on training on garbage


def test_gradient_clipping_limits_the_update(colour_data, tmp_path):
    run = train(small(colour_data, lr=1e6, optimizer="sgd", momentum=0.0, epochs=1, grad_clip=1e-9), runs_dir=tmp_path)
    assert run.state == COMPLETED  # with the norm clipped to ~0 a huge lr cannot blow up


def test_early_stopping_ends_before_all_epochs(colour_data, tmp_path):
    run = train(small(colour_data, model="cnn", epochs=30, patience=1), runs_dir=tmp_path)
    assert run.state == COMPLETED
    assert len(run.epoch_rows()) < 30
    assert any(r.get("event") == "early_stop" for r in run.metrics())


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_change_the_learning_rate(colour_data, tmp_path, schedule):
    run = train(small(colour_data, epochs=2, schedule=schedule, warmup_epochs=0.5 if schedule == "cosine" else 0), runs_dir=tmp_path)
    lrs = [s["lr"] for s in run.step_rows()]
    assert max(lrs) <= 1e-3 * 1.0001 and lrs[-1] < max(lrs) and lrs[0] < max(lrs)


@pytest.mark.parametrize("ema", [0.0, 0.8])
def test_resume_after_a_stop_matches_an_uninterrupted_run(colour_data, tmp_path, ema):
    """Stop after epoch 1, resume: the same weights as three epochs in one go (same seed), the
    weights' moving average included when training keeps one."""
    full = train(small(colour_data, epochs=3, ema=ema), runs_dir=tmp_path / "full")

    from fvr_core.training.trainer import Trainer

    store = RunStore(tmp_path / "cut")
    run = store.create(small(colour_data, epochs=3, ema=ema))
    Trainer(run, lambda e, i: run.request_stop() if e == "epoch" and i["epoch"] == 1 else None).fit()
    assert run.state == STOPPED and len(run.epoch_rows()) == 1
    resume(run)
    assert run.state == COMPLETED
    assert [e["epoch"] for e in run.epoch_rows()] == [1, 2, 3]
    steps = [s["step"] for s in run.step_rows()]
    assert steps == sorted(set(steps)) and steps[-1] == 9
    a, b = load_file(full.path / "last.safetensors"), load_file(run.path / "last.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert run.test_metrics()["accuracy"] == full.test_metrics()["accuracy"]


def test_weight_averaging_validates_selects_and_saves_the_average(colour_data, tmp_path):
    """With ema on, last.safetensors holds the moving average of the weights (what the last epoch
    row scored), not the weights the optimizer left."""
    from fvr_core.training.trainer import Trainer

    decay = 0.8
    run = RunStore(tmp_path).create(small(colour_data, epochs=2, ema=decay))
    trainer = Trainer(run)
    by_hand, raw = {}, {}
    train_step = trainer._train_step

    def step_then_average_by_definition(images, labels):
        out = train_step(images, labels)
        for name, value in trainer.model.state_dict().items():
            if value.is_floating_point():
                raw[name] = value.clone()
                by_hand[name] = value.clone() if name not in by_hand else decay * by_hand[name] + (1 - decay) * value
        return out

    trainer._train_step = step_then_average_by_definition
    trainer.fit()
    assert run.state == COMPLETED
    saved = load_file(run.path / "last.safetensors")
    assert by_hand and all(torch.allclose(saved[name], value, atol=1e-6) for name, value in by_hand.items())
    assert any(not torch.allclose(saved[name], raw[name]) for name in raw)


def test_unusable_data_fails_the_run_with_the_reason(tmp_path):
    data = make_class_folders(tmp_path / "one-class", n_fake=5, n_real=0)
    (data / "real").mkdir(exist_ok=True)
    with pytest.raises(DataError, match="real has 0"):
        train(small(data), runs_dir=tmp_path / "runs")
    (run,) = RunStore(tmp_path / "runs").list()
    assert run.state == FAILED and "real has 0" in run.status()["message"]
    assert (run.path / "error.txt").is_file()


def test_training_on_native_crops_evaluates_whole_images(colour_data, tmp_path):
    run = train(small(colour_data, epochs=1, image_size=56, train_crop=44), runs_dir=tmp_path)  # the cnn's smallest input
    assert run.state == COMPLETED, run.status()
    assert run.test_metrics()["n"] == 8  # whole 56 px test images went through the same model
    with pytest.raises(Exception, match="train_crop"):
        small(colour_data, train_crop=64).validate()  # larger than image_size (48)


def test_random_crops_are_untouched_windows_of_each_image():
    from fvr_core.data.augment import random_crop

    images = torch.arange(4 * 3 * 20 * 20, dtype=torch.int32).reshape(4, 3, 20, 20)
    crops = random_crop(images, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 8, 8)
    for image, crop in zip(images, crops):
        top, left = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 20)
        assert torch.equal(crop, image[:, top:top + 8, left:left + 8])
    assert torch.equal(random_crop(images, 20, torch.Generator()), images)

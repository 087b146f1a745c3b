"""Shipping runs with the repository: a reference run keeps what Compare and Predict read, its
weights shrink to fp16 or are left out when too large, and it predicts like the original."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import make_class_folders
from fvr_core.config import TrainConfig
from fvr_core.predict import Predictor
from fvr_core.reference import export_reference, reference_info
from fvr_core.runs import COMPLETED, RunError, RunStore
from fvr_core.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_class_folders(tmp_path_factory.mktemp("colours"), n_fake=12, n_real=12, size=(32, 32))
    return train(TrainConfig(data=str(data), model="cnn", epochs=1, image_size=32, batch_size=8, threads=1),
                 runs_dir=tmp_path_factory.mktemp("runs"))


def test_a_reference_run_reads_like_the_run_and_predicts_alike(run, tmp_path):
    shipped = export_reference(run, tmp_path, max_mb=1000)
    assert reference_info(shipped)["weights"] == "fp32"
    assert shipped.state == COMPLETED and shipped.test_metrics() == run.test_metrics()
    assert [e["epoch"] for e in shipped.epoch_rows()] == [e["epoch"] for e in run.epoch_rows()]
    assert not any((shipped.path / name).exists() for name in ("last.safetensors", "last_state.pt", "heartbeat"))
    assert "pid" not in json.loads((shipped.path / "status.json").read_text())
    image = Image.new("RGB", (40, 40), (200, 60, 60))
    assert Predictor.from_run(shipped).predict_one(image, face_crop=False).prob_fake == pytest.approx(
        Predictor.from_run(run).predict_one(image, face_crop=False).prob_fake, abs=1e-6)


def test_large_weights_ship_in_fp16_or_not_at_all(run, tmp_path):
    size_mb = run.checkpoint("best").stat().st_size / 1e6
    halved = export_reference(run, tmp_path / "a", max_mb=size_mb * 0.6)
    assert reference_info(halved)["weights"] == "fp16"
    assert halved.checkpoint("best").stat().st_size < size_mb * 0.6e6
    image = Image.new("RGB", (40, 40), (200, 60, 60))
    assert Predictor.from_run(halved).predict_one(image, face_crop=False).prob_fake == pytest.approx(
        Predictor.from_run(run).predict_one(image, face_crop=False).prob_fake, abs=2e-2)

    bare = export_reference(run, tmp_path / "b", max_mb=size_mb * 0.1)
    assert reference_info(bare)["weights"] == "none" and "metrics and curves only" in reference_info(bare)["note"]
    with pytest.raises(RunError, match="no best checkpoint"):
        bare.checkpoint("best")
    assert bare.test_metrics() == run.test_metrics()  # Compare still shows it


def test_only_completed_runs_ship(run, tmp_path):
    queued = RunStore(tmp_path / "runs").create(run.config)
    with pytest.raises(RunError, match="only completed or diverged runs"):
        export_reference(queued, tmp_path / "ref")

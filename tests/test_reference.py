"""Shipping runs with the repository: a reference run keeps what Compare and Predict read, its
weights shrink to fp16 or are left out when too large, and it predicts like the original."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_class_folders
from fvr_core.config import TrainConfig
from fvr_core.metrics import classification_metrics
from fvr_core.inference.predict import Predictor
from fvr_core.runs.reference import export_reference, reference_info
from fvr_core.runs.store import COMPLETED, RunError, RunStore
from fvr_core.settings import PROJECT_ROOT, beside_project, portable_data_path
from fvr_core.training.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_class_folders(tmp_path_factory.mktemp("colours"), n_fake=12, n_real=12, size=(32, 32))
    return train(TrainConfig(data=str(data), model="tiny_cnn", epochs=1, image_size=48, batch_size=8, threads=1),
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


def test_an_fp16_export_keeps_small_tensors_in_fp32_when_they_fit(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from fvr_core.runs.reference import KEEP_FP32_BELOW, _write_weights

    large, small = torch.randn(KEEP_FP32_BELOW), torch.full((100,), 1e-5) + torch.rand(100) * 1e-3
    save_file({"conv": large, "scale": small}, str(tmp_path / "fp32.safetensors"))
    fp32_mb = (tmp_path / "fp32.safetensors").stat().st_size / 1e6
    assert _write_weights(tmp_path / "fp32.safetensors", tmp_path / "mixed.safetensors", fp32_mb * 0.6) == "fp16"
    mixed = load_file(str(tmp_path / "mixed.safetensors"))
    assert mixed["conv"].dtype == torch.float16 and torch.equal(mixed["scale"], small)


def test_only_completed_runs_ship(run, tmp_path):
    queued = RunStore(tmp_path / "runs").create(run.config)
    with pytest.raises(RunError, match="only completed or diverged runs"):
        export_reference(queued, tmp_path / "ref")


def test_an_ensemble_averages_the_runs_test_probabilities(run, tmp_path):
    from fvr_core.report.compare import ensemble_test_metrics, test_predictions

    alone = ensemble_test_metrics([run])
    assert alone["accuracy"] == pytest.approx(run.test_metrics()["accuracy"])
    other = train(run.config.replace(seed=run.config.seed, epochs=2), runs_dir=tmp_path)
    both = ensemble_test_metrics([run, other])
    mean = ((test_predictions(run)["prob_fake"] + test_predictions(other)["prob_fake"]) / 2).to_numpy()
    labels = (test_predictions(run)["label"] == "real").astype(int).to_numpy()  # fake = 0, real = 1
    assert both == classification_metrics(labels, mean)
    moved = train(run.config.replace(seed=7), runs_dir=tmp_path)  # another split
    with pytest.raises(RunError, match="different images"):
        ensemble_test_metrics([run, moved])


def test_the_shipped_reference_runs_load_and_predict():
    """What a fresh clone shows on Compare and Predict: checkpoints/reference in this repository."""
    from fvr_core.settings import PROJECT_ROOT

    shipped = RunStore(PROJECT_ROOT / "checkpoints" / "reference").list()
    if not shipped:
        pytest.skip("no reference runs in this checkout")
    image = Image.new("RGB", (64, 64), (128, 110, 100))
    for ref in shipped:
        assert ref.state in (COMPLETED, "diverged"), ref.id
        if reference_info(ref)["weights"] != "none":
            assert ref.checkpoint("best").stat().st_size <= 25e6
            assert 0 <= Predictor.from_run(ref).predict_one(image, face_crop=False).prob_fake <= 1
        elif ref.state == COMPLETED:
            assert ref.test_metrics() and ref.epoch_rows()  # metrics and curves without weights


def test_an_exported_run_names_its_data_without_the_training_machines_path(run, tmp_path):
    shipped = export_reference(run, tmp_path)
    for name in ("config.json", "split.json", "data_report.json"):
        text = (shipped.path / name).read_text()
        assert str(tmp_path.parent) not in text and "/tmp" not in text, name
    assert shipped.config.data == Path(run.config.data).name  # outside the project: only the folder's name
    assert reference_info(shipped)["source_run"] == run.id


def test_portable_paths_are_relative_to_the_project_and_resolve_from_anywhere(monkeypatch, tmp_path):
    beside = PROJECT_ROOT.parent / "shared" / "datasets" / "faces"
    assert portable_data_path(str(beside)) == "../shared/datasets/faces"
    assert portable_data_path(str(PROJECT_ROOT / "data" / "mine")) == "data/mine"
    assert portable_data_path(f"fake:{beside}") == "fake:../shared/datasets/faces"
    assert portable_data_path("/somewhere/else/faces") == "faces"
    monkeypatch.chdir(tmp_path)  # a notebook started in another folder
    assert beside_project("../shared/datasets/faces") == beside.resolve()
    assert beside_project(str(tmp_path)) == tmp_path


def test_no_shipped_reference_run_carries_a_machines_absolute_path():
    shipped = sorted((PROJECT_ROOT / "checkpoints" / "reference").glob("*/*.json"))  # the repository's, not a test's
    assert shipped, "checkpoints/reference holds no runs"
    for path in shipped:
        def strings(value):
            if isinstance(value, dict):
                for v in value.values():
                    yield from strings(v)
            elif isinstance(value, list):
                for v in value:
                    yield from strings(v)
            elif isinstance(value, str):
                yield value
        absolute = [s for s in strings(json.loads(path.read_text())) if s.startswith(("/", "~")) or ":/" in s[:4]]
        assert not absolute, f"{path} holds {absolute[:3]}"

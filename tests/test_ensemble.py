"""Ensembles as runs of their own (members' calibrated log-odds averaged, calibrated again, tested
on the shared split), and "best run of each model" leaving out runs at chance level."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_planted_folders
from fvr_core import cli
from fvr_core.report.compare import best_run_per_model, best_runs_above_chance, comparison_table
from fvr_core.config import TrainConfig
from fvr_core.data.dataset import load_dataset
from fvr_core.inference.ensembles import make_ensemble
from fvr_core.inference.evaluation import evaluate_run
from fvr_core.inference.predict import Predictor
from fvr_core.runs.store import COMPLETED, Run, RunError
from fvr_core.training.trainer import train

SIZE = 48


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A cnn and the classical detector trained on the same split (same data and seed)."""
    data = make_planted_folders(tmp_path_factory.mktemp("planted"), SIZE)
    runs_dir = tmp_path_factory.mktemp("runs")
    base = dict(data=str(data), image_size=SIZE, batch_size=8, threads=1, seed=3)
    return data, runs_dir, [train(TrainConfig(model="cnn", epochs=2, **base), runs_dir=runs_dir),
                            train(TrainConfig(model="cooc_lr", **base), runs_dir=runs_dir)]


def test_an_ensemble_is_a_completed_calibrated_run_averaging_its_members_log_odds(members):
    data, runs_dir, runs = members
    ensemble = make_ensemble(runs, runs_dir)
    assert ensemble.state == COMPLETED and ensemble.config.model == "ensemble"
    assert ensemble.split() == runs[0].split()
    test = ensemble.test_metrics()
    assert test["n"] == len(runs[0].split()["test"])
    assert (ensemble.path / "calibration.json").is_file() and (ensemble.path / "test_predictions.csv").is_file()

    images = load_dataset(data, SIZE).images[:6]
    member_log_odds = []
    for run in runs:
        predictor = Predictor.from_run(run)
        logits = predictor.logits(images)
        member_log_odds.append((logits[:, 0] - logits[:, 1]) / predictor.temperature)
    loaded = Predictor.from_run(ensemble)  # through the checkpoint on disk, like Predict
    logits = loaded.logits(images)
    assert torch.allclose(logits[:, 0] - logits[:, 1], torch.stack(member_log_odds).mean(0), atol=1e-4)
    calibrated, _ = loaded.probabilities(images)
    assert np.all((0 <= calibrated) & (calibrated <= 1))
    # its test metrics are those of its own checkpoint, evaluated again the ordinary way
    assert evaluate_run(ensemble)["roc_auc"] == pytest.approx(test["roc_auc"])


def test_members_must_share_the_split(members, tmp_path):
    data, runs_dir, runs = members
    other = train(TrainConfig(data=str(data), model="cnn", epochs=1, image_size=SIZE, batch_size=8, threads=1, seed=4),
                  runs_dir=tmp_path)
    with pytest.raises(RunError, match=other.id):
        make_ensemble([runs[0], other], tmp_path)
    with pytest.raises(RunError, match="at least two"):
        make_ensemble(runs[:1], tmp_path)


def test_the_cli_makes_an_ensemble_that_compare_lists_like_any_run(members, tmp_path, capsys):
    data, runs_dir, runs = members
    assert cli.main(["ensemble", "--runs-dir", str(tmp_path), str(runs[0].path), str(runs[1].path),
                     "--combine", "probability", "--name", "both"]) == cli.EXIT_OK
    assert "test metrics" in capsys.readouterr().out
    (made,) = [Run(p) for p in tmp_path.iterdir() if (p / "config.json").is_file()]
    assert made.config.name == "both" and json.loads((made.path / "best.json").read_text())["combine"] == "probability"
    table = comparison_table([made, *runs])
    assert list(table["model"]) == ["ensemble", "cnn", "cooc_lr"]
    # made in one pass each: the 30 epochs their configs inherit were never trained
    assert list(table["epochs"]) == ["one fit", f"{runs[0].config.epochs}/{runs[0].config.epochs}", "one fit"]
    assert best_run_per_model([made, *runs])["ensemble"].id == made.id


def test_best_run_of_each_model_leaves_out_a_run_at_chance_and_says_why(members, tmp_path):
    _, _, runs = members
    chance = Run(shutil.copytree(runs[0].path, tmp_path / runs[0].id))
    metrics = chance.test_metrics()
    (chance.path / "test_metrics.json").write_text(json.dumps({**metrics, "balanced_accuracy": 0.55, "roc_auc": 0.9}))
    chosen, skipped = best_runs_above_chance([chance, runs[1]])
    assert "cnn" not in chosen and "balanced accuracy 0.55 < 0.6" in skipped["cnn"] and chance.id in skipped["cnn"]
    (chance.path / "test_metrics.json").write_text(json.dumps({**metrics, "balanced_accuracy": 0.9, "roc_auc": 0.6}))
    chosen, skipped = best_runs_above_chance([chance])
    assert not chosen and "ROC AUC 0.60 < 0.65" in skipped["cnn"]
    (chance.path / "test_metrics.json").write_text(json.dumps({**metrics, "balanced_accuracy": 0.9, "roc_auc": 0.95}))
    assert best_runs_above_chance([chance]) == ({"cnn": chance}, {})

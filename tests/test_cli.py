"""python -m fvr_core end to end on the shared real faces: train a few steps, list, evaluate,
predict (a broken file gets a message), plus help, bad settings and offline download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, write_image
from fvr_core import cli


def fvr(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fvr_core", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import SHARED_FACES

    if not (SHARED_FACES / "data.csv").is_file():
        pytest.skip(f"the shared data set is absent ({SHARED_FACES}); CI has it beside the checkout")
    runs = tmp_path_factory.mktemp("cli-runs")
    result = fvr("train", "--data", str(SHARED_FACES), "--model", "cnn", "--epochs", "1", "--image-size", "48",
                 "--batch-size", "32", "--threads", "1", "--runs-dir", str(runs), "--name", "cli-test")
    assert result.returncode == 0, result.stderr + result.stdout
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return runs, run_dir, result


def test_train_writes_a_completed_run(trained):
    runs, run_dir, result = trained
    assert "completed" in result.stdout
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed"
    split = json.loads((run_dir / "split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (480, 160, 160)
    assert sum(i.startswith("fake/") for i in split["test"]) == 40


def test_runs_lists_the_run(trained):
    runs, run_dir, _ = trained
    result = fvr("runs", "--runs-dir", str(runs), "--json")
    rows = json.loads(result.stdout)
    assert [r["run"] for r in rows] == [run_dir.name]
    assert rows[0]["state"] == "completed" and rows[0]["name"] == "cli-test" and rows[0]["test_acc"] is not None
    table = fvr("runs", "--runs-dir", str(runs)).stdout
    assert run_dir.name in table and "completed" in table


def test_evaluate_on_the_saved_test_split_matches_training(trained):
    runs, run_dir, _ = trained
    result = fvr("evaluate", run_dir.name, "--runs-dir", str(runs), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    saved = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["n"] == 160 and metrics["split"] == "test"
    assert metrics["accuracy"] == pytest.approx(saved["accuracy"])
    assert metrics["confusion_matrix"] == saved["confusion_matrix"]
    text = fvr("evaluate", run_dir.name, "--runs-dir", str(runs)).stdout
    assert "balanced accuracy" in text and "confusion matrix" in text


def test_evaluate_with_moved_data(trained, tmp_path):
    from conftest import SHARED_FACES

    runs, run_dir, _ = trained
    moved = tmp_path / "moved"
    moved.symlink_to(SHARED_FACES, target_is_directory=True)
    result = fvr("evaluate", run_dir.name, "--runs-dir", str(runs), "--data", str(moved), "--split", "all", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 800


def test_predict_prints_probabilities_and_survives_a_broken_file(trained, tmp_path):
    from conftest import SHARED_FACES

    runs, run_dir, _ = trained
    good = SHARED_FACES / "fake" / "fake_0.jpg"
    wide = write_image(tmp_path / "wide photo.png", size=(640, 360))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    result = fvr("predict", run_dir.name, str(good), str(wide), str(broken), "--runs-dir", str(runs), "--json")
    assert result.returncode == cli.EXIT_DATA
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == [str(good), str(wide), str(broken)]
    assert [r["error"] is None for r in rows] == [True, True, False]
    assert rows[0]["face"] == "face" and 0 <= rows[0]["prob_fake"] <= 1 and rows[0]["verdict"] in ("fake", "real", "unsure")
    # no face in the wide picture: not judged, unless asked to judge the whole image
    assert rows[1]["verdict"] == "not judged" and rows[1]["prob_fake"] is None and "no face found" in rows[1]["face"]
    assert "not an image" in rows[2]["error"]
    asked = fvr("predict", run_dir.name, str(wide), "--runs-dir", str(runs), "--json", "--judge-without-face")
    (row,) = json.loads(asked.stdout)
    assert row["face"] == "no face found: whole image" and 0 <= row["prob_fake"] <= 1 and row["verdict"] in ("fake", "real", "unsure")


def test_predict_a_folder_to_csv_and_evaluate_a_labelled_folder(trained, tmp_path):
    import csv
    import shutil

    from conftest import SHARED_FACES

    runs, run_dir, _ = trained
    photos = tmp_path / "outside"
    photos.mkdir()
    names = {"fake/fake_1.jpg": "fake", "fake/fake_2.jpg": "fake", "real/1.jpg": "real", "real/2.jpg": "real"}
    for source, label in names.items():
        shutil.copy(SHARED_FACES / source, photos / f"{label} {Path(source).name}")
    (photos / "labels.csv").write_text("file,label\n" + "".join(f"{label} {Path(s).name},{label}\n" for s, label in names.items())
                                       + "missing.jpg,fake\n")
    out = tmp_path / "predictions.csv"
    result = fvr("predict", run_dir.name, str(photos), "--runs-dir", str(runs), "--csv", str(out), "--tta")
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["image"]).name for r in rows) == sorted(f"{label} {Path(s).name}" for s, label in names.items())
    assert all(r["face"] == "face" and 0 <= float(r["prob_fake"]) <= 1 for r in rows)

    result = fvr("outside", str(photos), "--run", run_dir.name, "--runs-dir", str(runs), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (score,) = report["scores"]
    assert score["photos"] == 4 and 0 <= score["accuracy"] <= 1
    assert {r["truth"] for r in report["table"]} == {"fake", "real"}
    table = report["table"]
    assert score["accuracy"] == pytest.approx(sum((r["prob_fake"] >= 0.5) == (r["truth"] == "fake") for r in table) / 4)
    assert score["correct_confident"] == sum(r["correct"] is True for r in table)
    assert score["unsure"] == sum(r["verdict"] == "unsure" for r in table)
    assert any("missing.jpg" in p for p in report["problems"])


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "outside", "calibrate", "robustness", "runs", "download", "resume", "stop", "delete", "demo-data", "models"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bad_settings_exit_2_and_name_the_field(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path), "--epochs", "0", "--runs-dir", str(tmp_path / "r")]) == cli.EXIT_USAGE
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", str(tmp_path), "--model", "alexnet"])
    assert exit_info.value.code == 2


def test_presets_match_the_dashboard_and_options_override_them(tmp_path):
    from fvr_core.config import PRESETS

    parser = cli.build_parser()
    quick = cli._config_from_args(parser.parse_args(["train", "--data", str(tmp_path), "--preset", "quick-look"]))
    assert {k: getattr(quick, k) for k in PRESETS["Quick look"]} == PRESETS["Quick look"]
    original = cli._config_from_args(parser.parse_args(
        ["train", "--data", str(tmp_path), "--preset", "original-recipe", "--model", "vgg19_bn", "--epochs", "3"]))
    assert (original.model, original.image_size, original.epochs, original.augment) == ("vgg19_bn", 300, 3, "none")


def test_the_original_recipe_is_the_writeups_with_vgg19_at_batch_8(tmp_path):
    from fvr_core.config import original_four

    parser = cli.build_parser()

    def recipe(model: str):
        return cli._config_from_args(parser.parse_args(["train", "--data", str(tmp_path), "--preset", "original-recipe",
                                                        "--model", model]))

    cnn = recipe("cnn")
    assert (cnn.image_size, cnn.augment, cnn.optimizer, cnn.lr, cnn.epochs, cnn.seed, cnn.split, cnn.batch_size,
            cnn.schedule, cnn.weight_decay) == (300, "none", "adam", 1e-3, 30, 42, (0.6, 0.2, 0.2), 32, "none", 0.0)
    assert recipe("vgg19").batch_size == 8 and recipe("resnet18").batch_size == 32
    four = original_four(cnn, preset="Original recipe")
    assert [(c.model, c.batch_size) for c in four] == [("cnn", 32), ("resnet18", 32), ("vgg19", 8), ("vgg19_bn", 32)]
    assert [c.batch_size for c in original_four(cnn.replace(batch_size=16))] == [16, 16, 16, 16]  # no preset: as set


def test_missing_data_folder_exits_3(tmp_path, capsys):
    code = cli.main(["train", "--data", str(tmp_path / "nope"), "--epochs", "1", "--runs-dir", str(tmp_path / "r")])
    assert code == cli.EXIT_DATA
    assert "does not exist" in capsys.readouterr().err


def test_unknown_run_exits_6(tmp_path, capsys):
    assert cli.main(["evaluate", "no-such-run", "--runs-dir", str(tmp_path)]) == cli.EXIT_RUN
    assert "no run" in capsys.readouterr().err


def test_download_offline_fails_fast_with_instructions(monkeypatch, capsys):
    import kagglehub
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    start = time.time()
    assert cli.main(["download"]) == cli.EXIT_DOWNLOAD
    err = capsys.readouterr().err
    assert time.time() - start < 5
    assert "by hand" in err and "fake/" in err and "kaggle.com/datasets/hamzaboulahia/hardfakevsrealfaces" in err


def test_download_returns_the_folder_with_the_data(monkeypatch, tmp_path, capsys):
    import kagglehub

    (tmp_path / "archive" / "fake").mkdir(parents=True)
    (tmp_path / "archive" / "real").mkdir()
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, force_download=False: str(tmp_path))
    assert cli.main(["download"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "archive")


def test_demo_data_trains_from_the_cli(tmp_path):
    out = tmp_path / "demo"
    assert fvr("demo-data", "--out", str(out), "--per-class", "12", "--size", "48").returncode == 0
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    result = fvr("train", "--data", str(out), "--epochs", "1", "--image-size", "48", "--runs-dir", str(tmp_path / "runs"), "--threads", "1")
    assert result.returncode == 0, result.stderr


def test_reference_runs_are_listed_marked_and_found_by_id(monkeypatch, tmp_path):
    """The shipped reference runs (checkpoints/reference) show in `runs`, marked, and their ids
    work like any other; a reference vgg19 without weights says why it has no checkpoint."""
    shipped = REPO / "checkpoints" / "reference"
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(shipped))
    ids = sorted(p.name for p in shipped.iterdir() if (p / "config.json").is_file())
    table = fvr("runs", "--runs-dir", str(tmp_path / "none")).stdout
    assert all(i in table for i in ids) and "ref: a reference run shipped with fvr" in table
    rows = json.loads(fvr("runs", "--runs-dir", str(tmp_path / "none"), "--json").stdout)
    assert sorted(r["run"] for r in rows) == ids and all(r["reference"] for r in rows)

    cnn = next(i for i in ids if "-cnn-" in i)
    from fvr_core.runs.store import RunError, find_run

    assert find_run(cnn, tmp_path / "none").id == cnn
    assert find_run(cnn[:19], tmp_path / "none").id == cnn  # a prefix, as for the user's runs
    assert find_run(cnn[-6:], tmp_path / "none").id == cnn  # the id's tail
    with pytest.raises(RunError, match="nor among the reference runs"):
        find_run("no-such-run", tmp_path / "none")
    bare = next(i for i in ids if "-vgg19-" in i and not (shipped / i / "best.safetensors").is_file())
    result = fvr("predict", bare, str(write_image(tmp_path / "x.jpg")), "--runs-dir", str(tmp_path / "none"))
    assert result.returncode == 6 and "ships metrics and curves only" in result.stderr
    assert "has no best checkpoint yet" not in result.stderr and "reference runs of vgg19" in result.stderr

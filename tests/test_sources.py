"""Data sets of several sources (folders with class folders, folders of one generator's fakes),
their split stratified by (source, class), per-source recall, held-out and leave-one-generator-out
evaluation, and the recipe settings that choose the best checkpoint and weigh the classes."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATASETS, make_class_folders, write_image
from fvr_core.data.augment import BatchAugmenter
from fvr_core.data.augment_levels import AUGMENTATIONS
from fvr_core.cli import main
from fvr_core.config import ConfigError, TrainConfig
from fvr_core.data.dataset import (DataError, ImageSet, load_dataset, parse_sources, per_source_recall, split_ids,
                              stratified_split)
from fvr_core.inference.heldout import evaluate_held_out, held_out_results
from fvr_core.training.leave_one_out import leave_one_generator_out, without_sources
from fvr_core.runs.store import COMPLETED, RunStore
from fvr_core.settings import FAKE, IMAGENET_MEAN, IMAGENET_STD, REAL
from fvr_core.training.trainer import class_loss_weights, selection_score, train


# a light model (1.5 M parameters: 30 MB a run folder, where the cnn's is 100 MB) on tiny images
SMALL = dict(model="mobilenet_v3_small", image_size=32, batch_size=8, threads=1)


def make_fakes(folder: Path, n: int, size=(40, 40), colour=(170, 70, 60), prefix="g") -> Path:
    """A folder of one generator's fakes only (no class folders), like extra-gan-fakes/stylegan3."""
    for i in range(n):
        write_image(folder / f"{prefix}{i}.jpg", size, colour)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A two-class set (10 fake, 15 real), a folder of 10 'gan2' fakes (other size) and one of
    10 'gan3' fakes."""
    base = tmp_path_factory.mktemp("sources")
    faces = make_class_folders(base / "faces", n_fake=10, n_real=15, size=(32, 32))
    gan2 = make_fakes(base / "gan2", 10, size=(50, 40), prefix="b")
    gan3 = make_fakes(base / "gan3", 10, size=(36, 36), colour=(190, 50, 80), prefix="s")
    return faces, gan2, gan3


@pytest.fixture(scope="module")
def multi_run(sources, tmp_path_factory):
    """A small model trained on all three sources, best checkpoint chosen by validation balanced accuracy."""
    faces, gan2, gan3 = sources
    config = TrainConfig(data=f"{faces};fake:{gan2};fake:{gan3}", **SMALL, epochs=4, select_metric="val_balanced_accuracy", class_weights="balanced", augment="residual")
    run = train(config, runs_dir=tmp_path_factory.mktemp("multi-runs"))
    assert run.state == COMPLETED, run.status()
    return run


# ---------------------------------------------------------------- sources and the split


def test_sources_parse_with_their_class_and_round_trip_through_config_and_cli(sources, tmp_path):
    faces, gan2, gan3 = sources
    parsed = parse_sources(f"{faces}; fake:{gan2} ;REAL:{gan3}")
    assert [(s.path, s.label) for s in parsed] == [(str(faces), None), (str(gan2), FAKE), (str(gan3), REAL)]
    with pytest.raises(DataError, match="names no folder"):
        parse_sources("fake:")

    listed = TrainConfig.from_dict({"data": [str(faces), f"fake:{gan2}"]})  # a list in a hand-written config
    assert listed.data == f"{faces};fake:{gan2}"
    assert TrainConfig.from_dict(json.loads(listed.to_json())) == listed
    old = TrainConfig.from_dict({"data": str(faces), "model": "cnn"})  # a config.json from before sources
    assert old.data == str(faces) and old.class_weights == "none" and old.select_metric == "val_loss"

    # --data once per source; the run's config.json holds them with absolute paths
    code = main(["train", "--runs-dir", str(tmp_path), "--data", str(faces), "--data", f"fake:{gan2}",
                 "--model", SMALL["model"], "--image-size", "32", "--epochs", "1", "--max-steps", "1", "--threads", "1"])
    assert code == 0
    (run,) = RunStore(tmp_path).list()
    assert run.config.data == f"{faces.resolve()};fake:{gan2.resolve()}"


def test_several_sources_load_at_one_size_with_ids_by_source(sources):
    faces, gan2, gan3 = sources
    data = load_dataset(f"{faces};fake:{gan2};fake:{gan3}", 48)
    assert data.images.shape == (45, 3, 48, 48)  # 32, 50x40 and 36 px images, all at the training size
    assert data.source_names == ["faces", "gan2", "gan3"]
    assert Counter(i.split("/")[0] for i in data.ids) == {"faces": 25, "gan2": 10, "gan3": 10}
    assert data.class_counts() == {"fake": 30, "real": 15}
    assert all(data.path_of(i).is_file() for i in data.ids)
    assert set(data.labels[data.sources > 0]) == {FAKE}



def test_sources_given_one_relative_and_one_absolute_load_together(sources, monkeypatch):
    faces, gan2, _ = sources
    monkeypatch.chdir(faces.parent)
    data = load_dataset(f"{faces.name};fake:{gan2}", 32)  # a relative folder beside an absolute one
    assert data.source_names == ["faces", "gan2"]
    assert all(data.path_of(i).is_file() for i in data.ids)

def test_the_split_is_stratified_by_source_and_class(sources):
    faces, gan2, gan3 = sources
    data = load_dataset(f"{faces};fake:{gan2};fake:{gan3}", 48)
    split = split_ids(data, (0.6, 0.2, 0.2), 42)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(data.ids)
    per_split = {name: Counter((i.split("/")[0], i.split("/")[1] if i.startswith("faces/") else "fake") for i in ids)
                 for name, ids in split.items()}
    # 10 images of a stratum: 6/2/2; 15: 9/3/3 (each source and class in every split, in proportion)
    assert per_split["train"] == {("faces", "fake"): 6, ("faces", "real"): 9, ("gan2", "fake"): 6, ("gan3", "fake"): 6}
    for name in ("val", "test"):
        assert per_split[name] == {("faces", "fake"): 2, ("faces", "real"): 3, ("gan2", "fake"): 2, ("gan3", "fake"): 2}


def test_one_source_splits_exactly_as_before_sources(sources):
    faces, _, _ = sources
    data = load_dataset(str(faces), 48)
    assert data.ids[0] == "fake/f0.jpg"  # ids without a source name, as split.json files hold them
    old = stratified_split(data.labels, (0.6, 0.2, 0.2), 42)  # the class-only split every existing run used
    assert split_ids(data, (0.6, 0.2, 0.2), 42) == {k: [data.ids[i] for i in v] for k, v in old.items()}


def test_shipped_reference_runs_keep_their_split():
    shared = SHARED_DATASETS / "tpdne-vs-ffhq-300"
    if not (shared / "data.csv").is_file():
        pytest.skip(f"the shared data set is absent ({shared}); CI has it beside the checkout")
    reference = Path(__file__).resolve().parent.parent / "checkpoints" / "reference"
    splits = sorted(reference.glob("*/split.json"))
    assert splits, f"no reference runs in {reference}"
    data = load_dataset(shared, 48)
    for path in splits:
        config = json.loads((path.parent / "config.json").read_text())
        saved = json.loads(path.read_text())
        now = split_ids(data, config["split"], config["seed"])
        assert all(now[k] == saved[k] for k in ("train", "val", "test")), path.parent.name


def test_adding_sources_keeps_the_first_sources_split(sources):
    """The strata of the first source come first: its images land in the same splits as when it
    was alone, so a multi-source run is tested on the same images of it as a one-source run."""
    faces, gan2, gan3 = sources
    alone = split_ids(load_dataset(str(faces), 48), (0.6, 0.2, 0.2), 42)
    together = split_ids(load_dataset(f"{faces};fake:{gan2};fake:{gan3}", 48), (0.6, 0.2, 0.2), 42)
    for name in ("train", "val", "test"):
        assert [i.removeprefix("faces/") for i in together[name] if i.startswith("faces/")] == alone[name]


def test_a_source_that_cannot_be_read_is_named(sources, tmp_path):
    faces, _, _ = sources
    code = main(["train", "--runs-dir", str(tmp_path), "--data", str(faces), "--data", f"fake:{tmp_path / 'nowhere'}"])
    assert code == 3
    with pytest.raises(ConfigError, match="holds a ';'"):
        TrainConfig.from_dict({"data": [str(faces), "a;b"]})


# ---------------------------------------------------------------- per-source recall


def test_per_source_recall_counts_fakes_caught_and_reals_kept():
    ids = [f"x{i}" for i in range(8)]
    data = ImageSet(Path("/nowhere"), np.zeros((8, 3, 8, 8), np.uint8),
                    labels=np.array([FAKE, FAKE, FAKE, REAL, REAL, FAKE, FAKE, FAKE]), ids=ids, report=None, image_size=8,
                    sources=np.array([0, 0, 0, 0, 0, 1, 1, 1]), source_names=["tpdne", "stylegan3"],
                    source_roots=[Path("/a"), Path("/b")])
    probs = np.array([0.9, 0.7, 0.2, 0.1, 0.6, 0.3, 0.5, 0.1])
    rows = per_source_recall(data, np.arange(8), probs)
    assert [(r["source"], r["class"], r["n"], r["correct"]) for r in rows] == [
        ("tpdne", "fake", 3, 2), ("tpdne", "real", 2, 1), ("stylegan3", "fake", 3, 1)]  # 0.5 counts as fake
    assert rows[2]["recall"] == pytest.approx(1 / 3) and rows[1]["what"] == "reals kept"
    only_some = per_source_recall(data, np.array([5, 6]), probs[[5, 6]])  # positions and their probabilities
    assert [(r["source"], r["n"], r["correct"]) for r in only_some] == [("stylegan3", 2, 1)]


def test_a_multi_source_run_reports_per_source_recall_of_its_test_split(multi_run, capsys):
    test = multi_run.test_metrics()
    rows = {(r["source"], r["class"]): r for r in test["per_source"]}
    assert set(rows) == {("faces", "fake"), ("faces", "real"), ("gan2", "fake"), ("gan3", "fake")}
    predictions = {line.split(",")[0]: line.split(",") for line in (multi_run.path / "test_predictions.csv").read_text().splitlines()[1:]}
    for (source, cls), row in rows.items():
        mine = [p for i, p in predictions.items() if i.startswith(source + "/") and p[1] == cls]
        assert row["n"] == len(mine) and row["correct"] == sum(p[3] == cls for p in mine)

    assert main(["evaluate", "--runs-dir", str(multi_run.path.parent), multi_run.id]) == 0
    out = capsys.readouterr().out
    assert "fakes caught" in out and "reals kept" in out and "gan3" in out


def test_compare_table_lists_each_source(multi_run):
    from fvr_core.report.compare import comparison_table, per_source_table

    row = comparison_table([multi_run]).iloc[0]
    assert (row["sources"], row["select_metric"], row["class_weights"]) == (3, "val_balanced_accuracy", "balanced")
    table = per_source_table([multi_run])
    assert set(zip(table["source"], table["class"])) == {("faces", "fake"), ("faces", "real"), ("gan2", "fake"), ("gan3", "fake")}
    assert set(table["on"]) == {"test"}


# ---------------------------------------------------------------- recipe


def test_best_checkpoint_is_the_epoch_with_the_best_chosen_metric(multi_run):
    rows = multi_run.epoch_rows()
    assert len(rows) == 4
    # the best validation balanced accuracy; of equal ones, the lowest validation loss
    best = max(rows, key=lambda r: (r["val_balanced_acc"], -r["val_loss"]))
    test = multi_run.test_metrics()
    assert test["best_epoch"] == best["epoch"] and test["selected_by"] == "val_balanced_accuracy"
    meta = json.loads((multi_run.path / "best.json").read_text())
    assert meta["epoch"] == best["epoch"]


def test_selection_scores_rank_as_documented():
    rows = [{"val_loss": 0.6, "val_balanced_acc": 0.7, "val_roc_auc": 0.8},
            {"val_loss": 0.5, "val_balanced_acc": 0.7, "val_roc_auc": 0.75},
            {"val_loss": 0.4, "val_balanced_acc": 0.6, "val_roc_auc": None}]
    def best(metric):
        return max(range(3), key=lambda i: selection_score(rows[i], metric))
    assert best("val_loss") == 2
    assert best("val_balanced_accuracy") == 1  # a tie at 0.7 goes to the lower loss
    assert best("val_roc_auc") == 0  # an AUC that could not be computed ranks last
    assert selection_score({"val_loss": math.nan, "val_roc_auc": 0.9}, "val_roc_auc") > (0.8, 0.0)


def test_balanced_class_weights_count_both_classes_equally():
    labels = np.array([FAKE] * 10 + [REAL] * 30)
    weights = class_loss_weights("balanced", labels)
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])  # n / (2 * n_class)
    assert class_loss_weights("none", labels) is None
    # a batch in the 1:3 mix where the model is equally wrong on every image: the weighted loss is
    # the mean of the two classes' losses, whatever their counts
    logits = torch.tensor([[0.0, 2.0]] * 1 + [[1.0, 0.0]] * 3)  # the fake called real, the reals called fake
    target = torch.tensor([FAKE, REAL, REAL, REAL])
    per_image = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    weighted = torch.nn.CrossEntropyLoss(weight=weights)(logits, target)
    assert float(weighted) == pytest.approx(float((per_image[0] + per_image[1:].mean()) / 2), rel=1e-5)
    assert float(torch.nn.CrossEntropyLoss()(logits, target)) == pytest.approx(float(per_image.mean()))


def test_new_settings_validate_with_clear_errors():
    with pytest.raises(ConfigError, match="select_metric='val_acc': choose one of val_loss, val_balanced_accuracy, val_roc_auc"):
        TrainConfig(data="x", select_metric="val_acc").validate()
    with pytest.raises(ConfigError, match="class_weights='auto': choose one of none, balanced"):
        TrainConfig(data="x", class_weights="auto").validate()


def test_cli_offers_the_new_settings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag in ("--class-weights", "none, balanced", "--select-metric", "val_loss, val_balanced_accuracy, val_roc_auc",
                 "residual", "--data [fake:|real:]PATH"):
        assert flag in out, flag


def test_residual_augmentation_copies_pixels_unchanged():
    spec = AUGMENTATIONS["residual"]
    assert spec.flip and spec.crop_pad and not (spec.blur or spec.jpeg or spec.colour or spec.downscale)
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (6, 3, 24, 24), dtype=np.uint8))
    out = BatchAugmenter("residual", seed=1)(batch)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (out * std + mean).mul(255).round().to(torch.int64)
    assert not torch.equal(pixels, batch.to(torch.int64))  # it did move something
    for before, after in zip(batch, pixels):
        colours = {tuple(p) for p in before.reshape(3, -1).T.tolist()}
        assert {tuple(p) for p in after.reshape(3, -1).T.tolist()} <= colours  # every pixel is one of the image's own


# ---------------------------------------------------------------- held out


def test_held_out_folder_is_scored_with_the_runs_test_reals(sources, tmp_path_factory):
    faces, gan2, _ = sources
    run = train(TrainConfig(data=f"{faces};fake:{gan2}", **SMALL, epochs=1),
                runs_dir=tmp_path_factory.mktemp("held-runs"))
    unseen = make_fakes(tmp_path_factory.mktemp("unseen") / "gan4", 7, colour=(200, 40, 40), prefix="u")
    result = evaluate_held_out(run, f"fake:{unseen}")
    test_reals = [i for i in run.split()["test"] if i.startswith("faces/real/")]
    assert result["n_held_out"] == 7 and result["left_out_seen_in_training"] == 0
    assert result["n"] == 7 + len(test_reals)
    rows = {(r["source"], r["class"]): r for r in result["per_source"]}
    assert rows[("gan4", "fake")]["n"] == 7 and rows[("faces", "real")]["n"] == len(test_reals)
    caught, kept = rows[("gan4", "fake")]["correct"], rows[("faces", "real")]["correct"]
    assert result["confusion_matrix"] == [[caught, 7 - caught], [len(test_reals) - kept, kept]]
    assert held_out_results(run)[f"fake:{unseen.resolve()}"]["n"] == result["n"]

    # a folder the run trained on is not held out: its training and validation images are left out
    seen = evaluate_held_out(run, f"fake:{gan2}", save=False)
    gan2_test = [i for i in run.split()["test"] if i.startswith("gan2/")]
    assert seen["left_out_seen_in_training"] == 10 - len(gan2_test) and seen["n_held_out"] == len(gan2_test)


def test_evaluate_held_out_from_the_cli(multi_run, tmp_path, capsys):
    unseen = make_fakes(tmp_path / "gan5", 5, prefix="v")
    assert main(["evaluate", "--runs-dir", str(multi_run.path.parent), multi_run.id, "--held-out", f"fake:{unseen}"]) == 0
    out = capsys.readouterr().out
    assert "held-out" in out and "gan5" in out and "fakes caught" in out and "balanced accuracy" in out


def test_leave_one_generator_out_trains_without_it_and_scores_it(sources, tmp_path):
    faces, gan2, gan3 = sources
    config = TrainConfig(data=f"{faces};fake:{gan2};fake:{gan3}", **SMALL, epochs=1)
    assert without_sources(config.data, f"fake:{gan3}") == f"{faces.resolve()};fake:{gan2.resolve()}"
    with pytest.raises(DataError, match="leaves no source"):
        without_sources(f"fake:{gan3}", f"fake:{gan3}")
    result = leave_one_generator_out(config, f"fake:{gan3}", runs_dir=tmp_path)
    run = RunStore(tmp_path).get(result["run"])
    assert "gan3" not in run.config.data and not any(i.startswith("gan3/") for i in sum((run.split()[k] for k in ("train", "val", "test")), []))
    assert result["n_held_out"] == 10 and result["left_out_seen_in_training"] == 0
    assert {r["source"] for r in result["per_source"]} == {"gan3", "faces"}
    assert "balanced_accuracy" in result["test"]

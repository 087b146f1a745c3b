"""Ensembles of finished runs as runs of their own: `make_ensemble(runs)` writes a run folder whose
checkpoint holds every member's weights and averages the members' calibrated log-odds of "fake".
The ensemble then gets what every run has: its own temperature fitted on the validation split,
test metrics and test predictions, so Compare, Predict, evaluation and robustness use it as they
use any run. Members must share the split (same data, seed and split lists): an ensemble tested on
images one member trained on would report a score nobody can reach.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from fvr_core.inference.calibration import calibration_from_logits, load_calibration, save_calibration
from fvr_core.runs.checkpoint import load_checkpoint, save_checkpoint
from fvr_core.config import TrainConfig
from fvr_core.data.dataset import load_dataset
from fvr_core.models.ensemble import EnsembleModel
from fvr_core.inference.evaluation import predict_logits, prob_fake_from_logits
from fvr_core.metrics import classification_metrics
from fvr_core.runs.store import COMPLETED, Run, RunError, RunStore
from fvr_core.files import atomic_write_json, now_iso
from fvr_core.settings import ENSEMBLE

def _same_split(runs: Sequence[Run]) -> dict:
    """The split the runs share, or RunError naming the runs that differ."""
    splits = {}
    for run in runs:
        try:
            splits[run.id] = run.split()
        except RunError:
            raise RunError(f"run {run.id} has no split.json: only finished runs can be ensembled") from None
    first_id, first = runs[0].id, splits[runs[0].id]
    differ = [rid for rid, s in splits.items() if any(sorted(s.get(k, [])) != sorted(first.get(k, [])) for k in ("train", "val", "test"))]
    if differ:
        raise RunError(f"run(s) {', '.join(differ)} do not share the split of {first_id} (different data, seed or "
                       "fractions): an ensemble's members must have been trained and tested on the same images")
    return first


def make_ensemble(runs: Sequence[Run], runs_dir: str | Path | None = None, name: str = "", combine: str = "log_odds",
                  data: str | Path | None = None, device: str = "cpu") -> Run:
    """Write a completed ensemble run of `runs` (at least two, finished, with a best checkpoint and
    the same split) under `runs_dir`: its checkpoint, its temperature fitted on the validation
    split, test metrics and predictions. `data` overrides where the members' data set lives now."""
    runs = list(runs)
    if len(runs) < 2:
        raise RunError("an ensemble needs at least two runs")
    if len({r.id for r in runs}) != len(runs):
        raise RunError("a run is listed twice: give each member once")
    for run in runs:
        if not (run.path / "best.safetensors").is_file():
            raise RunError(f"run {run.id} has no best checkpoint (state {run.state}): ensemble finished runs")
    split = _same_split(runs)
    started = time.time()
    members, sizes, temperatures, described = [], [], [], []
    for run in runs:
        model, meta = load_checkpoint(run.checkpoint("best"), device=device)
        calibration = load_calibration(run)
        temperature = calibration.temperature if calibration else float(meta.get("temperature", 1.0))
        members.append(model)
        sizes.append(int(meta["image_size"]))
        temperatures.append(temperature)
        described.append({"run": run.id, "name": run.config.name, "model": meta["model"], "image_size": int(meta["image_size"]),
                          "temperature": temperature})
    ensemble = EnsembleModel(members, sizes, temperatures, combine).eval()
    image_size = max(sizes)

    base = runs[0].config
    config = TrainConfig.from_dict({**base.to_dict(), "model": ENSEMBLE, "image_size": image_size, "train_crop": 0,
                                    "name": name or "ensemble of " + " + ".join(m["model"] for m in described)})
    data_root = data or base.data
    image_set = load_dataset(data_root, image_size)
    run = _create_run(runs_dir, config)
    atomic_write_json(run.path / "split.json", split)
    idx = {s: image_set.indices_of(split[s]) for s in ("val", "test")}
    logits = {s: predict_logits(ensemble, image_set.images, idx[s], batch_size=32, device=device) for s in idx}
    labels = {s: image_set.labels[idx[s]] for s in idx}
    val = classification_metrics(labels["val"], prob_fake_from_logits(logits["val"]))
    val_loss = float(F.cross_entropy(logits["val"], torch.from_numpy(labels["val"])))
    meta = {"model": ENSEMBLE, "image_size": image_size, "epoch": 1, "step": 0, "run": run.id, "members": described,
            "combine": combine, "config": config.to_dict(), "metrics": {"val_loss": val_loss, "val_acc": val["accuracy"]}}
    save_checkpoint(run.path / "best", ensemble, meta)
    run.append_metrics({"kind": "epoch", "epoch": 1, "step": 0, "val_loss": val_loss, "val_acc": val["accuracy"],
                        "val_balanced_acc": val["balanced_accuracy"], "val_roc_auc": val["roc_auc"], "time": time.time()})
    test = classification_metrics(labels["test"], prob_fake_from_logits(logits["test"]))
    test.update(loss=float(F.cross_entropy(logits["test"], torch.from_numpy(labels["test"]))), best_epoch=1, checkpoint="best")
    run.write_test_predictions([image_set.ids[i] for i in idx["test"]], labels["test"], prob_fake_from_logits(logits["test"]))
    atomic_write_json(run.path / "test_metrics.json", test)
    save_calibration(run, calibration_from_logits(logits["val"].numpy(), labels["val"], logits["test"].numpy(), labels["test"]))
    run.write_status(COMPLETED, phase="", ended=now_iso(), train_seconds=round(time.time() - started, 2),
                     test_accuracy=test["accuracy"], parameters=sum(p.numel() for p in ensemble.parameters()),
                     message="ensemble of " + ", ".join(m["run"] for m in described))
    return run


def _create_run(runs_dir: str | Path | None, config) -> Run:
    """A new run folder for an ensemble: not validated as a training config, since `ensemble` is
    not a model one can train (its members were trained)."""
    return RunStore(runs_dir).create(config, validate=False)

"""Scoring detectors on generators they never saw: a finished run on a held-out folder
(`evaluate RUN --held-out fake:PATH`; fvr_core.training.leave_one_out trains without one source
and then scores the run here).

A folder of one generator holds fakes only, so recall (the share caught) is all it can say on
its own. To give balanced accuracy and ROC AUC too, the held-out images are scored beside the
run's own test split of the other class (its test reals, which the run never trained on either):
"would this detector tell StyleGAN3 fakes from the real photos it was tested on?"
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fvr_core.data.dataset import DataError, ImageSet, load_dataset, per_source_recall, resolve_sources
from fvr_core.metrics import classification_metrics
from fvr_core.runs.store import Run
from fvr_core.files import atomic_write_json, read_json

HELD_OUT_FILE = "held_out.json"  # in the run folder: one result per held-out source spec


def _probs(model, images: np.ndarray, indices: np.ndarray, device: str) -> np.ndarray:
    from fvr_core.inference.evaluation import predict_logits, prob_fake_from_logits  # loads torch: here, not when the module loads (start-up speed)

    return prob_fake_from_logits(predict_logits(model, images, indices, device=device))


def _trained_files(run: Run, run_data: ImageSet) -> set[Path]:
    """The files of the run's training and validation splits (what it learnt from or was chosen on)."""
    split = run.split()
    return {run_data.path_of(i).resolve() for name in ("train", "val") for i in split.get(name, [])}


def evaluate_held_out(run: Run, source: str, which: str = "best", device: str = "cpu", save: bool = True) -> dict[str, Any]:
    """Metrics of a run's checkpoint on `source` (a data set spec, usually `fake:PATH`): per-source
    recall on it and, when it holds one class only, balanced accuracy and ROC AUC against the run's
    own test split of the other class. Images of the run's train or validation split found in
    `source` are left out (and counted), so the figure is about images the run never saw. The result
    is also written to the run folder's held_out.json (unless `save` is false or it is read-only)."""
    from fvr_core.runs.checkpoint import load_checkpoint  # loads torch: here, not when the module loads (start-up speed)

    model, meta = load_checkpoint(run.checkpoint(which), device=device)
    size = int(meta.get("image_size", run.config.image_size))
    spec = resolve_sources(source)
    held = load_dataset(spec, size)
    if not len(held):
        raise DataError(f"no usable image in held-out source {source}: see its skipped files")
    try:
        run_data: ImageSet | None = load_dataset(run.config.data, size)
    except DataError:
        run_data = None  # the run's data set moved: no overlap check, no pairing with its test split
    keep = np.arange(len(held))
    seen = 0
    if run_data is not None:
        trained = _trained_files(run, run_data)
        unseen = np.array([held.path_of(i).resolve() not in trained for i in held.ids], dtype=bool)
        seen, keep = int((~unseen).sum()), keep[unseen]
        if not len(keep):
            raise DataError(f"every image of {source} was in run {run.id}'s train or validation split: it is not held out")
    probs = _probs(model, held.images, keep, device)
    labels = held.labels[keep]
    result: dict[str, Any] = {
        "run": run.id, "source": spec, "checkpoint": which, "image_size": size, "n_held_out": int(len(keep)),
        "left_out_seen_in_training": seen, "per_source": per_source_recall(held, keep, probs), "paired_with": None,
    }
    missing = sorted(set(range(2)) - set(np.unique(labels).tolist()))
    if missing and run_data is not None:
        test = run_data.indices_of(run.split()["test"])
        partner = test[run_data.labels[test] == missing[0]]
        if len(partner):
            partner_probs = _probs(model, run_data.images, partner, device)
            result["paired_with"] = f"the run's test split, {len(partner)} image(s) of the other class"
            result["per_source"] += per_source_recall(run_data, partner, partner_probs)
            labels = np.concatenate([labels, run_data.labels[partner]])
            probs = np.concatenate([probs, partner_probs])
    result.update(classification_metrics(labels, probs))
    if save and not run.is_reference:
        try:
            saved = read_json(run.path / HELD_OUT_FILE) or {}
            atomic_write_json(run.path / HELD_OUT_FILE, {**saved, spec: result})
        except OSError:
            pass  # a read-only run folder: the caller still gets the result
    return result


def held_out_results(run: Run) -> dict[str, dict[str, Any]]:
    """The held-out evaluations saved in a run folder, by source spec."""
    return read_json(run.path / HELD_OUT_FILE) or {}


def format_per_source(rows: list[dict[str, Any]]) -> str:
    """Per-source recall as lines for a terminal."""
    lines = [f"{'source':<28}{'class':<7}{'right':>7}{'of':>6}  recall"]
    for row in rows:
        recall = "n/a" if row["recall"] is None or math.isnan(row["recall"]) else f"{row['recall']:.3f}"
        lines.append(f"{row['source']:<28}{row['class']:<7}{row['correct']:>7}{row['n']:>6}  {recall} ({row['what']})")
    return "\n".join(lines)

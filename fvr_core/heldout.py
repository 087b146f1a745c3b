"""Scoring detectors on generators they never saw: a finished run on a held-out folder
(`evaluate RUN --held-out fake:PATH`), and a leave-one-generator-out experiment that trains
without one source and then scores the run on it.

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

from .dataset import DataError, ImageSet, load_dataset, parse_sources, per_source_recall, resolve_sources, source_folders
from .metrics import classification_metrics
from .runs import COMPLETED, STOPPED, Run, RunError
from .files import atomic_write_json, read_json

HELD_OUT_FILE = "held_out.json"  # in the run folder: one result per held-out source spec


def _probs(model, images: np.ndarray, indices: np.ndarray, device: str) -> np.ndarray:
    from .evaluation import predict_logits, prob_fake_from_logits

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
    from .checkpoint import load_checkpoint

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


def without_sources(data: str, held_out: str) -> str:
    """`data` with the held-out sources taken out (compared by resolved path); DataError when nothing
    or everything would be left."""
    held = set(source_folders(held_out))
    sources = parse_sources(resolve_sources(data))
    kept = [s for s in sources if Path(s.path) not in held]  # all of them when it was left out from the start
    if not kept:
        raise DataError(f"holding out {held_out} leaves no source to train on in {data}")
    return ";".join(s.spec for s in kept)


def leave_one_generator_out(config, held_out: str, runs_dir: str | Path | None = None, progress=None) -> dict[str, Any]:
    """Train `config` without the `held_out` source (e.g. `fake:.../stylegan3`; taken out of
    config.data if it is there), then score the finished run on it with evaluate_held_out.
    Returns that result with the run's own test metrics beside it ("test")."""
    from .training import train

    data = without_sources(config.data, held_out)
    names = ", ".join(Path(s.path).name for s in parse_sources(held_out))
    run = train(config.replace(data=data, name=config.name or f"without {names}"), runs_dir, progress)
    if run.state not in (COMPLETED, STOPPED) or not (run.path / "best.safetensors").is_file():
        raise RunError(f"run {run.id} ended {run.state} ({run.status().get('message', '')}): nothing to score on {held_out}")
    result = evaluate_held_out(run, held_out)
    result["test"] = {k: v for k, v in (run.test_metrics() or {}).items() if not isinstance(v, (list, dict)) or k == "per_source"}
    return result


def format_per_source(rows: list[dict[str, Any]]) -> str:
    """Per-source recall as lines for a terminal."""
    lines = [f"{'source':<28}{'class':<7}{'right':>7}{'of':>6}  recall"]
    for row in rows:
        recall = "n/a" if row["recall"] is None or math.isnan(row["recall"]) else f"{row['recall']:.3f}"
        lines.append(f"{row['source']:<28}{row['class']:<7}{row['correct']:>7}{row['n']:>6}  {recall} ({row['what']})")
    return "\n".join(lines)

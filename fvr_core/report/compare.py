"""Comparing runs: the table of all runs, the best run of each model, test curves, the original
write-up's reported figures, and a run's checkpoint as one download. Used by the Compare and
Predict pages and usable from a notebook."""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from fvr_core.config import split_sources
from fvr_core.metrics import classification_metrics, roc_curve
from fvr_core.runs.store import COMPLETED, STOPPED, Run, RunError
from fvr_core.settings import CLASSES, FAKE
from fvr_core.inference.calibration import load_calibration

# Validation accuracy the original write-up reported on the Kaggle set (700 StyleGAN2 fakes vs 589
# real faces, 300x300, 30 epochs, Adam 1e-3). Not the same data as the shared set: a reference only.
ORIGINAL_WRITEUP_VAL_ACC: dict[str, float] = {"cnn": 0.986, "resnet18": 0.994, "vgg19": 0.521, "vgg19_bn": 0.965}

TABLE_COLUMNS = [
    "run", "name", "model", "state", "reference", "epochs", "lr", "batch_size", "optimizer", "schedule",
    "augment", "class_weights", "select_metric", "sources", "image_size", "best_val_acc", "test_acc", "test_balanced_acc", "test_roc_auc",
    "parameters", "train_seconds", "images_per_s", "created", "message", "search", "trial",
]


def comparison_table(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run with its key settings, state and headline metrics."""
    rows = []
    for run in runs:
        row = run.summary()
        try:
            config = run.config
            row.update(optimizer=config.optimizer, schedule=config.schedule, class_weights=config.class_weights,
                       select_metric=config.select_metric, sources=len(split_sources(config.data)))
        except Exception:  # a damaged run still gets its row, with what could be read
            pass
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table


def table_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode("utf-8")


def _rank_key(run: Run) -> tuple:
    test = run.test_metrics() or {}
    summary = run.summary()

    def num(x: Any) -> float:
        return float(x) if isinstance(x, (int, float)) and x == x else -1.0

    return (num(test.get("balanced_accuracy")), num(test.get("roc_auc")), num(summary.get("best_val_acc")))


def best_run_per_model(runs: Iterable[Run]) -> dict[str, Run]:
    """For each model, the finished run with a best checkpoint that scored highest on its test
    split (balanced accuracy, then ROC AUC, then validation accuracy)."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.state not in (COMPLETED, STOPPED) or not (run.path / "best.safetensors").is_file():
            continue
        try:
            model = run.config.model
        except Exception:
            continue
        if model not in best or _rank_key(run) > _rank_key(best[model]):
            best[model] = run
    return dict(sorted(best.items()))


# a run below either figure on its own test split is near chance: "best run of each model" leaves it out
CHANCE_BALANCED_ACCURACY = 0.6
CHANCE_ROC_AUC = 0.65


def chance_level_reason(run: Run) -> str:
    """Why a run's test figures are too close to chance to judge photos with ("" when they are not)."""
    test = run.test_metrics() or {}
    bal, auc = test.get("balanced_accuracy"), test.get("roc_auc")
    if not isinstance(bal, (int, float)) or not isinstance(auc, (int, float)) or bal != bal or auc != auc:
        return f"run {run.id} has no test balanced accuracy and ROC AUC to show it is above chance"
    problems = []
    if bal < CHANCE_BALANCED_ACCURACY:
        problems.append(f"test balanced accuracy {bal:.2f} < {CHANCE_BALANCED_ACCURACY}")
    if auc < CHANCE_ROC_AUC:
        problems.append(f"test ROC AUC {auc:.2f} < {CHANCE_ROC_AUC}")
    return f"its best run {run.id} is near chance ({', '.join(problems)})" if problems else ""


def best_runs_above_chance(runs: Iterable[Run]) -> tuple[dict[str, Run], dict[str, str]]:
    """best_run_per_model without the models whose best run is near chance (test balanced accuracy
    under 0.6 or ROC AUC under 0.65): (chosen runs by model, reason by skipped model). A model at
    chance would add a coin flip to every answer, presented like a verdict."""
    chosen, skipped = {}, {}
    for model, run in best_run_per_model(runs).items():
        reason = chance_level_reason(run)
        if reason:
            skipped[model] = reason
        else:
            chosen[model] = run
    return chosen, skipped


def predictable_runs(runs: Iterable[Run]) -> list[Run]:
    """Runs with a best checkpoint on disk (finished ones, or running ones after their first epoch)."""
    return [r for r in runs if (r.path / "best.safetensors").is_file()]


def test_predictions(run: Run) -> pd.DataFrame:
    """The run's per-image test predictions (id, label, prob_fake, predicted); RunError if none."""
    path = run.path / "test_predictions.csv"
    if not path.is_file():
        raise RunError(f"run {run.id} has no test predictions yet ({path.name} is written when training ends)")
    return pd.read_csv(path)


def test_curves(run: Run) -> dict[str, Any]:
    """Confusion matrix and ROC curve of the run's best checkpoint on its test split."""
    table = test_predictions(run)
    labels = np.array([CLASSES.index(x) for x in table["label"]])
    probs = table["prob_fake"].to_numpy(dtype=np.float64)
    metrics = classification_metrics(labels, probs)
    return {"metrics": metrics, "roc": roc_curve(labels == FAKE, probs)}


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average as TensorBoard draws it (debiased, so the first points are not
    pulled towards zero); weight 0 returns the values unchanged."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight {weight!r} must be in [0, 1)")
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * float(v)
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def checkpoint_archive(run: Run, which: str = "best") -> bytes:
    """A zip of the run's checkpoint (weights + metadata) with its config and test metrics, loadable
    with `fvr_core.runs.checkpoint.load_checkpoint` after unzipping."""
    weights = run.checkpoint(which)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in (weights, weights.with_suffix(".json"), run.path / "config.json", run.path / "test_metrics.json"):
            if path.is_file():
                zf.write(path, f"{run.id}/{path.name}")
    return buffer.getvalue()


def predictions_csv(rows: Iterable[dict[str, Any]]) -> bytes:
    """CSV bytes of prediction rows (dicts with the same keys)."""
    rows = list(rows)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def calibration_table(runs: Iterable[Run], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Per run: the fitted temperature and the expected calibration error before and after, on
    the validation split it was fitted on and on the test split it never saw."""
    rows = []
    for run in runs:
        cal = load_calibration(run)
        if cal is None:
            continue
        test = cal.test or {}
        rows.append({
            "run": (labels or {}).get(run.id, run.id), "temperature": cal.temperature,
            "val_ece_before": cal.ece_before, "val_ece_after": cal.ece_after,
            "test_ece_before": test.get("ece_before"), "test_ece_after": test.get("ece_after"), "note": cal.note,
        })
    return pd.DataFrame(rows)


def per_source_table(runs: Iterable[Run], labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Per run and (source, class): images, how many the run got right (fakes caught, reals kept)
    and that recall, on its test split ("test") and on every held-out folder it was scored on
    (`evaluate RUN --held-out`, "held out")."""
    from fvr_core.inference.heldout import held_out_results  # torch loads only when a held-out result is scored, not read

    rows = []
    for run in runs:
        name = (labels or {}).get(run.id, run.id)
        groups = [("test", (run.test_metrics() or {}).get("per_source") or [])]
        groups += [("held out", result.get("per_source") or []) for result in held_out_results(run).values()]
        for where, entries in groups:
            rows += [{"run": name, "on": where, "source": e["source"], "class": e["class"], "images": e["n"],
                      "right": e["correct"], "recall": e["recall"], "what": e["what"]} for e in entries]
    return pd.DataFrame(rows, columns=["run", "on", "source", "class", "images", "right", "recall", "what"])


def robustness_table(reports: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """One row per (run, corruption) from robustness reports keyed by run label."""
    columns = ["corruption", "accuracy", "balanced_accuracy", "roc_auc", "flip_rate", "verdict_change_rate", "mean_abs_prob_change"]
    return pd.DataFrame([{"run": name, **{c: row.get(c) for c in columns}, "corruption": row["label"]}
                         for name, rows in reports.items() for row in rows])


def ensemble_test_metrics(runs: Sequence[Run]) -> dict[str, Any]:
    """Test metrics of the runs' averaged probabilities of fake (runs on the same split: the same
    seed and data). RunError when a run has no test predictions or the test images differ."""
    tables = [test_predictions(run).set_index("id").sort_index() for run in runs]
    if any(list(t.index) != list(tables[0].index) for t in tables[1:]):
        raise RunError("the runs were tested on different images: ensemble only runs with the same data, split and seed")
    labels = np.array([CLASSES.index(label) for label in tables[0]["label"]])
    probs = np.mean([t["prob_fake"].to_numpy() for t in tables], axis=0)
    return classification_metrics(labels, probs)


# ---- tables as people read them

# column -> the header a table shows (a column not listed keeps its name)
COLUMN_TITLES = {
    "run": "run", "name": "name", "model": "model", "state": "state", "reference": "shipped reference",
    "epochs": "epochs", "lr": "learning rate", "batch_size": "batch", "optimizer": "optimizer", "schedule": "schedule",
    "augment": "augmentation", "image_size": "image size (px)", "best_val_acc": "best val. accuracy",
    "test_acc": "test accuracy", "test_balanced_acc": "test balanced accuracy", "test_roc_auc": "test ROC AUC",
    "parameters": "parameters", "train_seconds": "time (s)", "images_per_s": "images/s", "created": "created",
    "message": "message", "temperature": "temperature", "val_ece_before": "val. ECE before",
    "val_ece_after": "val. ECE after", "test_ece_before": "test ECE before", "test_ece_after": "test ECE after",
    "note": "note", "corruption": "corruption", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
    "roc_auc": "ROC AUC", "flip_rate": "fake/real call flipped", "verdict_change_rate": "verdict changed (unsure counts)",
    "mean_abs_prob_change": "mean probability change",
}
# fractions shown as percentages with one decimal; the other measures with three decimals
PERCENT_COLUMNS = ("best_val_acc", "test_acc", "test_balanced_acc", "accuracy", "balanced_accuracy", "flip_rate",
                   "verdict_change_rate", "mean_abs_prob_change")
DECIMAL_COLUMNS = ("test_roc_auc", "roc_auc", "temperature", "val_ece_before", "val_ece_after", "test_ece_before",
                   "test_ece_after")


def readable_table(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """(the table for people, the number format of each of its columns): fractions as percentages
    (0.7083 -> 70.83, shown "70.8%"), missing numbers as empty cells, missing text as "", reference
    runs marked "yes", headers in words. Sorting still sorts numbers."""
    shown = table.copy()
    formats: dict[str, str] = {}
    for column in shown.columns:
        if column in PERCENT_COLUMNS:
            shown[column] = pd.to_numeric(shown[column], errors="coerce") * 100
            formats[column] = "%.1f%%"
        elif column in DECIMAL_COLUMNS:
            shown[column] = pd.to_numeric(shown[column], errors="coerce")
            formats[column] = "%.3f"
        elif column == "reference":
            shown[column] = shown[column].map(lambda v: "yes" if v is True else "")
        elif not pd.api.types.is_numeric_dtype(shown[column]):  # text (object or string dtype): no "None" shown
            shown[column] = shown[column].astype(object).where(shown[column].notna(), "")
    titles = {c: COLUMN_TITLES.get(c, c.replace("_", " ")) for c in shown.columns}
    return shown.rename(columns=titles), {titles[c]: f for c, f in formats.items()}


def default_comparison(runs: Sequence[Run], limit: int = 4) -> list[Run]:
    """The runs Compare shows first: the user's latest runs with test results, else (a fresh
    clone) the shipped reference runs that have them."""
    tested = [r for r in runs if r.test_metrics()]
    own = [r for r in tested if not r.is_reference]
    return (own or [r for r in tested if r.is_reference])[:limit]

"""How to combine finished runs into an ensemble, judged on the VALIDATION split only (the test
split is never read): for each combination of the given runs (two or more, sharing one split),
the out-of-fold validation balanced accuracy at 0.5 and ROC AUC of three rules, each fitted on four
fifths of the validation images and scored on the fifth left out (5 folds, 10 shuffles):

- mean (fvr's `ensemble`): each member's log-odds divided by a temperature fitted on the folds,
  averaged; the members keep the bias their training gave them;
- balanced mean: each member recalibrated with a bias too (Platt scaling), weighted so both
  classes count equally (equal priors), then averaged;
- stacked: one class-balanced logistic regression on the members' log-odds (a weight per member
  and a bias).

    PYTHONPATH=. python benchmarks/ensemble_rules.py --runs-dir checkpoints/reference RUN RUN [RUN ...]

Prints one row per combination, best mean-rule ROC AUC first."""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from fvr_core.inference.calibration import fit_temperature, run_split_logits
from fvr_core.inference.evaluation import load_run_model_and_data, run_split_indices
from fvr_core.runs.store import RunStore
from fvr_core.settings import FAKE


def validation_log_odds(run) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image ids, labels, log-odds of fake) of a run's best checkpoint on its validation split."""
    model, image_set = load_run_model_and_data(run)
    idx = run_split_indices(run, image_set, "val")
    logits = run_split_logits(model, image_set, idx)
    return [image_set.ids[i] for i in idx], image_set.labels[idx], logits[:, FAKE] - logits[:, 1 - FAKE]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _as_logits(log_odds: np.ndarray) -> np.ndarray:
    """(N,) log-odds of fake -> (N, 2) logits in CLASSES order, as fvr's models return them."""
    logits = np.empty((len(log_odds), 2))
    logits[:, FAKE], logits[:, 1 - FAKE] = log_odds / 2, -log_odds / 2
    return logits


def mean_rule(train_z: np.ndarray, train_fake: np.ndarray, z: np.ndarray) -> np.ndarray:
    labels = np.where(train_fake == 1, FAKE, 1 - FAKE)
    temperatures = [fit_temperature(_as_logits(train_z[:, j]), labels) for j in range(z.shape[1])]  # as calibration does
    return _sigmoid((z / np.asarray(temperatures)).mean(1))


def balanced_mean_rule(train_z: np.ndarray, train_fake: np.ndarray, z: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    columns = [LogisticRegression(C=1e6, class_weight="balanced").fit(train_z[:, [j]], train_fake).decision_function(z[:, [j]])
               for j in range(z.shape[1])]
    return _sigmoid(np.mean(columns, 0))


def stacked_rule(train_z: np.ndarray, train_fake: np.ndarray, z: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, class_weight="balanced").fit(train_z, train_fake).predict_proba(z)[:, 1]


RULES = {"mean": mean_rule, "balanced mean": balanced_mean_rule, "stacked": stacked_rule}


def out_of_fold(z: np.ndarray, is_fake: np.ndarray, rule, shuffles: int = 10) -> tuple[float, float]:
    """Mean over shuffles of (balanced accuracy at 0.5, ROC AUC) of the out-of-fold probabilities."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    scores = []
    for seed in range(shuffles):
        p = np.zeros(len(is_fake))
        for fit, held in StratifiedKFold(5, shuffle=True, random_state=seed).split(z, is_fake):
            p[held] = rule(z[fit], is_fake[fit], z[held])
        scores.append((balanced_accuracy_score(is_fake, p >= 0.5), roc_auc_score(is_fake, p)))
    return tuple(np.mean(scores, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run ids (or unique suffixes) sharing one split")
    parser.add_argument("--runs-dir")
    parser.add_argument("--min-members", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    store = RunStore(args.runs_dir)
    runs = [store.get(r) for r in args.runs]
    ids, labels, columns = None, None, []
    for run in runs:
        run_ids, run_labels, z = validation_log_odds(run)
        if ids is not None and run_ids != ids:
            raise SystemExit(f"run {run.id} has another validation split: ensembles need members of one split")
        ids, labels = run_ids, run_labels
        columns.append(z)
        print(f"{run.id} ({run.config.name or run.config.model}): validation log-odds of {len(z)} images", flush=True)
    z_all, is_fake = np.stack(columns, 1), (labels == FAKE).astype(int)
    rows = []
    for size in range(args.min_members, len(runs) + 1):
        for combo in itertools.combinations(range(len(runs)), size):
            scores = {name: out_of_fold(z_all[:, list(combo)], is_fake, rule) for name, rule in RULES.items()}
            rows.append((" + ".join(runs[i].config.name or runs[i].config.model for i in combo), scores))
    rows.sort(key=lambda row: -row[1]["mean"][1])
    print("| members | " + " | ".join(f"{name}: bal acc / ROC AUC" for name in RULES) + " |")
    print("| --- |" + " --- |" * len(RULES))
    for members, scores in rows:
        print(f"| {members} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in scores.values()) + " |")


if __name__ == "__main__":
    main()

"""The README's results table and plots, from the reference runs in checkpoints/reference.

Prints a markdown table (one row per run: model, settings, test accuracy, balanced accuracy, ROC
AUC, calibration error, training time, shipped weights) and draws docs/results/curves.png
(validation accuracy per epoch, training loss and gradient norm per step, one line per run) with
matplotlib (installed with captum).

    PYTHONPATH=. python benchmarks/reference_results.py [--reference DIR] [--out docs/results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fvr_core.inference.calibration import load_calibration
from fvr_core.report.compare import smooth
from fvr_core.runs.reference import reference_info
from fvr_core.runs.store import RunStore, fitted_once
from fvr_core.settings import reference_root


def _source_name(source: str) -> str:
    """'fake:../shared/datasets/extra-gan-fakes/boredhumans' -> 'boredhumans fakes'."""
    label, sep, path = source.partition(":")
    return f"{Path(path).name} {label}s" if sep and label in ("fake", "real") else Path(source).name


def label(run) -> str:
    config = run.config
    sources = [s for s in config.data.split(";") if s]
    trained_on = [f"trained on {' + '.join(map(_source_name, sources))}"] if len(sources) > 1 else []
    if fitted_once(config.model):  # fitted in one pass or made of other runs: no epochs or lr
        return f"{config.model}, {config.image_size} px" + (f" ({config.name})" if config.name else "")
    extra = [f"lr {config.lr:g}"] + ([f"clip {config.grad_clip:g}"] if config.grad_clip else [])
    extra += [f"augment {config.augment}"] if config.augment != "none" else []
    extra += [f"ema {config.ema:g}"] if config.ema else []
    return f"{config.model}, {config.image_size} px, {config.epochs} ep, {', '.join(extra + trained_on)}"


def table(runs) -> str:
    head = ("| run | test acc | balanced acc | ROC AUC | test ECE (calibrated) | train time | weights shipped |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for run in runs:
        test = run.test_metrics() or {}
        if not test:  # diverged before its first epoch ended
            rows.append(f"| {label(run)} | {run.state}: {run.status().get('message', '')} | | | | | none |")
            continue
        cal = load_calibration(run)
        ece = (cal.test or {}).get("ece_after") if cal else None
        seconds = run.status().get("train_seconds")
        rows.append(
            f"| {label(run)} | {test.get('accuracy', float('nan')):.3f} | {test.get('balanced_accuracy', float('nan')):.3f} | "
            f"{test.get('roc_auc') or float('nan'):.3f} | {'' if ece is None else f'{ece:.3f}'} | "
            f"{'' if seconds is None else f'{seconds / 60:.1f} min'} | {reference_info(run).get('weights', '?')} |")
    return "\n".join([head, *rows])


def plot(runs, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for run in runs:
        epochs, steps = run.epoch_rows(), run.step_rows()
        name = label(run)
        axes[0].plot([e["epoch"] for e in epochs], [e["val_acc"] for e in epochs], marker=".", label=name)
        axes[1].plot([s["step"] for s in steps], smooth([s["loss"] for s in steps], 0.9), label=name)
        axes[2].plot([s["step"] for s in steps], smooth([s["grad_norm"] for s in steps], 0.9), label=name)
    axes[0].set(title="validation accuracy", xlabel="epoch", ylim=(0.4, 1.0))
    axes[1].set(title="training loss (smoothed)", xlabel="step", yscale="log")
    axes[2].set(title="gradient norm (smoothed)", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=str(reference_root()))
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args()
    runs = sorted(RunStore(args.reference).list(), key=lambda r: r.id)
    if not runs:
        raise SystemExit(f"no reference runs in {args.reference}: ship some with `python -m fvr_core export-reference RUN`")
    print(table(runs))
    print(f"\nwrote {plot(runs, Path(args.out))}")


if __name__ == "__main__":
    main()

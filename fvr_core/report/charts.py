"""Plotly figures of data sets, training curves and test results. Plain functions of runs and
numbers, so a notebook draws the same charts as the dashboard (which only shows them)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fvr_core.report.compare import ORIGINAL_WRITEUP_VAL_ACC, smooth
from fvr_core.runs.store import Run
from fvr_core.settings import CLASSES

CLASS_COLOURS = {"fake": "#d62728", "real": "#1f77b4"}
_SYMBOLS = ("circle-open", "diamond", "square-open", "x", "triangle-up-open", "cross")
_DASHES = ("solid", "dash", "dot", "dashdot")
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))


def class_counts_figure(counts: Mapping[str, int], title: str = "Images per class") -> go.Figure:
    names = list(counts)
    fig = go.Figure(go.Bar(x=names, y=[counts[n] for n in names], text=[counts[n] for n in names],
                           marker_color=[CLASS_COLOURS.get(n, "#888") for n in names]))
    fig.update_layout(title=title, yaxis_title="images", height=300, **_LAYOUT)
    return fig


def split_sizes_figure(sizes: Mapping[str, Mapping[str, int]]) -> go.Figure:
    """Stacked bars: images of each class in each split ({"train": {"fake": n, "real": m}, ...})."""
    fig = go.Figure()
    for name in CLASSES:
        fig.add_bar(name=name, x=list(sizes), y=[sizes[s].get(name, 0) for s in sizes], marker_color=CLASS_COLOURS[name])
    fig.update_layout(barmode="stack", title="Split sizes", yaxis_title="images", height=300, **_LAYOUT)
    return fig


def log_ticks(values: Iterable[float]) -> tuple[list[float], list[str]]:
    """Tick positions and labels for a log axis over `values`: 1-2-5 steps written out in full
    ("20", "50", "0.2"), never plotly's bare leading digits ("2", "3" above "10", meaning 20, 30)."""
    positive = [float(v) for v in values if v is not None and v == v and v > 0]
    if not positive:
        return [], []
    low, high = min(positive), max(positive)
    exponent = math.floor(math.log10(low)) - 1
    ticks = []
    while True:
        for mantissa in (1, 2, 5):
            tick = mantissa * 10.0 ** exponent
            ticks.append(tick)
        if ticks[-1] >= high:
            break
        exponent += 1
    # the ticks inside the data's range, plus one on each side so a flat line still gets two labels
    inside = [i for i, t in enumerate(ticks) if low <= t <= high]
    first = max(0, (inside[0] if inside else next(i for i, t in enumerate(ticks) if t > low)) - 1)
    last = min(len(ticks) - 1, (inside[-1] if inside else first) + 1)
    kept = ticks[first:last + 1]
    if len(kept) > 9:  # many decades: the powers of ten alone
        kept = [t for t in kept if f"{t:g}".lstrip("0.").startswith("1")]
    return kept, [f"{t:g}" for t in kept]


def run_curves_figure(run: Run, smoothing: float = 0.0) -> go.Figure:
    """One run's live view: loss per step and per epoch, accuracy per epoch, gradient norm per step."""
    steps, epochs = run.step_rows(), run.epoch_rows()
    spe = max(1, int(run.raw_status().get("steps_per_epoch") or 1))
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", "Accuracy", "Gradient norm"))
    if steps:
        x = [r["epoch"] for r in steps]
        mode = "lines" if len(steps) > 1 else "markers"  # one point drawn as a line is invisible
        fig.add_scatter(x=x, y=smooth([r["loss"] for r in steps], smoothing), name="train loss (step)",
                        mode=mode, line=dict(color="#9ecae1"), row=1, col=1)
        fig.add_scatter(x=x, y=[r["grad_norm"] for r in steps], name="gradient norm (step)", mode=mode,
                        line=dict(color="#9467bd"), row=1, col=3)
        tickvals, ticktext = log_ticks(r["grad_norm"] for r in steps)
        fig.update_yaxes(tickvals=tickvals, ticktext=ticktext, row=1, col=3)
    if not epochs:
        fig.add_annotation(text="accuracy appears after<br>the first epoch", xref="x2 domain", yref="y2 domain",
                           x=0.5, y=0.5, showarrow=False, font=dict(color="#888"))
    if epochs:
        x = [r["epoch"] for r in epochs]
        for key, name, colour, col in (
            ("train_loss", "train loss (epoch)", "#1f77b4", 1), ("val_loss", "validation loss", "#ff7f0e", 1),
            ("train_acc", "train accuracy", "#1f77b4", 2), ("val_acc", "validation accuracy", "#ff7f0e", 2),
            ("val_balanced_acc", "validation balanced accuracy", "#2ca02c", 2),
        ):
            fig.add_scatter(x=x, y=[r.get(key) for r in epochs], name=name, mode="lines+markers",
                            line=dict(color=colour), row=1, col=col)
    fig.update_xaxes(title_text=f"epoch ({spe} steps each)")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_layout(height=360, **_LAYOUT)
    return fig


METRIC_LABELS = {
    "loss": "train loss (per step)", "grad_norm": "gradient norm (per step)", "train_loss": "train loss (per epoch)",
    "val_loss": "validation loss", "train_acc": "train accuracy", "val_acc": "validation accuracy",
    "val_balanced_acc": "validation balanced accuracy", "val_roc_auc": "validation ROC AUC", "lr": "learning rate",
}
STEP_METRICS = ("loss", "grad_norm")


def overlay_figure(runs: Sequence[Run], metric: str, smoothing: float = 0.0, labels: Mapping[str, str] | None = None) -> go.Figure:
    """The same metric of several runs on one chart, x in epochs (step metrics are fractional)."""
    fig = go.Figure()
    for run in runs:
        rows = run.step_rows() if metric in STEP_METRICS else run.epoch_rows()
        rows = [r for r in rows if r.get(metric) is not None]
        if not rows:
            continue
        fig.add_scatter(x=[r["epoch"] for r in rows], y=smooth([r[metric] for r in rows], smoothing),
                        mode="lines" if metric in STEP_METRICS and len(rows) > 1 else "lines+markers",
                        name=(labels or {}).get(run.id, run.id))
    fig.update_layout(title=METRIC_LABELS.get(metric, metric), xaxis_title="epoch", height=380, **_LAYOUT)
    if metric in ("train_acc", "val_acc", "val_balanced_acc", "val_roc_auc"):
        fig.update_yaxes(range=[0, 1.02])  # a flat line must not autorange to -0.5..1.5
    if metric == "grad_norm":
        tickvals, ticktext = log_ticks(y for trace in fig.data for y in trace.y)
        fig.update_yaxes(type="log", tickvals=tickvals, ticktext=ticktext)
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], title: str) -> go.Figure:
    """Rows: true class; columns: predicted class (CLASSES order)."""
    fig = go.Figure(go.Heatmap(z=matrix, x=[f"called {c}" for c in CLASSES], y=[f"is {c}" for c in CLASSES],
                               text=matrix, texttemplate="%{text}", colorscale="Blues", showscale=False))
    layout = {**_LAYOUT, "margin": dict(l=10, r=10, t=70, b=10)}
    fig.update_layout(title=dict(text=wrap_title(title), font=dict(size=13)), height=300, yaxis=dict(autorange="reversed"),
                      **layout)
    return fig


def wrap_title(text: str, width: int = 28) -> str:
    """A title broken into lines of about `width` characters (plotly never wraps one, it cuts it
    off at the chart's edge, as in a quarter-width confusion matrix)."""
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join(lines + [line])


def roc_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], aucs: Mapping[str, float | None] | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), name="chance")
    for name, curve in curves.items():
        auc = (aucs or {}).get(name)
        label = f"{name} (AUC {auc:.3f})" if auc is not None else name
        fig.add_scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label)
    fig.update_layout(title="ROC on the test split (fake = positive)", xaxis_title="false positive rate (reals called fake)",
                      yaxis_title="true positive rate (fakes caught)", height=400, **_LAYOUT)
    return fig


def test_metrics_figure(rows: Iterable[Mapping], reference: Mapping[str, float] = ORIGINAL_WRITEUP_VAL_ACC) -> go.Figure:
    """Grouped bars of test accuracy, balanced accuracy and ROC AUC per run, with the original
    write-up's reported validation accuracy per model as a reference marker."""
    rows = list(rows)
    x = [f"{r['model']} · {r['run'][-6:]}" for r in rows]
    fig = go.Figure()
    for key, name in (("test_acc", "test accuracy"), ("test_balanced_acc", "test balanced accuracy"), ("test_roc_auc", "test ROC AUC")):
        fig.add_bar(x=x, y=[r.get(key) for r in rows], name=name)
    ref = [reference.get(r["model"]) for r in rows]
    if any(v is not None for v in ref):
        fig.add_scatter(x=x, y=ref, mode="markers", marker=dict(symbol="line-ew-open", size=28, line=dict(width=3), color="black"),
                        name="original write-up (val. accuracy, Kaggle set)")
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.05]), height=400, title="Test metrics per run", **_LAYOUT)
    return fig


def probability_figure(probs: Mapping[str, float | None], unsure: tuple[float, float] = (0.35, 0.65)) -> go.Figure:
    """Horizontal bars: each model's probability that one image is fake."""
    names = list(probs)
    values = [probs[n] if probs[n] is not None else 0.0 for n in names]
    colours = [CLASS_COLOURS["fake"] if v >= unsure[1] else CLASS_COLOURS["real"] if v <= unsure[0] else "#999" for v in values]
    # a short bar has no room inside for its label: it goes beside the bar, never dropped
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colours,
                           text=[f"{v:.0%} fake" if probs[n] is not None else "no answer" for n, v in zip(names, values)],
                           textposition=["inside" if v >= 0.3 else "outside" for v in values], cliponaxis=False,
                           insidetextanchor="end"))
    fig.add_vline(x=0.5, line_dash="dot", line_color="#555")
    fig.update_layout(xaxis=dict(range=[0, 1], title="probability fake", tickformat=".0%"),
                      yaxis=dict(autorange="reversed"),  # the first model on top, as the verdict lines below list them
                      height=110 + 36 * len(names), showlegend=False, margin=dict(l=10, r=30, t=10, b=50))
    return fig


def reliability_figure(reliability: Mapping[str, Sequence[Mapping]], title: str, ece: Mapping[str, float | None] | None = None) -> go.Figure:
    """Reliability diagram: accuracy against confidence per bin, before and after calibration
    (`reliability` maps "before"/"after" to fvr_core.inference.calibration.reliability_bins rows). A
    calibrated model's points lie on the diagonal."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0.5, 1], y=[0.5, 1], mode="lines", line=dict(dash="dot", color="#888"), name="perfect"))
    for when, colour in (("before", "#ff7f0e"), ("after", "#2ca02c")):
        rows = [r for r in reliability.get(when, []) if r.get("count")]
        name = f"{when} (ECE {ece[when]:.3f})" if ece and ece.get(when) is not None else when
        fig.add_trace(go.Scatter(
            x=[r["mean_confidence"] for r in rows], y=[r["accuracy"] for r in rows], mode="lines+markers", name=name,
            marker=dict(size=[6 + 14 * (r["count"] / max(1, max(x["count"] for x in rows))) ** 0.5 for r in rows], color=colour),
            line=dict(color=colour), customdata=[r["count"] for r in rows],
            hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} images<extra></extra>"))
    fig.update_layout(title=dict(text=wrap_title(title, 44)), height=340, xaxis=dict(title="confidence (top class)", range=[0.48, 1.02]),
                      yaxis=dict(title="accuracy", range=[0, 1.05]), **_LAYOUT)
    return fig


def robustness_figure(reports: Mapping[str, Sequence[Mapping]], metric: str = "balanced_accuracy") -> go.Figure:
    """One line per run: `metric` on its test split under each corruption (clean first)."""
    fig = go.Figure()
    first_with: dict[tuple, str] = {}  # a line's values -> the first run drawn with exactly them
    for i, (name, rows) in enumerate(reports.items()):
        values = tuple(None if r.get(metric) is None else round(float(r[metric]), 6) for r in rows)
        same_as = first_with.setdefault(values, name)
        # identical lines would hide each other: each run its own marker and dash, and the legend says so
        label = name if same_as == name else f"{name} (same as {same_as})"
        fig.add_trace(go.Scatter(x=[r["label"] for r in rows], y=[r[metric] for r in rows], mode="lines+markers", name=label,
                                 marker=dict(symbol=_SYMBOLS[i % len(_SYMBOLS)], size=14 - 3 * (i % 3)),
                                 line=dict(dash=_DASHES[i % len(_DASHES)])))
    fig.update_layout(height=360, yaxis=dict(title=metric.replace("_", " "), range=[0, 1.05]), title="Under corruption", **_LAYOUT)
    return fig

"""Charts and tables as a person reads them: live curves from the first step, log ticks written
out, identical lines that say so, bars in the verdicts' order, headers in words, the default
comparison."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from fvr_core.report.charts import (confusion_figure, log_ticks, probability_figure, robustness_figure, run_curves_figure,
                             wrap_title)
from fvr_core.report.compare import default_comparison, readable_table
from fvr_core.config import TrainConfig
from fvr_core.runs.store import COMPLETED, RunStore
from fvr_core.files import atomic_write_json


def a_run(steps: int, epochs: int = 0):
    run = RunStore().create(TrainConfig(data="x", epochs=2))
    run.write_status(COMPLETED, steps_per_epoch=4)
    for i in range(steps):
        run.append_metrics({"kind": "step", "step": i + 1, "epoch": (i + 1) / 4, "loss": 0.7, "grad_norm": 12.0 + 20 * i})
    for e in range(epochs):
        run.append_metrics({"kind": "epoch", "epoch": e + 1, "step": 4 * (e + 1), "train_acc": 0.6, "val_acc": 0.55,
                            "train_loss": 0.6, "val_loss": 0.65, "val_balanced_acc": 0.55})
    return run


def test_the_first_step_is_drawn_and_accuracy_says_when_it_comes():
    fig = run_curves_figure(a_run(steps=1))
    loss = next(t for t in fig.data if t.name == "train loss (step)")
    assert loss.mode == "markers" and list(loss.y) == [0.7]  # a one-point line would be invisible
    notes = [a.text for a in fig.layout.annotations]
    assert any("after" in n and "first epoch" in n for n in notes)
    from fvr_core.report.charts import overlay_figure

    assert overlay_figure([a_run(steps=1)], "loss").data[0].mode == "lines+markers"  # Compare, a one-step run
    later = run_curves_figure(a_run(steps=8, epochs=2))
    assert next(t for t in later.data if t.name == "train loss (step)").mode == "lines"
    assert not any("first epoch" in (a.text or "") for a in later.layout.annotations)


def test_log_ticks_are_written_out():
    values, labels = log_ticks([12.0, 35.0])
    assert labels == ["10", "20", "50"] and values == [10.0, 20.0, 50.0]
    assert log_ticks([0.3, 0.9])[1] == ["0.2", "0.5", "1"]
    assert len(log_ticks([3.0, 3.0])[0]) >= 2  # a flat line still gets labels
    assert log_ticks([]) == ([], []) and log_ticks([0.0, None]) == ([], [])
    wide = log_ticks([0.001, 500.0])[1]
    assert "0.001" in wide and "100" in wide and len(wide) <= 9
    fig = run_curves_figure(a_run(steps=3))
    assert list(fig.layout.yaxis3.ticktext) == ["10", "20", "50", "100"]


def test_identical_robustness_lines_say_they_coincide():
    rows = [{"label": "clean", "balanced_accuracy": 0.8}, {"label": "JPEG 50", "balanced_accuracy": 0.7}]
    fig = robustness_figure({"cnn · a": rows, "resnet18 · b": [dict(r) for r in rows], "vgg19 · c": rows[:1]})
    names = [t.name for t in fig.data]
    assert names == ["cnn · a", "resnet18 · b (same as cnn · a)", "vgg19 · c"]
    assert len({t.marker.symbol for t in fig.data}) == 3 and fig.data[0].marker.size != fig.data[1].marker.size


def test_probability_bars_follow_the_verdict_order_and_keep_every_label():
    fig = probability_figure({"cnn": 0.97, "resnet18": 0.01, "vgg19": None})
    bars = fig.data[0]
    assert list(bars.y) == ["cnn", "resnet18", "vgg19"] and fig.layout.yaxis.autorange == "reversed"
    assert list(bars.text) == ["97% fake", "1% fake", "no answer"]
    assert list(bars.textposition) == ["inside", "outside", "outside"] and bars.cliponaxis is False


def test_long_titles_wrap_instead_of_being_cut():
    title = "reference · vgg19_bn · original four 6e3f8c · 80.1%"
    assert all(len(line) <= 28 for line in wrap_title(title).split("<br>"))
    assert wrap_title(title).replace("<br>", " ") == title
    assert "<br>" in confusion_figure([[1, 2], [3, 4]], title).layout.title.text


def test_tables_read_in_words_with_one_format_per_column():
    table = pd.DataFrame([
        {"run": "a", "reference": True, "test_acc": 0.7083, "test_roc_auc": 0.8912, "val_ece_before": None, "message": None},
        {"run": "b", "reference": False, "test_acc": 0.8, "test_roc_auc": None, "val_ece_before": 0.05, "message": "ok"},
    ])
    shown, formats = readable_table(table)
    assert list(shown.columns) == ["run", "shipped reference", "test accuracy", "test ROC AUC", "val. ECE before", "message"]
    assert shown["test accuracy"].tolist() == pytest.approx([70.83, 80.0])
    assert formats["test accuracy"] == "%.1f%%" and formats["test ROC AUC"] == formats["val. ECE before"] == "%.3f"
    assert shown["shipped reference"].tolist() == ["yes", ""] and shown["message"].tolist() == ["", "ok"]
    assert shown["test ROC AUC"].isna().tolist() == [False, True]  # an empty cell, not "None"
    assert not any("_" in c for c in readable_table(pd.DataFrame(columns=["flip_rate", "verdict_change_rate"]))[0].columns)


def test_the_default_comparison_is_the_users_latest_else_the_references(tmp_path, monkeypatch):
    mine = []
    for _ in range(5):
        run = RunStore().create(TrainConfig(data="x"))
        atomic_write_json(run.path / "test_metrics.json", {"balanced_accuracy": 0.7})
        mine.append(run)
        time.sleep(0.002)
    unfinished = RunStore().create(TrainConfig(data="x"))
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(tmp_path / "reference"))
    shipped = RunStore(tmp_path / "reference").create(TrainConfig(data="x"))
    atomic_write_json(shipped.path / "test_metrics.json", {"balanced_accuracy": 0.9})
    from fvr_core.runs.store import all_runs

    runs = all_runs()
    assert [r.id for r in default_comparison(runs)] == [r.id for r in reversed(mine)][:4]
    assert unfinished.id not in [r.id for r in default_comparison(runs)]
    assert [r.id for r in default_comparison([r for r in runs if r.is_reference or r.id == unfinished.id])] == [shipped.id]

"""Compare: every run in one sortable, filterable table; overlay the curves of chosen runs, their
test confusion matrices and ROC curves, test metrics against the original write-up's figures,
reliability diagrams before and after calibration, robustness under JPEG, downscaling and blur,
and downloads of the table and of a run's checkpoint."""

import streamlit as st

from fvr_core.inference.calibration import calibrate_run, load_calibration
from fvr_core.report.charts import (METRIC_LABELS, confusion_figure, overlay_figure, reliability_figure, robustness_figure, roc_figure,
                             test_metrics_figure)
from fvr_core.report.compare import (ORIGINAL_WRITEUP_VAL_ACC, calibration_table, checkpoint_archive, comparison_table, default_comparison,
                              per_source_table, readable_table, robustness_table, table_csv, test_curves)
from fvr_core.durations import format_duration
from fvr_core.data.dataset import DataError
from fvr_core.inference.robustness import evaluate_robustness, load_robustness, robustness_seconds
from fvr_core.runs.store import ACTIVE_STATES, RunError, RunStore
from pages._common import demo_banner, limits, run_label, runs, session_id

st.title("Compare")
demo_banner()
lim = limits()

all_runs = runs()
if not all_runs:
    st.info("No runs yet: train some on the Train page, then compare them here.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

table = comparison_table(all_runs)
f1, f2, f3 = st.columns([2, 2, 1])
models = f1.multiselect("Models", sorted(table["model"].dropna().unique()), placeholder="all models")
states = f2.multiselect("States", sorted(table["state"].unique()), placeholder="all states")
show_reference = f3.toggle("Reference runs", value=True, help="runs shipped with fvr in checkpoints/reference")
shown = table
if models:
    shown = shown[shown["model"].isin(models)]
if states:
    shown = shown[shown["state"].isin(states)]
if not show_reference:
    shown = shown[~shown["reference"]]



def show_table(table, **extra) -> None:
    """A table with headers in words and one number format per column (fvr_core.report.compare.readable_table)."""
    readable, formats = readable_table(table)
    config = {title: st.column_config.NumberColumn(format=fmt) for title, fmt in formats.items()}
    st.dataframe(readable, hide_index=True, width="stretch", column_config={**config, **extra})


show_table(shown, **{
    "learning rate": st.column_config.NumberColumn(format="%g"),
    "parameters": st.column_config.NumberColumn(format="compact"),
    "time (s)": st.column_config.NumberColumn(format="%.0f"),
    "images/s": st.column_config.NumberColumn(format="%.1f"),
})
st.caption("Shipped reference: runs that come with fvr (checkpoints/reference): the original comparison and the best detectors of the README's results.")
st.download_button("Download the table (CSV)", table_csv(shown), file_name="fvr-runs.csv", mime="text/csv",
                   icon=":material/download:")

by_id = {r.id: r for r in all_runs}
shown_ids = set(shown["run"])
first = [r.id for r in default_comparison([r for r in all_runs if r.id in shown_ids])]
chosen_ids = st.multiselect("Runs to compare", list(shown["run"]), default=first,
                            format_func=lambda i: run_label(by_id[i], compact=True),
                            help="your latest finished runs first (the shipped reference runs when you have none)")
chosen = [by_id[i] for i in chosen_ids]
if not chosen:
    st.info("Choose runs above to overlay their curves and test results.")
    st.stop()

st.subheader("Curves")
m1, m2 = st.columns([2, 1])
metric = m1.selectbox("Metric", list(METRIC_LABELS), index=list(METRIC_LABELS).index("val_acc"), format_func=METRIC_LABELS.get)
smoothing = m2.slider("Smoothing", 0.0, 0.99, 0.6 if metric in ("loss", "grad_norm") else 0.0, step=0.01,
                      help="exponential moving average, as TensorBoard draws it")
labels = {r.id: run_label(r, compact=True) for r in chosen}
st.plotly_chart(overlay_figure(chosen, metric, smoothing, labels), width="stretch")

st.subheader("Test split")
tested = [r for r in chosen if r.test_metrics()]
if not tested:
    st.info("None of the chosen runs has finished training yet: test results appear when a run ends.")
else:
    rows = [r.summary() for r in tested]
    st.plotly_chart(test_metrics_figure(rows), width="stretch")
    st.caption("Bars: test metrics on this data set's held-out split. Marks: the validation accuracy the original "
               "write-up reported on the Kaggle set (" + ", ".join(f"{m} {v:.1%}" for m, v in ORIGINAL_WRITEUP_VAL_ACC.items())
               + "): a different, easier data set, shown for reference only.")
    curves, aucs = {}, {}
    cols = st.columns(min(4, len(tested)))
    for i, run in enumerate(tested):
        try:
            result = test_curves(run)
        except RunError as exc:
            cols[i % len(cols)].warning(str(exc))
            continue
        name = labels[run.id]
        curves[name], aucs[name] = result["roc"], result["metrics"]["roc_auc"]
        cols[i % len(cols)].plotly_chart(confusion_figure(result["metrics"]["confusion_matrix"], name), width="stretch",
                                         key=f"cm_{run.id}")
    if curves:
        st.plotly_chart(roc_figure(curves, aucs), width="stretch")
    by_source = per_source_table(tested, labels)
    if len(by_source):
        st.markdown("**Per source**: how many fakes of each generator each run catches and how many reals it keeps, "
                    "on its test split and on folders it never saw (`python -m fvr_core evaluate RUN --held-out fake:PATH`).")
        st.dataframe(by_source, hide_index=True, width="stretch",
                     column_config={"recall": st.column_config.NumberColumn(format="percent")})

st.subheader("Calibration")
st.caption("Each run fits a temperature on its validation split when it finishes, so that a predicted 80 % "
           "fake is right about 80 % of the time. Points on the diagonal are calibrated; the expected "
           "calibration error (ECE) is the average gap, weighted by the images in each bin.")
calibrated = {r.id: load_calibration(r) for r in tested}
uncalibrated = [r for r in tested if calibrated[r.id] is None and r.may_change("calibrate", lim, session_id())]
if uncalibrated and st.button(f"Calibrate {len(uncalibrated)} run(s) trained before calibration existed"):
    with st.spinner("Fitting temperatures on the validation splits..."):
        for run in uncalibrated:
            try:
                calibrated[run.id] = calibrate_run(run)
            except (RunError, DataError, OSError, ValueError) as exc:
                st.error(f"{labels[run.id]}: {exc}")
if any(calibrated.values()):
    show_table(calibration_table([r for r in tested if calibrated[r.id]], labels), run=st.column_config.TextColumn(width="large"))
    cols = st.columns(2)
    for i, run in enumerate(r for r in tested if calibrated[r.id]):
        cal = calibrated[run.id]
        split = "test" if "test" in cal.reliability else "val"
        ece = (cal.test or {}) if split == "test" else {"before": cal.ece_before, "after": cal.ece_after}
        cols[i % 2].plotly_chart(reliability_figure(cal.reliability[split], f"{labels[run.id]} ({split} split)",
                                                    {"before": ece.get("ece_before"), "after": ece.get("ece_after")}),
                                 width="stretch", key=f"rel_{run.id}")

st.subheader("Robustness")
st.caption("The test split again after JPEG re-compression, a downscale by half and back, and a blur: the edits "
           "a photo goes through when shared. A detector whose answers flip under them reads file traces, not faces.")
reports = {r.id: load_robustness(r) for r in tested}
missing = [r for r in tested if reports[r.id] is None and r.may_change("evaluate", lim, session_id())]
expected = [robustness_seconds(r) for r in missing]
took = f"about {format_duration(sum(expected))}" if missing and None not in expected else "a while"
if missing and st.button(f"Evaluate {len(missing)} run(s) under corruption ({took})",
                         help="runs each chosen model over its test split once per corruption, in this page's process; "
                              "the time comes from how long each run took to evaluate its images"):
    bar = st.progress(0.0, text="Loading the first model...")
    for i, run in enumerate(missing):
        def progress(done: int, total: int, label: str, i=i, run=run) -> None:
            bar.progress((i + done / total) / len(missing),
                         text=f"{labels[run.id]} ({i + 1} of {len(missing)}): {label}, pass {done + 1} of {total}")
        try:
            evaluate_robustness(run, on_progress=progress)
            reports[run.id] = load_robustness(run)
        except (RunError, DataError, OSError, ValueError) as exc:
            st.error(f"{labels[run.id]}: {exc}")
    bar.empty()
done = {labels[i]: rep["rows"] for i, rep in reports.items() if rep}
if done:
    st.plotly_chart(robustness_figure(done), width="stretch")
    show_table(robustness_table(done))
    st.caption("fake/real call flipped: images whose call at 50 % changed from the clean photo's; verdict changed: "
               "the same with \"unsure\" as a third answer; mean probability change: in percentage points.")

st.subheader("Checkpoint")
with_weights = [r for r in chosen if (r.path / "best.safetensors").is_file()]
if with_weights:
    pick = st.selectbox("Run", [r.id for r in with_weights], format_func=lambda i: run_label(by_id[i], compact=True))
    st.download_button("Download its best checkpoint (zip: safetensors + metadata + config)",
                       data=lambda: checkpoint_archive(by_id[pick]), file_name=f"{pick}.zip", mime="application/zip",
                       icon=":material/download:")
else:
    st.caption("None of the chosen runs has a checkpoint (reference runs of large models ship their curves only).")

deletable = [r.id for r in chosen if r.may_change("delete", lim, session_id()) and r.state not in ACTIVE_STATES]
if lim.allow_delete or deletable:  # in demo mode: the runs this session started
    with st.expander("Delete runs"):
        doomed = st.multiselect("Runs to delete (their folders are removed)", deletable)
        if doomed and st.button("Delete", type="primary"):
            store = RunStore()
            for run_id in doomed:
                try:
                    store.delete(by_id[run_id], lim, session_id())
                except RunError as exc:
                    st.error(str(exc))
            st.rerun()

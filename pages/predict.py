"""Predict: upload photos, pick trained runs (or the best run of each model), and see each
model's probability that each photo is fake; download every prediction as CSV."""

import streamlit as st

from fvr_core.charts import probability_figure
from fvr_core.compare import best_run_per_model, predictable_runs, predictions_csv
from fvr_core.images import ImageError, load_rgb
from fvr_core.predict import predict_with_each
from fvr_core.runs import RunError
from pages._common import demo_banner, limits, predictor, run_label, runs

st.title("Predict")
demo_banner()
lim = limits()
st.write("Upload face photos of any size: each is resized and centre-cropped to the model's input, never "
         "stretched. A model trained on one generator's faces may not recognise another's: read the "
         "probabilities as that model's opinion, not as proof.")

candidates = predictable_runs(runs())
if not candidates:
    st.info("No trained model yet: train one on the Train page (the \"Quick look\" preset takes about a minute).")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

best = best_run_per_model(candidates)
use_best = st.toggle("Best run of each model", value=bool(best),
                     help="for each model, the finished run with the highest test balanced accuracy")
by_id = {r.id: r for r in candidates}
if use_best and best:
    chosen = list(best.values())
    st.caption("Models: " + "; ".join(run_label(r) for r in chosen))
else:
    chosen_ids = st.multiselect("Runs", list(by_id), default=list(by_id)[:1], format_func=lambda i: run_label(by_id[i]))
    chosen = [by_id[i] for i in chosen_ids]

uploads = st.file_uploader("Photos (jpg, png, webp)", type=["jpg", "jpeg", "png", "webp"], accept_multiple_files=True,
                           max_upload_size=lim.max_upload_mb, key="photos")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()
if not uploads:
    st.info("Upload one or more photos to see what the models say.")
    st.stop()
if len(uploads) > lim.max_upload_files:
    st.warning(f"{len(uploads)} photos uploaded: this app looks at the first {lim.max_upload_files}.")
    uploads = uploads[: lim.max_upload_files]

predictors = {}
for run in chosen:
    try:
        predictors[run_label(run).split(" (")[0]] = predictor(run)
    except (RunError, OSError, ValueError) as exc:
        st.error(f"Cannot load {run.id}: {exc}")
if not predictors:
    st.stop()

names = [u.name for u in uploads]
data = [u.getvalue() for u in uploads]
with st.spinner(f"Asking {len(predictors)} model(s) about {len(uploads)} photo(s)..."):
    rows = predict_with_each(predictors, data, names)

st.download_button("Download all predictions (CSV)", predictions_csv(rows), file_name="fvr-predictions.csv",
                   mime="text/csv", icon=":material/download:")
for i, (name, raw) in enumerate(zip(names, data)):
    mine = [r for r in rows if r["image"] == name]
    left, right = st.columns([1, 3])
    try:
        left.image(load_rgb(raw), caption=name, width="stretch")
    except ImageError as exc:
        left.error(f"{name}: {exc}")
        continue
    errors = {r["error"] for r in mine if r["error"]}
    if errors:
        right.error(f"{name}: {'; '.join(errors)}")
        continue
    right.plotly_chart(probability_figure({r["model"]: r["prob_fake"] for r in mine}), width="stretch", key=f"p_{i}")
    verdicts = ", ".join(f"{r['model']}: {r['prob_fake']:.0%} fake" for r in mine)
    right.caption(verdicts)

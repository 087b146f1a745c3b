"""Predict: upload photos, pick trained runs (or the best run of each model), and see, for every
face found, each model's calibrated probability that it is fake, its verdict (or "unsure") and
a saliency map; evaluate a labelled set of outside photos; predict a whole folder to CSV."""

import streamlit as st

from fvr_core.data.archive import ArchiveError
from fvr_core.report.charts import probability_figure
from fvr_core.report.compare import best_runs_above_chance, predictable_runs, predictions_csv
from fvr_core.data.dataset import DataError
from fvr_core.data.images import thumbnail_data_uri as thumbnail_uri
from fvr_core.workspace.datasources import resolve_user_folder
from fvr_core.inference.outside import OutsideError, labelled_photos, list_photos, unwrap
from fvr_core.runs.store import RunError
from fvr_core.settings import prediction_slot, unsure_band, valid_unsure_band
from fvr_core.workspace.uploads import extract_upload
from pages._common import accepted_uploads, demo_banner, heatmap_overlay, limits, predictor, prepared_photo, run_label, runs, session_id

st.title("Predict")
demo_banner()
lim = limits()
st.write("Upload photos of any size. Each face is found and cropped as the training faces were, then "
         "scaled, never stretched; a photo with no face found is \"not judged\" unless you ask for the whole "
         "image to be judged. "
         "Probabilities are calibrated on each run's validation split; inside the unsure band the answer "
         "is \"unsure\". A model trained on one generator's faces may not recognise another's: read the "
         "answers as that model's opinion, not as proof.")

candidates = predictable_runs(runs())
if not candidates:
    st.info("No trained model yet: train one on the Train page (the \"Quick look\" preset takes about a minute).")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

best, skipped = best_runs_above_chance(candidates)
use_best = st.toggle("Best run of each model", value=bool(best),
                     help="for each model, the finished run with the highest test balanced accuracy; a model whose "
                          "best run is near chance is left out")
by_id = {r.id: r for r in candidates}
for model, reason in skipped.items():  # said whether or not the toggle is on: it explains why it is off
    st.caption(f"Left out of \"best run of each model\": {model}, {reason}")
if use_best and not best:
    st.warning("No model has a run above chance level: choose runs by hand below.")
if use_best and best:
    chosen = list(best.values())
    st.caption("Models: " + "; ".join(run_label(r) for r in chosen))
else:
    chosen_ids = st.multiselect("Runs", list(by_id), default=list(by_id)[:1], format_func=lambda i: run_label(by_id[i]))
    chosen = [by_id[i] for i in chosen_ids]
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

options = st.columns(4)
face_crop = options[0].toggle("Find and crop faces", value=True, help="off: judge the whole photo, centre-cropped")
judge_without_face = options[1].toggle(
    "Judge photos without a face", value=False, disabled=not face_crop, key="judge_without_face",
    help="the models learnt faces: on a photo where no face is found their answer means little, so by default such a "
         "photo is not judged. On: judge the whole photo anyway")
tta = options[2].toggle("Mirror test-time augmentation", value=False,
                        help="also judge the mirrored photo and average the two (twice the work)")
show_saliency = options[3].toggle("Saliency maps", value=True,
                                  help="Grad-CAM: where in the face each model found the evidence for its answer")
band = st.slider("Unsure band (calibrated probability of fake)", 0.0, 1.0, value=unsure_band(), step=0.05,
                 help="a probability inside this band is reported as unsure instead of fake or real")
band = valid_unsure_band(band)
if band is None:
    st.warning("The unsure band must contain 50 %: using the default.")
    band = unsure_band()

predictors, runs_by_label = {}, {}
for run in chosen:
    label = run_label(run, compact=True)
    try:
        predictors[label] = predictor(run)
        runs_by_label[label] = run
    except (RunError, OSError, ValueError) as exc:
        st.error(f"Cannot load {run.id}: {exc}")
if not predictors:
    st.stop()


def verdict_text(row: dict) -> str:
    if row["error"]:
        return f"{row['model']}: error ({row['error']})"
    if row["prob_fake"] is None:
        return f"**{row['model']}**: {row['verdict']}"
    return f"**{row['model']}**: {row['verdict']} ({row['prob_fake']:.0%} fake)"


def show_photo(i: int, photo, rows: list[dict]) -> None:
    from fvr_core.inference.predict import annotate

    st.subheader(photo.name, divider="gray")
    if photo.error:
        st.error(f"{photo.name}: {photo.error}")
        return
    for subject in photo.subjects:
        mine = [r for r in rows if r["face_index"] == subject.index]
        left, middle, right = st.columns([1, 1, 2])
        if subject.index == 0:
            left.image(annotate(photo), caption="original", width="stretch")
        middle.image(subject.image, caption=subject.description, width="stretch")
        if subject.face_found is False and not judge_without_face:
            right.info("No face found: not judged. The models learnt faces, so their answer on this photo would mean "
                       "little; turn on \"Judge photos without a face\" to judge the whole photo anyway.")
        else:
            right.plotly_chart(probability_figure({r["model"]: r["prob_fake"] for r in mine}, band), width="stretch",
                               key=f"p_{i}_{subject.index}")
        right.markdown("  \n".join(verdict_text(r) for r in mine))
        if show_saliency:
            maps = st.columns(4)  # a quarter of the width each, as many rows as models need
            for j, row in enumerate(mine):
                if row["prob_fake"] is None:
                    continue
                target = "fake" if row["prob_fake"] >= 0.5 else "real"
                image, note = heatmap_overlay(runs_by_label[row["model"]], subject.image, target)
                maps[j % len(maps)].image(image, caption=f"{row['model']}: evidence for \"{target}\"" + (f" ({note})" if note else ""), width="stretch")


def choose_folder(key: str) -> object:
    """A folder from an uploaded zip or (outside demo mode) a typed path; None until chosen."""
    sources = ["Upload a zip"] + (["Folder path"] if lim.allow_paths else [])
    source = st.segmented_control("Photos from", sources, default=sources[0], key=f"{key}_source")
    try:
        if source == "Folder path":
            text = st.text_input("Folder", placeholder="/path/to/photos", key=f"{key}_path")
            return unwrap(resolve_user_folder(text, lim)) if text else None
        upload = accepted_uploads(st.file_uploader("Zip of photos", type=["zip"], key=f"{key}_zip", max_upload_size=lim.max_upload_mb))
        return unwrap(extract_upload(upload[0], lim, session_id())) if upload else None
    except (ArchiveError, DataError, OutsideError) as exc:
        st.error(str(exc))
        return None


photos_tab, labelled_tab, folder_tab = st.tabs(["Photos", "Labelled set", "Folder to CSV"])

with photos_tab:
    uploads = accepted_uploads(st.file_uploader("Photos (jpg, png, webp)", type=["jpg", "jpeg", "png", "webp"],
                                                accept_multiple_files=True, max_upload_size=lim.max_upload_mb, key="photos"))
    if not uploads:
        st.info("Upload one or more photos to see what the models say.")
    else:
        from fvr_core.inference.predict import predict_with_each

        with st.spinner(f"Finding faces and asking {len(predictors)} model(s) about {len(uploads)} photo(s)..."):
            prepared = [prepared_photo(u.getvalue(), u.name, face_crop) for u in uploads]
            with prediction_slot():  # a few predictions at a time for all sessions: memory stays bounded
                rows = predict_with_each(predictors, prepared, tta, band, judge_without_face)
        st.download_button("Download all predictions (CSV)", predictions_csv(rows), file_name="fvr-predictions.csv",
                           mime="text/csv", icon=":material/download:")
        for i, photo in enumerate(prepared):
            show_photo(i, photo, [r for r in rows if r["image"] == photo.name])

with labelled_tab:
    st.caption("Photos with known answers, like the original write-up's 32 outside photos: a zip or folder with a "
               "labels.csv (columns file,label; label fake or real) or with fake/ and real/ subfolders. A photo "
               "counts once, by its largest face.")
    folder = choose_folder("labelled")
    if folder is not None:
        try:
            photos, problems = labelled_photos(folder)
        except OutsideError as exc:
            st.error(str(exc))
            photos, problems = [], []
        if photos:
            photos = photos[: lim.max_upload_files]
            for problem in problems:
                st.warning(problem)
            from fvr_core.inference.outside import evaluate_labelled, predict_photos

            with st.spinner(f"Judging {len(photos)} labelled photos..."), prediction_slot():
                prepared, rows = predict_photos(predictors, photos, face_crop, tta, band, judge_without_face)
                scores, table = evaluate_labelled(rows, photos)
            st.dataframe(scores, hide_index=True, width="stretch", column_config={
                c: st.column_config.NumberColumn(format="percent") for c in ("accuracy", "balanced_accuracy")})
            crops = {p.name: p.subjects[0].image for p in prepared if p.subjects}
            for row in table:
                row["crop"] = thumbnail_uri(crops[row["image"]]) if row["image"] in crops else None
                if show_saliency and row["prob_fake"] is not None:
                    target = "fake" if row["prob_fake"] >= 0.5 else "real"
                    row["heatmap"] = thumbnail_uri(heatmap_overlay(runs_by_label[row["model"]], crops[row["image"]], target)[0])
            columns = ["crop", "heatmap", "image", "model", "truth", "verdict", "prob_fake", "correct", "face", "error"]
            st.dataframe([{c: r.get(c) for c in columns} for r in table], hide_index=True, width="stretch", row_height=72,
                         column_config={"crop": st.column_config.ImageColumn("crop"),
                                        "heatmap": st.column_config.ImageColumn("saliency"),
                                        "face": st.column_config.TextColumn(width="large"),
                                        "prob_fake": st.column_config.ProgressColumn("P(fake)", min_value=0.0, max_value=1.0, format="percent")})
            st.download_button("Download the table (CSV)", predictions_csv([{c: r.get(c) for c in columns[2:]} for r in table]),
                               file_name="fvr-outside-evaluation.csv", mime="text/csv", icon=":material/download:")

with folder_tab:
    st.caption("Every photo in a zip or folder through the chosen models, one row per face and model, as CSV.")
    folder = choose_folder("batch")
    if folder is not None:
        try:
            photos = list_photos(folder)[: lim.max_upload_files]
        except OutsideError as exc:
            st.error(str(exc))
            photos = []
        if not photos:
            st.warning(f"No photos in {folder.name}.")
        elif st.button(f"Predict {len(photos)} photos", type="primary"):
            from fvr_core.inference.outside import predict_photos

            with st.spinner(f"Judging {len(photos)} photos..."), prediction_slot():
                _, rows = predict_photos(predictors, photos, face_crop, tta, band, judge_without_face)
            st.download_button("Download predictions (CSV)", predictions_csv(rows), file_name="fvr-folder-predictions.csv",
                               mime="text/csv", icon=":material/download:", type="primary", on_click="ignore")
            st.dataframe(rows, hide_index=True, width="stretch", column_config={
                "face": st.column_config.TextColumn(width="large"), "image": st.column_config.TextColumn(width="medium"),
                "prob_fake": st.column_config.NumberColumn("P(fake)", format="%.3f")})

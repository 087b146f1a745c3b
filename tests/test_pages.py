"""The dashboard's pages, driven through Streamlit's AppTest: widgets present, a launched run
trains in the background and shows up live and in Compare, predictions on uploads, and every
mistake a user can make ends as a message in the page, never a traceback."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import REPO, make_class_folders, write_image
from fvr_core.inference.calibration import load_calibration
from fvr_core.config import TrainConfig
from fvr_core.inference.robustness import CORRUPTIONS, load_robustness
from fvr_core.runs.store import ACTIVE_STATES, COMPLETED, RunStore

TIMEOUT = 120


def app(data: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=TIMEOUT)
    if data is not None:
        at.session_state["data_path"] = str(data)
    return at.run()


def page(at: AppTest, name: str) -> AppTest:
    return at.switch_page(f"pages/{name}.py").run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def image_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def frame_with(at: AppTest, column: str):
    """The first table on the page with this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def no_traceback(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)


@pytest.fixture
def trained_run(demo_data):
    """A finished run of the small CNN on the demo set (trained in this process)."""
    from fvr_core.training.trainer import train

    run = train(TrainConfig(data=str(demo_data), model="tiny_cnn", epochs=2, image_size=48, batch_size=16))
    assert run.state == COMPLETED
    return run


def jpeg_bytes(size=(120, 90), color=(90, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


# ---------------------------------------------------------------- Home


def test_home_without_runs_or_data_says_where_to_start():
    at = app()
    no_traceback(at)
    assert "fvr" in at.title[0].value
    info = texts(at.info)
    assert "No runs of yours yet" in info and "No data set chosen" in info
    assert {link.proto.page for link in at.get("page_link")} >= {"data", "train", "compare", "predict"}


def test_home_lists_runs_and_the_data_set(trained_run, demo_data):
    at = app(demo_data)
    no_traceback(at)
    assert "80 images (40 fake, 40 real)" in texts(at.markdown)
    assert list(at.dataframe[0].value["run"]) == [trained_run.id]


# ---------------------------------------------------------------- Data


def test_data_page_shows_counts_samples_and_a_clean_report(demo_data):
    at = page(app(demo_data), "data")
    no_traceback(at)
    assert len(at.get("plotly_chart")) == 2  # class counts and split sizes
    assert len(at.get("imgs")) >= 1 or len(at.image) >= 1
    assert "nothing was skipped" in texts(at.success)


def test_data_page_lists_skipped_files_with_reasons(tmp_path):
    root = make_class_folders(tmp_path / "faces", 5, 5)
    (root / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "real" / "empty.jpg").write_bytes(b"")
    at = page(app(root), "data")
    no_traceback(at)
    report = at.dataframe[0].value
    assert set(report["file"]) == {"fake/broken.jpg", "real/empty.jpg"}
    assert all(report["reason"].str.len() > 0)
    assert "2 file(s) were skipped" in texts(at.warning)


def test_data_page_folder_errors_are_messages(tmp_path):
    at = page(app(), "data")
    at.get("button_group")[0].set_value("Folder path").run()
    at.text_input(key="data_folder").input(str(tmp_path / "nowhere")).run()
    at.button[-1].click().run()
    no_traceback(at)
    assert "does not exist" in texts(at.error)


def test_data_page_demo_set_and_bad_zip(tmp_path):
    at = page(app(), "data")
    at.get("button_group")[0].set_value("Upload a zip").run()
    at.file_uploader(key="data_zip").set_value(("faces.zip", b"this is not a zip", "application/zip")).run()
    at.button[-1].click().run()
    no_traceback(at)
    assert "faces.zip" in texts(at.error)

    at.get("button_group")[0].set_value("Demo set (synthetic)").run()
    at.button[-1].click().run()
    no_traceback(at)
    assert "fvr-demo-synthetic" in at.session_state["data_path"]
    assert "nothing was skipped" in texts(at.success)


def test_data_page_combines_several_sources(tmp_path):
    faces = make_class_folders(tmp_path / "faces", 5, 5)
    gan = tmp_path / "gan"
    for i in range(4):
        write_image(gan / f"g{i}.jpg", (40, 40), (200, 40, 40))
    at = page(app(), "data")
    at.get("button_group")[0].set_value("Several sources").run()
    at.text_area(key="data_more_sources").input(f"{faces}\nfake:{gan}").run()
    at.button[-1].click().run()
    no_traceback(at)
    assert at.session_state["data_path"] == f"{faces.resolve()};fake:{gan.resolve()}"
    sources = frame_with(at, "source")
    assert list(sources["source"]) == ["faces", "gan"] and list(sources["fake"]) == [5, 4] and list(sources["real"]) == [5, 0]
    assert "2 sources" in texts(at.subheader)

    at.text_area(key="data_more_sources").input(f"fake:{tmp_path / 'nowhere'}").run()
    at.button[-1].click().run()
    no_traceback(at)
    assert "nowhere" in texts(at.error) and "does not exist" in texts(at.error)


# ---------------------------------------------------------------- Train


def test_train_page_has_every_setting_and_an_estimate(demo_data):
    at = page(app(demo_data), "train")
    no_traceback(at)
    labels = {w.label for w in [*at.selectbox, *at.slider, *at.select_slider, *at.number_input, *at.checkbox]}
    for wanted in ("Model", "Epochs", "Learning rate (log scale)", "Batch size", "Optimizer", "Schedule", "Weight decay",
                   "Augmentation", "Image size (px)", "Seed", "Early stopping patience (epochs, 0 = off)",
                   "Gradient clipping (max norm, 0 = off)", "Best checkpoint by", "Class weights"):
        assert wanted in labels, wanted
    assert at.session_state["cfg_image_size"] == 64 and at.session_state["cfg_model"] == "cnn"  # Quick look
    assert "Estimated time" in texts(at.info)


def test_presets_set_the_original_recipe(demo_data):
    at = page(app(demo_data), "train")
    next(b for b in at.button if b.label == "Preset: Original recipe").click().run()
    no_traceback(at)
    assert at.session_state["cfg_image_size"] == 300 and at.session_state["cfg_epochs"] == 30
    assert at.session_state["cfg_augment"] == "none" and at.session_state["cfg_lr"] == 1e-3


def test_train_without_data_explains_and_disables_train():
    at = page(app(), "train")
    no_traceback(at)
    assert "No data set chosen" in texts(at.warning)
    assert next(b for b in at.button if b.label == "Train").disabled


def wait_for_end(at: AppTest, timeout: float = 240.0) -> AppTest:
    """AppTest never re-runs a run_every fragment by itself: rerun the page until no run is active."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        if not any(r.state in ACTIVE_STATES for r in RunStore().list()):
            return at.run()
        time.sleep(1.0)
    raise AssertionError("the launched run did not finish in time")


def test_train_launches_a_background_run_and_the_live_view_follows_it(demo_data):
    at = page(app(demo_data), "train")
    at.selectbox(key="cfg_model").set_value("tiny_cnn")  # the page's whole path, with 6 KB checkpoints
    at.slider(key="cfg_epochs").set_value(2)
    at.select_slider(key="cfg_image_size").set_value(48).run()
    next(b for b in at.button if b.label == "Train").click().run()
    no_traceback(at)
    runs = RunStore().list()
    assert len(runs) == 1 and runs[0].config.epochs == 2 and runs[0].config.image_size == 48
    assert runs[0].config.model == "tiny_cnn"
    assert at.session_state["live_launched"] == [runs[0].id]
    wait_for_end(at)
    no_traceback(at)
    assert runs[0].state == COMPLETED
    assert "completed" in texts(at.success) and "test accuracy" in texts(at.success)
    assert at.get("plotly_chart"), "the live curves should be drawn"


def test_a_diverged_run_says_so_with_the_hint(demo_data):
    from fvr_core.training.trainer import DIVERGENCE_HINT, train

    run = train(TrainConfig(data=str(demo_data), model="tiny_cnn", epochs=1, image_size=48, lr=1e9, batch_size=8))
    assert run.state == "diverged"
    at = page(app(demo_data), "train")
    no_traceback(at)
    assert "diverged" in texts(at.error) and DIVERGENCE_HINT in texts(at.error)


def test_train_all_four_queues_the_original_models(demo_data, monkeypatch):
    import fvr_core.training.launcher as launcher

    monkeypatch.setattr(launcher, "start_worker", lambda *a, **k: None)  # queue only: vgg19 would take minutes
    at = page(app(demo_data), "train")
    next(b for b in at.button if b.label == "Train all four").click().run()
    no_traceback(at)
    models = sorted(r.config.model for r in RunStore().list())
    assert models == sorted(["cnn", "resnet18", "vgg19", "vgg19_bn"])
    assert all(r.config.image_size == 64 for r in RunStore().list())


def test_demo_mode_caps_the_sliders_and_refuses_heavy_models(demo_data, monkeypatch):
    monkeypatch.setenv("FVR_DEMO_MODE", "1")
    at = page(app(demo_data), "train")
    no_traceback(at)
    assert at.slider(key="cfg_epochs").max <= 5
    assert max(at.select_slider(key="cfg_image_size").options, key=int) in ("128", 128)
    assert "vgg19" not in at.selectbox(key="cfg_model").options
    assert next(b for b in at.button if b.label == "Train all four").disabled


# ---------------------------------------------------------------- Compare


def test_compare_shows_the_table_curves_and_test_results(trained_run):
    at = page(app(), "compare")
    no_traceback(at)
    table = at.dataframe[0].value
    assert list(table["run"]) == [trained_run.id]
    # headers in words, fractions as percentages
    assert table["test balanced accuracy"][0] == pytest.approx(100 * trained_run.test_metrics()["balanced_accuracy"])
    assert at.multiselect[2].value == [trained_run.id]  # finished runs are preselected
    assert len(at.get("plotly_chart")) >= 5  # curves, test bars, confusion matrix, ROC, reliability diagram
    assert len(at.get("download_button")) == 2  # the table and the checkpoint
    per_source = frame_with(at, "recall")  # one source (the demo set): its fakes caught and reals kept
    assert list(zip(per_source["source"], per_source["class"])) == [("demo", "fake"), ("demo", "real")]
    assert list(per_source["right"]) == [r["correct"] for r in trained_run.test_metrics()["per_source"]]
    calibration = frame_with(at, "temperature")  # fitted when the run finished
    assert calibration["temperature"][0] == pytest.approx(load_calibration(trained_run).temperature)

    charts = len(at.get("plotly_chart"))
    evaluate = at.button[0]
    assert evaluate.label.startswith("Evaluate 1 run(s) under corruption (about ")  # says how long, from the run's own timing
    evaluate.click().run()
    no_traceback(at)
    assert len(at.get("plotly_chart")) == charts + 1
    robustness = frame_with(at, "corruption")
    assert list(robustness["corruption"]) == [c.label for c in CORRUPTIONS.values()]
    assert load_robustness(trained_run) is not None


def test_compare_without_runs_says_so():
    at = page(app(), "compare")
    no_traceback(at)
    assert "No runs yet" in texts(at.info)


# ---------------------------------------------------------------- Predict


def test_predict_uploads_get_a_probability_per_model(trained_run):
    at = page(app(), "predict")
    no_traceback(at)
    at.file_uploader(key="photos").set_value([
        ("portrait.jpg", jpeg_bytes((400, 250)), "image/jpeg"),
        ("broken.png", b"\x89PNG not an image", "image/png"),
    ]).run()
    no_traceback(at)
    assert "broken.png" in texts(at.error)
    # a flat colour has no face: by default it is not judged, and the page says why
    assert len(at.get("plotly_chart")) == 0 and "not judged" in texts(at.info)
    assert "% fake" not in texts(at.markdown)
    at.toggle(key="judge_without_face").set_value(True).run()  # asked to judge the whole photo anyway
    no_traceback(at)
    assert len(at.get("plotly_chart")) == 1  # the good photo's bars
    assert "% fake" in texts(at.markdown) and "cnn" in texts(at.markdown)
    captions = image_captions(at)
    assert "no face found: whole image" in captions  # the page says what was judged
    assert sum(c.startswith("tiny_cnn") and 'evidence for "' in c for c in captions) == 1  # its saliency map
    assert len(at.get("download_button")) == 1


def test_predict_finds_and_crops_a_face_in_a_wide_photo(trained_run, shared_faces):
    canvas = Image.new("RGB", (900, 500), (128, 128, 128))
    canvas.paste(Image.open(shared_faces / "real" / "3.jpg"), (520, 120))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG")
    at = page(app(), "predict")
    at.file_uploader(key="photos").set_value([("wide.jpg", buffer.getvalue(), "image/jpeg")]).run()
    no_traceback(at)
    captions = image_captions(at)
    assert "face" in captions  # the crop's caption: one face found
    assert not any("whole image" in c for c in captions)


def test_predict_evaluates_a_labelled_zip(trained_run, tmp_path):
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("outside/labels.csv", "file,label\nred.jpg,fake\nblue.jpg,real\n")
        zf.writestr("outside/red.jpg", jpeg_bytes(color=(200, 60, 60)))
        zf.writestr("outside/blue.jpg", jpeg_bytes(color=(60, 60, 200)))
    at = page(app(), "predict")
    at.file_uploader(key="labelled_zip").set_value(("outside.zip", buffer.getvalue(), "application/zip")).run()
    no_traceback(at)
    scores = at.dataframe[0].value  # flat colours hold no face: not judged, so not scored
    assert list(scores["photos"]) == [0] and list(scores["not_judged"]) == [2]
    at.toggle(key="judge_without_face").set_value(True).run()
    no_traceback(at)
    scores, table = at.dataframe[0].value, at.dataframe[1].value
    assert list(scores["photos"]) == [2]
    assert sorted(table["image"]) == ["blue.jpg", "red.jpg"] and set(table["truth"]) == {"fake", "real"}


def test_predict_without_models_says_so():
    at = page(app(), "predict")
    no_traceback(at)
    assert "No trained model yet" in texts(at.info)


def test_reference_runs_work_on_a_fresh_clone_before_any_training(demo_data, tmp_path, monkeypatch):
    """Runs shipped in checkpoints/reference show in Compare and predict on Predict with no run of one's own."""
    from fvr_core.training.trainer import train

    reference = tmp_path / "reference"
    shipped = train(TrainConfig(data=str(demo_data), model="tiny_cnn", epochs=1, image_size=48, batch_size=16), runs_dir=reference)
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(reference))
    assert RunStore().list() == []  # nothing trained in this checkout

    at = app()  # Home: the shipped runs are not counted as the user's
    no_traceback(at)
    assert "No runs of yours yet" in texts(at.info) and "1 reference runs shipped with fvr" in texts(at.caption)

    at = page(app(), "compare")
    no_traceback(at)
    table = at.dataframe[0].value
    assert list(table["run"]) == [shipped.id] and table["shipped reference"].iloc[0] == "yes"
    # no run of one's own: the references are the default comparison
    assert next(w for w in at.multiselect if w.label == "Runs to compare").value == [shipped.id]

    at = page(app(), "predict")
    no_traceback(at)
    # one epoch on the demo set is near chance: left out of "best run of each model", and the page
    # says why; it can still be chosen by hand (the default choice then)
    assert f"cnn, its best run {shipped.id} is near chance" in texts(at.caption)
    at.toggle(key="judge_without_face").set_value(True).run()  # a flat picture holds no face
    at.file_uploader(key="photos").set_value([("face.jpg", jpeg_bytes(), "image/jpeg")]).run()
    no_traceback(at)
    assert "% fake" in texts(at.markdown) and "ref · tiny_cnn" in texts(at.markdown)


def test_the_first_page_needs_no_torch():
    """Home renders without importing torch (seconds on a small server); torch loads with Train or Predict."""
    import subprocess
    import sys

    # also what the CLI's parser and Compare import, and the modules that load torch, captum or
    # facenet-pytorch only when a prediction, a saliency map or a face search needs them
    modules = "fvr_core, fvr_core.report.compare, fvr_core.workspace.datasources, fvr_core.report.charts, fvr_core.training.launcher, fvr_core.cli, " \
              "fvr_core.inference.calibration, fvr_core.inference.robustness, fvr_core.inference.outside, fvr_core.inference.faces, fvr_core.inference.saliency"
    code = f"import sys, {modules}; fvr_core.cli.build_parser(); print([m for m in ('torch', 'captum', 'facenet_pytorch') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_train_settings_and_data_set_come_from_the_link(demo_data, tmp_path):
    """A reload or a shared link (?data=...&epochs=...) brings back the data set and the settings;
    a bad value in it is named and skipped, never a traceback."""
    other = make_class_folders(tmp_path / "other-set", n_fake=6, n_real=6)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.query_params.update({"data": str(other), "epochs": "7", "lr": "0.0002", "batch_size": "oops", "model": "gpt"})
    at = at.switch_page("pages/train.py").run()
    no_traceback(at)
    assert at.session_state["data_path"] == str(other) and "other-set" in texts(at.markdown)
    assert at.session_state["cfg_epochs"] == 7 and at.session_state["cfg_lr"] == 2e-4
    assert at.session_state["cfg_batch_size"] == 32 and at.session_state["cfg_model"] == "cnn"  # the preset's, as said:
    warnings = texts(at.warning)
    assert "batch_size='oops'" in warnings and "model='gpt'" in warnings
    # the page writes its settings back into the link (only what differs from the first preset)
    at.slider(key="cfg_epochs").set_value(9).run()
    assert at.query_params["epochs"] == "9" and at.query_params["data"] == str(other)


def test_a_missing_data_set_in_the_link_is_named(demo_data, tmp_path):
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.query_params["data"] = str(tmp_path / "gone")
    at = at.switch_page("pages/train.py").run()
    no_traceback(at)
    assert "data set in this page's link cannot be used" in texts(at.warning)

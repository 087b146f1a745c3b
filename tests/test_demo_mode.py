"""A safe public demo (FVR_DEMO_MODE=1): every cap is enforced in fvr_core and shown in the pages,
data comes only from the data root or uploads, uploads are capped in size and count, paths and
deleting are off, and nothing a visitor types reaches a shell or a path outside the app's folders."""

from __future__ import annotations

import ast
import io
import os
import re
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, make_class_folders
from fvr_core import settings
from fvr_core.data.archive import ArchiveError, extract_dataset_zip
from fvr_core.config import ConfigError, TrainConfig, check_limits
from fvr_core.data.dataset import DataError
from fvr_core.workspace.datasources import default_dataset, known_datasets, resolve_user_folder, resolve_user_path
from fvr_core.runs.store import QUEUED, STOPPED, RunError, RunStore
from fvr_core.settings import DEMO_MODELS, app_limits
from test_pages import app, no_traceback, page, texts

RUN_ID = re.compile(r"^\d{8}-\d{6}-\d{3}-[a-z0-9_]+-[0-9a-f]{6}$")


@pytest.fixture
def demo(monkeypatch):
    monkeypatch.setenv("FVR_DEMO_MODE", "1")
    return app_limits()


@pytest.fixture
def faces() -> Path:
    """A data set inside the data root, where demo mode lets visitors train."""
    return make_class_folders(settings.data_root() / "faces", 6, 6)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """A finished small run, served as a reference run (what Predict and Compare show on a fresh clone)."""
    from fvr_core.training.trainer import train

    data = make_class_folders(tmp_path_factory.mktemp("demo-ref-data"), 8, 8, size=(32, 32))
    folder = tmp_path_factory.mktemp("demo-reference")
    train(TrainConfig(data=str(data), model="tiny_cnn", epochs=1, image_size=48, batch_size=8, threads=1), runs_dir=folder)
    return folder


@pytest.fixture
def queue_only(monkeypatch):
    """Launches queue their run without a worker; the workers asked for are recorded."""
    import fvr_core.training.launcher as launcher

    started = []
    monkeypatch.setattr(launcher, "start_worker", lambda root, max_concurrent=1, idle_seconds=0.0: started.append(max_concurrent))
    return started


def jpeg(size=(96, 96), color=(90, 120, 200), noise: int = 0) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color) if not noise else Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def train_button(at):
    return next(b for b in at.button if b.label == "Train")


# ---------------------------------------------------------------- the limits, in the library


def test_demo_mode_is_read_from_the_environment_at_each_call(monkeypatch):
    assert not app_limits().demo and app_limits().allow_paths and app_limits().allow_delete
    monkeypatch.setenv("FVR_DEMO_MODE", "1")
    lim = app_limits()
    assert lim.demo and not lim.allow_paths and not lim.allow_delete
    assert (lim.max_epochs, lim.max_image_size, lim.models, lim.max_concurrent_runs, lim.max_queued_runs) == (5, 128, DEMO_MODELS, 1, 3)
    assert (lim.max_upload_mb, lim.max_upload_files, lim.max_extracted_mb) == (20, 20, 200)
    monkeypatch.setenv("FVR_DEMO_MAX_EPOCHS", "2")
    monkeypatch.setenv("FVR_MAX_CONCURRENT_RUNS", "4")  # a local setting: demo mode keeps one run at a time
    assert app_limits().max_epochs == 2 and app_limits().max_concurrent_runs == 1
    monkeypatch.setenv("FVR_DEMO_MAX_EPOCHS", "lots")
    with pytest.raises(ValueError, match="FVR_DEMO_MAX_EPOCHS='lots' must be a whole number"):
        app_limits()


def test_demo_mode_from_a_root_level_secret(tmp_path, monkeypatch):
    """.streamlit/config.toml cannot hold it (Streamlit ignores unknown options); a root-level secret
    (Community Cloud's Secrets, or .streamlit/secrets.toml) is exported as an environment variable."""
    from streamlit.runtime.secrets import Secrets
    from streamlit.testing.v1.util import patch_config_options

    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text('FVR_DEMO_MODE = "1"\nFVR_DEMO_MAX_EPOCHS = "3"\n')
    monkeypatch.delenv("FVR_DEMO_MAX_EPOCHS", raising=False)
    secrets = Secrets()
    with patch_config_options({"secrets.files": [str(secrets_file)]}):
        assert secrets.load_if_toml_exists()
    try:
        assert app_limits().demo and app_limits().max_epochs == 3
    finally:
        secrets._reset()  # takes the variables it exported back out
    assert not app_limits().demo
    assert "FVR_DEMO_MODE" in (REPO / ".streamlit" / "config.toml").read_text()  # where to look, said where one would


def test_every_training_cap_is_enforced_in_the_library(demo, faces, queue_only):
    from fvr_core.training.launcher import launch

    ok = TrainConfig(data=str(faces), model="cnn", epochs=5, image_size=128)
    check_limits(ok, demo)
    for changes, message in [({"epochs": 6}, "epochs=6: this app allows at most 5"),
                             ({"image_size": 160}, "image_size=160: this app allows at most 128 px"),
                             ({"model": "vgg19"}, "model='vgg19': this app offers cnn, resnet18, mobilenet_v3_small, cooc_lr"),
                             ({"model": "resnet18", "pretrained": True}, "downloads are turned off")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_limits(ok.replace(**changes), demo)
        with pytest.raises(ConfigError, match=re.escape(message)):
            launch(ok.replace(**changes), limits=demo)
    assert RunStore().list() == []  # nothing refused was queued

    launched = [launch(ok.replace(seed=s), limits=demo) for s in range(demo.max_queued_runs)]
    with pytest.raises(RunError, match="3 runs are already queued or running"):
        launch(ok, limits=demo)
    assert queue_only == [1] * len(launched)  # one run trains at a time
    assert len(RunStore().list(state=QUEUED)) == demo.max_queued_runs


def test_resuming_respects_the_queue_cap(demo, faces, queue_only):
    from fvr_core.training.launcher import launch, resume_in_background
    from fvr_core.runs.store import STOPPED

    config = TrainConfig(data=str(faces), model="cnn", epochs=1, image_size=48)
    stopped = RunStore().create(config, owner="visitor1")
    stopped.write_status(STOPPED, message="stopped as asked")
    for seed in range(demo.max_queued_runs):
        launch(config.replace(seed=seed), limits=demo)
    with pytest.raises(RunError, match="already queued or running"):
        resume_in_background(stopped, limits=demo, owner="visitor1")
    assert stopped.state == STOPPED


def test_training_data_must_come_from_the_data_root(demo, faces, tmp_path, queue_only):
    from fvr_core.training.launcher import launch

    outside = make_class_folders(tmp_path / "elsewhere", 4, 4)
    with pytest.raises(DataError, match="only reads folders under its data folder"):
        launch(TrainConfig(data=str(outside), model="cnn", epochs=1, image_size=48), limits=demo)
    with pytest.raises(DataError, match="only reads folders under its data folder"):
        launch(TrainConfig(data=str(faces / ".." / ".." / tmp_path.name / "elsewhere"), model="cnn", epochs=1, image_size=48), limits=demo)
    assert launch(TrainConfig(data=str(faces), model="cnn", epochs=1, image_size=48), limits=demo).state == QUEUED


def test_typed_folders_outside_the_data_root_are_refused(demo, faces, tmp_path):
    root = settings.data_root()
    secret = make_class_folders(tmp_path / "secret", 3, 3)
    (root / "link").symlink_to(secret, target_is_directory=True)
    (faces / "real" / "escape").symlink_to(secret, target_is_directory=True)
    for text in [str(secret), f"{root}/../{secret.parent.name}/secret", f"{faces}/../../../..", "/etc", "~",
                 f"{root}/link", f"{faces}/real/escape", "../" * 20 + "etc"]:
        with pytest.raises(DataError, match="only reads folders under its data folder"):
            resolve_user_folder(text, demo)
    assert resolve_user_path(str(faces), demo) == faces.resolve()
    assert resolve_user_folder(f"{faces}/fake/../real", demo) == (faces / "real").resolve()
    assert resolve_user_folder(str(secret), None) == secret.resolve()  # outside demo mode: any folder


def test_only_the_data_root_is_offered_or_chosen(demo, faces, tmp_path, monkeypatch):
    from fvr_core.runs.store import Run

    shared = tmp_path / "shared"
    make_class_folders(shared / "team-set", 3, 3)
    monkeypatch.setenv("FVR_SHARED_DATASETS", str(shared))
    monkeypatch.setenv("FVR_DATA", str(make_class_folders(tmp_path / "env-set", 3, 3)))
    assert set(known_datasets(demo).values()) == {faces}
    assert {"shared team-set", "$FVR_DATA"} <= set(known_datasets(None))
    outside_run = RunStore().create(TrainConfig(data=str(tmp_path / "env-set"), model="cnn"))
    assert default_dataset([Run(outside_run.path)], demo) == faces  # a run's data outside the root is not reused


def test_an_upload_unpacks_to_at_most_the_demo_cap(demo, monkeypatch, tmp_path):
    monkeypatch.setenv("FVR_DEMO_MAX_EXTRACTED_MB", "1")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for label in ("fake", "real"):
            for i in range(3):
                zf.writestr(f"{label}/{i}.jpg", jpeg((400, 400), noise=1))  # ~350 KB each: 2 MB in all
    with pytest.raises(ArchiveError, match="over the limit"):
        extract_dataset_zip(buffer.getvalue(), tmp_path / "uploads", limits=app_limits().archive_limits())
    assert extract_dataset_zip(buffer.getvalue(), tmp_path / "uploads", limits=settings.AppLimits().archive_limits()).is_dir()


# ---------------------------------------------------------------- nothing typed reaches a shell


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else "?"
            yield name, node


def test_no_shell_anywhere_in_the_library_or_pages():
    files = [*sorted((REPO / "fvr_core").rglob("*.py")), *sorted((REPO / "pages").glob("*.py")), REPO / "streamlit_app.py"]
    problems, processes = [], 0
    for path in files:
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
            if name in ("os.system", "os.popen", "eval", "exec", "pty.spawn") or name.startswith("os.exec") or name.startswith("os.spawn"):
                problems.append(where)
            if any(k.arg == "shell" for k in call.keywords):
                problems.append(f"{where}: shell=")
            if name.startswith("subprocess.") and name not in ("subprocess.DEVNULL", "subprocess.PIPE"):
                processes += 1
                if not call.args or not isinstance(call.args[0], ast.List):
                    problems.append(f"{where}: a command that is not a list of arguments")
    assert not problems, problems
    assert processes == 1  # queue.start_worker: [sys.executable, "-m", "fvr_core", "worker", ...], no shell


def test_a_typed_run_name_stays_data(demo, faces, queue_only, monkeypatch):
    from fvr_core.training.launcher import launch

    monkeypatch.setenv("FVR_DEMO_MAX_QUEUED_RUNS", "10")
    demo = app_limits()

    for name in ["../../etc", "$(rm -rf /)", "`id`; rm -rf ~ && echo", "/tmp/x\n\x00", "a" * 500]:
        run = launch(TrainConfig(data=str(faces), model="cnn", epochs=1, image_size=48, name=name), limits=demo)
        assert run.path.parent == RunStore().root and RUN_ID.match(run.id), run.id  # the folder name is generated
        assert run.config.name == name  # the text is kept as data, in config.json
    with pytest.raises(ConfigError, match="choose one of"):
        RunStore().create(TrainConfig(data=str(faces), model="../../cnn"))  # the one config part in a folder name


# ---------------------------------------------------------------- the pages in demo mode


def test_train_page_caps_and_refusals_are_messages(demo, faces, tmp_path, queue_only):
    from fvr_core.training.estimate import measure_speed

    measure_speed("cnn", 64, 32, budget_seconds=0.2)  # the page's estimate, cached for it
    at = page(app(faces), "train")
    no_traceback(at)
    assert "Public demo" in texts(at.caption)
    assert at.slider(key="cfg_epochs").max == demo.max_epochs
    assert max(int(o) for o in at.select_slider(key="cfg_image_size").options) == demo.max_image_size
    assert {o.split()[0] for o in at.selectbox(key="cfg_model").options} == set(DEMO_MODELS)
    assert at.checkbox(key="cfg_pretrained").disabled
    assert next(b for b in at.button if b.label == "Train all four").disabled

    at.text_input(key="cfg_name").input("$(rm -rf /) ../../etc").run()
    train_button(at).click().run()
    no_traceback(at)
    (run,) = RunStore().list()
    assert RUN_ID.match(run.id) and run.config.name == "$(rm -rf /) ../../etc" and queue_only == [1]

    at.slider(key="cfg_epochs").set_value(50).run()  # past the widget's bound, as a crafted request could be
    no_traceback(at)
    assert at.session_state["cfg_epochs"] <= demo.max_epochs  # Streamlit drops it; launch() would refuse it too
    at.slider(key="cfg_epochs").set_value(2).run()

    for seed in range(demo.max_queued_runs - 1):
        RunStore().create(TrainConfig(data=str(faces), model="cnn", seed=seed))
    train_button(at).click().run()
    no_traceback(at)
    assert "3 runs are already queued or running" in texts(at.error) and len(RunStore().list()) == 3

    at.session_state["data_path"] = str(make_class_folders(tmp_path / "outside", 6, 6))  # chosen before demo mode, say
    train_button(at).click().run()
    no_traceback(at)
    assert "only reads folders under its data folder" in texts(at.error) and len(RunStore().list()) == 3


def test_data_page_offers_no_paths_and_no_download(demo, faces):
    at = page(app(), "data")
    no_traceback(at)
    assert at.get("button_group")[0].proto.options and not any(
        o.content in ("Folder path", "Kaggle download") for o in at.get("button_group")[0].proto.options)
    assert not [t for t in at.text_input]
    (offered,) = at.selectbox[0].options  # what is on this machine: the data root only
    assert offered.startswith(f"faces  ({faces}")


def test_predict_page_takes_only_capped_uploads(demo, reference_runs, monkeypatch):
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(reference_runs))
    monkeypatch.setenv("FVR_DEMO_MAX_UPLOAD_FILES", "2")
    monkeypatch.setenv("FVR_DEMO_MAX_UPLOAD_MB", "1")
    at = page(app(), "predict")
    no_traceback(at)
    uploaders = {u.label: u.proto.max_upload_size_mb for u in at.get("file_uploader")}
    assert set(uploaders.values()) == {1}, uploaders  # every uploader: the browser's cap is the demo cap
    for group in at.get("button_group"):  # Labelled set, Folder to CSV: a zip, never a folder path
        assert [o.content for o in group.proto.options] == ["Upload a zip"]
    assert not [t for t in at.text_input]

    at.file_uploader(key="photos").set_value([(f"p{i}.jpg", jpeg(color=(40 * i, 90, 120)), "image/jpeg") for i in range(3)]
                                            + [("huge.jpg", jpeg((1400, 1400), noise=1), "image/jpeg")]).run()
    no_traceback(at)
    assert "huge.jpg is" in texts(at.error) and "up to 1 MB" in texts(at.error)  # refused on the server too
    assert "this app looks at the first 2" in texts(at.warning)
    assert [s.value for s in at.subheader] == ["p0.jpg", "p1.jpg"]

    big_zip = io.BytesIO()
    with zipfile.ZipFile(big_zip, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("labels.csv", "file,label\nbig.jpg,fake\n")
        zf.writestr("big.jpg", jpeg((1400, 1400), noise=1))
    at.file_uploader(key="labelled_zip").set_value(("outside.zip", big_zip.getvalue(), "application/zip")).run()
    no_traceback(at)
    assert "outside.zip is" in texts(at.error) and not at.dataframe


def test_compare_page_offers_no_delete(demo, reference_runs, monkeypatch):
    monkeypatch.setenv("FVR_REFERENCE_DIR", str(reference_runs))
    at = page(app(), "compare")
    no_traceback(at)
    assert "Delete runs" not in [e.label for e in at.expander]
    monkeypatch.delenv("FVR_DEMO_MODE")
    at = page(app(), "compare")
    no_traceback(at)
    assert "Delete runs" in [e.label for e in at.expander]


# ---------------------------------------------------------------- visitors kept apart


def data_zip(n: int = 4, color=(180, 60, 60)) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for label, shade in (("fake", color), ("real", color[::-1])):
            for i in range(n):
                zf.writestr(f"{label}/{i}.jpg", jpeg((48, 48), color=shade))
    return buffer.getvalue()


def upload_on_data_page(at, name: str, data: bytes):
    at.get("button_group")[0].set_value("Upload a zip").run()
    at.file_uploader(key="data_zip").set_value((name, data, "application/zip")).run()
    next(b for b in at.button if b.label == "Use this zip").click().run()
    no_traceback(at)
    return at


def offered(at) -> list[str]:
    at.get("button_group")[0].set_value("On this machine").run()
    return [o for box in at.selectbox for o in box.options]


def test_a_visitor_sees_only_the_uploads_of_their_own_session(demo, faces, queue_only):
    """Two sessions of the public app: each lists, previews and trains on its own upload only
    (plus the data root's sets), and cannot launch a run on the other's."""
    from fvr_core.training.launcher import launch

    alice, bob = upload_on_data_page(page(app(), "data"), "alice.zip", data_zip()), page(app(), "data")
    upload_on_data_page(bob, "bob.zip", data_zip(5, (40, 160, 60)))
    alice_path, bob_path = Path(alice.session_state["data_path"]), Path(bob.session_state["data_path"])
    assert alice_path != bob_path and alice_path.is_dir() and bob_path.is_dir()
    alice_sets, bob_sets = offered(alice), offered(bob)
    assert any(str(alice_path) in o for o in alice_sets) and not any(str(alice_path) in o for o in bob_sets)
    assert any(str(bob_path) in o for o in bob_sets) and not any(str(bob_path) in o for o in alice_sets)
    assert any(o.startswith("faces") for o in alice_sets) and any(o.startswith("faces") for o in bob_sets)  # the data root's own sets

    bob_session = bob.session_state["fvr_session"]
    config = TrainConfig(data=str(alice_path), model="cnn", epochs=1, image_size=48)
    with pytest.raises(DataError, match="another visitor's session"):
        launch(config, limits=demo, owner=bob_session)
    assert default_dataset([], demo, session=bob_session) != alice_path
    assert launch(config, limits=demo, owner=alice.session_state["fvr_session"]).state == QUEUED


def test_outside_demo_mode_every_upload_is_listed_for_everyone(faces):
    first = upload_on_data_page(page(app(), "data"), "a.zip", data_zip())
    second = page(app(), "data")
    assert any(first.session_state["data_path"] in o for o in offered(second))


def test_old_and_surplus_uploads_go_with_their_caches_unless_a_run_uses_them(demo, monkeypatch, queue_only):
    from fvr_core.data.dataset import load_dataset
    from fvr_core.training.launcher import launch
    from fvr_core.workspace.uploads import extract_upload, list_uploads, prune_uploads

    old, used, recent = (extract_upload(data_zip(4, c), demo, "s1") for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200)))
    for folder in (old, used, recent):
        load_dataset(folder, 48)  # the decoded cache, made as the Data page does
    caches = {u.path: u.caches for u in list_uploads()}
    assert all(caches[f] for f in (old, used, recent))
    day_ago = time.time() - 25 * 3600
    for folder in (old, used):
        os.utime(folder / ".complete", (day_ago, day_ago))
    launch(TrainConfig(data=str(used), model="cnn", epochs=1, image_size=48), limits=demo, owner="s1")  # queued on it

    assert prune_uploads(demo) == [old]  # past 24 h; `used` is as old, but a queued run trains on it
    assert not old.exists() and not any(c.exists() for c in caches[old])
    assert used.is_dir() and recent.is_dir() and all(c.exists() for c in caches[recent])

    monkeypatch.setenv("FVR_DEMO_UPLOADS_MAX_MB", "0.001")  # 1 KB, below what is there: the oldest not in use goes first
    monkeypatch.setenv("FVR_DEMO_UPLOAD_RETENTION_HOURS", "1000")
    newer = extract_upload(data_zip(6, (90, 90, 0)), app_limits(), "s2")  # pruning runs before each upload
    assert not recent.exists() and used.is_dir() and newer.is_dir()
    assert prune_uploads(app_limits()) == [newer]
    assert used.is_dir()


def test_uploads_are_kept_outside_demo_mode(faces):
    from fvr_core.workspace.uploads import extract_upload, prune_uploads

    folder = extract_upload(data_zip(), None, None)
    os.utime(folder / ".complete", (0, 0))
    assert prune_uploads() == [] and folder.is_dir()


# ---------------------------------------------------------------- runs belong to their session


def test_only_the_session_that_started_a_run_can_stop_resume_or_delete_it(demo, faces, queue_only):
    from fvr_core.training.launcher import launch, resume_in_background, stop

    alice = page(app(faces), "train")
    train_button(alice).click().run()
    no_traceback(alice)
    (run,) = RunStore().list()
    bob = page(app(faces), "train")
    no_traceback(bob)
    stop_buttons = lambda at: [b for b in at.button if b.label == "Stop" and b.key == f"stop_{run.id}"]
    assert stop_buttons(alice) and not stop_buttons(bob)  # Bob watches Alice's run, read-only
    assert "Started by another visitor" in texts(bob.caption)

    alice_id, bob_id = alice.session_state["fvr_session"], bob.session_state["fvr_session"]
    for action in (lambda: stop(run, demo, bob_id), lambda: stop(run), lambda: RunStore().delete(run, demo, bob_id)):
        with pytest.raises(RunError, match="started by another visitor"):
            action()
    assert not run.stop_requested()
    stop_buttons(alice)[0].click().run()
    no_traceback(alice)
    assert run.state == STOPPED
    with pytest.raises(RunError, match="started by another visitor"):
        resume_in_background(run, limits=demo, owner=bob_id)
    resume_in_background(run, limits=demo, owner=alice_id)
    assert run.state == QUEUED
    stop(run, demo, alice_id)
    with pytest.raises(RunError, match="started by another visitor"):
        RunStore().delete(run, None, bob_id)  # no limits passed: demo mode's still apply
    RunStore().delete(run, demo, alice_id)
    assert not run.path.exists()


# ---------------------------------------------------------------- limits live in the library


def test_the_library_enforces_the_demo_caps_whatever_the_caller_passes(demo, faces, queue_only, tmp_path):
    from fvr_core.training.launcher import launch

    too_long = TrainConfig(data=str(faces), model="cnn", epochs=50, image_size=48)
    for limits in (None, settings.AppLimits()):  # none, or a local install's: demo mode's caps apply
        with pytest.raises(ConfigError, match="this app allows at most 5"):
            launch(too_long, limits=limits)
    assert RunStore().list() == []

    elsewhere = RunStore(tmp_path / "elsewhere").create(TrainConfig(data=str(faces)))
    with pytest.raises(RunError, match="not a run of this app"):
        RunStore().get(str(elsewhere.path))


def test_reference_runs_cannot_be_deleted_stopped_or_resumed_anywhere(reference_runs, monkeypatch):
    from fvr_core.training.launcher import resume_in_background, stop
    from fvr_core.training.trainer import resume

    monkeypatch.setenv("FVR_REFERENCE_DIR", str(reference_runs))
    (shipped,) = RunStore(reference_runs).list()
    for action in (lambda: RunStore(reference_runs).delete(shipped), lambda: RunStore().delete(str(shipped.path)),
                   lambda: stop(shipped), lambda: resume_in_background(shipped), lambda: resume(shipped)):
        with pytest.raises(RunError, match="reference run"):
            action()
    assert shipped.path.is_dir() and not shipped.stop_requested()


def test_photo_counts_are_capped_in_the_library_in_demo_mode(demo, reference_runs, monkeypatch, tmp_path):
    from fvr_core.inference.outside import list_photos, predict_photos
    from fvr_core.inference.predict import Predictor, predict_with_each, prepare_photos

    monkeypatch.setenv("FVR_DEMO_MAX_UPLOAD_FILES", "2")
    for i in range(4):
        (tmp_path / f"p{i}.jpg").write_bytes(jpeg(color=(40 * i, 90, 120)))
    (run,) = RunStore(reference_runs).list()
    predictors = {"m": Predictor.from_run(run)}
    prepared, rows = predict_photos(predictors, list_photos(tmp_path), face_crop=False)
    assert len(prepared) == 2 and {r["image"] for r in rows} == {"p0.jpg", "p1.jpg"}
    rows = predict_with_each(predictors, prepare_photos(sorted(tmp_path.glob("*.jpg")), face_crop=False))
    assert len(rows) == 2
    monkeypatch.delenv("FVR_DEMO_MODE")
    assert len(predict_photos(predictors, list_photos(tmp_path), face_crop=False)[0]) == 4

"""Hyperparameter searches (fvr_core.training.search, `python -m fvr_core search`/`searches`, the Search page):
end to end on the synthetic demo set with small models, a pruned trial that reads "pruned at
epoch k", a failed trial the search goes past, stopping a search as a whole, resuming after its
worker is killed, demo-mode caps and the errors a user can make."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO
from fvr_core import cli
from fvr_core.config import ConfigError, TrainConfig
from fvr_core.runs.store import COMPLETED, PRUNED, RunStore
from fvr_core.training.search import run_search
from fvr_core.training.searches import PRUNERS, SearchSpec, SearchStore, make_range, parse_range, train_page_values
from fvr_core.settings import DEMO_MODELS, app_limits

# small and quick: 48 px, 1-2 epochs; mobilenet_v3_small where the test does not need the cnn
SMALL = ["--model", "mobilenet_v3_small", "--image-size", "48", "--batch-size", "16", "--threads", "1"]
WAIT = 240  # seconds: CI's machine is busy


def fvr(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fvr_core", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def wait_for(condition, what: str, timeout: float = WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def only_search(runs: Path):
    (search,) = SearchStore(runs).list()
    return search


# ---------------------------------------------------------------- end to end


def test_cli_search_trains_trials_as_ordinary_runs(demo_data, tmp_path):
    runs = tmp_path / "runs"
    result = fvr("search", "--data", str(demo_data), *SMALL, "--epochs", "1", "--trials", "2", "--pruner", "none",
                 "--lr", "1e-4:1e-2", "--augment", "none,light", "--runs-dir", str(runs))
    assert result.returncode == 0, result.stderr + result.stdout
    search = only_search(runs)
    assert "completed" in result.stdout and "best: trial" in result.stdout
    # each trial is a run folder like any other, tagged with the search and its trial number
    listed = json.loads(fvr("runs", "--runs-dir", str(runs), "--json").stdout)
    assert sorted((r["search"], r["trial"]) for r in listed) == [(search.id, 0), (search.id, 1)]
    for row in listed:
        run = RunStore(runs).get(row["run"])
        assert row["state"] == COMPLETED and row["test_acc"] is not None
        assert (run.path / "best.safetensors").is_file() and (run.path / "calibration.json").is_file()
        assert 1e-4 <= run.config.lr <= 1e-2 and run.config.augment in ("none", "light")
    table = search.trials_table()
    assert [r["state"] for r in table] == [COMPLETED, COMPLETED]
    assert {r["run"] for r in table} == {r["run"] for r in listed}
    # the study lives in the search's own storage file, and the best settings train as they are
    assert (search.path / "study.log").is_file()
    summary = json.loads(fvr("searches", "--runs-dir", str(runs), "--json").stdout)
    assert [s["search"] for s in summary] == [search.id] and summary[0]["completed"] == 2
    best = json.loads((search.path / "best_config.json").read_text())
    assert TrainConfig.from_dict(best).lr == search.best()["params"]["lr"]


def always_prune():
    import optuna

    return optuna.pruners.ThresholdPruner(lower=2.0)  # no balanced accuracy reaches 2: prunes at the first report


def test_a_pruned_trial_stops_through_the_run_and_reads_pruned(demo_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(PRUNERS, "always", ("prunes every trial at its first epoch", always_prune))
    runs = tmp_path / "runs"
    code = cli.main(["search", "--data", str(demo_data), *SMALL, "--epochs", "3", "--trials", "1", "--pruner", "always",
                     "--lr", "1e-4:1e-2", "--runs-dir", str(runs)])
    assert code == 0, capsys.readouterr()
    (run,) = RunStore(runs).list()
    assert run.state == PRUNED and run.status()["message"] == "pruned at epoch 1"
    assert len(run.epoch_rows()) == 1  # stopped by the run's own stop file, not trained to the end
    (row,) = only_search(runs).trials_table()
    assert row["state"] == "pruned at epoch 1" and row["epochs"] == 1
    assert "pruned" in capsys.readouterr().out


def test_a_failed_trial_is_recorded_and_the_search_goes_on(demo_data, tmp_path):
    # mobilenet takes 40 px, the cnn does not: the first trial (enqueued) cannot be trained
    spec = SearchSpec(TrainConfig(data=str(demo_data), model="mobilenet_v3_small", epochs=1, image_size=48, batch_size=16, threads=1),
                      {"model": make_range("model", choices=["mobilenet_v3_small", "cnn"]),
                       "image_size": make_range("image_size", choices=[48, 40])}, trials=2, pruner="none")
    search = SearchStore(tmp_path).create(spec)
    search.study().enqueue_trial({"model": "cnn", "image_size": 40})
    search.study().enqueue_trial({"model": "mobilenet_v3_small", "image_size": 48})
    assert run_search(search) == COMPLETED
    failed, completed = search.trials_table()
    assert failed["state"].startswith("failed") and "cnn needs at least 44 px" in failed["note"]
    assert completed["state"] == COMPLETED and RunStore(tmp_path).get(completed["run"]).state == COMPLETED


# ---------------------------------------------------------------- background: stop, kill, resume


def test_stopping_a_search_stops_its_trial_and_starts_no_more(demo_data, tmp_path):
    runs = tmp_path / "runs"
    result = fvr("search", "--data", str(demo_data), *SMALL, "--epochs", "500", "--trials", "3", "--pruner", "none",
                 "--lr", "1e-4:1e-2", "--runs-dir", str(runs), "--background")
    assert result.returncode == 0, result.stderr
    search = only_search(runs)
    run = wait_for(lambda: next((r for r in RunStore(runs).list() if r.step_rows()), None), "the first trial's first step")
    assert fvr("searches", search.id, "--stop", "--runs-dir", str(runs)).returncode == 0
    wait_for(lambda: search.state == "stopped", "the search to stop")
    assert run.state == "stopped" and run.status()["message"] == "the search was stopped"
    assert len(RunStore(runs).list()) == 1  # no trial after the stop
    assert len(run.epoch_rows()) < 500  # stopped, not trained out (a short trial could end before a busy machine delivers the stop)


def test_search_resumes_after_its_worker_is_killed(demo_data, tmp_path):
    runs = tmp_path / "runs"
    result = fvr("search", "--data", str(demo_data), *SMALL, "--epochs", "3", "--trials", "2", "--pruner", "none",
                 "--lr", "1e-4:1e-2", "--runs-dir", str(runs), "--background")
    assert result.returncode == 0, result.stderr
    search = only_search(runs)
    first = wait_for(lambda: next((r for r in RunStore(runs).list() if r.epoch_rows()), None), "the first trial's first epoch")
    os.kill(search.raw_status()["pid"], signal.SIGKILL)  # the worker, mid-trial
    wait_for(lambda: search.state == "interrupted", "the search to read interrupted")
    assert first.state in ("interrupted", COMPLETED)

    result = fvr("search", "--resume", search.id[-6:], "--runs-dir", str(runs))
    assert result.returncode == 0, result.stderr + result.stdout
    table = search.trials_table()
    assert [r["state"] for r in table] == [COMPLETED, COMPLETED]
    trial_runs = RunStore(runs).list()
    assert len(trial_runs) == 2  # the killed trial went on in its own run folder, not in a new one
    assert first.state == COMPLETED and table[0]["run"] == first.id and len(first.epoch_rows()) == 3


# ---------------------------------------------------------------- errors and limits


@pytest.mark.parametrize("args, message", [
    (["--lr", "1e-2:1e-4"], "lr range 0.01:0.0001 is empty"),
    (["--lr", "1e-4:5"], "lr range 0.0001:5 is outside TrainConfig's bounds"),
    (["--weight-decay", "0:1e-2"], "weight_decay range 0:0.01 is on a log scale"),
    (["--augment", "none,heavy"], "augment='heavy': choose from"),
    (["--batch-size", "16,4096"], "batch_size=4096 is outside TrainConfig's bounds"),
    (["--epochs", "1:3", "--lr", "1e-4:1e-2"], "'epochs' cannot be searched"),
    (["--trials", "0", "--lr", "1e-4:1e-2"], "trials=0: a search needs at least 1 trial"),
    ([], "the search has no ranges"),
])
def test_bad_ranges_are_refused_naming_the_field(demo_data, tmp_path, capsys, args, message):
    code = cli.main(["search", "--data", str(demo_data), "--runs-dir", str(tmp_path), *args])
    assert code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not SearchStore(tmp_path).list()


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="'dropout' is not a TrainConfig setting"):
        parse_range("dropout", "0.1:0.5")
    with pytest.raises(ConfigError, match="'seed' cannot be searched"):
        make_range("seed", 1, 5)


def test_demo_mode_caps_trials_epochs_and_sizes(demo_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FVR_DEMO_MODE", "1")
    limits = app_limits()
    base = TrainConfig(data=str(demo_data), model="cnn", epochs=2, image_size=64)
    space = {"lr": make_range("lr", 1e-4, 1e-2)}
    assert SearchSpec(base, space).trials == limits.max_trials == 6
    with pytest.raises(ConfigError, match="trials=7: this app allows at most 6"):
        SearchSpec(base, space, trials=7).validate(limits)
    with pytest.raises(ConfigError, match="epochs=50: this app allows at most"):
        SearchSpec(base.replace(epochs=50), space).validate(limits)
    with pytest.raises(ConfigError, match="image_size=256 in the search's range cannot be trained"):
        SearchSpec(base, {"image_size": make_range("image_size", choices=[64, 256])}).validate(limits)
    with pytest.raises(ConfigError, match="model='vgg19'"):
        SearchSpec(base, {"model": make_range("model", choices=["cnn", "vgg19"])}).validate(limits)


def test_best_settings_fit_the_train_pages_options():
    values, notes = train_page_values(TrainConfig(lr=3.7e-4, weight_decay=3e-5, batch_size=16))
    assert values["lr"] == 5e-4 and values["weight_decay"] == 1e-5  # nearest on a log scale, never 0
    assert values["batch_size"] == 16
    assert any(n.startswith("lr 0.00037") for n in notes)


# ---------------------------------------------------------------- the page


def test_search_page_starts_a_search_shows_trials_figures_and_fills_train(demo_data):
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["data_path"] = str(demo_data)
    at.run()
    at.switch_page("pages/search.py").run()
    assert not at.exception
    assert any("Estimated time" in i.value for i in at.info)
    at.selectbox(key="search_model").set_value("mobilenet_v3_small")
    at.slider(key="search_epochs").set_value(1)
    at.select_slider(key="search_image_size").set_value(48)
    at.number_input(key="search_trials").set_value(2)
    at.selectbox(key="search_pruner").set_value("none")
    at.run()
    # an empty list of values is refused, naming the field
    at.multiselect(key="search_range_augment").set_value([]).run()
    assert any("augment: the list of values is empty" in e.value for e in at.error)
    at.multiselect(key="search_range_augment").set_value(["none", "light"]).run()
    start = next(b for b in at.button if b.label == "Start the search")
    assert not start.disabled
    start.click().run()
    assert not at.exception
    search = wait_for(lambda: next(iter(SearchStore().list()), None), "the search to be queued")
    wait_for(lambda: search.state == COMPLETED, "the search to finish in the background")
    at.run()
    assert not at.exception
    (table,) = at.dataframe
    assert list(table.value["state"]) == [COMPLETED, COMPLETED]
    titles = [t.label for t in at.tabs]
    assert {"Optimisation history", "Parallel coordinates", "Slices"} <= set(titles)
    best = search.best()
    next(b for b in at.button if b.label == "Train the best settings").click().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Train"]
    assert at.session_state["cfg_model"] == "mobilenet_v3_small" and at.session_state["cfg_image_size"] == 48
    assert at.session_state["cfg_augment"] == best["params"]["augment"]


def test_search_page_in_demo_mode_offers_only_what_the_demo_allows(demo_data, monkeypatch):
    monkeypatch.setenv("FVR_DEMO_MODE", "1")
    # a search another visitor started is not listed for this session
    other = SearchSpec(TrainConfig(data=str(demo_data), model="cnn", epochs=1, image_size=48), {"lr": make_range("lr", 1e-4, 1e-2)},
                       owner="another-visitor")
    SearchStore().create(other)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["data_path"] = str(demo_data)
    at.run()
    at.switch_page("pages/search.py").run()
    assert not at.exception
    assert at.number_input(key="search_trials").max == 6 and at.number_input(key="search_trials").value == 6
    assert set(at.selectbox(key="search_model").options) == set(DEMO_MODELS)
    assert max(int(o) for o in at.select_slider(key="search_image_size").options) <= app_limits().max_image_size
    assert at.slider(key="search_epochs").max <= app_limits().max_epochs
    assert any("No searches yet" in i.value for i in at.info)

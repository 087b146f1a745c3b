"""Background runs: a queue that trains every run once, survives its launcher, and a run killed
mid-training that reads as interrupted and resumes to completion."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import make_class_folders
from fvr_core.config import TrainConfig
from fvr_core.training.launcher import launch, prewarm, start_worker, stop, wait
from fvr_core.runs.store import COMPLETED, INTERRUPTED, QUEUED, RUNNING, STOPPED, RunStore, process_alive
from fvr_core.runs.store import RESUMABLE
from fvr_core.training.trainer import resume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("bg"), n_fake=15, n_real=15, size=(32, 32))


def config(data, **changes):
    return TrainConfig(**{**dict(data=str(data), model="tiny_cnn", epochs=2, image_size=48, batch_size=8, threads=1), **changes})


def interval(run):
    rows = run.metrics()
    return rows[0]["time"], rows[-1]["time"]


def test_queued_runs_all_train_once_one_at_a_time(data, tmp_path):
    runs = [launch(config(data, seed=s), tmp_path) for s in (1, 2, 3)]
    for run in runs:
        assert wait(run, timeout=240) == COMPLETED, run.status()
    spans = sorted(interval(r) for r in runs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "runs overlapped with max_concurrent=1"
    for run in runs:
        steps = [r["step"] for r in run.step_rows()]
        assert steps == list(range(1, len(steps) + 1)), "a run was trained twice"


def test_stop_a_queued_and_a_running_run(data, tmp_path):
    first = launch(config(data, epochs=200), tmp_path)
    second = launch(config(data), tmp_path)
    deadline = time.time() + 120
    while first.state != RUNNING or not first.step_rows():
        assert time.time() < deadline
        time.sleep(0.1)
    stop(second)
    stop(first)
    assert wait(first, timeout=60) == STOPPED
    assert wait(second, timeout=60) == STOPPED
    assert not second.step_rows()


def test_killed_run_reads_interrupted_and_resumes(data, tmp_path):
    run = launch(config(data, epochs=4), tmp_path)
    deadline = time.time() + 120
    while len(run.epoch_rows()) < 1:
        assert time.time() < deadline and run.state in ("queued", "running"), run.status()
        time.sleep(0.05)
    os.kill(run.status()["pid"], signal.SIGKILL)
    deadline = time.time() + 10
    while run.state != INTERRUPTED:
        assert time.time() < deadline
        time.sleep(0.05)
    assert run.epoch_rows() and (run.path / "last.safetensors").is_file()
    resume(run)  # a kill in the middle of a write leaves its temporary file: the resume clears it
    assert not [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")]
    assert run.state == COMPLETED
    assert [e["epoch"] for e in run.epoch_rows()] == [1, 2, 3, 4]
    assert RunStore(tmp_path).get(run.id).test_metrics()["n"] == 6


def test_a_prewarmed_worker_takes_the_next_run_and_then_exits(data, tmp_path):
    store = RunStore(tmp_path)
    worker = prewarm(tmp_path, idle_seconds=30)
    time.sleep(1)
    run = store.create(config(data, epochs=1))  # queued without starting a worker of its own
    assert wait(run, timeout=120) == COMPLETED, run.status()
    assert worker.poll() is None  # still waiting for more, up to 30 s after the run
    worker.terminate()
    assert worker.wait(timeout=30) is not None


@pytest.mark.slow
def test_sigterm_stops_the_training_run_resumably_and_the_worker_exits_leaving_the_queue(data, tmp_path):
    """A platform stopping the app sends SIGTERM: the run in training stops (resumable), the worker
    exits instead of taking the next run, and the queued run waits for the next worker."""
    training = launch(config(data, epochs=200), tmp_path)
    queued = launch(config(data, epochs=1), tmp_path)
    deadline = time.time() + 120
    while training.state != RUNNING or not training.step_rows():
        assert time.time() < deadline, training.status()
        time.sleep(0.05)
    status = training.status()
    os.kill(status["pid"], signal.SIGTERM)
    deadline = time.time() + 60
    while process_alive(status["pid"], status["pid_start"]):
        assert time.time() < deadline, "the worker did not exit after SIGTERM"
        time.sleep(0.05)
    assert training.state == STOPPED and training.state in RESUMABLE, training.status()
    assert "SIGTERM" in training.status()["message"]
    assert queued.state == QUEUED and not queued.step_rows()  # not started by the terminated worker
    start_worker(tmp_path)  # the next worker (a restarted app) takes it
    assert wait(queued, timeout=120) == COMPLETED, queued.status()
    assert training.state == STOPPED

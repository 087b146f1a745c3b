"""Background runs: a queue that trains every run once, survives its launcher, and a run killed
mid-training that reads as interrupted and resumes to completion."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import make_class_folders
from fvr_core.config import TrainConfig
from fvr_core.launcher import launch, prewarm, stop, wait
from fvr_core.runs import COMPLETED, INTERRUPTED, RUNNING, STOPPED, RunStore
from fvr_core.training import resume


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("bg"), n_fake=15, n_real=15, size=(32, 32))


def config(data, **changes):
    return TrainConfig(**{**dict(data=str(data), epochs=2, image_size=48, batch_size=8, threads=1), **changes})


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
    assert not [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")]
    resume(run)
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

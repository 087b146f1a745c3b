"""The run store: folders, atomic files, readers that tolerate a writer, dead processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fvr_core.config import TrainConfig
from fvr_core.runs.store import COMPLETED, INTERRUPTED, QUEUED, RUNNING, Run, RunError, RunStore, own_process_identity


def make_run(store: RunStore, **changes) -> Run:
    return store.create(TrainConfig(data="/nowhere", **changes))


def test_create_writes_config_and_queued_status(tmp_path):
    store = RunStore(tmp_path)
    run = make_run(store, model="resnet18", epochs=3)
    assert run.config == TrainConfig(data="/nowhere", model="resnet18", epochs=3)
    assert run.state == QUEUED
    assert "resnet18" in run.id
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_invalid_config_creates_no_run(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        RunStore(tmp_path).create(TrainConfig(epochs=0))
    assert not list(tmp_path.iterdir())


def test_metrics_reader_skips_a_partial_last_line(tmp_path):
    run = make_run(RunStore(tmp_path))
    run.append_metrics({"kind": "step", "step": 1, "loss": 0.7})
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "step", "step": 2, "lo')  # a writer caught mid-line
    assert [r["step"] for r in run.step_rows()] == [1]
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('ss": 0.6}\n')
    assert [r["step"] for r in run.step_rows()] == [1, 2]


def test_metrics_after_a_resume_point_replace_the_lost_ones(tmp_path):
    run = make_run(RunStore(tmp_path))
    for step in (1, 2, 3, 4):
        run.append_metrics({"kind": "step", "step": step, "loss": 1.0})
    run.append_metrics({"kind": "resume", "step": 2})
    for step in (3, 4):
        run.append_metrics({"kind": "step", "step": step, "loss": 0.5})
    assert [(r["step"], r["loss"]) for r in run.step_rows()] == [(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5)]


def test_running_run_of_a_dead_process_reads_as_interrupted(tmp_path):
    run = make_run(RunStore(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run.write_status(RUNNING, pid=proc.pid, pid_start="0", host=own_process_identity()["host"])
    status = run.status()
    assert status["state"] == INTERRUPTED and "resume" in status["message"]
    run.write_status(RUNNING, **own_process_identity())
    assert run.state == RUNNING



def test_a_live_pid_with_another_start_is_a_reused_pid_unless_the_start_is_of_an_older_version(tmp_path):
    run = make_run(RunStore(tmp_path))
    me = own_process_identity()
    run.write_status(RUNNING, pid=me["pid"], pid_start=repr(float(me["pid_start"]) - 3600.0), host=me["host"])
    assert run.state == INTERRUPTED  # this pid now belongs to a process that started an hour later
    # versions before psutil stored /proc's start in clock ticks since boot: not comparable, so the pid decides
    run.write_status(RUNNING, pid=me["pid"], pid_start="123456", host=me["host"])
    assert run.state == RUNNING

def test_list_filters_and_get_by_prefix(tmp_path):
    store = RunStore(tmp_path)
    a = make_run(store, model="cnn")
    b = make_run(store, model="resnet18")
    b.write_status(COMPLETED)
    assert {r.id for r in store.list()} == {a.id, b.id}
    assert [r.id for r in store.list(model="resnet18")] == [b.id]
    assert [r.id for r in store.list(state=QUEUED)] == [a.id]
    assert store.get(b.id[-6:]).id == b.id
    assert store.get(str(b.path)).id == b.id
    with pytest.raises(RunError, match="no run"):
        store.get("does-not-exist")


def test_delete_refuses_active_runs(tmp_path):
    store = RunStore(tmp_path)
    run = make_run(store)
    with pytest.raises(RunError, match="stop it"):
        store.delete(run)
    run.write_status(COMPLETED)
    store.delete(run)
    assert store.list() == []


def test_claim_is_exclusive(tmp_path):
    run = make_run(RunStore(tmp_path))
    assert run.claim() is True
    assert Run(run.path).claim() is False


def test_summary_survives_a_damaged_run(tmp_path):
    store = RunStore(tmp_path)
    run = make_run(store)
    (run.path / "status.json").write_text("{not json")
    (run.path / "test_metrics.json").write_text("")
    row = run.summary()
    assert row["run"] == run.id and row["test_acc"] is None
    assert json.loads(json.dumps(store.summaries()))  # serialisable for the CLI's --json

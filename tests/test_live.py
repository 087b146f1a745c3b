"""What the Train page's live view follows and says, from real run folders in every state."""

from __future__ import annotations

import time

from fvr_core.config import TrainConfig
from fvr_core.report.live import batch_summary, ended_badly, live_poll_seconds, run_choice_label, run_to_follow
from fvr_core.runs.store import COMPLETED, DIVERGED, FAILED, QUEUED, RUNNING, STOPPED, RunStore, own_process_identity


def make_runs(*states: str):
    """Runs created in this order (oldest first), each put in its state as a trainer would."""
    store = RunStore()
    runs = []
    for i, state in enumerate(states):
        run = store.create(TrainConfig(data="x", model="cnn", epochs=3, name=f"r{i}"))
        fields = {"train_seconds": 125.0} if state == COMPLETED else {}
        if state == RUNNING:
            fields.update(own_process_identity(), epoch=2)  # this process: alive
        if state in (DIVERGED, FAILED):
            fields.update(message="loss became NaN", hint="lower the learning rate")
        run.write_status(state, **fields)
        runs.append(run)
        time.sleep(0.002)  # ids sort by creation time
    return store, runs


def test_follows_the_users_pick_then_their_training_run_then_any():
    store, (done, training, queued) = make_runs(COMPLETED, RUNNING, QUEUED)
    listed = store.list()
    assert run_to_follow(listed).id == training.id  # nothing launched here: what trains now
    assert run_to_follow(listed, launched=[queued.id]).id == queued.id  # this session's own run
    assert run_to_follow(listed, launched=[done.id, training.id, queued.id]).id == training.id
    assert run_to_follow(listed, picked=done.id, launched=[training.id]).id == done.id  # a pick wins
    assert run_to_follow(listed, picked="gone", launched=[]).id == training.id
    assert run_to_follow([]) is None


def test_after_a_batch_ends_the_last_of_it_is_shown():
    store, (a, b) = make_runs(COMPLETED, STOPPED)
    assert run_to_follow(store.list(), launched=[a.id, b.id]).id == b.id


def test_labels_say_the_state_now():
    store, (run,) = make_runs(RUNNING)
    assert "running, epoch 2/3" in run_choice_label(run) and run.id[-6:] in run_choice_label(run)
    run.write_status(COMPLETED, train_seconds=125.0)
    assert run_choice_label(run).endswith("completed in 2 min")
    assert live_poll_seconds(store.list()) is None
    run.write_status(QUEUED)
    assert live_poll_seconds(store.list()) == 1.0


def test_a_queued_run_that_fails_is_announced_once():
    store, (ok, bad, failed) = make_runs(COMPLETED, DIVERGED, FAILED)
    found = ended_badly(store.list(), [ok.id, bad.id, failed.id])
    assert [run.id for run, _ in found] == [bad.id, failed.id]
    assert "diverged: loss became NaN" in found[0][1] and "lower the learning rate" in found[0][1]
    assert ended_badly(store.list(), [ok.id, bad.id, failed.id], announced=[bad.id, failed.id]) == []


def test_the_batch_summary_waits_for_all_then_lists_each():
    store, runs = make_runs(COMPLETED, DIVERGED, RUNNING)
    batch = [r.id for r in runs]
    assert batch_summary(store.list(), batch) is None  # one still trains
    runs[2].write_status(STOPPED, message="stopped by the user")
    rows = batch_summary(store.list(), batch)
    assert [r["state"] for r in rows] == [COMPLETED, DIVERGED, STOPPED]
    assert rows[0]["time"] == "2 min" and rows[0]["message"] == "" and rows[2]["message"] == "stopped by the user"
    assert all("test balanced accuracy" in r for r in rows)
    assert batch_summary(store.list(), []) is None

"""What a live view of training shows: which run to follow, how to name runs in a list (with their
state now, not when the list was built), which ended runs to announce, and the summary of a batch
("Train all four"). Torch-free: the Train page and a notebook poll these every second."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from fvr_core.durations import format_duration as _duration
from fvr_core.runs.store import ACTIVE_STATES, COMPLETED, DIVERGED, FAILED, INTERRUPTED, QUEUED, RUNNING, Run

# an ended run of the user's own that is announced (a toast or a line): they expected it to finish
BAD_ENDINGS = (DIVERGED, FAILED, INTERRUPTED)


def run_to_follow(runs: Sequence[Run], picked: str | None = None, launched: Sequence[str] = ()) -> Run | None:
    """The run a live view shows: the one the user picked, else the one of `launched` (this
    session's runs, in launch order) that trains now, else the next of them in the queue, else the
    last of them; without any of those, the run training now, else the newest queued, else the
    newest run. `runs` as RunStore.list gives them (newest first)."""
    by_id = {r.id: r for r in runs}
    if picked in by_id:
        return by_id[picked]
    states = {r.id: r.state for r in runs}
    mine = [by_id[i] for i in launched if i in by_id]
    for wanted in (RUNNING, QUEUED):
        for run in mine:
            if states[run.id] == wanted:
                return run
    if mine:
        return mine[-1]
    for wanted in (RUNNING, QUEUED):
        for run in runs:
            if states[run.id] == wanted:
                return run
    return runs[0] if runs else None


def run_choice_label(run: Run) -> str:
    """A run in a list of runs, as it is now: 'cnn · 4f2a9c · completed in 2 min' or '... · running, epoch 2/5'."""
    status = run.status()
    state = status["state"]
    try:
        config = run.config
        model, name, epochs = config.model, config.name, config.epochs
    except Exception:  # a damaged config must not hide the run from the list
        model, name, epochs = "?", "", "?"
    if state == RUNNING:
        detail = f"running, epoch {status.get('epoch', 0)}/{epochs}"
    elif state == COMPLETED and status.get("train_seconds") is not None:
        detail = f"completed in {_duration(status['train_seconds'])}"
    else:
        detail = state
    return " · ".join(part for part in (model, name, run.id[-6:], detail) if part)


def live_poll_seconds(runs: Iterable[Run]) -> float | None:
    """How often a live view redraws: every second while a run is queued or training, else never
    (a page that starts or resumes a run must redraw in full once, so that this is asked again)."""
    return 1.0 if any(r.state in ACTIVE_STATES for r in runs) else None


def ended_badly(runs: Sequence[Run], launched: Sequence[str], announced: Iterable[str] = ()) -> list[tuple[Run, str]]:
    """(run, one line) for each of `launched` that diverged, failed or was interrupted and is not in
    `announced` yet: a queued run that fails while another is shown must not pass unnoticed."""
    by_id = {r.id: r for r in runs}
    done = set(announced)
    found = []
    for run_id in launched:
        run = by_id.get(run_id)
        if run is None or run_id in done:
            continue
        status = run.status()
        if status["state"] in BAD_ENDINGS:
            message = status.get("message") or "no message"
            hint = f" Try this: {status['hint']}." if status.get("hint") else ""
            found.append((run, f"{run_choice_label(run).rsplit(' · ', 1)[0]} {status['state']}: {message}.{hint}"))
    return found


def batch_summary(runs: Sequence[Run], batch: Sequence[str]) -> list[dict[str, Any]] | None:
    """One row per run of a batch (e.g. "Train all four") once all of them have ended: model, run,
    state, training time and test balanced accuracy (None where there is none); None while any
    is still queued or training, or when a run of the batch is gone."""
    by_id = {r.id: r for r in runs}
    if not batch or any(i not in by_id for i in batch):
        return None
    rows = []
    for run_id in batch:
        run = by_id[run_id]
        status = run.status()
        if status["state"] in ACTIVE_STATES:
            return None
        try:
            model = run.config.model
        except Exception:
            model = "?"
        test = run.test_metrics() or {}
        seconds = status.get("train_seconds")
        rows.append({
            "model": model, "run": run.id, "state": status["state"],
            "time": _duration(seconds) if seconds is not None else "",
            "test balanced accuracy": test.get("balanced_accuracy"),
            "message": status.get("message", "") if status["state"] != COMPLETED else "",
        })
    return rows


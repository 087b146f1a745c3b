"""Running hyperparameter searches (fvr_core.training.searches has what a search is): each trial a
run trained here, its objective reported to Optuna after every epoch, pruned trials stopped through
the run's own stop file; and queueing a search for the background worker.

Optuna is imported only where a study is opened."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from fvr_core import settings
from fvr_core.config import ConfigError
from fvr_core.files import now_iso
from fvr_core.runs.store import COMPLETED, FAILED, INTERRUPTED, PRUNED, QUEUED, RUNNING, STOPPED, Run, RunError, RunStore, own_process_identity
from fvr_core.training.queue import check_room, queue_lock, start_worker
from fvr_core.training.searches import OBJECTIVES, Objective, Search, SearchError, SearchSpec, SearchStore, trial_states
from fvr_core.training.signals import stop_on_sigterm

def run_search(search: Search, cpu_share: int = 1, progress: Callable[[str, dict], None] | None = None) -> str:
    """Run `search`'s remaining trials in this process, one after another; returns its final
    state (completed, or stopped when asked). Resumes a search whose process was killed: its
    interrupted trial's run goes on from its last checkpoint."""
    stop_on_sigterm()
    progress = progress or (lambda event, info: None)
    spec = search.spec
    search.write_status(RUNNING, started=now_iso(), message="", **own_process_identity())
    study = search.study()
    store = RunStore(search.runs_root)
    try:
        for unfinished in _unfinished_trials(study):  # left by a killed process
            run = _trial_run(store, unfinished)
            if run is None:
                study.tell(unfinished.number, state=trial_states().FAIL, skip_if_finished=True)
                continue
            if not _train_trial(search, study, _live_trial(study, unfinished), run, cpu_share, progress, resume=True):
                break
        while not search.stop_requested() and _started(study) < spec.trials:
            trial = study.ask()
            try:
                params = {name: rng.suggest(trial) for name, rng in spec.space.items()}
                config = spec.trial_config(params, search.id, trial.number)
                run = store.create(config)
            except (ConfigError, ValueError) as exc:  # an impossible mix of values (a model and a size)
                trial.set_user_attr("reason", str(exc))
                study.tell(trial, state=trial_states().FAIL)
                progress("trial", {"trial": trial.number, "state": FAILED, "message": str(exc)})
                continue
            run.write_status(QUEUED, search=search.id, trial=trial.number, owner=spec.owner)
            trial.set_user_attr("run", run.id)
            if not _train_trial(search, study, trial, run, cpu_share, progress):
                break
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C: the running trial's run is resumed by a resume of the search
        search.write_status(STOPPED, message="its process was told to end: resume it to go on", ended=now_iso())
        raise
    state = STOPPED if search.stop_requested() else COMPLETED
    search.write_status(state, message="stopped as asked" if state == STOPPED else "", ended=now_iso(),
                        current_run="", current_trial=None)
    return state


def _started(study) -> int:
    """Trials begun (an enqueued, waiting one is not yet)."""
    return sum(t.state != trial_states().WAITING for t in study.get_trials(deepcopy=False))


def _unfinished_trials(study) -> list:
    # running in the study but no process trains them (a waiting one, enqueued, is the next ask()'s)
    return [t for t in study.get_trials(deepcopy=False) if t.state == trial_states().RUNNING]


def _trial_run(store: RunStore, trial) -> Run | None:
    run_id = trial.user_attrs.get("run")
    try:
        return store.get(run_id) if run_id else None
    except RunError:
        return None


def _live_trial(study, frozen):
    """A trial object to report to, for a trial a killed process left running."""
    import optuna  # Optuna loads on first use (start-up speed)

    return optuna.trial.Trial(study, frozen._trial_id)


def _train_trial(search: Search, study, trial, run: Run, cpu_share: int, progress, resume: bool = False) -> bool:
    """Train one trial's run, report each epoch, prune through the run's stop file and tell the
    study how it ended. False when the search should end (stopped, or this process interrupted)."""
    from fvr_core.training.trainer import Trainer  # loads torch: here, not when the module loads (start-up speed)

    spec = search.spec
    objective = OBJECTIVES[spec.objective]
    epochs = run.config.epochs
    search.write_status(RUNNING, current_run=run.id, current_trial=trial.number)
    progress("trial", {"trial": trial.number, "state": RUNNING, "run": run.id})

    def on_progress(event: str, info: dict) -> None:
        progress(event, info)
        if event == "step" and search.stop_requested() and not run.stop_requested():
            run.request_stop(message="the search was stopped")
        if event != "epoch":
            return
        value = info.get(objective.key)
        if value is None or not math.isfinite(value):
            return
        trial.report(float(value), int(info["epoch"]))
        if info["epoch"] < epochs and trial.should_prune():
            run.request_stop(PRUNED, f"pruned at epoch {info['epoch']}")  # fvr's own stop: the run ends after this epoch

    if run.state in (QUEUED, INTERRUPTED, RUNNING) or (resume and run.state in (STOPPED, FAILED)):
        (run.path / "stop").unlink(missing_ok=True)  # a stop of the search this run was part of
        try:
            Trainer(run, on_progress, resume=resume, cpu_share=cpu_share).fit()
        except Exception:  # written to the run's status and error.txt; the study records the trial as failed
            pass
    status = run.status()
    state = status["state"]
    states = trial_states()
    if state == STOPPED and not run.stop_requested():
        raise KeyboardInterrupt  # the trainer ended on SIGTERM or Ctrl-C, not on a stop file: this process ends
    if state == COMPLETED:
        value = _objective_at_best(run, objective)
        if value is None:
            trial.set_user_attr("reason", f"no finite {objective.label}")
            study.tell(trial, state=states.FAIL, skip_if_finished=True)
        else:
            study.tell(trial, value, skip_if_finished=True)
    elif state == PRUNED:
        study.tell(trial, state=states.PRUNED, skip_if_finished=True)
    elif state == STOPPED and not search.stop_requested():
        trial.set_user_attr("reason", status.get("message") or "stopped")
        study.tell(trial, state=states.FAIL, skip_if_finished=True)
    elif state == STOPPED:  # the whole search was stopped: the trial stays unfinished, a resume resumes its run
        return False
    else:  # diverged, failed
        trial.set_user_attr("reason", f"{state}: {status.get('message', '')}".strip())
        study.tell(trial, state=states.FAIL, skip_if_finished=True)
    progress("trial", {"trial": trial.number, "state": state, "run": run.id, "message": status.get("message", "")})
    return True


def _objective_at_best(run: Run, objective: Objective) -> float | None:
    """The objective at the epoch whose checkpoint the run keeps (lowest validation loss)."""
    rows = [r for r in run.epoch_rows() if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
    if not rows:
        return None
    value = min(rows, key=lambda r: r["val_loss"]).get(objective.key)
    return float(value) if value is not None and math.isfinite(value) else None


def launch_search(spec: SearchSpec, runs_dir: str | Path | None = None, limits: settings.AppLimits | None = None,
                  max_concurrent: int = 1) -> Search:
    """Queue a search for the background worker (it trains runs and searches in the order they
    were queued, within the same slots). With `limits` (the dashboard's), caps are enforced here."""
    if limits is not None and not limits.allow_paths:
        from fvr_core.workspace.datasources import resolve_user_path  # demo mode: only the data root

        resolve_user_path(spec.base.data, limits)
    store = SearchStore(runs_dir)
    with queue_lock(store.runs_root):
        if limits is not None:
            check_room(RunStore(store.runs_root), limits)
            max_concurrent = limits.max_concurrent_runs
        search = store.create(spec, limits)
    start_worker(store.runs_root, max_concurrent)
    return search


def resume_search_in_background(search: Search, max_concurrent: int = 1) -> Search:
    state = search.state
    if state not in (INTERRUPTED, STOPPED, FAILED):
        raise SearchError(f"search {search.id} is {state}: only interrupted, stopped or failed searches can be resumed")
    (search.path / "stop").unlink(missing_ok=True)
    search.write_status(QUEUED, message="queued to resume")
    try:
        (search.path / "claimed").rmdir()
    except FileNotFoundError:
        pass
    start_worker(search.runs_root, max_concurrent)
    return search

"""Background training with a queue: runs outlive the page or terminal that started them.

``launch`` writes a queued run and starts a detached worker process (its own session, so closing
a browser tab, reloading a page or ending a Streamlit script never stops it). A worker holds one
of ``max_concurrent`` slot locks of the runs root and trains queued runs, oldest first, until none
is left. Each run is claimed atomically before it starts, so no run ever trains twice and no two
processes write one run folder.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from fvr_core.config import TrainConfig, check_limits
from fvr_core.data.dataset import parse_sources, resolve_sources
from fvr_core.runs.store import QUEUED, RESUMABLE, RUNNING, STOPPED, Run, RunError, RunStore
from fvr_core.files import now_iso
from fvr_core import settings
from fvr_core.settings import AppLimits
from fvr_core.training.queue import DEFAULT_MAX_CONCURRENT, check_room, queue_lock, start_worker
from fvr_core.training.signals import stop_on_sigterm, terminated
from fvr_core.training.search import run_search
from fvr_core.training.searches import has_queued_search, next_queued_search
from fvr_core.workspace.uploads import check_visible


def _limits_for(limits: AppLimits | None) -> AppLimits | None:
    """The caps a launch applies: the caller's, and in demo mode always the demo's (a caller
    passing none, or looser ones, is held to them too). None: a local caller that asked for none."""
    return settings.enforced_limits(limits) if limits is not None or settings.app_limits().demo else None


def launch(
    config: TrainConfig,
    runs_dir: str | Path | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    limits: AppLimits | None = None,
    owner: str | None = None,
) -> Run:
    """Queue a training run and make sure a background worker will train it. Returns at once.
    With `limits` (the dashboard passes `settings.app_limits()`; in demo mode they apply whatever
    is passed), a config or a queue longer than they allow raises ConfigError or RunError, and in
    demo mode data outside the data root, or another visitor's upload, DataError. `owner` is the
    dashboard session that starts the run: in demo mode only it may stop, resume or delete it."""
    if config.data:
        config = config.replace(data=resolve_sources(config.data))
    store = RunStore(runs_dir)
    limits = _limits_for(limits)
    if limits is not None:
        check_limits(config.validate(), limits)
        if not limits.allow_paths:
            from fvr_core.workspace.datasources import resolve_user_folder  # demo mode: only the data root (demo set, uploads)

            for source in parse_sources(config.data):
                resolve_user_folder(source.path, limits, "a data set folder")
                check_visible(source.path, limits, owner)
        max_concurrent = limits.max_concurrent_runs
    with queue_lock(store.root):
        if limits is not None:
            check_room(store, limits)
        run = store.create(config, owner=owner)
    start_worker(store.root, max_concurrent)
    return run


@contextmanager
def _slot(runs_root: Path, max_concurrent: int) -> Iterator[bool]:
    """Hold one of the root's slot locks, or yield False if all are taken. The OS frees a lock
    when its process dies, so a killed worker never blocks the queue."""
    held = None
    try:
        for i in range(max_concurrent):
            lock = FileLock(runs_root / f".worker-slot-{i}.lock")
            try:
                lock.acquire(timeout=0)  # a busy slot is another worker's: try the next, never wait
                held = lock
                break
            except Timeout:
                continue
        yield held is not None
    finally:
        if held is not None:
            held.release()


def next_queued(store: RunStore) -> Run | None:
    """Claim the oldest queued run, or None if there is none."""
    for run in sorted(store.list(state=QUEUED), key=lambda r: (r.raw_status().get("created_unix", 0.0), r.id)):
        if not run.raw_status():
            continue  # config.json without status.json (a folder of an older version, written config first):
            # taking it now would let its creator's "queued" overwrite the trainer's "running"
        if run.claim():
            return run
    return None


def _next_queued_within(store: RunStore, seconds: float):
    """Claim the oldest queued run, else the oldest queued search (fvr_core.training.search), waiting up
    to `seconds` for one to be queued."""
    deadline = time.monotonic() + seconds
    while (job := next_queued(store) or next_queued_search(store.root)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return job


def prewarm(runs_root: str | Path | None = None, max_concurrent: int = DEFAULT_MAX_CONCURRENT, idle_seconds: float = 120.0) -> subprocess.Popen:
    """Start a worker that imports torch and waits `idle_seconds` for a run, so a run launched
    soon after (the dashboard calls this when the Train page opens) starts training at once
    instead of after a new process has loaded torch. A no-op when every slot has a worker."""
    return start_worker(RunStore(runs_root).root, max_concurrent, idle_seconds)


def work(runs_root: str | Path, max_concurrent: int = DEFAULT_MAX_CONCURRENT, idle_seconds: float = 0.0) -> int:
    """The worker loop: train queued runs until the queue is empty (and has stayed empty for
    `idle_seconds`). Returns how many it trained."""
    stop_on_sigterm()
    store = RunStore(runs_root)
    trained = 0
    while True:
        with _slot(store.root, max_concurrent) as got_slot:
            if not got_slot:
                return trained  # the worker holding the slot will take our run
            from fvr_core.training.trainer import Trainer  # torch loads once this worker has a slot to train in

            while not terminated() and (run := _next_queued_within(store, idle_seconds)) is not None:
                if not isinstance(run, Run):  # a search: its trials train here, one after another
                    try:
                        run_search(run, cpu_share=max_concurrent)
                    except KeyboardInterrupt:
                        return trained
                    except Exception as exc:  # recorded in the search's status; the queue goes on
                        print(f"{now_iso()} search {run.id} failed: {exc}", flush=True)
                        run.write_status("failed", message=f"{type(exc).__name__}: {exc}", ended=now_iso())
                    trained += 1
                    continue
                if run.stop_requested():
                    run.write_status(STOPPED, message="stopped before it started", ended=now_iso())
                    continue
                try:
                    resume = bool(run.raw_status().get("resume"))
                    Trainer(run, cpu_share=max_concurrent, resume=resume).fit()
                except KeyboardInterrupt:
                    return trained
                except Exception as exc:  # recorded in the run's status; the queue goes on
                    print(f"{now_iso()} run {run.id} failed: {exc}", flush=True)
                trained += 1
                if terminated():  # the trainer stopped its run for SIGTERM: the queue waits for the next worker
                    print(f"{now_iso()} SIGTERM: run {run.id} stopped (resumable); leaving the queue to the next worker", flush=True)
                    return trained
        # a run queued after our last look but before we let go of the slot found the slot
        # taken and its worker left: look once more now that the slot is free
        if terminated() or (not store.list(state=QUEUED) and not has_queued_search(store.root)):
            return trained
        time.sleep(0.05)


def resume_in_background(run: Run, max_concurrent: int = DEFAULT_MAX_CONCURRENT, limits: AppLimits | None = None,
                         owner: str | None = None) -> Run:
    """Queue an interrupted, stopped or failed run to continue from its last checkpoint in a
    background worker (as `resume` does in this process). With `limits` (always in demo mode), a
    queue already as long as they allow raises RunError, and so does a run `owner` did not start."""
    limits = _limits_for(limits)
    run.check_may_change("resume", limits, owner)
    if limits is not None:
        max_concurrent = limits.max_concurrent_runs
    with queue_lock(run.path.parent):  # of two sessions resuming one run at once, the second finds it queued
        state = run.state
        if state not in RESUMABLE:
            raise RunError(f"run {run.id} is {state}; only {', '.join(RESUMABLE)} runs can be resumed")
        if limits is not None:
            check_room(RunStore(run.path.parent), limits)
        (run.path / "stop").unlink(missing_ok=True)
        run.write_status(QUEUED, resume=True, message="queued to resume", created_unix=run.raw_status().get("created_unix", 0.0))
        try:
            (run.path / "claimed").rmdir()  # the claim of its first worker; a worker now claims it anew
        except FileNotFoundError:
            pass  # trained in a terminal, never claimed
    start_worker(run.path.parent, max_concurrent)
    return run


def stop(run: Run, limits: AppLimits | None = None, owner: str | None = None) -> None:
    """Stop a run: a queued one never starts, a running one stops after its current step. In
    demo mode only the session that started it (`owner`) may; RunError otherwise."""
    run.check_may_change("stop", limits, owner)
    run.request_stop()
    if run.state == QUEUED and run.claim():
        run.write_status(STOPPED, message="stopped before it started", ended=now_iso())


def wait(run: Run, timeout: float = 3600.0, poll: float = 0.2) -> str:
    """Block until `run` leaves the queued/running states; returns its final state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = run.state
        if state not in (QUEUED, RUNNING):
            return state
        time.sleep(poll)
    raise RunError(f"run {run.id} still {run.state} after {timeout:.0f} s")

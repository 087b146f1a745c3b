"""The queue's shared parts: the lock that makes counting active runs and queueing one a single
step, the app's cap on queued work (runs and searches alike), and starting a detached worker.
Used by launcher (runs) and search (searches)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from fvr_core.runs.store import QUEUED, RUNNING, RunError, RunStore
from fvr_core.settings import PROJECT_ROOT, AppLimits
from fvr_core.training.searches import active_searches

DEFAULT_MAX_CONCURRENT = 1


@contextmanager
def queue_lock(runs_root: Path) -> Iterator[None]:
    """Hold the root's queue lock, so counting the active runs and queueing one is one step: sessions
    pressing Train at the same moment cannot together pass the queue's cap."""
    runs_root.mkdir(parents=True, exist_ok=True)
    # an OS lock (flock, or msvcrt on Windows), not a soft lock file: a process killed while holding it
    # leaves no stale lock behind to block every later launch
    with FileLock(runs_root / ".queue.lock"):
        yield


def check_room(store: RunStore, limits: AppLimits) -> None:
    """Refuse another queued run or search when the app's cap is reached (a queued or running search
    holds a place like a run)."""
    active = len(store.list(state=QUEUED)) + len(store.list(state=RUNNING)) + active_searches(store.root)
    if active >= limits.max_queued_runs:
        raise RunError(
            f"{active} runs are already queued or running, the most this app allows: "
            "wait for one to finish or stop one"
        )


def start_worker(runs_root: Path, max_concurrent: int = DEFAULT_MAX_CONCURRENT, idle_seconds: float = 0.0) -> subprocess.Popen:
    """Start a detached worker process for `runs_root` (it exits at once if all slots are busy;
    with `idle_seconds` it waits that long for more runs before it exits)."""
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    log = open(runs_root / "worker.log", "ab")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fvr_core", "worker", "--runs-dir", str(runs_root), "--max-concurrent", str(max_concurrent),
             "--idle-seconds", str(idle_seconds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(PROJECT_ROOT),
            start_new_session=True,  # not in the launcher's process group: its Ctrl-C or exit does not reach us
        )
    finally:
        log.close()

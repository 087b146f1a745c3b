"""SIGTERM as a clean stop: a platform stopping the app (or `kill`) ends the run being trained as
stopped and resumable, and a worker leaves the rest of the queue to the next worker. Shared by the
trainer, the queue's worker, searches and the CLI; imports nothing of fvr_core."""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a platform stopping the app, `kill`): the trainer ends its run as stopped,
    resumable, and a worker exits instead of taking the next queued run."""


_terminated = threading.Event()


def terminated() -> bool:
    """Whether this process was sent SIGTERM (after stop_on_sigterm)."""
    return _terminated.is_set()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into Terminated (a KeyboardInterrupt), so a terminated trainer ends its run as
    stopped, and remember it, so a worker leaves the rest of the queue to the next worker."""

    def handler(signum, frame):
        _terminated.set()
        raise Terminated("SIGTERM: this process was asked to end")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)

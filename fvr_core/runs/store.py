"""The run store: a run is a folder, readable while its training process writes it.

    <runs root>/<run id>/
        config.json         the TrainConfig
        status.json         state, pid, heartbeat, message (rewritten atomically)
        metrics.jsonl       one JSON object per line, append-only: step rows, epoch rows, events
        data_report.json    what the data set held and which files were skipped, and why
        split.json          train/val/test ids relative to the data root
        best.safetensors, best.json    weights + metadata of the best epoch (by validation loss)
        last.safetensors, last.json    weights + metadata of the last epoch
        last_state.pt       weights, optimizer, schedule and RNG state of the last epoch, to resume
        test_metrics.json   metrics of the best checkpoint on the test split
        test_predictions.csv  every test image's probability of being fake
        stop                present when a stop was asked for (may hold the state and message to end with)

Every file except metrics.jsonl is written to a temporary file and renamed, so a reader never sees
half of one; metrics.jsonl lines are single appends and a reader skips a partial last line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import psutil

from fvr_core import settings
from fvr_core.config import TrainConfig
from fvr_core.files import atomic_write_json, atomic_write_text, crash_due, now_iso, read_json, read_jsonl
from fvr_core.models.registry import MODELS
from fvr_core.settings import ENSEMBLE

QUEUED, RUNNING, COMPLETED, STOPPED, DIVERGED, FAILED, INTERRUPTED, PRUNED = (
    "queued", "running", "completed", "stopped", "diverged", "failed", "interrupted", "pruned",
)
# pruned: a search's trial stopped early by its pruner (fvr_core.training.search), through the stop file
STATES = (QUEUED, RUNNING, COMPLETED, STOPPED, DIVERGED, FAILED, INTERRUPTED, PRUNED)
ACTIVE_STATES = (QUEUED, RUNNING)
RESUMABLE = (INTERRUPTED, STOPPED, FAILED)  # what resume continues from the last checkpoint
HEARTBEAT_SECONDS = 5.0
STALE_AFTER_SECONDS = 60.0  # a heartbeat this old means the process is gone (e.g. on another host)


ONE_FIT = "one fit"  # a run's epochs column for a model made in one pass, not by epochs of gradient steps


def fitted_once(model: str | None) -> bool:
    """Whether a model is made in one pass (a classical detector's fit, an ensemble of finished
    runs): its config's `epochs` was never used, so "1/30" would misreport it."""
    return model == ENSEMBLE or (model in MODELS and MODELS[model].fit is not None)


class RunError(ValueError):
    """A run cannot be found or used as asked."""


def _process_start_time(pid: int) -> str | None:
    """When `pid` started (psutil's create_time, Unix seconds, as a string); None when no such process
    runs, has finished (a zombie) or cannot be inspected."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return repr(process.create_time())
    except psutil.Error:
        return None


def process_alive(pid: int | None, start_time: str | None = None) -> bool:
    """True when `pid` runs on this host and, if known, is the same process (not a reused pid)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # it has finished: its parent just hasn't reaped it
            return False
        started = process.create_time()
    except psutil.AccessDenied:
        return True  # another user's process: it exists, and who it is cannot be checked
    except (psutil.Error, ValueError, TypeError):  # no such process, a zombie, or no valid pid at all
        return False
    if start_time is None or "." not in str(start_time):
        # no start recorded, or one written before psutil (/proc's clock ticks since boot, which psutil
        # does not give): the pid alone decides, rather than calling a live run of an older version dead
        return True
    try:
        # psutil's start is the boot time (wall clock, which NTP may nudge between two reads) plus the
        # process's age since boot: two reads of one process's start may differ by a second or so
        return abs(started - float(start_time)) <= 2.0
    except ValueError:
        return True  # not a start time of any version: as above, the pid decides


def own_process_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "pid_start": _process_start_time(pid), "host": socket.gethostname()}


@dataclass
class JobFolder:
    """A folder that a background worker claims and whose process keeps a status.json: a run, or a
    search (fvr_core.training.searches). `status()` reports a job whose process died as interrupted."""

    path: Path
    DIED_MESSAGE = "the process ended without finishing (killed or crashed); resume it to go on"

    @property
    def id(self) -> str:
        return self.path.name

    def raw_status(self) -> dict[str, Any]:
        return read_json(self.path / "status.json", {}) or {}

    def _required_json(self, name: str, error: type[Exception], kind: str) -> Any:
        """The folder's defining file (a run's config.json, a search's search.json), or `error`."""
        data = read_json(self.path / name)
        if data is None:
            raise error(f"{self.path} has no readable {name}: it is not a {kind} folder")
        return data

    def status(self) -> dict[str, Any]:
        """status.json, with a job whose process has died reported as interrupted."""
        status = self.raw_status()
        status.setdefault("state", self._default_state())
        if status["state"] == RUNNING and not self._owner_alive(status):
            status["state"] = INTERRUPTED
            status["message"] = self.DIED_MESSAGE
        return status

    @property
    def state(self) -> str:
        return self.status()["state"]

    def _default_state(self) -> str:
        return QUEUED

    def _owner_alive(self, status: dict) -> bool:
        return process_alive(status.get("pid"), status.get("pid_start"))

    def stop_requested(self) -> bool:
        return (self.path / "stop").exists()

    def claim(self) -> bool:
        """Atomically take a queued job for one worker; False if another process already has it."""
        try:
            os.mkdir(self.path / "claimed")
            return True
        except FileExistsError:
            return False


@dataclass
class Run(JobFolder):
    DIED_MESSAGE = "the training process ended without finishing (killed or crashed); resume it to go on"

    # ---- reading

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self._required_json("config.json", RunError, "run"))

    def _default_state(self) -> str:
        return FAILED if not (self.path / "config.json").exists() else QUEUED

    def _owner_alive(self, status: dict) -> bool:
        if status.get("host") == socket.gethostname():
            return process_alive(status.get("pid"), status.get("pid_start"))
        return time.time() - self.last_heartbeat() < STALE_AFTER_SECONDS

    def last_heartbeat(self) -> float:
        """Unix time of the training process's last sign of life."""
        try:
            return (self.path / "heartbeat").stat().st_mtime
        except OSError:
            return self.raw_status().get("heartbeat_unix", 0.0)

    def metrics(self) -> list[dict]:
        """All metric rows; rows logged after the checkpoint a resume started from are dropped."""
        rows = read_jsonl(self.path / "metrics.jsonl")
        kept: list[dict] = []
        for row in rows:
            if row.get("kind") == "resume":
                step = row.get("step", 0)
                kept = [r for r in kept if r.get("step", 0) <= step or r.get("kind") == "event"]
            kept.append(row)
        return kept

    def step_rows(self) -> list[dict]:
        return [r for r in self.metrics() if r.get("kind") == "step"]

    def epoch_rows(self) -> list[dict]:
        return [r for r in self.metrics() if r.get("kind") == "epoch"]

    def split(self) -> dict[str, list[str]]:
        split = read_json(self.path / "split.json")
        if split is None:
            raise RunError(f"run {self.id} has no split.json yet (it has not started)")
        return split

    def test_metrics(self) -> dict[str, Any] | None:
        return read_json(self.path / "test_metrics.json")

    def data_report(self) -> dict[str, Any] | None:
        return read_json(self.path / "data_report.json")

    def checkpoint(self, which: str = "best") -> Path:
        path = self.path / f"{which}.safetensors"
        if not path.is_file():
            if self.is_reference:
                model = read_json(self.path / "config.json", {}).get("model", "this model")
                raise RunError(f"reference run {self.id} ships metrics and curves only: reference runs of {model} "
                               "are too large for git with their weights. Train a run of your own to use its checkpoint")
            raise RunError(f"run {self.id} has no {which} checkpoint yet ({path} is missing)")
        return path

    @property
    def owner(self) -> str | None:
        """The dashboard session that started the run in demo mode (None: a terminal, a notebook,
        or a local install)."""
        return self.raw_status().get("owner")

    def check_may_change(self, action: str, limits: settings.AppLimits | None = None, owner: str | None = None) -> None:
        """RunError unless `owner` may `action` ("stop", "resume", "delete") this run: never a
        reference run; in demo mode only a run that owner's session started (others' runs are
        read-only to a visitor, whatever page or call asks)."""
        if self.is_reference:
            raise RunError(f"run {self.id} is a reference run shipped with fvr ({self.path.parent}): it is read-only, so it cannot {action}")
        limits = settings.enforced_limits(limits)
        if limits.demo and (not owner or self.owner != owner):
            raise RunError(f"run {self.id} was started by another visitor: in this public demo you can {action} only the runs you started")

    def may_change(self, action: str, limits: settings.AppLimits | None = None, owner: str | None = None) -> bool:
        try:
            self.check_may_change(action, limits, owner)
            return True
        except RunError:
            return False

    @property
    def is_reference(self) -> bool:
        """A run shipped with the repository (checkpoints/reference): shown everywhere, never changed."""
        return self.path.resolve().parent == settings.reference_root().resolve()

    def progress(self) -> dict[str, Any]:
        """Where the run is: phase, steps done of total, fraction, steps/s and seconds left (ETA),
        from status.json and the step rows of the current process (a resume restarts the clock)."""
        status = self.status()
        rows = self.metrics()
        since = max((i for i, r in enumerate(rows) if r.get("kind") == "resume"), default=-1)
        steps = [r for r in rows[since + 1 :] if r.get("kind") == "step"]
        total = int(status.get("total_steps") or 0)
        done = int(steps[-1]["step"]) if steps else int(status.get("step") or 0)
        rate = None
        if len(steps) >= 2 and steps[-1]["time"] > steps[0]["time"]:
            rate = (steps[-1]["step"] - steps[0]["step"]) / (steps[-1]["time"] - steps[0]["time"])
        eta = (total - done) / rate if rate and total and status["state"] == RUNNING else None
        return {
            "state": status["state"], "phase": status.get("phase", ""), "step": done, "total_steps": total,
            "fraction": min(1.0, done / total) if total else 0.0, "steps_per_s": rate, "eta_seconds": eta,
            "epoch": status.get("epoch", 0), "epochs": self.config.epochs,
        }

    def timing(self) -> dict[str, float] | None:
        """How this finished run spent its time, from its own records: training seconds and images
        trained, the rest of its time (loading, validation, testing, checkpoints) and the images it
        evaluated in it. None for a run that is not completed, was resumed (its clock covers only
        its last part) or lacks the records."""
        status = self.status()
        if status.get("state") != COMPLETED or not status.get("train_seconds"):
            return None
        rows = self.metrics()
        epochs = [r for r in rows if r.get("kind") == "epoch"]
        split = read_json(self.path / "split.json") or {}
        if any(r.get("kind") == "resume" for r in rows) or not epochs or not split.get("val") or not split.get("test"):
            return None
        try:
            train_seconds = sum(float(r["epoch_seconds"]) for r in epochs)
            images = sum(float(r["images_per_s"]) * float(r["epoch_seconds"]) for r in epochs)
        except (KeyError, TypeError, ValueError):
            return None
        if images <= 0:
            return None
        return {
            "train_seconds": train_seconds, "train_images": images,
            "other_seconds": max(0.0, float(status["train_seconds"]) - train_seconds),
            "evaluated_images": float(len(epochs) * len(split["val"]) + len(split["test"])),
        }

    def eval_seconds_per_image(self) -> float | None:
        """Seconds per evaluated image of this finished run, overheads included (see timing)."""
        timing = self.timing()
        return timing["other_seconds"] / timing["evaluated_images"] if timing else None

    def summary(self) -> dict[str, Any]:
        """One flat row for tables: model, key settings, status and headline metrics."""
        status = self.status()
        try:
            config = self.config.to_dict()
        except Exception:  # a damaged config must not hide the other runs
            config = {}
        epochs = self.epoch_rows()
        test = self.test_metrics() or {}
        best_val = max((e.get("val_acc", 0) for e in epochs), default=None)
        return {
            "run": self.id,
            "name": config.get("name", ""),
            "reference": self.is_reference,
            "model": config.get("model"),
            "state": status["state"],
            "epochs": ONE_FIT if fitted_once(config.get("model")) else f"{len(epochs)}/{config.get('epochs', '?')}",
            "lr": config.get("lr"),
            "batch_size": config.get("batch_size"),
            "image_size": config.get("image_size"),
            "augment": config.get("augment"),
            "best_val_acc": best_val,
            "test_acc": test.get("accuracy"),
            "test_balanced_acc": test.get("balanced_accuracy"),
            "test_roc_auc": test.get("roc_auc"),
            "parameters": status.get("parameters"),
            "train_seconds": status.get("train_seconds"),
            "images_per_s": epochs[-1].get("images_per_s") if epochs else None,
            "created": status.get("created"),
            "message": status.get("message", ""),
            # a search's trials are ordinary runs tagged with the search and their trial number
            "search": status.get("search"),
            "trial": status.get("trial"),
        }

    # ---- writing (by the training process)

    def write_status(self, state: str, **fields: Any) -> dict[str, Any]:
        status = {**self.raw_status(), **fields, "state": state, "updated": now_iso(), "heartbeat_unix": time.time()}
        atomic_write_json(self.path / "status.json", status)
        return status

    def heartbeat(self) -> None:
        # a file of its own, touched: rewriting status.json here could undo a state change
        (self.path / "heartbeat").touch()

    def write_test_predictions(self, ids: Iterable[str], labels: Iterable[int], prob_fake: Iterable[float]) -> None:
        """test_predictions.csv: each test image's id, true class, probability of fake and verdict at 0.5."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "label", "prob_fake", "predicted"])
        for image_id, label, p in zip(ids, labels, prob_fake):
            writer.writerow([image_id, settings.CLASSES[int(label)], f"{p:.6f}", settings.CLASSES[0] if p >= 0.5 else settings.CLASSES[1]])
        atomic_write_text(self.path / "test_predictions.csv", buffer.getvalue())

    def append_metrics(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=float) + "\n"
        # one write() of a whole line in append mode: concurrent readers see whole lines or none
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            if crash_due("metrics"):  # crash tests: die with half a line written
                fh.write(line[: len(line) // 2])
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            fh.write(line)

    def end_partial_metrics_line(self) -> None:
        """End a partial last line of metrics.jsonl (its writer died mid-append), so that the next
        row starts a line of its own instead of being glued to the broken one and lost."""
        try:
            with open(self.path / "metrics.jsonl", "rb+") as fh:
                if fh.seek(0, os.SEEK_END) and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                    fh.write(b"\n")
        except FileNotFoundError:
            pass

    def request_stop(self, state: str = STOPPED, message: str = "") -> None:
        """Ask the training process to stop after its current step (it keeps what it has) and to
        end in `state` with `message` (a search's pruner asks for "pruned", "pruned at epoch k")."""
        if state == STOPPED and not message:
            (self.path / "stop").touch()  # a plain stop never overwrites a pruner's reason
        else:
            atomic_write_json(self.path / "stop", {"state": state, "message": message})

    def stop_request(self) -> dict[str, str]:
        """The state and message a stop asked for ({} for a plain stop)."""
        request = read_json(self.path / "stop", {}) if self.stop_requested() else {}
        return request if isinstance(request, dict) else {}


class RunStore:
    """The runs under one root folder."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or settings.runs_root()).expanduser()

    def create(self, config: TrainConfig, validate: bool = True, owner: str | None = None) -> Run:
        """A new run folder holding the config, in state queued, started by session `owner` if given
        (`validate=False`: a run that is not trained, such as an ensemble of finished runs)."""
        if validate:
            config.validate()
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]  # ms: ids sort in creation order
        while True:
            path = self.root / f"{stamp}-{config.model}-{secrets.token_hex(3)}"
            try:
                path.mkdir()  # atomic: two processes never get the same folder
                break
            except FileExistsError:
                continue
        run = Run(path)
        # status first: a reader that lists the run by its config.json always finds its state
        run.write_status(QUEUED, created=now_iso(), created_unix=time.time(), **({"owner": owner} if owner else {}))
        atomic_write_text(path / "config.json", config.to_json())
        return run

    def get(self, run_id: str | Path) -> Run:
        """A run by id (folder name) or by path; raises RunError naming what is missing. In demo
        mode a path must lead into this store's root or the reference runs: no other folder."""
        candidate = Path(run_id).expanduser()
        for path in (candidate, self.root / str(run_id)):
            if (path / "config.json").is_file():
                self._check_allowed(path)
                return Run(path)
        matches = [r for r in self.list() if r.id.startswith(str(run_id)) or r.id.endswith(str(run_id))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RunError(f"{run_id!r} matches {len(matches)} runs: give more of the id")
        raise RunError(f"no run {run_id!r} in {self.root} (list them with: python -m fvr_core runs)")

    def __iter__(self) -> Iterator[Run]:
        return iter(self.list())

    def list(self, model: str | None = None, state: str | None = None) -> list[Run]:
        """Runs, newest first, optionally only those of one model or one state."""
        if not self.root.is_dir():
            return []
        runs = [Run(p) for p in self.root.iterdir() if (p / "config.json").is_file()]
        runs.sort(key=lambda r: r.id, reverse=True)
        if model:
            runs = [r for r in runs if read_json(r.path / "config.json", {}).get("model") == model]
        if state:
            runs = [r for r in runs if r.state == state]
        return runs

    def _check_allowed(self, path: Path) -> None:
        if not settings.enforced_limits().demo:
            return
        resolved = path.resolve()
        if not any(resolved.parent == root.resolve() for root in (self.root, settings.reference_root())):
            raise RunError(f"{path} is not a run of this app: in this public demo only its own runs can be opened")

    def delete(self, run: Run | str, limits: settings.AppLimits | None = None, owner: str | None = None) -> None:
        """Remove a finished run's folder. Never a reference run; in demo mode only one that
        `owner`'s session started."""
        run = run if isinstance(run, Run) else self.get(run)
        run.check_may_change("delete", limits, owner)
        if run.state in ACTIVE_STATES:
            raise RunError(f"run {run.id} is {run.state}: stop it before deleting it")
        shutil.rmtree(run.path)

    def summaries(self, **filters: Any) -> list[dict[str, Any]]:
        return [r.summary() for r in self.list(**filters)]


def find_run(run_id: str | Path, runs_dir: str | Path | None = None) -> Run:
    """A run by id, id prefix or suffix, or path: the user's runs first, then the reference runs
    shipped in checkpoints/reference. RunError naming both places when neither has it."""
    store = RunStore(runs_dir)
    try:
        return store.get(run_id)
    except RunError as own_error:
        reference = RunStore(settings.reference_root())
        if reference.root.resolve() == store.root.resolve() or not reference.root.is_dir():
            raise
        try:
            return reference.get(run_id)
        except RunError as exc:
            if "matches" in str(exc) or "matches" in str(own_error):
                raise (own_error if "matches" in str(own_error) else exc) from None
            raise RunError(f"no run {run_id!r} in {store.root} nor among the reference runs in {reference.root} "
                           "(list them with: python -m fvr_core runs)") from None


def count_states(runs: Iterable[Run]) -> str:
    """'4 completed, 1 diverged': how many runs are in each state, most first."""
    states = [r.state for r in runs]
    order = sorted(set(states), key=lambda s: (-states.count(s), STATES.index(s) if s in STATES else len(STATES)))
    return ", ".join(f"{states.count(s)} {s}" for s in order) or "none"


def all_runs(runs_dir: str | Path | None = None, include_reference: bool = True) -> list[Run]:
    """The user's runs (newest first), then the reference runs shipped in checkpoints/reference."""
    runs = RunStore(runs_dir).list()
    if include_reference:
        runs += RunStore(settings.reference_root()).list()
    return runs

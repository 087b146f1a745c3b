"""Hyperparameter searches: an Optuna study over ordinary fvr runs.

A search is a folder beside the runs, one Optuna study each (never shared by accident):

    <runs root>/searches/<search id>/
        search.json     what to search: base TrainConfig, ranges, trials, objective, pruner, owner
        status.json     state, pid, current trial and run (rewritten atomically)
        study.log       the Optuna study (journal file storage): survives restarts, resumed from
        stop            present when the whole search was asked to stop
        claimed/        taken by a background worker

Each trial is a normal run folder (config, metrics, checkpoints, calibration) whose status.json
carries `search` and `trial`, so Compare, Predict and `runs` read it like any run. After each
epoch the trial reports the objective to Optuna; when the pruner says so, the search asks the run
to stop through the run's own stop file, and the run ends in state "pruned" ("pruned at epoch k").
A trial that fails or diverges is recorded as failed in the study and the search goes on.

Optuna is imported only where a study is opened: listing searches stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from fvr_core import settings
from fvr_core.config import ConfigError, TrainConfig, check_limits, coerce, config_fields
from fvr_core.data.dataset import resolve_sources
from fvr_core.runs.store import COMPLETED, DIVERGED, FAILED, PRUNED, QUEUED, RUNNING, STOPPED, JobFolder, Run, RunError, RunStore
from fvr_core.files import atomic_write_json, now_iso, read_json

SEARCHES_FOLDER = "searches"
DEFAULT_TRIALS = 6  # also demo mode's cap (settings.AppLimits.max_trials)
STUDY_FILE = "study.log"


@dataclass(frozen=True)
class Objective:
    """What a trial is scored by: an epoch row's key and whether higher is better."""

    name: str
    key: str
    direction: str  # "maximize" or "minimize"
    label: str


OBJECTIVES: dict[str, Objective] = {o.name: o for o in [
    Objective("val_balanced_accuracy", "val_balanced_acc", "maximize", "validation balanced accuracy"),
    Objective("val_accuracy", "val_acc", "maximize", "validation accuracy"),
    Objective("val_roc_auc", "val_roc_auc", "maximize", "validation ROC AUC"),
    Objective("val_loss", "val_loss", "minimize", "validation loss"),
]}


def _median_pruner():
    import optuna  # Optuna loads on first use (start-up speed)

    # 3 full trials before any is judged, and never on the first epoch alone (too noisy to judge on)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def _halving_pruner():
    import optuna  # Optuna loads on first use (start-up speed)

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def _no_pruner():
    import optuna  # Optuna loads on first use (start-up speed)

    return optuna.pruners.NopPruner()


# name -> (description, factory). A registry: tests and notebooks may add their own.
PRUNERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "median": ("stop a trial whose objective is below the median of earlier trials at the same epoch", _median_pruner),
    "halving": ("successive halving: keep the best third at each rung of epochs", _halving_pruner),
    "none": ("train every trial to the end", _no_pruner),
}


class SearchError(RunError):
    """A search cannot be found or used as asked."""


# ---------------------------------------------------------------- the space


@dataclass(frozen=True)
class Range:
    """One searched field: a numeric range (low, high, log scale or not) or a list of choices."""

    field: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "Range":
        if "choices" in data:
            return cls(name, choices=tuple(data["choices"]))
        return cls(name, data["low"], data["high"], bool(data.get("log", False)))

    def describe(self) -> str:
        if self.choices:
            return ",".join(map(str, self.choices))
        return f"{self.low:g}:{self.high:g}" + (" (log)" if self.log else "")

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.choices else [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.field, list(self.choices))
        if isinstance(_default(self.field), int):
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.field, float(self.low), float(self.high), log=self.log)


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in config_fields()}


def _default(name: str) -> Any:
    return _fields()[name].default


def searchable_fields() -> dict[str, dataclasses.Field]:
    """TrainConfig's fields a search may vary (their metadata says `search`), by name."""
    return {name: f for name, f in _fields().items() if f.metadata.get("search")}


def field_bounds(name: str) -> tuple[float, float] | None:
    """TrainConfig's (low, high) for a numeric searchable field; None for a field of choices."""
    bounds = searchable_fields()[name].metadata["search"]
    return tuple(bounds) if isinstance(bounds, tuple) else None


def is_log_scale(name: str) -> bool:
    return bool(searchable_fields()[name].metadata.get("log"))


def make_range(name: str, low: Any = None, high: Any = None, choices: Any = None, log: bool | None = None) -> Range:
    """A checked Range for TrainConfig field `name`; ConfigError naming the field otherwise."""
    fields = searchable_fields()
    if name not in _fields():
        raise ConfigError(f"{name!r} is not a TrainConfig setting: searchable ones are {', '.join(fields)}")
    if name not in fields:
        raise ConfigError(f"{name!r} cannot be searched (it is not a hyperparameter): searchable settings are {', '.join(fields)}")
    f = fields[name]
    if choices is not None:
        values = tuple(dict.fromkeys(coerce(f, v) for v in choices))  # typed, duplicates dropped, order kept
        if not values:
            raise ConfigError(f"{name}: the list of values is empty: give at least one")
        allowed = f.metadata.get("choices")
        bad = [v for v in values if allowed and v not in allowed]
        if bad:
            raise ConfigError(f"{name}={bad[0]!r}: choose from {', '.join(allowed)}")
        bounds = field_bounds(name)
        if bounds:
            outside = [v for v in values if not bounds[0] <= v <= bounds[1]]
            if outside:
                raise ConfigError(f"{name}={outside[0]!r} is outside TrainConfig's bounds {bounds[0]:g} to {bounds[1]:g}")
        return Range(name, choices=values)
    bounds = field_bounds(name)
    if bounds is None:
        raise ConfigError(f"{name} takes a list of values (one of {', '.join(f.metadata['choices'])}), not a range")
    low, high = coerce(f, low), coerce(f, high)
    log = is_log_scale(name) if log is None else log
    if not low < high:
        raise ConfigError(f"{name} range {low:g}:{high:g} is empty: the low end must be below the high end")
    if low < bounds[0] or high > bounds[1]:
        raise ConfigError(f"{name} range {low:g}:{high:g} is outside TrainConfig's bounds {bounds[0]:g} to {bounds[1]:g}")
    if log and low <= 0:
        raise ConfigError(f"{name} range {low:g}:{high:g} is on a log scale: its low end must be above 0 (e.g. 1e-6)")
    return Range(name, low, high, log)


def parse_range(name: str, text: str) -> Range:
    """A command-line range: "LOW:HIGH" (a log scale for lr and weight decay) or "A,B,C" (choices)."""
    text = text.strip()
    if ":" in text:
        low, _, high = text.partition(":")
        return make_range(name, low.strip(), high.strip())
    return make_range(name, choices=[v.strip() for v in text.split(",") if v.strip()])


# ---------------------------------------------------------------- the spec


@dataclass
class SearchSpec:
    """What to search: the settings every trial shares, the ranges, and how to score and prune."""

    base: TrainConfig
    space: dict[str, Range]
    trials: int = DEFAULT_TRIALS
    objective: str = "val_balanced_accuracy"
    pruner: str = "median"
    seed: int = 0  # Optuna's sampler; trials' own seed is base.seed
    owner: str = ""  # demo mode: the visitor session that started it (empty: anyone's, e.g. the CLI)
    name: str = ""

    def validate(self, limits: settings.AppLimits | None = None) -> "SearchSpec":
        """Raise ConfigError naming the first setting that cannot work (or is over `limits`)."""
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials={self.trials!r}: a search needs at least 1 trial")
        if limits is not None and self.trials > limits.max_trials:
            raise ConfigError(f"trials={self.trials}: this app allows at most {limits.max_trials} trials a search")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner={self.pruner!r}: choose one of {', '.join(PRUNERS)}")
        if not self.space:
            raise ConfigError("the search has no ranges: give at least one setting to vary (e.g. --lr 1e-4:1e-2)")
        self.base.validate()
        for name, rng in self.space.items():
            make_range(name, rng.low, rng.high, rng.choices or None, rng.log)  # the bounds, again (a spec from JSON)
            for value in rng.extremes():  # every trial must be allowed: check the ends of each range
                try:
                    config = self.base.replace(**{name: value}).validate()
                    if limits is not None:
                        check_limits(config, limits)
                except ConfigError as exc:
                    raise ConfigError(f"{name}={value!r} in the search's range cannot be trained: {exc}") from None
        if limits is not None:
            check_limits(self.base, limits)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "space": {k: r.to_dict() for k, r in self.space.items()}, "trials": self.trials,
                "objective": self.objective, "pruner": self.pruner, "seed": self.seed, "owner": self.owner, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSpec":
        return cls(base=TrainConfig.from_dict(data["base"]),
                   space={k: Range.from_dict(k, v) for k, v in data["space"].items()},
                   trials=int(data["trials"]), objective=data["objective"], pruner=data["pruner"],
                   seed=int(data.get("seed", 0)), owner=data.get("owner", ""), name=data.get("name", ""))

    def trial_config(self, params: dict[str, Any], search_id: str, number: int) -> TrainConfig:
        label = f"{self.name or 'search ' + search_id[-6:]} #{number}"
        return self.base.replace(**params, name=label)


# ---------------------------------------------------------------- a search folder


@dataclass
class Search(JobFolder):
    DIED_MESSAGE = "the search's process ended before it finished (killed or crashed): resume it to go on"

    @property
    def runs_root(self) -> Path:
        return self.path.parent.parent

    @property
    def spec(self) -> SearchSpec:
        return SearchSpec.from_dict(self._required_json("search.json", SearchError, "search"))

    def write_status(self, state: str, **fields: Any) -> None:
        atomic_write_json(self.path / "status.json", {**self.raw_status(), **fields, "state": state, "updated": now_iso()})

    def storage(self):
        from optuna.storages import JournalStorage  # Optuna loads on first use (start-up speed)
        from optuna.storages.journal import JournalFileBackend  # Optuna loads on first use (start-up speed)

        return JournalStorage(JournalFileBackend(str(self.path / STUDY_FILE)))

    def study(self):
        """The search's own Optuna study (created on first use)."""
        import optuna  # Optuna loads on first use (start-up speed)

        spec = self.spec
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(
            storage=self.storage(), study_name=self.id, load_if_exists=True,
            direction=OBJECTIVES[spec.objective].direction,
            sampler=optuna.samplers.TPESampler(seed=spec.seed), pruner=PRUNERS[spec.pruner][1](),
        )

    def runs(self) -> list[Run]:
        """The trials' run folders, by trial number."""
        store = RunStore(self.runs_root)
        found = [r for r in store.list() if r.raw_status().get("search") == self.id]
        return sorted(found, key=lambda r: r.raw_status().get("trial", 0))

    def trials_table(self) -> list[dict[str, Any]]:
        """One row per trial: number, state (pruned at epoch k, failed: why), objective, params, run."""
        try:
            trials = self.study().get_trials(deepcopy=False)
        except Exception:  # no study yet (queued)
            trials = []
        runs = {r.id: r for r in self.runs()}
        rows = []
        for t in trials:
            run = runs.get(t.user_attrs.get("run", ""))
            state = _trial_state(t, run)
            row = {"trial": t.number, "state": state, "objective": t.value if t.value is not None else _last_value(t),
                   "epochs": len(t.intermediate_values), **t.params, "run": run.id if run else t.user_attrs.get("run", "")}
            if t.user_attrs.get("reason"):
                row["note"] = t.user_attrs["reason"]
            rows.append(row)
        return rows

    def best(self) -> dict[str, Any] | None:
        """The best completed trial: number, value, params, run id and the full TrainConfig to train it."""
        try:
            study = self.study()
            best = study.best_trial
        except Exception:  # no study or no completed trial yet
            return None
        spec = self.spec
        return {"trial": best.number, "value": best.value, "params": best.params, "run": best.user_attrs.get("run", ""),
                "config": spec.base.replace(**best.params, name=f"best of {spec.name or 'search ' + self.id[-6:]}")}

    def summary(self) -> dict[str, Any]:
        status = self.status()
        try:
            spec = self.spec
        except SearchError:
            return {"search": self.id, "state": "failed", "message": "search.json is missing or damaged"}
        table = self.trials_table() if (self.path / STUDY_FILE).is_file() else []
        best = max((r["objective"] for r in table if r["state"] == COMPLETED and r["objective"] is not None),
                   default=None, key=lambda v: v if OBJECTIVES[spec.objective].direction == "maximize" else -v)
        return {
            "search": self.id, "name": spec.name, "state": status["state"], "model": spec.base.model,
            "trials": f"{sum(r['state'] not in (RUNNING,) for r in table)}/{spec.trials}",
            "completed": sum(r["state"] == COMPLETED for r in table),
            "pruned": sum(r["state"].startswith(PRUNED) for r in table),
            "failed": sum(r["state"].startswith(FAILED) or r["state"].startswith(DIVERGED) for r in table),
            "objective": spec.objective, "best": best, "pruner": spec.pruner,
            "ranges": "; ".join(f"{k} {r.describe()}" for k, r in spec.space.items()),
            "owner": spec.owner, "created": status.get("created"), "message": status.get("message", ""),
        }


def _last_value(trial) -> float | None:
    values = trial.intermediate_values
    return values[max(values)] if values else None


def _trial_state(trial, run: Run | None) -> str:
    """The trial's state in words: completed, pruned at epoch k, failed: why, running, ..."""
    from optuna.trial import TrialState  # Optuna loads on first use (start-up speed)

    if trial.state == TrialState.PRUNED:
        return run.status().get("message", PRUNED) if run is not None else PRUNED
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get("reason", "")
        return f"{FAILED}: {reason}" if reason else FAILED
    if trial.state == TrialState.RUNNING:
        return run.state if run is not None else RUNNING
    return {TrialState.COMPLETE: COMPLETED, TrialState.WAITING: QUEUED}.get(trial.state, str(trial.state))


class SearchStore:
    """The searches of one runs root."""

    def __init__(self, runs_dir: str | Path | None = None):
        self.runs_root = RunStore(runs_dir).root
        self.root = self.runs_root / SEARCHES_FOLDER

    def create(self, spec: SearchSpec, limits: settings.AppLimits | None = None) -> Search:
        spec.validate(limits)
        if spec.base.data:
            spec.base = spec.base.replace(data=resolve_sources(spec.base.data))
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        while True:
            path = self.root / f"search-{stamp}-{secrets.token_hex(3)}"
            try:
                path.mkdir()  # atomic: two searches never share a folder, or a study
                break
            except FileExistsError:
                continue
        search = Search(path)
        search.write_status(QUEUED, created=now_iso(), created_unix=time.time())
        atomic_write_json(path / "search.json", spec.to_dict())
        return search

    def list(self, owner: str | None = None) -> list[Search]:
        """Searches, newest first; with `owner`, only that visitor session's."""
        if not self.root.is_dir():
            return []
        found = [Search(p) for p in self.root.iterdir() if (p / "search.json").is_file()]
        found.sort(key=lambda s: s.id, reverse=True)
        if owner is not None:
            found = [s for s in found if (read_json(s.path / "search.json", {}) or {}).get("owner", "") == owner]
        return found

    def get(self, search_id: str) -> Search:
        """A search by id, a unique part of it, or its folder."""
        for path in (Path(search_id).expanduser(), self.root / search_id):
            if (path / "search.json").is_file():
                return Search(path)
        matches = [s for s in self.list() if search_id in s.id]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SearchError(f"{search_id!r} matches {len(matches)} searches: give more of the id")
        raise SearchError(f"no search {search_id!r} in {self.root} (list them with: python -m fvr_core searches)")


# ---------------------------------------------------------------- running one


# ---------------------------------------------------------------- background, stop, resume


def prepare_resume(search: Search) -> None:
    """Before resuming in this process: refuse a search still running elsewhere, clear its stop."""
    state = search.state
    if state in (RUNNING, COMPLETED):
        raise SearchError(f"search {search.id} is {state}: only interrupted, stopped, failed or queued searches can be resumed")
    (search.path / "stop").unlink(missing_ok=True)
    search.path.joinpath("claimed").mkdir(exist_ok=True)  # no background worker takes it meanwhile


def stop_search(search: Search) -> None:
    """Stop a search as a whole: its running trial stops, no more start, a queued one never starts."""
    (search.path / "stop").touch()
    current = search.raw_status().get("current_run")
    if current:
        try:
            run = RunStore(search.runs_root).get(current)
            if run.state in (QUEUED, RUNNING):
                run.request_stop(message="the search was stopped")
        except RunError:
            pass
    if search.state == QUEUED and search.claim():
        search.write_status(STOPPED, message="stopped before it started", ended=now_iso())


def next_queued_search(runs_root: str | Path) -> Search | None:
    """Claim the oldest queued search (the background worker's), or None."""
    store = SearchStore(runs_root)
    queued = [s for s in store.list() if s.raw_status().get("state") == QUEUED]
    for search in sorted(queued, key=lambda s: (s.raw_status().get("created_unix", 0.0), s.id)):
        if search.claim():
            return search
    return None


def has_queued_search(runs_root: str | Path) -> bool:
    return any(s.raw_status().get("state") == QUEUED for s in SearchStore(runs_root).list())


def active_searches(runs_root: str | Path | None = None) -> int:
    return sum(s.state in (QUEUED, RUNNING) for s in SearchStore(runs_root).list())


# ---------------------------------------------------------------- estimate and figures


def trial_states():
    """Optuna's TrialState, imported when a study is opened (listing searches stays cheap)."""
    from optuna.trial import TrialState  # Optuna loads on first use (start-up speed)

    return TrialState


def estimate_seconds(spec: SearchSpec, one_trial_seconds: float) -> tuple[float, float]:
    """(at most, likely) seconds for the search, from one trial's estimate: every trial to the end,
    and with pruning, about half the epochs of the trials after the pruner's first three."""
    full = spec.trials * one_trial_seconds
    if spec.pruner == "none" or spec.base.epochs < 2:
        return full, full
    judged = max(0, spec.trials - 3)
    return full, (spec.trials - judged) * one_trial_seconds + judged * one_trial_seconds * 0.5


def study_figures(search: Search) -> dict[str, Any]:
    """Optuna's plotly figures of the search so far, by title; each only once it can be drawn
    (history: a finished trial; importances, parallel coordinates, slices: two completed trials
    with a parameter that varies)."""
    import optuna.visualization as vis  # Optuna loads on first use (start-up speed)

    try:
        study = search.study()
    except Exception:
        return {}
    states = trial_states()
    done = [t for t in study.get_trials(deepcopy=False) if t.state == states.COMPLETE]
    figures: dict[str, Any] = {}
    makers = [("Optimisation history", vis.plot_optimization_history, 1),
              ("Parallel coordinates", vis.plot_parallel_coordinate, 2),
              ("Parameter importances", vis.plot_param_importances, 2),
              ("Slices", vis.plot_slice, 2)]
    for title, maker, needed in makers:
        if len(done) < needed:
            continue
        try:
            figure = maker(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances of parameters that never varied
            continue
        figure.update_layout(title=title, height=360, margin=dict(l=40, r=20, t=50, b=40))
        figures[title] = figure
    return figures


# ---------------------------------------------------------------- widgets (the Search page's, from TrainConfig)

LOG_STEPS = (1, 2, 5)
# the settings the Train page has widgets for (st.session_state["cfg_<field>"]) and its options, so "Train the best settings" hands it values it offers
TRAIN_PAGE_FIELDS = ("model", "epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay", "augment", "image_size",
                     "seed", "patience", "grad_clip", "ema", "label_smoothing", "warmup_epochs", "pretrained", "name")
TRAIN_PAGE_OPTIONS: dict[str, tuple] = {
    "lr": (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1),
    "batch_size": (4, 8, 16, 32, 64, 128),
    "weight_decay": (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1),
    "grad_clip": (0.0, 0.5, 1.0, 2.0, 5.0, 10.0),
    "ema": (0.0, 0.99, 0.995, 0.998, 0.999),
    "image_size": (48, 64, 96, 128, 160, 192, 224, 256, 300),
    "label_smoothing": tuple(round(0.05 * i, 2) for i in range(7)),
    "warmup_epochs": tuple(0.5 * i for i in range(11)),
    "patience": tuple(range(21)),
}


@dataclass(frozen=True)
class Widget:
    """How the Search page offers a field: "log" (a range slider over log-spaced values),
    "range" (a range slider from low to high by step) or "choices" (a multiselect)."""

    kind: str
    options: tuple = ()
    low: float = 0.0
    high: float = 0.0
    step: float = 1.0
    default: tuple = ()


def search_widget(name: str, limits: settings.AppLimits | None = None) -> Widget:
    """The Search page's widget for TrainConfig field `name`, within its bounds and `limits`."""
    limits = limits or settings.AppLimits()
    f = searchable_fields()[name]
    if f.metadata.get("choices"):
        options = tuple(c for c in f.metadata["choices"] if name != "model" or limits.allows_model(c))
        return Widget("choices", options, default=options[:2])
    low, high = field_bounds(name)
    if is_log_scale(name):
        start = max(low, 1e-6)
        options = tuple(v for e in range(math.floor(math.log10(start)), math.ceil(math.log10(high)) + 1) for m in LOG_STEPS
                        if start <= (v := float(f"{m}e{e}")) <= high)
        default = (1e-4, 1e-2) if name == "lr" else (1e-6, 1e-2)
        return Widget("log", options, default=default)
    if name in ("batch_size", "image_size"):
        sizes = TRAIN_PAGE_OPTIONS[name]
        options = tuple(s for s in sizes if low <= s <= high and (name != "image_size" or s <= limits.max_image_size))
        return Widget("choices", options, default=options[2:4])
    ui_high = {"momentum": 0.99, "warmup_epochs": 5.0, "label_smoothing": 0.3, "grad_clip": 10.0, "patience": 20}[name]
    step = {"momentum": 0.01, "warmup_epochs": 0.5, "label_smoothing": 0.05, "grad_clip": 0.5, "patience": 1}[name]
    top = min(high, ui_high)
    return Widget("range", low=low, high=top, step=step, default=(low, top // 2 if isinstance(top, int) else top / 2))


def train_page_values(config: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """`config` as the Train page's widget values (its options are coarser than a search's
    ranges: each value goes to the nearest one), and a note for each value that moved."""
    values, notes = {}, []
    for name, value in config.to_dict().items():
        options = TRAIN_PAGE_OPTIONS.get(name)
        if options and value not in options:
            nearest = min(options, key=lambda o: _distance(o, value))
            notes.append(f"{name} {value:.3g} → {nearest:g} (the nearest the Train page offers)")
            value = nearest
        values[name] = value
    return values, notes


def _distance(option: float, value: float) -> float:
    """How far apart on a log scale (lr 3e-5 is nearer 2e-5 than 0); 0 only matches 0."""
    if value <= 0 or option <= 0:
        return abs(option - value) if value <= 0 else math.inf
    return abs(math.log10(option) - math.log10(value))

"""python -m fvr_core: train, evaluate, predict, list runs and download data from a terminal."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from fvr_core.config import (
    PRESET_NOTES,
    PRESETS,
    ConfigError,
    TrainConfig,
    config_fields,
    join_sources,
    preset_settings,
)
from fvr_core.data.dataset import DataError, check_sources, find_dataset_root, resolve_sources
from fvr_core.data.demo import make_demo_dataset
from fvr_core.data.download import DownloadError, download_kaggle
from fvr_core.files import atomic_write_json
from fvr_core.inference.calibration import calibrate_run
from fvr_core.inference.heldout import evaluate_held_out, format_per_source
from fvr_core.inference.outside import evaluate_folder, list_photos
from fvr_core.inference.robustness import evaluate_robustness
from fvr_core.models.registry import MODELS, ModelError
from fvr_core.report.compare import predictions_csv
from fvr_core.runs.reference import export_reference, reference_info
# every module imported here is torch-free, so `python -m fvr_core runs` starts fast; commands that
# need torch import their modules inside (start-up speed)
from fvr_core.runs.store import COMPLETED, DIVERGED, INTERRUPTED, STOPPED, RunError, RunStore, find_run
from fvr_core.settings import IMAGE_EXTENSIONS, app_limits, parse_unsure_band, reference_root, runs_root, unsure_band
from fvr_core.training.launcher import launch, stop, work
from fvr_core.training.queue import DEFAULT_MAX_CONCURRENT
from fvr_core.training.search import launch_search, resume_search_in_background, run_search
from fvr_core.training.searches import (
    DEFAULT_TRIALS,
    OBJECTIVES,
    PRUNERS,
    SearchSpec,
    SearchStore,
    parse_range,
    prepare_resume,
    searchable_fields,
    stop_search,
)
from fvr_core.training.signals import stop_on_sigterm

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED, EXIT_DOWNLOAD, EXIT_RUN, EXIT_STOPPED = 0, 1, 2, 3, 4, 5, 6, 130
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_FAILED}    training failed (see the run's error.txt) or an unexpected error
  {EXIT_USAGE}    bad command line or invalid settings
  {EXIT_DATA}    data problem: folder missing, too few usable images, an unreadable image
  {EXIT_DIVERGED}    the run diverged (see its hint)
  {EXIT_DOWNLOAD}    download failed (offline?)
  {EXIT_RUN}    run or checkpoint not found or unusable
  {EXIT_STOPPED}  the run was stopped or interrupted"""


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    group = parser.add_argument_group("training settings (TrainConfig; defaults as shown)")
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{f.metadata['help']} (default: {shown})"}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
            kwargs["help"] = f"{f.metadata['help']}: {', '.join(map(str, f.metadata['choices']))} (default: {shown})"
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "data":  # several sources: --data once per source
            kwargs.update(action="append", metavar="[fake:|real:]PATH")
        else:
            kwargs["metavar"] = f.name.upper()
        group.add_argument(flag, **kwargs)


def _config_from_args(args: argparse.Namespace):
    base = {}
    if args.preset:
        base = preset_settings(_preset_name(args.preset), args.model)
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(_fail(EXIT_USAGE, f"cannot read config file {args.config}: {exc}"))
        if not isinstance(loaded, dict):
            raise SystemExit(_fail(EXIT_USAGE, f"config file {args.config} holds a JSON {type(loaded).__name__}, not an object "
                                               "of settings: give a run's config.json or {\"epochs\": 5, ...}"))
        base = {**base, **loaded}
    overrides = {f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None}
    if overrides.get("data") is not None:  # the list --data gave (each may itself hold ';'-joined sources)
        overrides["data"] = join_sources(overrides["data"])
    return TrainConfig.from_dict({**base, **overrides}).validate()


def _preset_slug(name: str) -> str:
    return name.lower().replace(" ", "-")


def _preset_name(slug: str) -> str:
    return next(name for name in PRESETS if _preset_slug(name) == slug)


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


class _ProgressBar:
    """tqdm bars for the terminal; silent when output is not a terminal (tqdm's disable=None)."""

    def __init__(self):
        from tqdm import tqdm  # tqdm loads on first use (start-up speed)

        self.tqdm = tqdm
        self.bar = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "decode":
            if self.bar is None:
                self.bar = self.tqdm(total=info["total"], desc="decoding images", unit="img", disable=None)
            self.bar.n = info["done"]
            self.bar.refresh()
        elif event == "start":
            self._close()
            self.bar = self.tqdm(total=info["total_steps"], initial=info["step"], desc=f"training on {info['device']}", unit="step", disable=None)
        elif event == "step" and self.bar is not None:
            self.bar.n = info["step"]
            self.bar.set_postfix(loss=f"{info['loss']:.4f}", refresh=False)
            self.bar.refresh()
        elif event == "epoch":
            msg = (f"epoch {info['epoch']}: train loss {info['train_loss']:.4f} acc {info['train_acc']:.3f} | "
                   f"val loss {info['val_loss']:.4f} acc {info['val_acc']:.3f} balanced {_fmt(info.get('val_balanced_acc'))} "
                   f"AUC {_fmt(info.get('val_roc_auc'))} | {info['images_per_s']:.1f} img/s")
            (self.bar.write if self.bar is not None else print)(msg)
        elif event == "done":
            self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_state(run) -> int:
    status = run.status()
    state = status["state"]
    print(f"run {run.id}: {state}" + (f" ({status['message']})" if status.get("message") else ""))
    if status.get("hint"):
        print(f"hint: {status['hint']}")
    test = run.test_metrics()
    if test:
        print(_format_metrics(test))
    print(f"folder: {run.path}")
    return {COMPLETED: EXIT_OK, DIVERGED: EXIT_DIVERGED, STOPPED: EXIT_STOPPED, INTERRUPTED: EXIT_STOPPED}.get(state, EXIT_FAILED)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_table(rows: list[dict], columns: list[str]) -> None:
    table = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def _format_metrics(m: dict) -> str:
    lines = [
        f"accuracy {_fmt(m['accuracy'])}  balanced accuracy {_fmt(m['balanced_accuracy'])}  ROC AUC {_fmt(m['roc_auc'])}",
        f"precision {_fmt(m['precision'])}  recall {_fmt(m['recall'])}  F1 {_fmt(m['f1'])}  (fake = positive; n = {m['n']})",
        "confusion matrix (rows: true, columns: predicted):",
        f"{'':>8}" + "".join(f"{c:>8}" for c in m["classes"]),
    ]
    lines += [f"{c:>8}" + "".join(f"{v:>8}" for v in row) for c, row in zip(m["classes"], m["confusion_matrix"])]
    return "\n".join(lines)


# ---- commands


def cmd_train(args) -> int:
    from fvr_core.training.trainer import train  # loads torch: here, not when the module loads (start-up speed)

    config = _config_from_args(args)
    if not config.data:
        return _fail(EXIT_USAGE, "--data is required: the folder holding fake/ and real/ (try: python -m fvr_core demo-data)")
    check_sources(config.data)  # a DataError (exit 3) for a path that cannot be a data set, before a run is made
    config = config.replace(data=resolve_sources(config.data))
    if args.background:
        run = launch(config, args.runs_dir, max_concurrent=args.max_concurrent)
        print(f"queued run {run.id} in {run.path.parent}; watch it with: python -m fvr_core runs --runs-dir {run.path.parent}")
        return EXIT_OK
    from fvr_core.training import distributed  # loads torch: here, not when the module loads (start-up speed)

    stop_on_sigterm()
    main = distributed.from_environment().is_main  # under torchrun the processes train one run; rank 0 reports it
    run = train(config, args.runs_dir, _ProgressBar() if main else None,
                on_created=lambda created: print(f"run {created.id} in {created.path}", flush=True))
    return _print_state(run) if main else EXIT_OK


def cmd_resume(args) -> int:
    from fvr_core.training import distributed  # loads torch: here, not when the module loads (start-up speed)
    from fvr_core.training.trainer import resume  # likewise

    run = find_run(args.run, args.runs_dir)
    stop_on_sigterm()
    main = distributed.from_environment().is_main
    resume(run, _ProgressBar() if main else None)
    return _print_state(run) if main else EXIT_OK


def cmd_stop(args) -> int:
    run = find_run(args.run, args.runs_dir)
    stop(run)
    print(f"asked run {run.id} to stop (it was {run.state})")
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from fvr_core.inference.evaluation import (
        evaluate_run,  # loads torch: here, not when the module loads (start-up speed)
    )

    run = find_run(args.run, args.runs_dir)
    if args.held_out:
        results = [evaluate_held_out(run, source, which=args.checkpoint) for source in args.held_out]
        if args.json:
            print(json.dumps(results, indent=2))
        for result in [] if args.json else results:
            print(f"run {run.id} ({run.config.model}, {args.checkpoint} checkpoint) on held-out {result['source']}: "
                  f"{result['n_held_out']} image(s)"
                  + (f", {result['left_out_seen_in_training']} left out (in the run's train/val split)" if result["left_out_seen_in_training"] else ""))
            if result["paired_with"]:
                print(f"scored together with {result['paired_with']}")
            print(_format_metrics(result))
            print(format_per_source(result["per_source"]))
        return EXIT_OK
    result = evaluate_run(run, data=args.data, split=args.split, which=args.checkpoint)
    if args.json:
        if not args.per_image:
            result.pop("predictions")
        print(json.dumps(result, indent=2))
    else:
        print(f"run {run.id} ({run.config.model}, {args.checkpoint} checkpoint) on {result['split']} of {result['data']}")
        print(_format_metrics(result))
        print(format_per_source(result["per_source"]))
    return EXIT_OK


def cmd_leave_one_out(args) -> int:
    from fvr_core.training.leave_one_out import (
        leave_one_generator_out,  # loads torch: here, not when the module loads (start-up speed)
    )

    config = _config_from_args(args)
    if not config.data:
        return _fail(EXIT_USAGE, "--data is required: the sources to train on (the held-out one may be among them)")

    check_sources(config.data)
    check_sources(args.hold_out)
    stop_on_sigterm()
    result = leave_one_generator_out(config, args.hold_out, args.runs_dir, _ProgressBar())
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    test = result["test"]
    print(f"run {result['run']}, trained without {result['source']}")
    print(f"its own test split: balanced accuracy {_fmt(test.get('balanced_accuracy'))}  ROC AUC {_fmt(test.get('roc_auc'))}")
    print(f"held out {result['source']} ({result['n_held_out']} image(s)"
          + (f", scored together with {result['paired_with']}" if result["paired_with"] else "") + "):")
    print(_format_metrics(result))
    print(format_per_source(result["per_source"]))
    return EXIT_OK


def _band(text: str) -> tuple[float, float]:
    try:
        return parse_unsure_band(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _photo_paths(items: Sequence[str]) -> list[str]:
    """Image paths as given, with each folder replaced by the images under it."""
    paths = []
    for item in items:
        paths += [str(p.path) for p in list_photos(item)] if Path(item).is_dir() else [item]
    return paths


def _predictors(run_ids: Sequence[str], runs_dir, which: str = "best") -> dict:
    from fvr_core.inference.predict import Predictor  # loads torch: here, not when the module loads (start-up speed)

    runs = [find_run(r, runs_dir) for r in run_ids]
    return {f"{run.config.model} ({run.id})": Predictor.from_run(run, which=which) for run in runs}


def _write_csv(rows: list[dict], path: str) -> None:
    Path(path).write_bytes(predictions_csv(rows))
    print(f"wrote {len(rows)} rows to {path}")


def cmd_predict(args) -> int:
    from fvr_core.inference.predict import (  # loads torch: here, not when the module loads (start-up speed)
        predict_with_each,
        prepare_photos,
    )

    predictors = _predictors(args.run, args.runs_dir, args.checkpoint)
    paths = _photo_paths(args.images)
    if not paths:  # folders with no image in them
        return _fail(EXIT_DATA, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(args.images)}")
    prepared = prepare_photos(paths, paths, face_crop=args.face_crop)
    rows = predict_with_each(predictors, prepared, tta=args.tta, unsure_band=args.unsure_band,
                             judge_without_face=args.judge_without_face)
    if args.csv:
        _write_csv(rows, args.csv)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not args.csv:
        width = max(len(f"{r['image']} [{r['face']}]") for r in rows)
        for r in rows:
            where = f"{r['image']} [{r['face']}]" if r["face"] else r["image"]
            if r["error"]:
                print(f"{where:<{width}}  error: {r['error']}")
            elif r["prob_fake"] is None:
                print(f"{where:<{width}}  {r['model']}  -> {r['verdict']} (--judge-without-face judges the whole image)")
            else:
                print(f"{where:<{width}}  {r['model']}  P(fake) = {r['prob_fake']:.4f}  -> {r['verdict']}")
    return EXIT_DATA if any(r["error"] for r in rows) else EXIT_OK


def cmd_outside(args) -> int:
    predictors = _predictors(args.run, args.runs_dir)
    result = evaluate_folder(predictors, args.folder, args.labels, face_crop=args.face_crop, tta=args.tta,
                             unsure_band=args.unsure_band, judge_without_face=args.judge_without_face)
    for problem in result["problems"]:
        print(f"skipped: {problem}", file=sys.stderr)
    if args.csv:
        _write_csv(result["table"], args.csv)
    if args.json:
        print(json.dumps({"scores": result["scores"], "table": result["table"], "problems": result["problems"]}, indent=2))
        return EXIT_OK
    columns = ["model", "photos", "accuracy", "balanced_accuracy", "roc_auc", "unsure", "not_judged", "correct_confident", "errors"]
    _print_table(result["scores"], columns)
    return EXIT_OK


def cmd_calibrate(args) -> int:
    run = find_run(args.run, args.runs_dir)
    cal = calibrate_run(run, data=args.data, which=args.checkpoint)
    if args.json:
        print(json.dumps(cal.to_dict(), indent=2))
        return EXIT_OK
    test = cal.test or {}
    print(f"run {run.id}: temperature {cal.temperature:.3f} fitted on {cal.n} validation images{' (' + cal.note + ')' if cal.note else ''}")
    print(f"expected calibration error  validation {_fmt(cal.ece_before)} -> {_fmt(cal.ece_after)}  "
          f"test {_fmt(test.get('ece_before'))} -> {_fmt(test.get('ece_after'))}")
    return EXIT_OK


def cmd_robustness(args) -> int:
    run = find_run(args.run, args.runs_dir)
    rows = evaluate_robustness(run, data=args.data, split=args.split)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"run {run.id} ({run.config.model}) on its {args.split} split under each corruption:")
    _print_table(rows, ["label", "accuracy", "balanced_accuracy", "roc_auc", "flip_rate", "mean_abs_prob_change"])
    return EXIT_OK


def cmd_ensemble(args) -> int:
    from fvr_core.inference.ensembles import (
        make_ensemble,  # loads torch: here, not when the module loads (start-up speed)
    )

    store = RunStore(args.runs_dir)
    members = [store.get(r) for r in args.runs]
    run = make_ensemble(members, args.runs_dir, name=args.name, combine=args.combine, data=args.data)
    test = run.test_metrics() or {}
    print(f"run {run.id} in {run.path}: ensemble of {', '.join(m.id for m in members)}")
    print(f"test metrics:\n{_format_metrics(test)}")
    return EXIT_OK


def cmd_export_reference(args) -> int:
    shipped = export_reference(find_run(args.run, args.runs_dir), args.dest, args.max_mb)
    info = reference_info(shipped)
    print(f"{shipped.path}  (weights: {info['weights']}{'; ' + info['note'] if info['note'] else ''})")
    return EXIT_OK


def cmd_runs(args) -> int:
    store = RunStore(args.runs_dir)
    rows = store.summaries(model=args.model, state=args.state)
    shipped = RunStore(reference_root())
    if shipped.root.resolve() != store.root.resolve():
        rows += shipped.summaries(model=args.model, state=args.state)  # marked by their "reference" field
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no runs in {store.root}")
        return EXIT_OK
    for row in rows:
        row["ref"] = "ref" if row["reference"] else ""
    columns = ["run", "ref", "model", "state", "epochs", "lr", "image_size", "best_val_acc", "test_acc", "test_balanced_acc", "test_roc_auc"]
    if any(r.get("search") for r in rows):  # a search's trials: which search, which trial
        for row in rows:
            row["search trial"] = f"{row['search'][-6:]}#{row['trial']}" if row.get("search") else ""
        columns.insert(4, "search trial")
    _print_table(rows, columns)
    if any(row["reference"] for row in rows):
        print(f"ref: a reference run shipped with fvr ({shipped.root}); use its id like any other")
    return EXIT_OK


def cmd_delete(args) -> int:
    store = RunStore(args.runs_dir)
    run = store.get(args.run)
    store.delete(run)
    print(f"deleted run {run.id}")
    return EXIT_OK


def cmd_download(args) -> int:
    path = download_kaggle(args.handle, force=args.force)
    print(path)
    return EXIT_OK


def cmd_demo_data(args) -> int:
    print(make_demo_dataset(args.out, per_class=args.per_class, size=args.size))
    return EXIT_OK


def cmd_models(args) -> int:
    for spec in MODELS.values():
        print(f"{spec.name:<20} {spec.parameter_count / 1e6:7.2f}M params  {spec.default_image_size}px  {spec.description}")
    return EXIT_OK


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    """TrainConfig's options for a search: a searchable setting takes one value (fixed for every
    trial), LOW:HIGH (a range; log scale for lr and weight decay) or A,B,C (values to choose from)."""
    searchable = searchable_fields()
    defaults = TrainConfig()
    group = parser.add_argument_group("settings (TrainConfig): searchable ones take VALUE, LOW:HIGH or A,B,C")
    for f in config_fields():
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "metavar": f.name.upper()}
        if f.name in searchable:
            kind = "A,B,C" if f.metadata.get("choices") else "LOW:HIGH or A,B,C"
            kwargs["help"] = f"{f.metadata['help']}: one value or {kind} to search (default: {shown})"
        else:
            kwargs["help"] = f"{f.metadata['help']} (default: {shown})"
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if isinstance(default, bool):
                kwargs["action"] = argparse.BooleanOptionalAction
                kwargs.pop("metavar")
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _search_spec_from_args(args):
    fixed, space = {}, {}
    for f in config_fields():
        value = getattr(args, f.name)
        if value is None:
            continue
        many = isinstance(value, str) and (":" in value or ("," in value and f.name != "split"))
        if many:  # a setting that is not searchable gets parse_range's message naming it
            space[f.name] = parse_range(f.name, value)
        else:
            fixed[f.name] = value
    base = TrainConfig.from_dict(fixed)
    if not base.data:
        raise SystemExit(_fail(EXIT_USAGE, "--data is required: the folder holding fake/ and real/ (try: python -m fvr_core demo-data)"))
    return SearchSpec(base=base, space=space, trials=args.trials, objective=args.objective, pruner=args.pruner,
                      seed=args.sampler_seed, name=base.name)


class _TrialPrinter:
    """One line per trial as it ends, and the epochs as they pass (a search runs for a while)."""

    def __call__(self, event: str, info: dict) -> None:
        if event == "trial" and info["state"] == "running":
            print(f"trial {info['trial']}: training run {info['run']}", flush=True)
        elif event == "trial":
            message = f" ({info['message']})" if info.get("message") else ""
            print(f"trial {info['trial']}: {info['state']}{message}", flush=True)
        elif event == "epoch":
            print(f"  epoch {info['epoch']}: val loss {info['val_loss']:.4f}  val balanced acc {info['val_balanced_acc']:.3f}", flush=True)


def _print_search(search) -> None:
    status = search.status()
    print(f"search {search.id}: {status['state']}" + (f" ({status['message']})" if status.get("message") else ""))
    rows = search.trials_table()
    if rows:
        params = list(search.spec.space)
        _print_table(rows, ["trial", "state", "objective", "epochs", *params, "run"])
    best = search.best()
    if best:
        print(f"best: trial {best['trial']}, {OBJECTIVES[search.spec.objective].label} {best['value']:.4f}, "
              + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()))
        print(f"train it: python -m fvr_core train --config {search.path / 'best_config.json'}")
    print(f"folder: {search.path}")


def cmd_search(args) -> int:
    limits = app_limits() if app_limits().demo else None  # a public demo's caps hold in its terminal too
    store = SearchStore(args.runs_dir)
    if args.resume:
        search = store.get(args.resume)
        if args.background:
            resume_search_in_background(search, args.max_concurrent)
            print(f"queued search {search.id} to resume; watch it with: python -m fvr_core searches {search.id}")
            return EXIT_OK
        prepare_resume(search)
    else:
        spec = _search_spec_from_args(args)

        find_dataset_root(spec.base.data)  # a DataError (exit 3) before a search is made
        if args.background:
            search = launch_search(spec, args.runs_dir, limits=limits, max_concurrent=args.max_concurrent)
            print(f"queued search {search.id}; watch it with: python -m fvr_core searches {search.id}")
            return EXIT_OK
        search = store.create(spec, limits)
        search.claim()  # trained here: no background worker takes it
    print(f"search {search.id} in {search.path}", flush=True)
    state = run_search(search, progress=_TrialPrinter())
    best = search.best()
    if best:
        atomic_write_json(search.path / "best_config.json", best["config"].to_dict())
    _print_search(search)
    return EXIT_OK if state == "completed" else EXIT_STOPPED


def cmd_searches(args) -> int:
    store = SearchStore(args.runs_dir)
    if args.search:
        search = store.get(args.search)
        if args.stop:
            stop_search(search)
            print(f"asked search {search.id} to stop (it was {search.state})")
            return EXIT_OK
        if args.json:
            print(json.dumps({**search.summary(), "trials_table": search.trials_table()}, indent=2, default=str))
        else:
            _print_search(search)
        return EXIT_OK
    rows = [s.summary() for s in store.list()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print(f"no searches in {store.root}")
    else:
        _print_table(rows, ["search", "state", "model", "trials", "completed", "pruned", "failed", "objective", "best", "ranges"])
    return EXIT_OK


def cmd_worker(args) -> int:
    work(args.runs_dir, args.max_concurrent, idle_seconds=args.idle_seconds)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fvr_core", description="fvr: train and use detectors of GAN-generated faces.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    def runs_dir(p):
        p.add_argument("--runs-dir", default=None, help=f"folder of runs (default: $FVR_RUNS_DIR or {runs_root()})")

    p = command("train", cmd_train, "train a model; writes a run folder")
    runs_dir(p)

    p.add_argument("--preset", choices=[_preset_slug(n) for n in PRESETS],
                   help="start from the dashboard's preset: " + "; ".join(f"{_preset_slug(n)}: {PRESET_NOTES[n]}" for n in PRESETS))
    p.add_argument("--config", help="a JSON file of settings (e.g. a run's config.json); options given here override it")
    p.add_argument("--background", action="store_true", help="queue the run for a background worker and return at once")
    p.add_argument("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT, help="runs trained at once by background workers")
    _add_config_options(p)

    p = command("resume", cmd_resume, "continue an interrupted or stopped run from its last checkpoint")
    runs_dir(p)
    p.add_argument("run", help="run id (or a unique prefix/suffix of it) or run folder")

    p = command("stop", cmd_stop, "ask a queued or running run to stop")
    runs_dir(p)
    p.add_argument("run")

    p = command("evaluate", cmd_evaluate, "metrics of a run's checkpoint on its test split or another labelled data set")
    runs_dir(p)
    p.add_argument("run")
    p.add_argument("--data", help="where the run's data set lives now, or another labelled data set (with --split all)")
    p.add_argument("--split", default="test", choices=("test", "val", "train", "all"), help="saved split to use, or all images of --data")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--per-image", action="store_true", help="with --json: include every image's probability")
    p.add_argument("--held-out", action="append", metavar="[fake:|real:]PATH",
                   help="score the run on a folder it never saw instead (a generator's fakes: fake:PATH; paired with the "
                        "run's test reals for balanced accuracy and ROC AUC); repeat for several; saved in held_out.json")

    p = command("leave-one-out", cmd_leave_one_out,
                "train without one generator (--hold-out), then score the run on it: how a detector does on a generator it never saw")
    runs_dir(p)
    p.add_argument("--hold-out", required=True, metavar="[fake:|real:]PATH",
                   help="the source to hold out, e.g. fake:../shared/datasets/extra-gan-fakes/stylegan3 (taken out of --data if there)")
    p.add_argument("--preset", choices=[_preset_slug(n) for n in PRESETS], help="start from the dashboard's preset")
    p.add_argument("--config", help="a JSON file of settings; options given here override it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config_options(p)

    def photo_options(p):
        p.add_argument("--no-face-crop", dest="face_crop", action="store_false",
                       help="judge the whole image instead of each face found in it")
        p.add_argument("--judge-without-face", action="store_true",
                       help="judge the whole image when no face is found in it (default: such an image is not judged)")
        p.add_argument("--tta", action="store_true", help="also judge the mirror image and average (test-time augmentation)")
        p.add_argument("--unsure-band", type=_band, default=unsure_band(), metavar="LOW,HIGH",
                       help="calibrated P(fake) inside this band is reported as unsure (default: %(default)s)")
        p.add_argument("--csv", help="write every row to this CSV file")
        p.add_argument("--json", action="store_true")

    p = command("predict", cmd_predict, "probability that each face in each image is fake (folders: every image in them)")
    runs_dir(p)
    p.add_argument("run", nargs=1, help="run id (or a unique part of it)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    photo_options(p)

    p = command("outside", cmd_outside, "evaluate runs on a labelled folder of outside photos (csv of file,label, or fake/ and real/)")
    runs_dir(p)
    p.add_argument("folder")
    p.add_argument("--run", action="append", required=True, help="run id; repeat to compare several runs")
    p.add_argument("--labels", help="csv with columns file,label (default: labels.csv in the folder, else fake/ and real/ subfolders)")
    photo_options(p)

    p = command("calibrate", cmd_calibrate, "fit a run's temperature on its validation split (runs do this when they finish)")
    runs_dir(p)
    p.add_argument("run")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="predictions use best's calibration")
    p.add_argument("--data", help="where the run's data set lives now")
    p.add_argument("--json", action="store_true")

    p = command("robustness", cmd_robustness, "a run's test metrics under JPEG re-compression, downscaling and blur")
    runs_dir(p)
    p.add_argument("run")
    p.add_argument("--data", help="where the run's data set lives now")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--json", action="store_true")

    p = command("ensemble", cmd_ensemble,
                "a run that averages finished runs' calibrated opinions (same split), calibrated and tested like any run")
    runs_dir(p)
    p.add_argument("runs", nargs="+", metavar="RUN", help="member run ids or folders (at least two)")
    p.add_argument("--combine", default="log_odds", choices=("log_odds", "probability"),
                   help="average the members' calibrated log-odds (default) or probabilities")
    p.add_argument("--name", default="", help="a label for the run")
    p.add_argument("--data", help="where the members' data set lives now")

    p = command("export-reference", cmd_export_reference,
                "copy a completed or diverged run into checkpoints/reference (weights in fp16 if needed, none if too large)")
    runs_dir(p)
    p.add_argument("run")
    p.add_argument("--dest", help="folder of reference runs (default: checkpoints/reference)")
    p.add_argument("--max-mb", type=float, default=25.0, help="largest weights file to ship (default: %(default)s)")

    p = command("runs", cmd_runs, "list runs with their state and metrics")
    runs_dir(p)
    p.add_argument("--model", help="only runs of this model")
    p.add_argument("--state", help="only runs in this state (queued, running, completed, ...)")
    p.add_argument("--json", action="store_true")

    p = command("delete", cmd_delete, "delete a finished run's folder")
    runs_dir(p)
    p.add_argument("run")

    p = command("download", cmd_download, "download the Kaggle 'Fake-Vs-Real-Faces (Hard)' set; prints its folder")
    p.add_argument("--handle", default="hamzaboulahia/hardfakevsrealfaces", help="Kaggle handle, optionally with /versions/N")
    p.add_argument("--force", action="store_true", help="download again even if cached")

    p = command("demo-data", cmd_demo_data, "write the small SYNTHETIC demo data set; prints its folder")
    p.add_argument("--out", help="folder to write (default: $FVR_DATA_DIR/fvr-demo-synthetic)")
    p.add_argument("--per-class", type=int, default=120)
    p.add_argument("--size", type=int, default=128)

    command("models", cmd_models, "list the registered models")

    p = command("search", cmd_search, "search hyperparameters with Optuna: each trial is a run; e.g. "
                "--data DIR --model cnn --epochs 5 --image-size 64 --lr 1e-4:1e-2 --batch-size 16,32,64")
    runs_dir(p)

    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="number of trials (default: %(default)s)")
    p.add_argument("--objective", default="val_balanced_accuracy", choices=list(OBJECTIVES),
                   help="what a trial is scored by, at its best checkpoint (default: %(default)s)")
    p.add_argument("--pruner", default="median", choices=list(PRUNERS),
                   help="; ".join(f"{k}: {v[0]}" for k, v in PRUNERS.items()) + " (default: %(default)s)")
    p.add_argument("--sampler-seed", type=int, default=0, help="seed of Optuna's sampler (default: %(default)s)")
    p.add_argument("--resume", metavar="SEARCH", help="go on with a stopped or interrupted search (its id or a unique part)")
    p.add_argument("--background", action="store_true", help="queue the search for the background worker and return at once")
    p.add_argument("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT, help="runs trained at once by background workers")
    _add_search_options(p)

    p = command("searches", cmd_searches, "list searches, or show one's trials (and stop it with --stop)")
    runs_dir(p)
    p.add_argument("search", nargs="?", help="a search id (or a unique part of it)")
    p.add_argument("--stop", action="store_true", help="stop the search: its running trial stops, no more start")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("worker")  # internal: the background queue worker started by launch()
    p.set_defaults(func=cmd_worker)
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT)
    p.add_argument("--idle-seconds", type=float, default=0.0, help="wait this long for more runs before exiting")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fvr_core.runs.checkpoint import (
        CheckpointError,  # loads torch: here, not when the module loads (start-up speed)
    )
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except DataError as exc:
        return _fail(EXIT_DATA, str(exc))
    except DownloadError as exc:
        return _fail(EXIT_DOWNLOAD, str(exc))
    except (RunError, CheckpointError) as exc:
        return _fail(EXIT_RUN, str(exc))
    except ModelError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        return _fail(EXIT_STOPPED, "interrupted")
    except BrokenPipeError:  # the reader went away (`... | head`): nothing to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return EXIT_OK
    except OSError as exc:  # a full disk, a folder that vanished: the run's status says what it was doing
        return _fail(EXIT_FAILED, f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}: "
                                  "free space or fix the path, then resume the run")

"""Shipping a finished run with the repository (checkpoints/reference), so that Compare and
Predict show it on a fresh clone: the run format without what only training needs (the last
checkpoint, optimizer state, heartbeat), its best weights in fp16 when that keeps them small
enough for git, and only its metrics and curves when even fp16 is too large.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fvr_core.runs.store import COMPLETED, DIVERGED, Run, RunError
from fvr_core.files import atomic_write_json, now_iso, read_json
from fvr_core.settings import portable_data_path, reference_root

# what a reader of a finished run uses; the rest (last.*, last_state.pt, heartbeat, claimed) is training's
KEPT_FILES = ("config.json", "status.json", "metrics.jsonl", "data_report.json", "split.json", "test_metrics.json",
              "test_predictions.csv", "calibration.json", "robustness.json", "best.json")
MAX_WEIGHTS_MB = 25.0  # a file git hosts comfortably; larger models ship their metrics and curves only
# tensors smaller than this stay fp32 in an fp16 export when the budget allows: they cost little, and
# they are where fp16 hurts (the classical detector's feature means and scales: in fp16 their rounding
# moved its log-odds by up to 1.5 inside the shipped ensemble)
KEEP_FP32_BELOW = 100_000
PROCESS_FIELDS = ("pid", "pid_start", "host")  # who trained it: meaningless on another machine


def _write_weights(source: Path, target: Path, max_mb: float) -> str:
    """Copy the best weights as fp32 if they fit `max_mb`, else with the large tensors in fp16 (the
    small ones kept fp32), else all in fp16, whichever fits first; returns "fp32", "fp16" or "none"."""
    if source.stat().st_size <= max_mb * 1e6:
        shutil.copy2(source, target)
        return "fp32"
    from safetensors import safe_open  # torch-free callers (the CLI's listing) never get here
    from safetensors.torch import save_file  # safetensors loads on first use (start-up speed)

    with safe_open(str(source), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    for keep_below in (KEEP_FP32_BELOW, 0):
        halved = {k: t.half() if t.is_floating_point() and t.numel() >= keep_below else t for k, t in tensors.items()}
        if sum(t.numel() * t.element_size() for t in halved.values()) <= max_mb * 1e6:
            save_file(halved, str(target), metadata=metadata)
            return "fp16"
    return "none"


def export_reference(run: Run, dest_root: str | Path | None = None, max_mb: float = MAX_WEIGHTS_MB) -> Run:
    """Copy a completed run into `dest_root` (default checkpoints/reference) as a reference run.
    Replaces an earlier export of the same run."""
    if run.state not in (COMPLETED, DIVERGED):  # a diverged run is a result too (vgg19 in the original recipe)
        raise RunError(f"run {run.id} is {run.state}: only completed or diverged runs can be shipped as reference runs")
    dest_root = Path(dest_root) if dest_root is not None else reference_root()
    dest_root.mkdir(parents=True, exist_ok=True)
    target = dest_root / run.id
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.id}.", dir=dest_root))
    try:
        for name in KEPT_FILES:
            if (run.path / name).is_file():
                shutil.copy2(run.path / name, tmp / name)
        _make_data_paths_portable(tmp)
        status = read_json(tmp / "status.json") or {}
        atomic_write_json(tmp / "status.json", {k: v for k, v in status.items() if k not in PROCESS_FIELDS})
        best = run.path / "best.safetensors"
        weights = _write_weights(best, tmp / "best.safetensors", max_mb) if best.is_file() else "none"
        if weights == "none":
            (tmp / "best.json").unlink(missing_ok=True)  # metadata without weights would read as a checkpoint
        atomic_write_json(tmp / "reference.json", {
            "source_run": run.id, "exported": now_iso(), "weights": weights, "max_mb": max_mb,
            "note": "" if weights != "none" else (f"weights over {max_mb:g} MB even in fp16: metrics and curves only"
                                                  if best.is_file() else "no checkpoint: the run never finished an epoch"),
        })
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Run(target)


# where each kept JSON file names the data set: (file, keys leading to the path)
DATA_PATH_FIELDS = (("config.json", ("data",)), ("best.json", ("config", "data")), ("split.json", ("data",)),
                    ("robustness.json", ("data",)), ("data_report.json", ("root",)))


def _make_data_paths_portable(folder: Path) -> None:
    """Every kept file names the data set relative to the project, never by the training
    machine's absolute path (a `;` separates the sources of a data set of several)."""
    for name, keys in DATA_PATH_FIELDS:
        content = read_json(folder / name)
        holder = content
        for key in keys[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(keys[-1]), str):
            holder[keys[-1]] = ";".join(portable_data_path(part) for part in holder[keys[-1]].split(";") if part)
            atomic_write_json(folder / name, content)


def reference_info(run: Run) -> dict:
    """What export_reference recorded (weights: fp32, fp16 or none), or {} for other runs."""
    info = read_json(run.path / "reference.json")
    return info if isinstance(info, dict) else {}


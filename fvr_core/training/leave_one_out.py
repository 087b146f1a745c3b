"""Leave one generator out: train without one source (a generator's fakes), then score the run on
it (fvr_core.inference.heldout), to see how a detector does on a generator it never saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fvr_core.data.dataset import DataError, parse_sources, resolve_sources, source_folders
from fvr_core.inference.heldout import evaluate_held_out
from fvr_core.runs.store import COMPLETED, STOPPED, RunError
from fvr_core.training.trainer import train

def without_sources(data: str, held_out: str) -> str:
    """`data` with the held-out sources taken out (compared by resolved path); DataError when nothing
    or everything would be left."""
    held = set(source_folders(held_out))
    sources = parse_sources(resolve_sources(data))
    kept = [s for s in sources if Path(s.path) not in held]  # all of them when it was left out from the start
    if not kept:
        raise DataError(f"holding out {held_out} leaves no source to train on in {data}")
    return ";".join(s.spec for s in kept)


def leave_one_generator_out(config, held_out: str, runs_dir: str | Path | None = None, progress=None) -> dict[str, Any]:
    """Train `config` without the `held_out` source (e.g. `fake:.../stylegan3`; taken out of
    config.data if it is there), then score the finished run on it with evaluate_held_out.
    Returns that result with the run's own test metrics beside it ("test")."""
    data = without_sources(config.data, held_out)
    names = ", ".join(Path(s.path).name for s in parse_sources(held_out))
    run = train(config.replace(data=data, name=config.name or f"without {names}"), runs_dir, progress)
    if run.state not in (COMPLETED, STOPPED) or not (run.path / "best.safetensors").is_file():
        raise RunError(f"run {run.id} ended {run.state} ({run.status().get('message', '')}): nothing to score on {held_out}")
    result = evaluate_held_out(run, held_out)
    result["test"] = {k: v for k, v in (run.test_metrics() or {}).items() if not isinstance(v, (list, dict)) or k == "per_source"}
    return result

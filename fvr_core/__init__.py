"""fvr_core: the library behind fvr, a dashboard for detectors of GAN-generated faces.

Sub-packages, bottom to top (docs/architecture.md): data and models; config (TrainConfig); runs (a
run is a folder); workspace (a user's data sets in the dashboard); inference (evaluation,
calibration, prediction); training (trainer, queue, searches); report (tables and figures); and
the CLI (python -m fvr_core). No Streamlit here: the dashboard's pages only call this library.

The names below are the public API (the README's "From Python"). They load on first use, so
`import fvr_core` (which every import of a sub-module runs first) stays light: the dashboard's
pages and the CLI start without torch until they need a model.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "fvr_core.settings": ("CLASSES", "FAKE", "REAL"),
    "fvr_core.config": ("ConfigError", "TrainConfig"),
    "fvr_core.data.dataset": ("DataError", "ImageSet", "load_dataset", "scan_dataset", "stratified_split"),
    "fvr_core.models.registry": ("MODELS", "build_model", "get_spec"),
    "fvr_core.runs.store": ("Run", "RunError", "RunStore"),
    "fvr_core.training.trainer": ("train", "resume"),
    "fvr_core.training.launcher": ("launch",),
    "fvr_core.inference.predict": ("Predictor",),
    "fvr_core.inference.evaluation": ("evaluate_run",),
    "fvr_core.inference.ensembles": ("make_ensemble",),
    "fvr_core.training.searches": ("SearchSpec", "SearchStore", "parse_range", "study_figures"),
    "fvr_core.training.search": ("run_search", "launch_search"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'fvr_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""fvr_core: the library behind fvr, a dashboard for detectors of GAN-generated faces.

Data (fvr_core.dataset), models (fvr_core.models), training (fvr_core.training), runs
(fvr_core.runs, fvr_core.launcher), evaluation and prediction, and the CLI (python -m fvr_core).
No Streamlit here: the dashboard's pages only call this library.
"""

from .config import ConfigError, TrainConfig
from .dataset import DataError, ImageSet, load_dataset, scan_dataset, stratified_split
from .models import MODELS, build_model, get_spec
from .runs import Run, RunError, RunStore
from .settings import CLASSES, FAKE, REAL

__version__ = "0.1.0"

__all__ = [
    "CLASSES", "FAKE", "REAL", "MODELS", "ConfigError", "DataError", "ImageSet", "Run", "RunError", "RunStore",
    "TrainConfig", "build_model", "get_spec", "load_dataset", "scan_dataset", "stratified_split",
]

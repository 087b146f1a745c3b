"""Calibrated probability of "fake": temperature scaling (Guo et al. 2017, "On Calibration of
Modern Neural Networks"), the expected calibration error, reliability bins and a three-way verdict.

A detector can rank fakes above reals almost perfectly (high ROC AUC) and still say "99 % fake"
for images it gets wrong: networks trained to low cross-entropy end up over-confident. Dividing the
logits by one temperature T > 1, fitted on the validation split, softens the probabilities without
changing any decision at 0.5 (nor the ROC AUC), so a probability of 0.8 means right about 8 times
in 10.

numpy only at import, so the dashboard's first page stays torch-free; the functions that run a
model import torch themselves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from fvr_core import settings
from fvr_core.files import atomic_write_json, crash_point, now_iso, read_json
from fvr_core.settings import CLASSES, DEFAULT_UNSURE_BAND, FAKE  # noqa: F401  (the band's default lives in settings)

DEFAULT_BINS = 10
MIN_FIT_EXAMPLES = 10  # below this a fitted temperature is noise: keep T = 1
TEMPERATURE_RANGE: tuple[float, float] = (0.05, 20.0)  # clamp: beyond it the model's logits are the problem
CALIBRATION_FILE = "calibration.json"  # of the best checkpoint; calibration-<which>.json of another
_EPS = 1e-12  # floor of a probability inside a log


# ---------------------------------------------------------------------------------------------
# probabilities


def _as_logits(logits: Any) -> np.ndarray:
    """(N, 2) float64 numpy array from numpy or a torch tensor (any device)."""
    if hasattr(logits, "detach"):  # a torch tensor: no torch import needed to convert it
        logits = logits.detach().float().cpu().numpy()
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(CLASSES):
        raise ValueError(f"logits must have shape (N, {len(CLASSES)}) in CLASSES order {CLASSES}; got {array.shape}")
    return array


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)  # stable for logits in the hundreds
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def calibrated_prob_fake(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Probability of "fake" for each row of (N, 2) logits: softmax(logits / T)[:, FAKE]."""
    if not temperature > 0:
        raise ValueError(f"temperature {temperature!r} must be greater than 0")
    return np.exp(_log_softmax(_as_logits(logits) / float(temperature))[:, FAKE])


def _labels(labels: Sequence[int], n: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} predictions: give one label per prediction")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"labels must be class indices 0..{len(CLASSES) - 1} ({', '.join(CLASSES)})")
    return labels


def negative_log_likelihood(logits: Any, labels: Sequence[int], temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[true class] (the cross-entropy the model was trained on)."""
    z = _as_logits(logits)
    y = _labels(labels, len(z))
    if not len(y):
        raise ValueError("no predictions: the negative log-likelihood needs at least one")
    return float(-_log_softmax(z / float(temperature))[np.arange(len(y)), y].mean())


# ---------------------------------------------------------------------------------------------
# calibration error


def _top_label(prob_fake: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Confidence of the predicted class and whether the prediction was right. The predicted class
    is fake when prob_fake >= 0.5, as in fvr_core.metrics.classification_metrics."""
    p = np.asarray(prob_fake, dtype=np.float64).reshape(-1)
    y = _labels(labels, len(p))
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("probabilities of fake must be finite and in [0, 1]")
    called_fake = p >= 0.5
    confidence = np.where(called_fake, p, 1.0 - p)
    correct = called_fake == (y == FAKE)
    return confidence, correct


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    # bins (k/B, (k+1)/B], the first also holding 0: a confidence on an edge goes to the lower bin
    if bins < 1:
        raise ValueError(f"bins={bins}: use at least 1")
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def expected_calibration_error(prob_fake: Sequence[float], labels: Sequence[int], bins: int = DEFAULT_BINS) -> float:
    """Top-label expected calibration error with equal-width bins (Guo et al. 2017).

    Each image's *confidence* is the probability of the class it is called (fake when
    prob_fake >= 0.5, so confidence = max(p, 1 - p), always >= 0.5). Confidences are put in `bins`
    equal-width bins over [0, 1], bin k holding (k/bins, (k+1)/bins] (the first also holds 0); with
    two classes the bins below 0.5 stay empty. Then

        ECE = sum over bins b of |b| / N * | accuracy(b) - mean confidence(b) |

    0 means "when it says 80 %, it is right 80 % of the time" in every bin; a model that says 0.99
    on a coin toss scores 0.49. Raises ValueError with no predictions.
    """
    confidence, correct = _top_label(prob_fake, labels)
    if not len(confidence):
        raise ValueError("no predictions: the calibration error needs at least one")
    index = _bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    gap = np.bincount(index, weights=correct - confidence, minlength=bins)  # per bin: sum(acc - conf)
    return float(np.abs(gap).sum() / counts.sum())


def reliability_bins(prob_fake: Sequence[float], labels: Sequence[int], bins: int = DEFAULT_BINS) -> list[dict[str, Any]]:
    """The bins of expected_calibration_error, for a reliability diagram: one dict per bin with
    bin_low, bin_high, count, mean_confidence and accuracy (None for an empty bin)."""
    confidence, correct = _top_label(prob_fake, labels)
    index = _bin_index(confidence, bins)
    rows = []
    for k in range(bins):
        inside = index == k
        count = int(inside.sum())
        rows.append({
            "bin_low": k / bins, "bin_high": (k + 1) / bins, "count": count,
            "mean_confidence": float(confidence[inside].mean()) if count else None,
            "accuracy": float(correct[inside].mean()) if count else None,
        })
    return rows


# ---------------------------------------------------------------------------------------------
# fitting


def fit_problem(labels: Sequence[int]) -> str:
    """Why a temperature cannot be fitted on these labels ("" when it can)."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) < MIN_FIT_EXAMPLES:
        return f"only {len(labels)} example(s) (need {MIN_FIT_EXAMPLES}): temperature left at 1"
    if len(np.unique(labels)) < len(CLASSES):
        present = ", ".join(CLASSES[int(c)] for c in np.unique(labels))
        return f"only one class present ({present}): temperature left at 1"
    return ""


def _golden_section(f, low: float, high: float, iterations: int = 80) -> float:
    """Minimum of a unimodal f on [low, high]; deterministic, no scipy. 80 steps shrink the
    interval by 0.618**80 (about 1e-17 of its width)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def fit_temperature(logits: Any, labels: Sequence[int]) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, labels), within
    TEMPERATURE_RANGE. 1.0 when there is too little to fit on (see fit_problem; fit_calibration
    records the reason).

    The NLL is convex in 1/T (the log-softmax is convex in the scaled logits), hence unimodal in
    log T, so a golden-section search over log T finds the global minimum. A T at an end of the range
    means the data wanted more: e.g. a validation split the model gets entirely right pushes T to 0.
    """
    z = _as_logits(logits)
    y = _labels(labels, len(z))
    if fit_problem(y):
        return 1.0
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    log_t = _golden_section(lambda s: negative_log_likelihood(z, y, math.exp(s)), low, high)
    best = math.exp(log_t)
    # never worse than no calibration on the data it was fitted on (guards rounding at flat optima)
    return best if negative_log_likelihood(z, y, best) <= negative_log_likelihood(z, y, 1.0) else 1.0


@dataclass
class Calibration:
    """A fitted temperature with the error before (T = 1) and after, on the data it was fitted on
    (the validation split for a run) and, when known, on the test split."""

    temperature: float
    n: int
    ece_before: float | None
    ece_after: float | None
    nll_before: float | None
    nll_after: float | None
    note: str = ""  # why the temperature was left at 1 or clamped; "" when the fit was ordinary
    fitted: bool = True  # False: too little data, T = 1 kept
    bins: int = DEFAULT_BINS
    test: dict[str, Any] | None = None  # n, ece_before, ece_after, nll_before, nll_after on the test split
    reliability: dict[str, Any] = field(default_factory=dict)  # {split: {"before": bins, "after": bins}}
    run: str = ""
    checkpoint: str = ""
    checkpoint_step: int | None = None  # the training step of the checkpoint it was fitted for
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def prob_fake(self, logits: Any) -> np.ndarray:
        return calibrated_prob_fake(logits, self.temperature)


def _errors(logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int) -> dict[str, Any]:
    """ECE, NLL and reliability bins at T = 1 and at `temperature` (None values with no data)."""
    n = len(labels)
    out: dict[str, Any] = {"n": n}
    for when, t in (("before", 1.0), ("after", temperature)):
        probs = calibrated_prob_fake(logits, t) if n else np.zeros(0)
        out[f"ece_{when}"] = expected_calibration_error(probs, labels, bins) if n else None
        out[f"nll_{when}"] = negative_log_likelihood(logits, labels, t) if n else None
        out[f"reliability_{when}"] = reliability_bins(probs, labels, bins)
    return out


def fit_calibration(logits: Any, labels: Sequence[int], bins: int = DEFAULT_BINS) -> Calibration:
    """fit_temperature plus the errors before and after, and a note when it could not fit."""
    z = _as_logits(logits)
    y = _labels(labels, len(z))
    problem = fit_problem(y)
    temperature = fit_temperature(z, y)
    note = problem
    if not problem and min(abs(math.log(temperature / t)) for t in TEMPERATURE_RANGE) < 1e-3:
        note = (f"temperature clamped at {temperature:.3g} (range {TEMPERATURE_RANGE[0]}-{TEMPERATURE_RANGE[1]}): "
                "the validation split wanted more; with no errors on it, calibration cannot be measured")
    e = _errors(z, y, temperature, bins)
    return Calibration(
        temperature=float(temperature), n=len(y), ece_before=e["ece_before"], ece_after=e["ece_after"],
        nll_before=e["nll_before"], nll_after=e["nll_after"], note=note, fitted=not problem, bins=bins,
        reliability={"val": {"before": e["reliability_before"], "after": e["reliability_after"]}},
    )


# ---------------------------------------------------------------------------------------------
# verdict


def verdict(prob_fake: float, unsure_band: tuple[float, float] = DEFAULT_UNSURE_BAND) -> str:
    """"fake" when prob_fake > high, "real" when prob_fake < low, "unsure" when
    low <= prob_fake <= high (both edges inclusive: at exactly 0.65 we do not commit)."""
    low, high = unsure_band
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"unsure band {unsure_band!r}: give (low, high) with 0 <= low <= high <= 1")
    p = float(prob_fake)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability {prob_fake!r} is not in [0, 1]")
    if p > high:
        return CLASSES[FAKE]
    if p < low:
        return CLASSES[1 - FAKE]
    return "unsure"


def verdicts(prob_fake: Sequence[float], unsure_band: tuple[float, float] = DEFAULT_UNSURE_BAND) -> list[str]:
    """verdict() of each probability."""
    return [verdict(p, unsure_band) for p in np.asarray(prob_fake, dtype=np.float64).reshape(-1)]


# ---------------------------------------------------------------------------------------------
# a run's checkpoint on its own splits


def run_split_logits(model, image_set, indices: np.ndarray, device: str = "cpu", images: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) float64 logits of `model` over the images at `indices` (or over `images`, e.g.
    corrupted copies of them, when given)."""
    from fvr_core.inference.evaluation import (
        predict_logits,  # loads torch: here, not when the module loads (start-up speed)
    )

    if images is not None:
        return _as_logits(predict_logits(model, images, device=device))
    return _as_logits(predict_logits(model, image_set.images, indices, device=device))


def calibration_from_logits(
    val_logits: Any, val_labels: Sequence[int], test_logits: Any = None, test_labels: Sequence[int] | None = None,
    bins: int = DEFAULT_BINS,
) -> Calibration:
    """fit_calibration on the validation logits, plus the errors before and after on the test
    logits when given (the test split is measured, never fitted on)."""
    calibration = fit_calibration(val_logits, val_labels, bins)
    if test_logits is not None and test_labels is not None:
        e = _errors(_as_logits(test_logits), _labels(test_labels, len(_as_logits(test_logits))), calibration.temperature, bins)
        calibration.test = {k: v for k, v in e.items() if not k.startswith("reliability")}
        calibration.reliability["test"] = {"before": e["reliability_before"], "after": e["reliability_after"]}
    return calibration


def calibration_path(run, which: str = "best"):
    """Where a run keeps the calibration of its `which` checkpoint: one file per checkpoint, so
    calibrating "last" never replaces the calibration predictions use (best's)."""
    return run.path / (CALIBRATION_FILE if which == "best" else f"calibration-{which}.json")


def save_calibration(run, calibration: Calibration, which: str = "best") -> Calibration:
    """Write calibration.json (calibration-<which>.json for another checkpoint) to the run folder
    and put the temperature into the checkpoint's metadata (<which>.json), so a checkpoint copied
    on its own keeps its calibration. Fills in the run, checkpoint and time when they are empty."""
    calibration.run = calibration.run or run.id
    calibration.checkpoint = calibration.checkpoint or which
    calibration.created = calibration.created or now_iso()
    meta_path = run.path / f"{calibration.checkpoint}.json"
    meta = read_json(meta_path)
    if isinstance(meta, dict):  # no metadata, no checkpoint: nothing to keep in step
        calibration.checkpoint_step = meta.get("step")
        meta["temperature"] = calibration.temperature
        atomic_write_json(meta_path, meta)
    crash_point("calibration")
    atomic_write_json(calibration_path(run, calibration.checkpoint), calibration.to_dict())
    return calibration


@settings.in_prediction_slot
def calibrate_run(run, data=None, which: str = "best", device: str = "cpu", bins: int = DEFAULT_BINS) -> Calibration:
    """Fit a temperature for a run's checkpoint on its validation split, measure ECE and NLL before
    and after on the validation and the test split (the test split is never used to fit), and
    save it (calibration.json, and the temperature in the checkpoint's metadata)."""
    from fvr_core.inference.evaluation import (  # loads torch: here, not when the module loads (start-up speed)
        load_run_model_and_data,
        run_split_indices,
    )

    model, image_set = load_run_model_and_data(run, data, which, device)
    val, test = (run_split_indices(run, image_set, s) for s in ("val", "test"))
    calibration = calibration_from_logits(
        run_split_logits(model, image_set, val, device), image_set.labels[val],
        run_split_logits(model, image_set, test, device), image_set.labels[test], bins,
    )
    calibration.checkpoint = which
    return save_calibration(run, calibration, which)


def load_calibration(run, which: str = "best") -> Calibration | None:
    """The run's calibration.json when it was fitted for its current `which` checkpoint; None when
    there is none, it cannot be read, or it is stale (the checkpoint changed since, e.g. a resumed
    run found a better epoch): calibrate_run again then."""
    data = read_json(calibration_path(run, which))
    if not isinstance(data, dict) or "temperature" not in data:
        return None
    try:
        calibration = Calibration.from_dict(data)
    except TypeError:  # written by another version, missing a field: treat as absent
        return None
    if (calibration.checkpoint or which) != which:
        return None
    meta = read_json(run.path / f"{which}.json")
    if calibration.checkpoint_step is not None and isinstance(meta, dict) and meta.get("step") != calibration.checkpoint_step:
        return None
    return calibration

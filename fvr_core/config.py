"""TrainConfig: the one flat configuration the library, the CLI, the dashboard and a run's
config.json share. Each field's metadata holds its help text and allowed values, so the CLI's
options and the pages' widgets are generated from this one place."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from fvr_core.data.augment_levels import AUGMENTATIONS
from fvr_core.models.registry import MODELS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "on", "off")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")  # not PRECISIONS: a memory layout may gain a choice a precision has not
CLASS_WEIGHTS = ("none", "balanced")
# the validation metric that picks the best checkpoint and drives early stopping
SELECT_METRICS = ("val_loss", "val_balanced_accuracy", "val_roc_auc")
SOURCE_SEPARATOR = ";"  # between the sources of `data` (a path never holds one on the data sets fvr reads)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the allowed values."""


def _field(default: Any, help: str, choices: tuple | None = None, **kwargs) -> Any:
    # search: the field is a hyperparameter a search may vary: True for a field with choices, else
    # the (low, high) bounds a range must stay within; log: sample it on a log scale
    return field(default=default, metadata={"help": help, "choices": choices, **kwargs})


@dataclass
class TrainConfig:
    data: str = _field("", "data set: a folder with class folders fake/ and real/ (optionally data.csv), or several "
                           "sources separated by ';' (the CLI takes --data once per source); a folder of one class "
                           "only is given as fake:PATH or real:PATH")
    model: str = _field("cnn", "model name from the registry", tuple(MODELS), search=True)
    pretrained: bool = _field(False, "start from ImageNet weights (downloads them once)")
    epochs: int = _field(30, "passes over the training split")
    lr: float = _field(1e-3, "peak learning rate", search=(1e-6, 1.0), log=True)
    batch_size: int = _field(32, "images per optimizer step", search=(1, 1024))
    optimizer: str = _field("adam", "optimizer", OPTIMIZERS, search=True)
    weight_decay: float = _field(0.0, "weight decay (decoupled for adamw)", search=(0.0, 1.0), log=True)
    momentum: float = _field(0.9, "momentum (sgd only)", search=(0.0, 0.999))
    schedule: str = _field("none", "learning-rate schedule", SCHEDULES, search=True)
    warmup_epochs: float = _field(0.0, "linear warm-up from lr/100, in epochs", search=(0.0, 20.0))
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy loss", search=(0.0, 0.5))
    class_weights: str = _field("none", "loss weight per class: none, or balanced (each class weighs "
                                        "n_train / (2 * n_class), so a 1:3 set counts both classes equally)", CLASS_WEIGHTS, search=True)
    grad_clip: float = _field(0.0, "clip the gradient norm to this value (0 = off)", search=(0.0, 100.0))
    ema: float = _field(0.0, "average the weights over training: an exponential moving average with this decay per step "
                             "(e.g. 0.998: about the last 500 steps) is what is validated, selected and saved; it smooths "
                             "the epoch-to-epoch swings of a small batch (0 = off)")
    augment: str = _field("light", "augmentation level", tuple(AUGMENTATIONS), search=True)
    image_size: int = _field(300, "side of the square input in pixels", search=(32, 1024))
    train_crop: int = _field(0, "train on random crops of this side cut from the image_size images, pixels untouched "
                                "(evaluation sees whole images); 0 = off")
    seed: int = _field(42, "seed of the split, initial weights and batch order")
    split: tuple[float, float, float] = _field((0.6, 0.2, 0.2), "train/val/test fractions")
    device: str = _field("auto", "training device (auto: cuda, then mps, then cpu)", DEVICES)
    mixed_precision: str = _field("auto", "bf16 autocast (auto: on for CUDA, off on CPU)", PRECISIONS)
    channels_last: str = _field("auto", "channels-last memory layout for convolutions (auto: on for CUDA and CPU)", CHANNELS_LAST_CHOICES)
    compile: bool = _field(False, "torch.compile the model: faster steps after a compilation of tens of seconds")
    select_metric: str = _field("val_loss", "validation metric that picks the best checkpoint and drives early stopping "
                                            "(ties go to the lower validation loss)", SELECT_METRICS)
    patience: int = _field(0, "stop after this many epochs without a better select_metric (0 = off)", search=(0, 100))
    threads: int = _field(0, "CPU threads for training (0 = all cores)")
    max_steps: int = _field(0, "stop after this many optimizer steps in total (0 = no limit)")
    log_every: int = _field(1, "write a step row to metrics.jsonl every N steps (on a GPU also at most 10 a second)")
    name: str = _field("", "a label for the run (shown in tables)")

    def validate(self) -> "TrainConfig":
        """Raise ConfigError on the first value that cannot work; returns self for chaining."""
        problems = []
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"{f.name}={getattr(self, f.name)!r}: choose one of {', '.join(choices)}")
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "log_every": self.log_every}
        problems += [f"{k}={v!r}: must be greater than 0" for k, v in positive.items() if not v > 0]
        non_negative = {
            "weight_decay": self.weight_decay, "momentum": self.momentum, "warmup_epochs": self.warmup_epochs,
            "grad_clip": self.grad_clip, "patience": self.patience, "threads": self.threads, "max_steps": self.max_steps,
        }
        problems += [f"{k}={v!r}: must be 0 or more" for k, v in non_negative.items() if not v >= 0]
        # inf passes the checks above and turns the first step's weights into NaN
        problems += [f"{k}={v!r}: must be a finite number" for k, v in {"lr": self.lr, **non_negative}.items()
                     if isinstance(v, float) and v > 0 and math.isinf(v)]
        if not 0 <= self.seed < 2**32:  # numpy's generators (the split) take no negative seed
            problems.append(f"seed={self.seed!r}: must be between 0 and {2**32 - 1}")
        if not 0 <= self.ema < 1:
            problems.append(f"ema={self.ema!r}: a decay in [0, 1) (0 = off; 0.99-0.9995 average the last 100-2000 steps)")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing!r}: must be in [0, 1)")
        if len(self.split) != 3 or any(not x >= 0 for x in self.split) or not (self.split[0] > 0 and self.split[1] > 0 and self.split[2] > 0):
            problems.append(f"split={self.split!r}: give three fractions greater than 0 (train, val, test)")
        if self.model in MODELS and self.image_size < MODELS[self.model].min_image_size:
            problems.append(f"image_size={self.image_size}: {self.model} needs at least {MODELS[self.model].min_image_size} px")
        if self.train_crop and not (self.model in MODELS and MODELS[self.model].min_image_size <= self.train_crop <= self.image_size):
            problems.append(f"train_crop={self.train_crop}: 0 (off) or between the model's minimum size and image_size={self.image_size}")
        if self.model in MODELS and self.pretrained and not MODELS[self.model].pretrained_available:
            problems.append(f"pretrained=True: {self.model} has no pretrained weights")
        if problems:
            raise ConfigError("invalid training settings: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["split"] = list(self.split)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}: known ones are {', '.join(known)}")
        values = {}
        if isinstance(data.get("data"), (list, tuple)):  # the sources as a list (a notebook, a hand-written config)
            data = {**data, "data": join_sources(data["data"])}
        for name, value in data.items():
            values[name] = coerce(known[name], value)
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def join_sources(sources: Any) -> str:
    """`data` as TrainConfig stores it: the sources joined by ';' (one source: the path as it was)."""
    if isinstance(sources, str):
        return sources
    parts = [str(s).strip() for s in sources if str(s).strip()]
    bad = [p for p in parts if SOURCE_SEPARATOR in p]
    if bad:
        raise ConfigError(f"data source {bad[0]!r} holds a ';', which separates sources: rename the folder")
    return SOURCE_SEPARATOR.join(parts)


def split_sources(data: str) -> list[str]:
    """The sources of a `data` value, in order ('' gives none)."""
    return [part.strip() for part in data.split(SOURCE_SEPARATOR) if part.strip()]


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert a JSON or command-line value to the field's type, or raise ConfigError."""
    default = f.default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, tuple):
            parts = value.split(",") if isinstance(value, str) else value
            return tuple(float(p) for p in parts)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}={value!r}: expected {type(default).__name__}") from None


def to_query_params(values: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, str]:
    """Settings (TrainConfig field names to values) as URL query parameters: only those that differ
    from `base` (TrainConfig's defaults when None), so a shared link stays short and readable."""
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig().to_dict() if base is None else base
    params = {}
    for name, value in values.items():
        if name not in known or (name in base and _same(value, base[name])):
            continue
        if isinstance(value, (tuple, list)):
            params[name] = ",".join(f"{v:g}" for v in value)
        elif isinstance(value, float):
            params[name] = f"{value:g}"
        else:
            params[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return params


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return a == b


def from_query_params(params: dict[str, Any], names: tuple[str, ...] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Settings read back from URL query parameters: (the values that parse, by TrainConfig's field
    types and choices, and one problem line per parameter that does not). Parameters that are no
    setting, or not in `names`, are left alone (other parts of the app may own them). A URL is
    typed or edited by people: a bad value is reported and skipped, never raised."""
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values, problems = {}, []
    for name, raw in params.items():
        if name not in known or (names is not None and name not in names):
            continue
        f = known[name]
        try:
            value = coerce(f, raw)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{name}={raw!r}: choose one of {', '.join(choices)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}={raw!r}: must be a finite number")
        except ConfigError as exc:
            problems.append(f"{exc} (from the link; using the default)")
            continue
        values[name] = value
    # each value within its own range (lr > 0, a size the link's model takes, ...), the rest as defaults
    model = values.get("model", TrainConfig.model)
    for name, value in list(values.items()):
        try:
            TrainConfig(**{"model": model, name: value}).validate()
        except ConfigError as exc:
            own = [p for p in str(exc).split(": ", 1)[-1].split("; ") if p.startswith(f"{name}=")]
            if own:
                del values[name]
                problems.append(f"{'; '.join(own)} (from the link; using the default)")
    return values, problems


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


# Starting points for the Train page and `train --preset`: each maps to TrainConfig changes.
PRESETS: dict[str, dict[str, Any]] = {
    "Quick look": {
        # a curve within seconds and a finished run in about a minute on a laptop CPU
        "model": "cnn", "image_size": 64, "epochs": 5, "batch_size": 32, "lr": 1e-3, "optimizer": "adam",
        "schedule": "none", "augment": "light", "weight_decay": 0.0, "grad_clip": 0.0, "patience": 0, "ema": 0.0,
    },
    "Original recipe": {
        # the write-up's recipe, all of it that is not a bug (ORIGINAL_RECIPE_DIFFERENCES lists the rest)
        "image_size": 300, "epochs": 30, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "schedule": "none",
        "augment": "none", "weight_decay": 0.0, "grad_clip": 0.0, "label_smoothing": 0.0, "warmup_epochs": 0.0,
        "patience": 0, "seed": 42, "split": (0.6, 0.2, 0.2), "pretrained": False,
        "class_weights": "none", "select_metric": "val_loss", "ema": 0.0,
    },
}
PRESET_NOTES = {
    "Quick look": "the small CNN at 64x64 for 5 epochs: about a minute on a laptop CPU",
    "Original recipe": "the write-up's recipe: 300x300, no augmentation, ImageNet normalisation, Adam lr 1e-3, "
    "30 epochs, seed 42, 60/20/20 split, batch 32 (vgg19: 8), best checkpoint by validation loss. GPU recommended "
    "(on a 2-core CPU a VGG takes hours at 300 px)",
}
# the write-up could fit only 8 images of vgg19 a batch on its GPU
ORIGINAL_BATCH_SIZES = {"vgg19": 8}

# Where the Original recipe deliberately differs from the write-up: each one was a bug there.
ORIGINAL_RECIPE_DIFFERENCES = (
    "The split is stratified by class (60/20/20, seed 42); the write-up's random_split was not, so its class mix varied.",
    "One Adam optimizer for the whole run; the write-up re-created it every epoch, throwing away its moment estimates.",
    "Models return logits to CrossEntropyLoss; the write-up put a Softmax before it, which squashes the gradients.",
    "resnet18 and the VGGs get 2-class heads; the write-up left their 1000-class ImageNet heads in place.",
    "The best checkpoint is the lowest validation loss of any epoch; the write-up only saved from epoch 15 on.",
    "Evaluation runs without gradients, and photos of other sizes are centre-cropped, never stretched to 300x300.",
)


def preset_settings(name: str, model: str | None = None) -> dict[str, Any]:
    """A preset's TrainConfig changes, for `model` where the preset depends on it (the Original
    recipe trains vgg19 with batch 8, as the write-up did)."""
    settings = dict(PRESETS[name])
    if name == "Original recipe" and model is not None:
        settings["batch_size"] = ORIGINAL_BATCH_SIZES.get(model, settings["batch_size"])
    return settings


def within_limits(values: dict[str, Any], limits: Any) -> dict[str, Any]:
    """`values` (TrainConfig field names to values) with each that check_limits would refuse under
    `limits` (an `fvr_core.settings.AppLimits`) brought within them: epochs and image_size capped,
    a model the app does not offer replaced by the first it does, pretrained off where downloads are."""
    values = dict(values)
    if "epochs" in values:
        values["epochs"] = min(values["epochs"], limits.max_epochs)
    if "image_size" in values:
        values["image_size"] = min(values["image_size"], limits.max_image_size)
    if "model" in values and not limits.allows_model(values["model"]):
        values["model"] = next((m for m in MODELS if limits.allows_model(m)), values["model"])
    if limits.demo and values.get("pretrained"):
        values["pretrained"] = False
    return values


def preset_settings_within(name: str, model: str, limits: Any) -> dict[str, Any]:
    """Every TrainConfig setting of preset `name` for `model` (TrainConfig's defaults, `model`
    unless the preset names its own, and the preset's changes), within `limits` (within_limits):
    a preset, written for any machine, never asks a capped app for more than it allows."""
    if not limits.allows_model(model):  # first, so a setting that depends on the model follows the one trained
        model = within_limits({"model": model}, limits)["model"]
    return within_limits({**TrainConfig().to_dict(), "model": model, **preset_settings(name, model)}, limits)


# the four models of the original write-up, in its order ("Train all four")
ORIGINAL_MODELS = ("cnn", "resnet18", "vgg19", "vgg19_bn")


def original_four(config: TrainConfig, preset: str | None = None) -> list[TrainConfig]:
    """`config` for each of the write-up's four models ("Train all four"); under a preset, each
    model gets that preset's settings for it (vgg19's batch 8 in the Original recipe)."""
    configs = []
    for model in ORIGINAL_MODELS:
        changes = {"model": model, "name": config.name or "original four"}
        if preset == "Original recipe":
            changes["batch_size"] = preset_settings(preset, model)["batch_size"]
        configs.append(config.replace(**changes))
    return configs


def check_limits(config: TrainConfig, limits: Any) -> None:
    """Raise ConfigError if `config` asks for more than an `fvr_core.settings.AppLimits` allows."""
    problems = []
    if config.epochs > limits.max_epochs:
        problems.append(f"epochs={config.epochs}: this app allows at most {limits.max_epochs}")
    if config.image_size > limits.max_image_size:
        problems.append(f"image_size={config.image_size}: this app allows at most {limits.max_image_size} px")
    if not limits.allows_model(config.model):
        problems.append(f"model={config.model!r}: this app offers {', '.join(limits.models)}")
    if limits.demo and config.pretrained:
        problems.append("pretrained=True: downloads are turned off in this app")
    if problems:
        raise ConfigError("not allowed here: " + "; ".join(problems))

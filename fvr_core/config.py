"""TrainConfig: the one flat configuration the library, the CLI, the dashboard and a run's
config.json share. Each field's metadata holds its help text and allowed values, so the CLI's
options and the pages' widgets are generated from this one place."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .augment_levels import AUGMENTATIONS
from .models import MODELS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "on", "off")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and the allowed values."""


def _field(default: Any, help: str, choices: tuple | None = None, **kwargs) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, **kwargs})


@dataclass
class TrainConfig:
    data: str = _field("", "data set folder (class folders fake/ and real/, optionally data.csv)")
    model: str = _field("cnn", "model name from the registry", tuple(MODELS))
    pretrained: bool = _field(False, "start from ImageNet weights (downloads them once)")
    epochs: int = _field(30, "passes over the training split")
    lr: float = _field(1e-3, "peak learning rate")
    batch_size: int = _field(32, "images per optimizer step")
    optimizer: str = _field("adam", "optimizer", OPTIMIZERS)
    weight_decay: float = _field(0.0, "weight decay (decoupled for adamw)")
    momentum: float = _field(0.9, "momentum (sgd only)")
    schedule: str = _field("none", "learning-rate schedule", SCHEDULES)
    warmup_epochs: float = _field(0.0, "linear warm-up from lr/100, in epochs")
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy loss")
    grad_clip: float = _field(0.0, "clip the gradient norm to this value (0 = off)")
    augment: str = _field("light", "augmentation level", tuple(AUGMENTATIONS))
    image_size: int = _field(300, "side of the square input in pixels")
    train_crop: int = _field(0, "train on random crops of this side cut from the image_size images, pixels untouched "
                                "(evaluation sees whole images); 0 = off")
    seed: int = _field(42, "seed of the split, initial weights and batch order")
    split: tuple[float, float, float] = _field((0.6, 0.2, 0.2), "train/val/test fractions")
    device: str = _field("auto", "training device (auto: cuda, then mps, then cpu)", DEVICES)
    mixed_precision: str = _field("auto", "bf16 autocast (auto: on for CUDA, off on CPU)", PRECISIONS)
    channels_last: str = _field("auto", "channels-last memory layout for convolutions (auto: on for CUDA and CPU)", PRECISIONS)
    compile: bool = _field(False, "torch.compile the model: faster steps after a compilation of tens of seconds")
    patience: int = _field(0, "stop after this many epochs without a better validation loss (0 = off)")
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
        for name, value in data.items():
            values[name] = coerce(known[name], value)
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


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


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


# Starting points for the Train page and `train --preset`: each maps to TrainConfig changes.
PRESETS: dict[str, dict[str, Any]] = {
    "Quick look": {
        # a curve within seconds and a finished run in about a minute on a laptop CPU
        "model": "cnn", "image_size": 64, "epochs": 5, "batch_size": 32, "lr": 1e-3, "optimizer": "adam",
        "schedule": "none", "augment": "light", "weight_decay": 0.0, "grad_clip": 0.0, "patience": 0,
    },
    "Original recipe": {
        # the write-up's recipe, all of it that is not a bug (ORIGINAL_RECIPE_DIFFERENCES lists the rest)
        "image_size": 300, "epochs": 30, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "schedule": "none",
        "augment": "none", "weight_decay": 0.0, "grad_clip": 0.0, "label_smoothing": 0.0, "warmup_epochs": 0.0,
        "patience": 0, "seed": 42, "split": (0.6, 0.2, 0.2), "pretrained": False,
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

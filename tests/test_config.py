"""TrainConfig: defaults of the original recipe, validation, and a lossless JSON round trip."""

from __future__ import annotations

import pytest

from fvr_core.config import ConfigError, TrainConfig


def test_defaults_are_the_original_recipe():
    c = TrainConfig()
    assert (c.model, c.epochs, c.lr, c.optimizer, c.split, c.seed, c.image_size) == ("cnn", 30, 1e-3, "adam", (0.6, 0.2, 0.2), 42, 300)


def test_json_round_trip_is_lossless():
    c = TrainConfig(model="resnet18", lr=3e-4, split=(0.7, 0.15, 0.15), grad_clip=1.0, name="x")
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict(__import__("json").loads(c.to_json())) == c


@pytest.mark.parametrize("changes, field", [
    ({"epochs": 0}, "epochs"), ({"epochs": -3}, "epochs"), ({"lr": 0}, "lr"), ({"lr": -1e-3}, "lr"),
    ({"batch_size": 0}, "batch_size"), ({"model": "alexnet"}, "model"), ({"optimizer": "lion"}, "optimizer"),
    ({"image_size": 8}, "image_size"), ({"split": (0.8, 0.2, 0.0)}, "split"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"augment": "extreme"}, "augment"), ({"pretrained": True}, "pretrained"),
])
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**changes).validate()


def test_unknown_keys_and_bad_types_are_refused():
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"epocs": 3})
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_dict({"epochs": "three"})


def test_strings_from_a_command_line_are_converted():
    c = TrainConfig.from_dict({"epochs": "5", "lr": "0.01", "pretrained": "false", "split": "0.5,0.25,0.25"})
    assert (c.epochs, c.lr, c.pretrained, c.split) == (5, 0.01, False, (0.5, 0.25, 0.25))
